"""The precision knob, and ONNX Runtime static QDQ quantization with per-layer precisions."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping

import numpy as np
import onnx
from onnx import numpy_helper, version_converter
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)

from spaces.base import PRECISIONS, PlanError, check_precision
from spaces.layers import ONNX_LAYER_OPS, onnx_layer_nodes

if TYPE_CHECKING:
    import optuna

# Integer weight types ORT accepts in QDQ form; int8 is the only one with integer kernels on CPU.
WEIGHT_TYPES = {"int8": QuantType.QInt8, "int16": QuantType.QInt16, "int4": QuantType.QInt4}
# uint8 activations: ORT's CPU kernels for U8S8 are the fast ones (S8S8 measured slower than fp32).
ACTIVATION_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
SUB_BYTE_OPSET = 21
CALIBRATION = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}


@dataclass(frozen=True)
class Precision:
    """The storage/compute precision of one Conv/Gemm layer, sampled from ``choices``."""

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
    calibration: str = "minmax"
    calib_batch_size: int = 64

    def __post_init__(self) -> None:
        for key, value, allowed in (("activation_type", self.activation_type, ACTIVATION_TYPES),
                                    ("calibration", self.calibration, CALIBRATION)):
            if value not in allowed:
                raise PlanError(f"space.quant.{key}={value!r} is unknown; allowed: {', '.join(allowed)}")
        if not isinstance(self.calib_batch_size, int) or self.calib_batch_size < 1:
            raise PlanError(f"space.quant.calib_batch_size={self.calib_batch_size!r} must be an integer >= 1")


def quantize(fp32_path: Path, out_path: Path, precisions: Mapping[str, str], calib: np.ndarray,
             *, settings: QuantSettings = QuantSettings()) -> Path:
    """Write ``out_path``: the fp32 model with each layer at its planned precision.

    fp32 layers are excluded from quantization; int16/int4 layers get a weight-type
    override; fp16 layers keep fp32 compute but store their weights in half precision.
    Layers missing from ``precisions`` stay fp32.
    """
    model = onnx.load(str(fp32_path))
    nodes = onnx_layer_nodes(model, list(precisions))
    integer = {n: p for n, p in precisions.items() if p in WEIGHT_TYPES}
    half = [nodes[n] for n, p in precisions.items() if p == "fp16"]
    if not integer:
        _store_half(model, [node.input[1] for node in half])
        onnx.save(model, str(out_path))
        return out_path
    quantized_nodes = {nodes[n].name for n in integer}
    # Everything not planned as an integer layer stays fp32, including ops outside the plan.
    keep_fp32 = [node.name for node in model.graph.node
                 if node.op_type in ONNX_LAYER_OPS and node.name not in quantized_nodes]
    overrides = {nodes[n].input[1]: [{"quant_type": WEIGHT_TYPES[p], **({"axis": 0} if settings.per_channel
                                                                         else {})}]
                 for n, p in integer.items() if p != "int8"}
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
            calibrate_method=CALIBRATION[settings.calibration],
            nodes_to_exclude=keep_fp32,
            extra_options={"TensorQuantOverrides": overrides} if overrides else {},
        )
    if source is not fp32_path:  # the opset-converted copy is an intermediate, not an artifact
        Path(source).unlink(missing_ok=True)
    if half:
        quantized = onnx.load(str(out_path))
        _store_half(quantized, [node.input[1] for node in half])
        onnx.save(quantized, str(out_path))
    return out_path


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ORT's quantizer warns on the root logger about every model; only errors matter here."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
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
