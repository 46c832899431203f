"""Per-layer figures read off the fp32 baseline ONNX file: int8 error, latency share, size share."""
from __future__ import annotations

import json
import math
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader, qdq_loss_debug

from evaluators.base import EvalData
from spaces.layers import onnx_layer_nodes, onnx_node_layers
from spaces.quantization import QuantSettings, quantize

WARMUP = 5
BATCH = 16
OTHER = ""  # time of nodes that belong to no layer (layout reorders, a pooling ahead of every layer)
CEILING_DB = 120.0  # an SQNR reported for "no measurable error"


class _Samples(CalibrationDataReader):
    def __init__(self, input_name: str, samples: np.ndarray) -> None:
        self._feeds = iter([{input_name: samples[i:i + BATCH]} for i in range(0, len(samples), BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _options(*, profile_prefix: str | None = None) -> ort.SessionOptions:
    """The onnxruntime target's session settings (search/deploy/targets/onnxruntime.py): 1 thread, sequential, full
    optimisation."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


def int8_errors(fp32_path: Path, layers: Sequence[str], calib: np.ndarray, *, samples: np.ndarray,
                settings: QuantSettings) -> dict[str, tuple[float, float]]:
    """``{layer: (SQNR of its output in the all-int8 model, SQNR of the error int8 adds at it)}`` in dB.

    The all-int8 model is the one a trial would ship (``quantize``, calibrated on ``calib``);
    activations of both models are compared on ``samples`` with ORT's QDQ debugging tools. The
    output figure includes every earlier layer's error; the added one is the layer's own: its
    int8 weights plus its input rounded to the model's activation scale, given float inputs.
    """
    model = onnx.load(str(fp32_path))
    input_name = model.graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp:
        qdq = quantize(Path(fp32_path), Path(tmp) / "int8.onnx", {n: "int8" for n in layers}, calib,
                       settings=settings)
        acts = {}
        for kind, path in (("float", Path(fp32_path)), ("qdq", qdq)):
            augmented = str(Path(tmp) / f"{kind}_augmented.onnx")
            qdq_loss_debug.modify_model_output_intermediate_tensors(str(path), augmented)
            acts[kind] = qdq_loss_debug.collect_activations(augmented, _Samples(input_name, samples),
                                                            session_options=_options())
        weights = qdq_loss_debug.compute_weight_error(qdq_loss_debug.create_weight_matching(str(fp32_path), str(qdq)))
        rounding = _rounding(onnx.load(str(qdq)))
    matching = qdq_loss_debug.create_activation_matching(acts["qdq"], acts["float"])
    nsr = {tensor: _noise_ratio(m["float"], m["post_qdq"]) for tensor, m in matching.items() if m.get("float")}
    out, owners = {}, onnx_node_layers(model)
    producers = {t: n for n in model.graph.node for t in n.output}
    for layer, node in onnx_layer_nodes(model, layers).items():
        produced = _output_tensor(model, node, owners, nsr)
        own = 10 ** (-weights.get(node.input[1], CEILING_DB) / 10)
        own += _input_rounding(node.input[0], acts["float"], rounding, producers)
        out[layer] = (_db(nsr[produced]) if produced else math.nan, _db(own))
    return out


def int8_gains(fp32_path: Path, layers: Sequence[str], candidates: Sequence[str], calib: np.ndarray,
               val: EvalData, *, settings: QuantSettings) -> dict[str, float]:
    """``{candidate: accuracy points the all-int8 model wins back with that layer alone fp32}`` on ``val``.

    A low SQNR says a layer's int8 error is large, not that the network minds: the measured
    accuracy decides whether keeping it fp32 (four times its int8 bytes) is worth it.
    """
    from evaluators.accuracy import Accuracy

    accuracy = Accuracy(threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        def scored(fp32: str | None) -> float:
            plan = {n: "fp32" if n == fp32 else "int8" for n in layers}
            path = quantize(Path(fp32_path), Path(tmp) / f"{fp32 or 'all'}.onnx", plan, calib, settings=settings)
            return accuracy.measure(path, val)["accuracy"]

        all_int8 = scored(None) if candidates else math.nan
        return {name: round(scored(name) - all_int8, 4) for name in candidates}


def _noise_ratio(reference: Sequence[np.ndarray], other: Sequence[np.ndarray]) -> float:
    """Noise power over signal power (the inverse of qdq_loss_debug's SQNR, in linear units)."""
    return 10 ** (-qdq_loss_debug.compute_signal_to_quantization_noice_ratio(reference, other) / 10)


def _db(ratio: float) -> float:
    return CEILING_DB if ratio <= 10 ** (-CEILING_DB / 10) else round(-10 * math.log10(ratio), 3)


def _output_tensor(model: onnx.ModelProto, node: onnx.NodeProto, owners: Mapping[str, frozenset[str]],
                   nsr: Mapping[str, float]) -> str | None:
    """The compared tensor nearest the layer: its own output, else that of the first op it owns (a fused Relu)."""
    owned = [n for n in model.graph.node if n.name == node.name or node.name in owners.get(n.name, ())]
    written = [t for n in owned for t in n.output if t in nsr]
    return written[0] if written else None


def _rounding(qdq: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{float tensor: (scale, zero point)}`` of each activation QuantizeLinear in the QDQ model."""
    stored = {init.name: numpy_helper.to_array(init) for init in qdq.graph.initializer}
    return {n.input[0]: (stored[n.input[1]], stored[n.input[2]]) for n in qdq.graph.node
            if n.op_type == "QuantizeLinear" and n.input[1] in stored and len(n.input) > 2 and n.input[2] in stored}


def _input_rounding(tensor: str, float_acts: Mapping[str, Sequence[np.ndarray]],
                    rounding: Mapping[str, tuple[np.ndarray, np.ndarray]],
                    producers: Mapping[str, onnx.NodeProto]) -> float:
    """Noise ratio of rounding the float input to its int8 grid; through a Flatten/Reshape to the tensor ORT rounds."""
    while tensor not in rounding and tensor in producers and producers[tensor].input:
        tensor = producers[tensor].input[0]
    if tensor not in rounding or tensor not in float_acts:
        return 0.0
    scale, zero = rounding[tensor]
    info = np.iinfo(zero.dtype)
    x = np.concatenate([np.ravel(a) for a in float_acts[tensor]]).astype(np.float64)
    rounded = (np.clip(np.rint(x / scale) + zero, info.min, info.max) - zero) * scale
    return _noise_ratio([x], [rounded])


def latency_shares(fp32_path: Path, layers: Sequence[str], example: np.ndarray, *, runs: int) -> dict[str, float]:
    """``{layer: share of the baseline's node time}`` from ONNX Runtime's profiler; ``""``: the rest.

    ORT fuses and renames nodes (a Conv+Relu becomes ``<relu output>_nchwc``), so a profiled
    node is traced back to the graph node that wrote the tensor its name carries.
    """
    model = onnx.load(str(fp32_path))
    owner = _owners(model, layers)
    with tempfile.TemporaryDirectory() as tmp:
        session = ort.InferenceSession(str(fp32_path), sess_options=_options(profile_prefix=str(Path(tmp) / "ort")),
                                       providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: np.ascontiguousarray(example, dtype=np.float32)}
        for _ in range(WARMUP + runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    timed_from = starts[WARMUP] if len(starts) > WARMUP else 0
    spent: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["ts"] >= timed_from:
            shares = owner(event["name"].removesuffix("_kernel_time"))
            for layer in shares:
                spent[layer] += event["dur"] / len(shares)
    total = sum(spent.values()) or 1.0
    return {name: round(spent.get(name, 0.0) / total, 6) for name in (*layers, OTHER)}


def _owners(model: onnx.ModelProto, layers: Sequence[str]):
    """A function from a profiled node name to the layers its time is split between."""
    layer_of_node = {node.name: layer for layer, node in onnx_layer_nodes(model, layers).items()}
    by_node = {name: [layer] for name, layer in layer_of_node.items()}
    for name, owners in onnx_node_layers(model).items():
        named = sorted(layer_of_node[o] for o in owners if o in layer_of_node)
        if named:
            by_node[name] = named
    producer = {out: node.name for node in model.graph.node for out in node.output}

    def owner(name: str) -> list[str]:
        for candidate in (name, producer.get(name), producer.get(name.removesuffix("_nchwc"))):
            if candidate in by_node:
                return by_node[candidate]
        return [OTHER]

    return owner


def size_shares(fp32_path: Path, layers: Sequence[str]) -> dict[str, float]:
    """``{layer: its weight and bias bytes over all stored bytes}`` of the fp32 file."""
    model = onnx.load(str(fp32_path))
    sizes = {init.name: math.prod(init.dims) * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
             for init in model.graph.initializer}
    total = sum(sizes.values()) or 1
    nodes = onnx_layer_nodes(model, layers)
    return {layer: round(sum(sizes.get(t, 0) for t in nodes[layer].input[1:]) / total, 6) for layer in layers}

