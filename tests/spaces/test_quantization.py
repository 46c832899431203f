"""quantize(): per-layer precisions on the exported tiny CNN, run by ONNX Runtime on real data."""
from __future__ import annotations

import contextlib
import io
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import optuna
import pytest
import torch
from onnx import TensorProto, numpy_helper
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

from search.trials.finetune import FinetuneSettings, finetune
from search.trials.onnx_export import export_onnx
from spaces.base import PRECISIONS, PlanError
from spaces.layers import layer_names, onnx_node_layers
from spaces.quantization import (ACTIVATION_TYPES, CALIBRATION, Precision, QuantSettings, _Batches, int8_saturates,
                                 quantize)
from tinynet import tiny_net

LAYERS = ["stem.0", "layer1.conv1", "layer1.conv2", "down.0", "layer2.conv1", "layer2.conv2", "fc"]
NODE_OF = {"stem.0": "/stem/stem.0/Conv", "layer1.conv1": "/layer1/conv1/Conv", "layer1.conv2": "/layer1/conv2/Conv",
           "down.0": "/down/down.0/Conv", "layer2.conv1": "/layer2/conv1/Conv",
           "layer2.conv2": "/layer2/conv2/Conv", "fc": "/fc/Gemm"}


@pytest.fixture(scope="module")
def fp32_path(small_splits, tmp_path_factory) -> Path:
    """tiny_net after 100 training steps, so int8 agreement is measured on a real classifier."""
    model = tiny_net()
    finetune(model, small_splits.train, FinetuneSettings(steps=100, batch_size=64, lr=3e-3, log_every=50))
    assert layer_names(model) == LAYERS
    return export_onnx(model, torch.zeros(1, 1, 28, 28), tmp_path_factory.mktemp("quant") / "fp32.onnx")


@pytest.fixture(scope="module")
def reference(fp32_path, small_splits) -> np.ndarray:
    return run(fp32_path, small_splits.test.inputs)


def run(path: Path, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs.astype(np.float32)})[0]


def quant(fp32_path: Path, tmp_path: Path, precisions: dict[str, str], calib: np.ndarray,
          **settings) -> onnx.ModelProto:
    out = quantize(fp32_path, tmp_path / "model.onnx", precisions, calib, settings=QuantSettings(**settings))
    assert out == tmp_path / "model.onnx"
    return onnx.load(str(out))


