"""The precision knob, and ONNX Runtime static QDQ quantization with per-layer precisions."""
from __future__ import annotations

import functools
import io
import logging
import platform
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping

import numpy as np
import onnx
from onnx import numpy_helper, version_converter
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)

from spaces.base import PRECISIONS, PlanError, check_precision
from spaces.layers import ONNX_LAYER_OPS, onnx_layer_node_lists, onnx_node_layers

if TYPE_CHECKING:
    import optuna

# Integer weight types ORT accepts in QDQ form; int8 is the only one with integer kernels on CPU.
WEIGHT_TYPES = {"int8": QuantType.QInt8, "int16": QuantType.QInt16, "int4": QuantType.QInt4}
# uint8 activations: ORT's CPU kernels for U8S8 are the fast ones (S8S8 measured slower than fp32).
ACTIVATION_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
SUB_BYTE_OPSET = 21
CALIBRATION = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
# quantize_static builds ONNX Runtime's entropy calibrator with 128 histogram bins and 128 quantized bins and
# passes no option that changes them, so its KL search has one candidate, the whole range: minmax's scales
# (tests/spaces/test_quantization.py checks that this still holds).
NOT_OFFERED = {"entropy": "ONNX Runtime's quantize_static runs it at 128 bins, where it gives minmax's ranges"}


@dataclass(frozen=True)
class Precision:
    """The storage/compute precision of one Conv/Gemm layer, sampled from ``choices``.

    It covers the layer's node and the ops that belong to it (see :func:`quantize`): with
    ``fp32``/``fp16`` all of them compute in fp32; with an integer precision they are quantized.
    """

    name: str
    choices: tuple[str, ...] = ("fp32", "int8")

    def __post_init__(self) -> None:
        if not self.choices:
            raise PlanError(f"{self.name}: precision choices are empty; allowed: {', '.join(PRECISIONS)}")
        object.__setattr__(self, "choices", tuple(check_precision(self.name, p) for p in self.choices))

    def suggest(self, trial: optuna.trial.BaseTrial) -> str:
        return str(trial.suggest_categorical(self.name, list(self.choices)))

    def allows(self, precision: str) -> bool:
        return precision in self.choices


