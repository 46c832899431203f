"""``sparse``: unstructured magnitude sparsity, the smallest weights of a layer set to zero and
stored sparse (an ONNX ``SparseTensorProto``) where that makes the file smaller.

It acts on the exported graph, after ``quant`` (stage ``graph``, rank 10), so it ranks the weights
that ship: BatchNorm folded in and, for a quantized layer, its int8 codes times their channel's
scale. A zeroed int8 weight takes its channel's zero point, so it dequantizes to exactly zero.
Nothing is fine-tuned after it: its accuracy cost is measured as it is. Keeping the zeros through
fine-tuning would need a mask set before fine-tuning and this storage step after export, two
stages for one kind, which the kind seam does not offer.

A sparse weight is a ``Constant`` node whose ``sparse_value`` holds it, not a graph
``sparse_initializer``. Measured with ONNX Runtime 1.32 and onnx 1.23 on this project's two-core
machine (a 4-layer 64/128-channel CNN, 32x32 input, one thread), ORT loads both, as an fp32 Conv
weight and as the int8 weight behind a DequantizeLinear, with outputs equal bit for bit to the same
zeros stored dense. But ONNX types a ``sparse_initializer`` as a sparse tensor, which no Conv or
DequantizeLinear accepts: ``onnx.checker`` with ``full_check`` fails, and so does shape inference
for anything reading the file. A ``Constant`` yields a dense tensor, passes both, loads and runs
alike in ORT, and costs under 100 bytes more per weight. Further:

- ORT expands sparse weights to dense ones at load time, so the kernels are the dense ones and
  zeros buy no speed (medians at 90 %, sparse / dense zeros / unpruned: int8 2.14 / 2.24 / 2.25 ms,
  fp32 11.4 / 11.7 / 11.6 ms; another run had int8 1.81 / 1.81 / 1.83 ms).
- Raw file size: ONNX requires int64 indices (int32 loads in ORT but fails ``onnx.checker``; int16
  fails in ORT), so a stored non-zero costs 12 bytes in fp32 and 9 in int8. Sparse storage pays
  above 2/3 sparsity for fp32 (1.49 MB to 1.12 MB at 75 %, 0.45 MB at 90 %) and only above 8/9
  for int8 (387 kB to 350 kB at 90 %; at 75 % it would grow to 852 kB, so that weight stays dense).
- Compressed size (zstd 19) comes from the zeros, not from the storage: the dense zeros compress
  as well or better (int8 at 90 %: 60 kB dense, 71 kB sparse, 379 kB unpruned).

``storage: dense`` keeps the zeros in place: any runtime loads it, and only the compressed size
goes down. ``storage: sparse`` (default) needs a runtime that reads a ``Constant``'s sparse value.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from spaces.base import PlanError
from spaces.kinds.base import ApplyEnv, Choice, KindBase, ModelInfo, check_keys, layer_knobs
from spaces.layers import onnx_layer_node_lists

NEEDS = "ONNX Constant with sparse_value (SparseTensorProto)"
"""What a target must read to load this kind's output (with ``storage: sparse``, the default)."""

STORAGES = ("sparse", "dense")
# The element types measured to load sparse in ONNX Runtime; fp16, int4 and int16 weights are
# zeroed but stay dense.
SPARSE_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.INT8)


def check_level(key: str, value: Any) -> float:
    """``value`` as a fraction of weights set to zero in ``[0, 1)`` (MLflow hands back ``"0.5"``), or a PlanError."""
    try:
        level = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        level = float("nan")
    if not 0.0 <= level < 1.0:  # NaN fails this too
        raise PlanError(f"{key}: sparsity {value!r} is not allowed; allowed: a fraction of the weights "
                        "set to zero in [0, 1), 0 leaving the layer dense")
    return level


@dataclass(frozen=True)
class SparseSpec:
    """How sparsity knobs are made: the levels each may take, the layers left dense, how zeros are stored."""

    levels: tuple[float, ...] = (0.0, 0.5, 0.75, 0.9)
    exclude: tuple[str, ...] = ()
    storage: str = "sparse"

    def __post_init__(self) -> None:  # fail at config load, not in every trial
        if not self.levels:
            raise PlanError("space.sparse.levels is empty; give at least one fraction in [0, 1)")
        object.__setattr__(self, "levels", tuple(check_level("space.sparse.levels", v) for v in self.levels))
        if self.storage not in STORAGES:
            raise PlanError(f"space.sparse.storage={self.storage!r} is unknown; allowed: {', '.join(STORAGES)}")


