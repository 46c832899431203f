"""Parameter and multiply-accumulate counts read from the exported ONNX graph.

Counted on the graph, not the torch model, so they describe what ships (after BN
folding and pruning). Quantization must not change them: in QDQ graphs a weight is
an integer initializer behind a DequantizeLinear node, and is followed back to it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import onnx
from onnx import shape_inference

from evaluators._session import graph_file
from evaluators.base import EvalData

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
PASS_THROUGH = ("DequantizeLinear", "Identity")
"""Ops between a stored weight and the layer that uses it, which change neither its shape nor count."""


@dataclass(frozen=True)
class Complexity:
    """``params``: weight+bias elements of Conv/Gemm/MatMul; ``macs``: their multiply-accumulates per sample.

    A dynamic batch axis is fixed to 1 before shape inference; a model exported with a
    fixed batch B (axis 0 of its first input) has its total divided by B.
    """

    metrics: tuple[str, ...] = field(default=("params", "macs"), init=False, repr=False)

    def measure(self, model_path: Path, data: EvalData) -> dict[str, float]:
        # shapes only, no weights; an artifact of another runtime is counted on the ONNX it was built from
        graph = _Graph(onnx.load(str(graph_file(model_path)), load_external_data=False))
        params: dict[str, int] = {}  # stored initializer -> elements, so shared weights count once
        macs = 0
        for node in graph.nodes:
            if node.op_type not in WEIGHTED_OPS:
                continue
            for name in node.input[1:3] if node.op_type != "MatMul" else node.input[:2]:
                stored = graph.stored(name)
                if stored is not None:
                    params[stored.name] = math.prod(stored.dims)
            macs += _macs(node, graph)
        return {"params": float(sum(params.values())), "macs": macs / graph.batch}


class _Graph:
    """A model with batch fixed to 1 and shapes inferred, indexed for look-ups."""

    def __init__(self, model: onnx.ModelProto) -> None:
        stored = {tensor.name for tensor in model.graph.initializer}
        inputs = [value for value in model.graph.input if value.name not in stored]
        self.batch = 1  # an export with a fixed batch B counts B samples; measure() divides by it
        for value in (*inputs, *model.graph.output):
            dims = value.type.tensor_type.shape.dim
            if dims and not dims[0].HasField("dim_value"):
                dims[0].dim_value = 1
            elif dims and inputs and value is inputs[0]:
                self.batch = max(1, dims[0].dim_value)
        # Shapes stored by earlier tools (ORT's quantizer keeps the symbolic batch) would win over
        # inference with batch 1, so they are dropped first.
        del model.graph.value_info[:]
        model = shape_inference.infer_shapes(model, data_prop=True)
        self.nodes = list(model.graph.node)
        self.initializers = {tensor.name: tensor for tensor in model.graph.initializer}
        self.producers = {out: node for node in self.nodes for out in node.output}
        self.shapes: dict[str, list[int | None]] = {
            name: list(tensor.dims) for name, tensor in self.initializers.items()}
        for value in (*model.graph.input, *model.graph.value_info, *model.graph.output):
            if not value.type.tensor_type.HasField("shape"):
                continue  # rank unknown: leave it out rather than read it as a scalar
            dims = value.type.tensor_type.shape.dim
            self.shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        # Sparse weights (spaces/kinds/sparse.py) count at their dense shape, like the MACs they still cost.
        for sparse in model.graph.sparse_initializer:
            self._hold(sparse.values.name, sparse.dims)
        for node in self.nodes:  # Constant nodes: shape from the tensor they hold
            held = node.attribute[0] if node.op_type == "Constant" and node.attribute else None
            if held is not None and held.HasField("t"):
                self.initializers[node.output[0]] = held.t
                self.shapes[node.output[0]] = list(held.t.dims)
            elif held is not None and held.HasField("sparse_tensor"):
                self._hold(node.output[0], held.sparse_tensor.dims)

    def _hold(self, name: str, dims: Sequence[int]) -> None:
        self.initializers[name] = onnx.TensorProto(name=name, dims=list(dims))
        self.shapes[name] = list(dims)

    def stored(self, name: str) -> onnx.TensorProto | None:
        """The constant tensor ``name`` is computed from (through DequantizeLinear/Identity), else None."""
        while name not in self.initializers:
            node = self.producers.get(name)
            if node is None or node.op_type not in PASS_THROUGH:
                return None
            name = node.input[0]
        return self.initializers[name]

    def shape(self, name: str, node: onnx.NodeProto) -> list[int]:
        dims = self.shapes.get(name)
        if dims is None or any(d is None for d in dims):
            raise ValueError(f"complexity: shape of {name!r} ({node.op_type} {node.name!r}) is unknown "
                             f"after shape inference: {dims}")
        return dims  # type: ignore[return-value]


def _macs(node: onnx.NodeProto, graph: _Graph) -> int:
    """Multiply-accumulates of one Conv/Gemm/MatMul: output elements x inputs summed per output."""
    out = math.prod(graph.shape(node.output[0], node))
    if node.op_type == "Conv":
        return out * math.prod(graph.shape(node.input[1], node)[1:])  # (C_in / groups) x kernel
    a = graph.shape(node.input[0], node)
    if node.op_type == "Gemm":
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        return out * (a[0] if trans_a else a[1])
    return out * a[-1]  # MatMul: the contracted axis is A's last