class _Batches(CalibrationDataReader):
    def __init__(self, input_name: str, samples: np.ndarray, batch_size: int) -> None:
        self._batches = iter([{input_name: samples[i:i + batch_size]} for i in range(0, len(samples), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


@dataclass(frozen=True)
class QuantSettings:
    activation_type: str = "uint8"
    per_channel: bool = True
    # MobileNetV2, uniform int8: minmax lost 0.50 points, percentile 99.99 0.22; pruned and fine-tuned 0.34
    # against 0.04 (experiments/mobilenet_v2/calibration.md). ORT's own default percentile, 99.999, 0.34 / 0.28.
    calibration: str = "percentile"
    calib_batch_size: int = 64
    percentile: float = 99.99  # the share of each activation's calibration values its int8 range covers
    # 7-bit int8 weights. x86 CPUs without a VNNI int8 dot product (AVX2-only, e.g. AMD Zen 3) add weight x
    # activation pairs in saturating 16-bit registers: uniform int8 MobileNetV2 lost 5.12 points there with
    # 8-bit weights, 0.86 with 7-bit, at the same speed (experiments/mobilenet_v2/calibration.md).
    # ``auto`` decides by the CPU this runs on (:func:`int8_saturates`).
    reduce_range: bool | str = "auto"

    def __post_init__(self) -> None:
        if self.reduce_range == "auto":
            object.__setattr__(self, "reduce_range", _int8_saturates_here())
        elif not isinstance(self.reduce_range, bool):
            raise PlanError(f"space.quant.reduce_range={self.reduce_range!r} is unknown; allowed: auto, true, false")
        if self.calibration in NOT_OFFERED:
            raise PlanError(f"space.quant.calibration={self.calibration!r} is not offered: "
                            f"{NOT_OFFERED[self.calibration]}; allowed: {', '.join(CALIBRATION)}")
        for key, value, allowed in (("activation_type", self.activation_type, ACTIVATION_TYPES),
                                    ("calibration", self.calibration, CALIBRATION)):
            if value not in allowed:
                raise PlanError(f"space.quant.{key}={value!r} is unknown; allowed: {', '.join(allowed)}")
        if not isinstance(self.calib_batch_size, int) or self.calib_batch_size < 1:
            raise PlanError(f"space.quant.calib_batch_size={self.calib_batch_size!r} must be an integer >= 1")
        if isinstance(self.percentile, bool) or not isinstance(self.percentile, (int, float)) \
                or not 50.0 < self.percentile <= 100.0:
            raise PlanError(f"space.quant.percentile={self.percentile!r} must be a number in (50, 100]")

    def calibration_options(self) -> dict[str, float]:
        return {"CalibPercentile": float(self.percentile)} if self.calibration == "percentile" else {}


INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # /proc/cpuinfo flags of non-saturating int8 dot products


def int8_saturates(cpuinfo: str | None = None, machine: str | None = None) -> bool:
    """Whether ONNX Runtime's U8S8 kernels on this CPU sum int8 products in saturating 16-bit lanes.

    That is x86 without VNNI or AMX (its AVX2 path uses VPMADDUBSW); Arm's dot-product kernels do not
    saturate. Where x86 flags cannot be read, assume the older path: 7-bit weights are safe on every CPU.
    """
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return True
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}
    return not flags & set(INT8_DOT_FLAGS)


@functools.cache
def _int8_saturates_here() -> bool:
    return int8_saturates()  # the CPU does not change within a process: one read of /proc/cpuinfo


def quantize(fp32_path: Path, out_path: Path, precisions: Mapping[str, str], calib: np.ndarray,
             *, settings: QuantSettings = QuantSettings()) -> Path:
    """Write ``out_path``: the fp32 model with each layer at its planned precision.

    A layer's precision covers its Conv/Gemm/MatMul node and the ops that belong to it: those
    between it and the next layers, counted from the nearest layer upstream (its activation,
    the residual Add its output feeds, pooling; see :func:`onnx_node_layers`). For an fp32 layer
    none of these is quantized and none reads a quantized copy of a float tensor, so they run
    in fp32; the one quantized tensor they can read is the output of an integer layer, which
    is integer by that layer's precision. int16/int4 layers get a weight-type override; fp16
    layers compute like fp32 layers but store their weights in half precision. Layers missing
    from ``precisions`` stay fp32 in the same way.
    """
    model = onnx.load(str(fp32_path))
    nodes = onnx_layer_node_lists(model, list(precisions))
    integer = {n: p for n, p in precisions.items() if p in WEIGHT_TYPES}
    half = [node for n, p in precisions.items() if p == "fp16" for node in nodes[n]]
    if not integer:
        _store_half(model, [node.input[1] for node in half])
        onnx.save(model, str(out_path))
        return out_path
    keep_fp32 = _fp32_nodes(model, {node.name for n in integer for node in nodes[n]})
    # reduce_range exists for the saturating int8 kernels: it would leave int4 weights 3 bits ([-4, 3]), and
    # int4/int16 layers run as DequantizeLinear + float compute, which nothing saturates.
    overrides = {node.input[1]: [{"quant_type": WEIGHT_TYPES[p], "reduce_range": False,
                                  **({"axis": 0} if settings.per_channel else {})}]
                 for n, p in integer.items() if p != "int8" for node in nodes[n]}
    input_name = model.graph.input[0].name
    source = fp32_path
    if overrides and _opset(model) < SUB_BYTE_OPSET:
        # int4/int16 DequantizeLinear exist from opset 21; older graphs run in ORT but are not
        # valid ONNX, so shape inference (and any other consumer) would fail on them.
        source = out_path.with_name(f"{out_path.stem}_opset{SUB_BYTE_OPSET}.onnx")
        onnx.save(version_converter.convert_version(model, SUB_BYTE_OPSET), str(source))
    with _quiet_root_logger():
        quantize_static(
            str(source), str(out_path),
            _Batches(input_name, calib.astype(np.float32), settings.calib_batch_size),
            quant_format=QuantFormat.QDQ,
            activation_type=ACTIVATION_TYPES[settings.activation_type],
            weight_type=QuantType.QInt8,
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            calibrate_method=CALIBRATION[settings.calibration],
            nodes_to_exclude=sorted(keep_fp32),
            extra_options={**settings.calibration_options(),
                           **({"TensorQuantOverrides": overrides} if overrides else {})},
        )
    if source is not fp32_path:  # the opset-converted copy is an intermediate, not an artifact
        Path(source).unlink(missing_ok=True)
    quantized = onnx.load(str(out_path))
    _read_float_tensors(quantized, keep_fp32)
    _keep_float_weights(quantized, keep_fp32)
    _store_half(quantized, [node.input[1] for node in half])
    onnx.save(quantized, str(out_path))
    return out_path


def _fp32_nodes(model: onnx.ModelProto, integer_layers: set[str]) -> set[str]:
    """Layer nodes not planned as integer (ops outside the plan included) and the ops they own."""
    layers = {node.name for node in model.graph.node
              if node.op_type in ONNX_LAYER_OPS and node.name not in integer_layers}
    # An op shared with an integer layer (a residual Add fed by both) goes with the fp32 one.
    return layers | {name for name, owners in onnx_node_layers(model).items() if owners & layers}


def _read_float_tensors(model: onnx.ModelProto, keep_fp32: set[str]) -> None:
    """Point fp32 nodes back at the float tensors ORT quantized for an integer consumer.

    ORT places one QuantizeLinear/DequantizeLinear pair on a tensor and hands the dequantized
    copy to every consumer, excluded ones too. Only tensors that an fp32 node or the graph input
    produced are restored: an integer node's output stays quantized, so ORT still fuses it.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    float_sources = {graph_input.name for graph_input in graph.input}
    float_sources |= {out for node in graph.node if node.name in keep_fp32 for out in node.output}
    for node in graph.node:
        if node.name not in keep_fp32:
            continue
        for i, tensor in enumerate(node.input):
            original = _quantized_from(tensor, producer)
            if original in float_sources:
                node.input[i] = original
    _drop_unused_qdq(model)


def _keep_float_weights(model: onnx.ModelProto, keep_fp32: set[str]) -> None:
    """Give each float Conv/Gemm (fp32, fp16 or unplanned layer) that reads a DequantizeLinear a copy of it, per channel.

    ONNX Runtime's WeightBiasQuantization pass (graph optimisation level basic and up) quantizes, per tensor, the
    float weights of a Conv or Gemm whose input comes from a DequantizeLinear with one scale and whose output
    feeds a QuantizeLinear: an fp32 layer between two int8 ones ran with int8 weights, and MobileNetV2 with only
    block 1's depthwise conv fp32 scored 51.9 % instead of 91 %. The pass leaves a node alone whose input has a
    scale per channel; the copy repeats the one scale (and zero point) on every channel of axis 1, so it gives
    the same numbers. Feeding the bias through a DequantizeLinear also stops the pass, but a bias that is not a
    constant stops ORT's float Conv fusions too: MobileNetV2 with half its layers fp32 ran 1.9x slower.
    """
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    copies: dict[str, onnx.NodeProto] = {}  # consumer node name -> its own DequantizeLinear
    for node in [n for n in graph.node if n.name in keep_fp32 and n.op_type in ("Conv", "Gemm")]:
        dequantize = producer.get(node.input[0])
        if (dequantize is None or dequantize.op_type != "DequantizeLinear" or node.input[1] not in inits
                or not all(t in inits for t in dequantize.input[1:] if t)):
            continue  # computed scales or weights: nothing to copy, and nothing the pass would take
        scale = numpy_helper.to_array(inits[dequantize.input[1]])
        if scale.size != 1:
            continue  # already per channel: the pass skips it
        weight = inits[node.input[1]].dims
        if node.op_type == "Conv":
            channels = weight[1] * (_attr(node, "group") or 1)
        else:
            channels = weight[1] if _attr(node, "transB") else weight[0]
        name = f"{node.name}_input_per_channel"
        inputs = [dequantize.input[0], f"{name}_scale"]
        graph.initializer.append(numpy_helper.from_array(np.full(channels, scale.reshape(()), scale.dtype),
                                                         f"{name}_scale"))
        if dequantize.input[2:] and dequantize.input[2]:
            zero = numpy_helper.to_array(inits[dequantize.input[2]])
            graph.initializer.append(numpy_helper.from_array(np.full(channels, zero.reshape(()), zero.dtype),
                                                             f"{name}_zero_point"))
            inputs.append(f"{name}_zero_point")
        copies[node.name] = onnx.helper.make_node("DequantizeLinear", inputs, [name], name=name, axis=1)
        node.input[0] = name
    if copies:  # each copy goes right before its consumer: ONNX wants the nodes in topological order
        ordered = [n for node in graph.node for n in ([copies[node.name]] if node.name in copies else []) + [node]]
        del graph.node[:]
        graph.node.extend(ordered)
        _drop_unused_qdq(model)


def _attr(node: onnx.NodeProto, name: str) -> int:
    return next((a.i for a in node.attribute if a.name == name), 0)


def _quantized_from(tensor: str, producer: Mapping[str, onnx.NodeProto]) -> str | None:
    """The float tensor behind a DequantizeLinear(QuantizeLinear(x)) pair, else None."""
    dequantize = producer.get(tensor)
    if dequantize is None or dequantize.op_type != "DequantizeLinear":
        return None
    quantize_node = producer.get(dequantize.input[0])
    if quantize_node is None or quantize_node.op_type != "QuantizeLinear":
        return None
    return quantize_node.input[0]


def _drop_unused_qdq(model: onnx.ModelProto) -> None:
    """Remove Q/DQ nodes nothing reads any more, and the scales and zero points only they used."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    dropped_inputs: set[str] = set()
    while True:
        read = {t for node in graph.node for t in node.input} | outputs
        dead = [node for node in graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(out in read for out in node.output)]
        if not dead:
            break
        for node in dead:
            dropped_inputs.update(node.input)
            graph.node.remove(node)
    unused = dropped_inputs - read
    for init in [init for init in graph.initializer if init.name in unused]:
        graph.initializer.remove(init)


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ORT's quantizer warns on the root logger about every model, and its histogram calibrators print
    their progress to stdout on every call; only errors matter here."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _store_half(model: onnx.ModelProto, weights: list[str]) -> None:
    """Store the named fp32 initializers as fp16, cast back to fp32 where they are read.

    ORT folds the Cast at load time, so compute stays fp32 and only the file shrinks.
    """
    inits = {init.name: init for init in model.graph.initializer}
    for name in weights:
        if name not in inits:
            continue  # shared or already-transformed weight: leave it in fp32
        init = inits[name]
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), f"{name}_fp16")
        model.graph.initializer.remove(init)
        model.graph.initializer.append(half)
        model.graph.node.insert(0, onnx.helper.make_node("Cast", [half.name], [name], name=f"{name}_Cast",
                                                         to=onnx.TensorProto.FLOAT))