class Graph:
    """Where each layer's weight comes from in a (possibly quantized) graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.inits = {init.name: init for init in model.graph.initializer}
        self.producer = {out: node for node in model.graph.node for out in node.output}
        self.nodes = {node.name: node for node in model.graph.node}

    def layer(self, name: str) -> onnx.NodeProto:
        return self.nodes[NODE_OF[name]]

    def weight_source(self, name: str) -> tuple[str, onnx.TensorProto | None, onnx.NodeProto | None]:
        """``(op producing the weight or 'initializer', the stored initializer, the producer)``."""
        weight = self.layer(name).input[1]
        if weight in self.inits:
            return "initializer", self.inits[weight], None
        node = self.producer[weight]
        return node.op_type, self.inits.get(node.input[0]), node

    def ops(self) -> Counter:
        return Counter(node.op_type for node in self.model.graph.node)

    def source(self, node: str, index: int) -> str:
        """The op producing input ``index`` of ``node``, or 'graph input' / 'initializer'."""
        tensor = self.nodes[node].input[index]
        if tensor in self.producer:
            return self.producer[tensor].op_type
        return "initializer" if tensor in self.inits else "graph input"

    def quantized_outputs(self, node: str) -> list[str]:
        """The outputs of ``node`` that a QuantizeLinear reads."""
        return [out for out in self.nodes[node].output
                if any(n.op_type == "QuantizeLinear" and out in n.input for n in self.model.graph.node)]


def dtype(init: onnx.TensorProto) -> str:
    return TensorProto.DataType.Name(init.data_type)


# --- the Precision knob and settings ---------------------------------------------------------


def test_precision_knob_suggests_from_its_choices():
    knob = Precision("quant.fc", ("fp32", "int8", "int4"))
    assert knob.suggest(optuna.trial.FixedTrial({"quant.fc": "int4"})) == "int4"
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    assert knob.suggest(trial) in ("fp32", "int8", "int4")
    assert knob.allows("int8") and not knob.allows("fp16")
    assert Precision("quant.fc").choices == ("fp32", "int8")


def test_precision_knob_validates_choices():
    with pytest.raises(PlanError) as info:
        Precision("quant.fc", ())
    assert all(p in str(info.value) for p in PRECISIONS)
    with pytest.raises(PlanError, match="quant.fc.*int2"):
        Precision("quant.fc", ("int8", "int2"))


@pytest.mark.parametrize("field, value", [("activation_type", "uint4"), ("calibration", "histogram")])
def test_unknown_settings_are_plan_errors(field, value):
    allowed = {"activation_type": ACTIVATION_TYPES, "calibration": CALIBRATION}[field]
    with pytest.raises(PlanError) as info:
        QuantSettings(**{field: value})
    message = str(info.value)
    assert f"space.quant.{field}" in message and repr(value) in message
    assert all(name in message for name in allowed)


@pytest.mark.parametrize("size", [0, -1, 2.5])
def test_calibration_batch_size_must_be_a_positive_int(size):
    with pytest.raises(PlanError, match="calib_batch_size"):
        QuantSettings(calib_batch_size=size)


@pytest.mark.parametrize("percentile", [50.0, 100.5, "99", True])
def test_percentile_must_lie_above_the_median(percentile):
    with pytest.raises(PlanError, match=r"space.quant.percentile.*\(50, 100\]"):
        QuantSettings(calibration="percentile", percentile=percentile)


AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma\n"


@pytest.mark.parametrize("cpuinfo, machine, saturates", [
    (AVX2_ONLY, "x86_64", True),
    (AVX2_ONLY.replace("avx2", "avx2 avx512f avx512_vnni"), "x86_64", False),
    (AVX2_ONLY.replace("avx2", "avx2 avx_vnni"), "x86_64", False),
    (AVX2_ONLY.replace("avx2", "avx2 amx_int8"), "x86_64", False),
    ("", "aarch64", False),
], ids=["avx2 only", "avx512 vnni", "avx vnni", "amx", "arm"])
def test_int8_saturates_on_x86_without_a_vnni_dot_product(cpuinfo, machine, saturates):
    assert int8_saturates(cpuinfo, machine) is saturates


def test_reduce_range_auto_follows_this_cpu_and_pinned_values_stay():
    assert QuantSettings().reduce_range is int8_saturates()
    assert QuantSettings(reduce_range=True).reduce_range is True
    assert QuantSettings(reduce_range=False).reduce_range is False
    with pytest.raises(PlanError, match=r"space.quant.reduce_range='sometimes'.*auto, true, false"):
        QuantSettings(reduce_range="sometimes")


# --- quantize() ------------------------------------------------------------------------------


def test_all_int8_dequantizes_every_weight_from_int8(fp32_path, small_splits, tmp_path):
    graph = Graph(quant(fp32_path, tmp_path, {n: "int8" for n in LAYERS}, small_splits.calib))
    for name in LAYERS:
        op, stored, node = graph.weight_source(name)
        assert op == "DequantizeLinear", name
        assert dtype(stored) == "INT8", name
        zero_point = graph.inits[node.input[2]]
        assert dtype(zero_point) == "INT8"
        assert not numpy_helper.to_array(zero_point).any()  # symmetric weights
        scale = numpy_helper.to_array(graph.inits[node.input[1]])
        assert scale.shape == (numpy_helper.to_array(stored).shape[0],)  # per channel by default
    # activations are quantized too, as uint8
    quantize_nodes = [n for n in graph.model.graph.node if n.op_type == "QuantizeLinear"]
    assert quantize_nodes
    assert {dtype(graph.inits[n.input[2]]) for n in quantize_nodes} == {"UINT8"}
    # the ops between layers are quantized with them: every Relu folded into a QuantizeLinear,
    # every residual Add on dequantized inputs with a quantized output, as U8S8 kernels need
    assert "Relu" not in graph.ops()
    adds = [name for name, node in graph.nodes.items() if node.op_type == "Add"]
    assert len(adds) == 2
    for add in adds:
        assert [graph.source(add, i) for i in (0, 1)] == ["DequantizeLinear"] * 2, add
        assert graph.quantized_outputs(add), add
    # no float copy of any layer weight is left in the file
    floats = {name for name, init in graph.inits.items() if dtype(init) == "FLOAT" and init.dims and len(init.dims) > 1}
    assert not floats


def test_int8_outputs_agree_with_fp32_on_real_data(fp32_path, reference, small_splits, tmp_path):
    quant(fp32_path, tmp_path, {n: "int8" for n in LAYERS}, small_splits.calib)
    logits = run(tmp_path / "model.onnx", small_splits.test.inputs)
    labels = small_splits.test.labels
    assert logits.shape == reference.shape == (len(labels), 10)
    agreement = (logits.argmax(1) == reference.argmax(1)).mean()
    assert agreement > 0.9
    assert (reference.argmax(1) == labels).mean() > 0.5  # the reference really learned something
    assert abs((logits.argmax(1) == labels).mean() - (reference.argmax(1) == labels).mean()) < 0.05
    assert np.abs(logits - reference).max() < 0.25 * np.abs(reference).max()
    assert not np.array_equal(logits, reference)  # it is not the fp32 model


def test_fp32_layers_keep_float_weights_without_dequantize(fp32_path, small_splits, tmp_path):
    kept = {"stem.0", "layer2.conv1", "fc"}
    precisions = {n: ("fp32" if n in kept else "int8") for n in LAYERS}
    graph = Graph(quant(fp32_path, tmp_path, precisions, small_splits.calib))
    original = Graph(onnx.load(str(fp32_path)))
    for name in LAYERS:
        op, stored, _ = graph.weight_source(name)
        if name in kept:
            assert op == "initializer" and dtype(stored) == "FLOAT", name
            np.testing.assert_array_equal(numpy_helper.to_array(stored),
                                          numpy_helper.to_array(original.weight_source(name)[1]))
        else:
            assert op == "DequantizeLinear" and dtype(stored) == "INT8", name
    assert run(tmp_path / "model.onnx", small_splits.calib).shape == (len(small_splits.calib), 10)


def test_ops_belong_to_the_nearest_layer_upstream(fp32_path):
    owners = onnx_node_layers(onnx.load(str(fp32_path)))
    layer = {name: frozenset({node}) for name, node in NODE_OF.items()}
    assert owners["/stem/stem.2/Relu"] == layer["stem.0"]
    assert owners["/layer1/Relu"] == layer["layer1.conv1"]
    # the residual Add and its Relu go with the conv that feeds the Add, not the skip connection
    assert owners["/layer1/Add"] == owners["/layer1/Relu_1"] == layer["layer1.conv2"]
    assert owners["/down/down.2/Relu"] == layer["down.0"]
    assert owners["/layer2/Add"] == owners["/ReduceMean"] == layer["layer2.conv2"]


def test_fp32_layers_and_their_ops_compute_on_float_tensors(fp32_path, small_splits, tmp_path):
    kept = {"layer1.conv2", "down.0", "layer2.conv2"}
    precisions = {n: ("fp32" if n in kept else "int8") for n in LAYERS}
    graph = Graph(quant(fp32_path, tmp_path, precisions, small_splits.calib))
    fp32_ops = ["/layer1/Add", "/layer1/Relu_1", "/down/down.2/Relu", "/layer2/Add", "/layer2/Relu_1"]
    assert set(fp32_ops) <= set(graph.nodes)  # not folded into a QuantizeLinear
    for name in kept:
        assert graph.weight_source(name)[0] == "initializer", name
    float_inputs = [("/layer1/Add", 1), ("/layer1/Relu_1", 0), (NODE_OF["down.0"], 0), ("/down/down.2/Relu", 0),
                    ("/layer2/Add", 0), ("/layer2/Add", 1), ("/layer2/Relu_1", 0)]
    for node, index in float_inputs:
        assert graph.source(node, index) not in ("DequantizeLinear", "QuantizeLinear"), (node, index)
    for node in [NODE_OF[n] for n in kept] + ["/layer1/Add", "/layer1/Relu_1", "/layer2/Add", "/layer2/Relu_1"]:
        assert not graph.quantized_outputs(node), node
    # what an int8 layer outputs is uint8 by its own precision: an fp32 op reads it dequantized
    for node, index in [("/layer1/Add", 0), (NODE_OF["layer1.conv2"], 0), (NODE_OF["layer2.conv2"], 0)]:
        assert graph.source(node, index) == "DequantizeLinear", (node, index)
    # the int8 neighbours are quantized as in an all-int8 plan: Relus folded, inputs dequantized
    assert not {"/stem/stem.2/Relu", "/layer1/Relu", "/layer2/Relu"} & set(graph.nodes)
    for name in set(LAYERS) - kept:
        assert graph.source(NODE_OF[name], 0) == "DequantizeLinear", name
    # down.0's Relu output feeds int8 layer2.conv1 quantized and the fp32 Add as it is
    assert graph.quantized_outputs("/down/down.2/Relu")
    onnx.checker.check_model(graph.model, full_check=True)
    inputs = small_splits.calib
    logits, reference = run(tmp_path / "model.onnx", inputs), run(fp32_path, inputs)
    assert (logits.argmax(1) == reference.argmax(1)).mean() > 0.9


def test_layers_missing_from_the_plan_stay_fp32(fp32_path, small_splits, tmp_path):
    graph = Graph(quant(fp32_path, tmp_path, {"layer1.conv1": "int8"}, small_splits.calib))
    assert graph.weight_source("layer1.conv1")[0] == "DequantizeLinear"
    for name in set(LAYERS) - {"layer1.conv1"}:
        assert graph.weight_source(name)[0] == "initializer", name


@pytest.mark.parametrize("precision, element", [("int4", TensorProto.INT4), ("int16", TensorProto.INT16)])
def test_sub_and_wide_integer_weights_have_their_element_type(fp32_path, reference, small_splits, tmp_path,
                                                                precision, element):
    precisions = {n: "int8" for n in LAYERS}
    precisions.update({"layer1.conv1": precision, "fc": precision, "down.0": "fp32"})
    graph = Graph(quant(fp32_path, tmp_path, precisions, small_splits.calib))
    for name in ("layer1.conv1", "fc"):
        op, stored, node = graph.weight_source(name)
        assert op == "DequantizeLinear", name
        assert stored.data_type == element, name
        assert graph.inits[node.input[2]].data_type == element
    assert dtype(graph.weight_source("layer2.conv1")[1]) == "INT8"
    assert graph.weight_source("down.0")[0] == "initializer"
    onnx.checker.check_model(graph.model, full_check=True)  # valid ONNX, not only runnable by ORT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no intermediate copy left behind
    logits = run(tmp_path / "model.onnx", small_splits.test.inputs)
    assert (logits.argmax(1) == reference.argmax(1)).mean() > 0.8


def test_fp16_layers_store_half_weights_and_stay_close(fp32_path, reference, small_splits, tmp_path):
    halves = {"stem.0", "layer2.conv2", "fc"}
    precisions = {n: ("fp16" if n in halves else "fp32") for n in LAYERS}
    graph = Graph(quant(fp32_path, tmp_path, precisions, small_splits.calib))
    original = Graph(onnx.load(str(fp32_path)))
    for name in LAYERS:
        op, stored, _ = graph.weight_source(name)
        if name in halves:
            assert op == "Cast", name
            assert dtype(stored) == "FLOAT16", name
            np.testing.assert_allclose(numpy_helper.to_array(stored).astype(np.float32),
                                       numpy_helper.to_array(original.weight_source(name)[1]), rtol=1e-3, atol=1e-4)
        else:
            assert op == "initializer" and dtype(stored) == "FLOAT", name
    assert graph.ops()["Cast"] == len(halves)
    assert "QuantizeLinear" not in graph.ops()
    onnx.checker.check_model(graph.model, full_check=True)
    logits = run(tmp_path / "model.onnx", small_splits.test.inputs)
    np.testing.assert_allclose(logits, reference, atol=2e-2, rtol=1e-2)
    assert (tmp_path / "model.onnx").stat().st_size < fp32_path.stat().st_size


def test_fp16_mixed_with_int8(fp32_path, reference, small_splits, tmp_path):
    precisions = {n: "int8" for n in LAYERS}
    precisions.update({"layer2.conv2": "fp16", "stem.0": "fp32"})
    graph = Graph(quant(fp32_path, tmp_path, precisions, small_splits.calib))
    op, stored, _ = graph.weight_source("layer2.conv2")
    assert op == "Cast" and dtype(stored) == "FLOAT16"
    assert graph.weight_source("stem.0")[0] == "initializer"
    assert graph.weight_source("layer2.conv1")[0] == "DequantizeLinear"
    logits = run(tmp_path / "model.onnx", small_splits.test.inputs)
    assert (logits.argmax(1) == reference.argmax(1)).mean() > 0.9


def test_all_fp32_plan_leaves_the_graph_as_it_was(fp32_path, reference, small_splits, tmp_path):
    model = quant(fp32_path, tmp_path, {n: "fp32" for n in LAYERS}, small_splits.calib)
    original = onnx.load(str(fp32_path))
    assert Graph(model).ops() == Graph(original).ops()
    assert [n.name for n in model.graph.node] == [n.name for n in original.graph.node]
    assert sorted(i.name for i in model.graph.initializer) == sorted(i.name for i in original.graph.initializer)
    np.testing.assert_array_equal(run(tmp_path / "model.onnx", small_splits.test.inputs), reference)


def test_per_tensor_and_int8_activation_settings(fp32_path, small_splits, tmp_path):
    graph = Graph(quant(fp32_path, tmp_path, {n: "int8" for n in LAYERS}, small_splits.calib,
                        per_channel=False, activation_type="int8", calib_batch_size=16))
    _, _, node = graph.weight_source("layer1.conv1")
    assert numpy_helper.to_array(graph.inits[node.input[1]]).shape == ()  # one scale for the tensor
    zero_points = {dtype(graph.inits[n.input[2]]) for n in graph.model.graph.node if n.op_type == "QuantizeLinear"}
    assert zero_points == {"INT8"}


def activation_scales(model: onnx.ModelProto) -> dict[str, float]:
    inits = {init.name: init for init in model.graph.initializer}
    return {node.input[0]: float(numpy_helper.to_array(inits[node.input[1]]))
            for node in model.graph.node if node.op_type == "QuantizeLinear" and node.input[0] not in inits}


def test_a_lower_percentile_clips_activation_ranges(fp32_path, small_splits, tmp_path):
    int8 = {n: "int8" for n in LAYERS}
    full = activation_scales(quant(fp32_path, tmp_path, int8, small_splits.calib, calibration="percentile",
                                   percentile=100.0))
    clipped = activation_scales(quant(fp32_path, tmp_path, int8, small_splits.calib, calibration="percentile",
                                      percentile=99.0))
    assert full.keys() == clipped.keys() and full
    assert all(clipped[t] <= full[t] * (1 + 1e-6) for t in full)
    assert sum(clipped[t] < 0.9 * full[t] for t in full) >= len(full) // 2  # most ranges have a tail to cut


def test_unknown_layer_in_precisions_is_a_plan_error(fp32_path, small_splits, tmp_path):
    with pytest.raises(PlanError, match="layer3.conv1"):
        quantize(fp32_path, tmp_path / "model.onnx", {"layer3.conv1": "int8"}, small_splits.calib)
    assert not (tmp_path / "model.onnx").exists()


def test_histogram_calibration_prints_nothing(fp32_path, small_splits, tmp_path, capfd):
    quant(fp32_path, tmp_path, {n: "int8" for n in LAYERS}, small_splits.calib, calibration="percentile")
    assert capfd.readouterr().out == ""


def test_entropy_calibration_is_refused_because_ort_gives_it_minmax_ranges(fp32_path, small_splits, tmp_path):
    with pytest.raises(PlanError, match="calibration='entropy' is not offered.*allowed: minmax, percentile"):
        QuantSettings(calibration="entropy")
    # the reason, checked against the installed ONNX Runtime: its entropy calibrator, as quantize_static
    # builds it, sets every activation scale exactly where minmax does
    scales = {}
    for method in (CalibrationMethod.MinMax, CalibrationMethod.Entropy):
        out = tmp_path / f"{method.name}.onnx"
        with contextlib.redirect_stdout(io.StringIO()):
            reader = _Batches(onnx.load(str(fp32_path)).graph.input[0].name, small_splits.calib.astype(np.float32), 16)
            quantize_static(str(fp32_path), str(out), reader,
                            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, per_channel=True, calibrate_method=method)
        scales[method] = {i.name: float(numpy_helper.to_array(i)) for i in onnx.load(str(out)).graph.initializer
                          if i.name.endswith("_scale") and numpy_helper.to_array(i).size == 1}
    assert len(scales[CalibrationMethod.MinMax]) > 5
    assert scales[CalibrationMethod.Entropy] == scales[CalibrationMethod.MinMax]


def test_reduce_range_stores_int8_weights_in_7_bits(fp32_path, reference, small_splits, tmp_path):
    int8 = {n: "int8" for n in LAYERS}
    peaks = {}
    for reduce in (False, True):
        graph = Graph(quant(fp32_path, tmp_path, int8, small_splits.calib, reduce_range=reduce))
        peaks[reduce] = max(int(np.abs(numpy_helper.to_array(graph.weight_source(n)[1])).max()) for n in LAYERS)
        logits = run(tmp_path / "model.onnx", small_splits.test.inputs)
        assert (logits.argmax(1) == reference.argmax(1)).mean() > 0.9
    assert peaks == {False: 127, True: 64}  # symmetric: ORT's 7-bit range is [-64, 64]


@pytest.mark.parametrize(("precision", "peak"), [("int4", 8), ("int16", 32767)])
def test_reduce_range_leaves_int4_and_int16_weights_their_full_range(fp32_path, small_splits, tmp_path, precision,
                                                                      peak):
    # a seven-bit int8 neighbour in the same file: the flag is on for the quantizer, off for these layers
    plan = {n: (precision if i % 2 else "int8") for i, n in enumerate(LAYERS)}
    graph = Graph(quant(fp32_path, tmp_path, plan, small_splits.calib, reduce_range=True))
    peaks = {p: max(int(np.abs(numpy_helper.to_array(graph.weight_source(n)[1]).astype(np.int64)).max())
                    for n in LAYERS if plan[n] == p) for p in (precision, "int8")}
    assert peaks == {precision: peak, "int8": 64}  # symmetric int4 spans [-8, 7]; reduced it would be [-4, 3]


def optimized_source(path: Path, node_name: str, tmp_path: Path, index: int = 1) -> str:
    """What feeds ``node_name``'s input ``index`` (1: weight, 2: bias) once ONNX Runtime has optimised the graph
    as a deployment would load it."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    graph = Graph(onnx.load(str(tmp_path / "optimized.onnx")))
    node = graph.nodes[node_name]
    producer = graph.producer.get(node.input[index])
    return producer.op_type if producer is not None else dtype(graph.inits[node.input[index]])


@pytest.mark.parametrize("layer", ["layer1.conv1", "fc"])
def test_an_fp32_layer_between_int8_layers_keeps_float_weights_in_onnx_runtime(fp32_path, reference, small_splits,
                                                                                tmp_path, layer):
    # ONNX Runtime's WeightBiasQuantization would quantize such a layer's float weights per tensor at load time
    plan = {**{n: "int8" for n in LAYERS}, layer: "fp32"}
    quant(fp32_path, tmp_path, plan, small_splits.calib)
    assert optimized_source(tmp_path / "model.onnx", NODE_OF[layer], tmp_path) == "FLOAT"
    assert optimized_source(tmp_path / "model.onnx", NODE_OF["layer1.conv2"], tmp_path) == "DequantizeLinear"
    # a constant bias: a bias computed at run time stops ORT's float Conv fusions (half-fp32 MobileNetV2 1.9x slower)
    assert optimized_source(tmp_path / "model.onnx", NODE_OF[layer], tmp_path, index=2) == "FLOAT"
    logits = run(tmp_path / "model.onnx", small_splits.test.inputs)
    assert (logits.argmax(1) == reference.argmax(1)).mean() > 0.9
