from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from evaluators import Complexity, EvalData

# by hand, per layer, see the table in conftest.py
PARAMS = 80 + 584 + 80 + 144 + 170
MACS = 18432 + 147456 + 4608 + 8192 + 160


def torch_params(model: nn.Module) -> int:
    """Conv/linear weights and biases; a conv followed by BN gains a bias when BN is folded."""
    total = 0
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            total += module.weight.numel()
            total += module.bias.numel() if module.bias is not None else module.weight.shape[0]
    return total


def torch_macs(model: nn.Module) -> int:
    """Output elements x weights per output, recorded by forward hooks on one 1x1x16x16 sample."""
    counts: list[int] = []
    hooks = [m.register_forward_hook(lambda m, i, o: counts.append(o.numel() * m.weight[0].numel()))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, 1, 16, 16))
    for hook in hooks:
        hook.remove()
    return sum(counts)


def test_tiny_cnn_counts(torch_model: nn.Module, models: dict[str, Path], data: EvalData) -> None:
    assert torch_params(torch_model) == PARAMS
    assert torch_macs(torch_model) == MACS
    for kind in ("fp32", "qdq", "fixed1", "fixed4"):
        got = Complexity().measure(models[kind], data)
        assert got == {"params": PARAMS, "macs": MACS}, kind


def test_qdq_really_has_dequantized_weights(models: dict[str, Path]) -> None:
    graph = onnx.load(str(models["qdq"])).graph
    conv_weights = [node.input[1] for node in graph.node if node.op_type == "Conv"]
    dq_outputs = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    assert conv_weights and set(conv_weights) <= dq_outputs


def test_matmul_and_gemm(tmp_path: Path, data: EvalData) -> None:
    """MatMul on a 3-D activation, Gemm with transB and a bias, and a weight-free MatMul."""
    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
            for name, shape in (("w", (4, 3)), ("b", (2, 6)), ("c", (2,)))]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]),                   # [N,5,3]: 5*3*4 = 60 macs
             helper.make_node("Gemm", ["y", "b", "c"], ["z"], transB=1),       # [N,2]:   2*6 = 12 macs
             helper.make_node("Transpose", ["xw"], ["xwt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["xw", "xwt"], ["g"])]                 # [N,5,5]: 5*5*3 = 75 macs
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 4]),
                                           helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 2]),
                               helper.make_tensor_value_info("g", TensorProto.FLOAT, None)], init)
    path = tmp_path / "mm.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert Complexity().measure(path, data) == {"params": 12 + 12 + 2, "macs": 60 + 12 + 75}


def test_unknown_shape_is_an_error(tmp_path: Path, data: EvalData) -> None:
    w = numpy_helper.from_array(np.ones((4, 3), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    path = tmp_path / "dyn.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ValueError, match="unknown"):
        Complexity().measure(path, data)