class SparseKind(KindBase):
    name = "sparse"
    stage = "graph"
    rank = 10  # after quant (rank 0): it ranks and zeroes the int8 codes that ship
    neutral = 0.0

    def spec(self, section: Mapping[str, Any]) -> SparseSpec:
        s = dict(section)
        check_keys(self.name, s, [f.name for f in fields(SparseSpec)])
        return SparseSpec(levels=tuple(s.pop("levels", SparseSpec.levels)), exclude=tuple(s.pop("exclude", ())),
                          **s)

    def check(self, key: str, value: Any) -> float:
        return check_level(key, value)

    def knobs(self, info: ModelInfo, spec: SparseSpec) -> tuple[Choice, ...]:
        return layer_knobs(self.name, info, spec.exclude, lambda name: Choice(name, spec.levels))

    def apply_graph(self, source: Path, target: Path, values: Mapping[str, float], spec: SparseSpec,
                    env: ApplyEnv) -> Path:
        planned = {layer: level for layer, level in values.items() if level}
        if not planned:
            return Path(source)  # the file itself, so a dense plan ships exactly what came in
        model = onnx.load(str(source))
        weights = _Weights(model.graph)
        for layer, nodes in onnx_layer_node_lists(model, list(planned)).items():
            for node in nodes:
                weights.zero(layer, node.input[1], planned[layer])
        if spec.storage == "sparse":
            weights.store_sparse()
        onnx.save(model, str(target))
        return Path(target)

    def describe(self, value: float) -> str:
        return f"{value:.0%} zero" if value else ""


class _Weights:
    """The stored weight tensors of a graph, zeroed in place, then moved to sparse storage."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.stored = {init.name: init for init in graph.initializer}
        self.producers = {out: node for node in graph.node for out in node.output}
        self.zeroed: dict[str, onnx.TensorProto] = {}

    def zero(self, layer: str, tensor: str, level: float) -> None:
        """Set the ``level`` share of ``tensor``'s values smallest in magnitude to zero."""
        init, scale, zero_point, axis = self._behind(layer, tensor)
        if init.name in self.zeroed:
            return  # one weight read by two layer nodes: the first layer's level holds
        codes = numpy_helper.to_array(init)
        shape = [1] * codes.ndim
        if scale.size > 1:
            shape[axis] = -1
        zero_codes = np.broadcast_to(zero_point.reshape(shape), codes.shape)
        magnitude = np.abs((codes.astype(np.float64) - zero_codes) * scale.reshape(shape))
        smallest = np.argsort(magnitude, axis=None, kind="stable")[:round(level * codes.size)]
        zeroed = codes.copy().reshape(-1)
        zeroed[smallest] = zero_codes.reshape(-1)[smallest]
        init.CopyFrom(numpy_helper.from_array(zeroed.reshape(codes.shape), init.name))
        self.zeroed[init.name] = init

    def _behind(self, layer: str, tensor: str) -> tuple[onnx.TensorProto, np.ndarray, np.ndarray, int]:
        """The initializer ``tensor`` is read from, with the scale, zero point and axis that dequantize it."""
        node = self.producers.get(tensor)
        if tensor in self.stored:
            return self.stored[tensor], np.ones(1), np.zeros(1), 0
        if node is not None and node.op_type == "Cast" and node.input[0] in self.stored:  # an fp16-stored weight
            return self.stored[node.input[0]], np.ones(1), np.zeros(1), 0
        if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in self.stored:
            scale = numpy_helper.to_array(self.stored[node.input[1]]).astype(np.float64)
            zero_point = (numpy_helper.to_array(self.stored[node.input[2]]).astype(np.float64)
                          if len(node.input) > 2 and node.input[2] else np.zeros(1))
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)  # ONNX's default axis
            return self.stored[node.input[0]], scale, zero_point, axis
        raise PlanError(f"sparse.{layer}: its weight {tensor!r} is not a stored tensor (nor a DequantizeLinear "
                        "or Cast of one), so there is nothing to zero")

    def store_sparse(self) -> None:
        """Replace each zeroed weight by a Constant holding it sparse, where that takes fewer bytes."""
        for name, init in self.zeroed.items():
            if init.data_type not in SPARSE_TYPES:
                continue
            flat = numpy_helper.to_array(init).reshape(-1)
            where = np.flatnonzero(flat)
            sparse = helper.make_sparse_tensor(numpy_helper.from_array(flat[where], name),
                                               numpy_helper.from_array(where.astype(np.int64)), list(init.dims))
            constant = helper.make_node("Constant", [], [name], name=f"{name}_sparse", sparse_value=sparse)
            if constant.ByteSize() < init.ByteSize():
                self.graph.initializer.remove(init)
                self.graph.node.insert(0, constant)


KIND = SparseKind()
