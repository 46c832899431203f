"""ExecuTorch with the XNNPACK delegate: the pruned torch model exported, quantized and lowered to a ``.pte``.

Unlike the ONNX targets it compiles from torch, not from the QDQ file: ``torch.export`` at batch 1,
then for int8 layers PT2E quantization with XNNPACK's quantizer configured per module (only the
layers the plan marks int8 are annotated, so every other layer stays fp32), calibrated on the
calibration split, then ``to_edge_transform_and_lower`` to XNNPACK and ``to_executorch``.

XNNPACK's PT2E configs are 8-bit (int8 per-channel symmetric weights, int8 activations), so only
fp32 and int8 are offered; ``space.quant.activation_type`` shapes the QDQ ONNX file (which
``params``/``macs`` are counted on), not the ``.pte``. The pip wheel's Python runtime links
libtorch and imports torch, so ``predict.py`` needs torch as well (``torch_free`` is False).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from search.deploy.targets.base import MEASURABLE, Source, UnsupportedError

if TYPE_CHECKING:
    import torch

CALIB_SAMPLES = 64
"""Calibration samples run through the prepared model (batch 1, as exported)."""


class ExecuTorchSession:
    """The ``forward`` method of a loaded program; XNNPACK's threadpool is process-wide."""

    batch = 1  # exported at batch 1: a dynamic batch axis needs bounds XNNPACK would specialise anyway

    def __init__(self, artifact: Path, *, threads: int) -> None:
        import torch
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
        from executorch.runtime import Runtime

        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        _unsafe_reset_threadpool(threads)
        self._torch = torch
        self.method = Runtime.get().load_program(str(artifact)).load_method("forward")

    def run(self, inputs: np.ndarray) -> np.ndarray:
        if len(inputs) == 1:
            return self.method.execute([self._torch.from_numpy(inputs)])[0].numpy()
        return np.concatenate([self.run(inputs[i:i + 1]) for i in range(len(inputs))])


@dataclass(frozen=True)
class ExecuTorch:
    name: str = "executorch"
    suffix: str = ".pte"
    precisions: tuple[str, ...] = ("fp32", "int8")
    activation_types: tuple[str, ...] = ("uint8", "int8")
    metrics: tuple[str, ...] = MEASURABLE
    requirements: tuple[str, ...] = ("executorch", "torch")
    torch_free: bool = False
    # built from the torch model: the graph-stage storage of sparse (spaces/kinds/sparse.py) never reaches a .pte
    kinds: tuple[str, ...] = ("prune", "quant", "lowrank", "share")

    def build(self, source: Source) -> Path:
        """``<stem>.pte`` beside the ONNX file, compiled from ``source.model`` with its planned precisions."""
        if source.model is None or source.example is None:
            raise UnsupportedError("executorch compiles from the torch model, which the fp32 fallback at export "
                                   "does not have; export with export.include_fp32=false")
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
        from torch.export import export

        example = (source.example[:1].float(),)
        int8 = sorted(name for name, precision in source.precisions.items() if precision == "int8")
        program = export(_bn_folded(source.model.eval(), example) if int8 else source.model.eval(), example)
        if int8:
            program = export(_quantized(program.module(), int8, example, source.calib), example)
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
        pte = Path(source.onnx).with_suffix(self.suffix)
        pte.write_bytes(lowered.buffer)
        return pte

    def open(self, artifact: Path, *, threads: int) -> ExecuTorchSession:
        return ExecuTorchSession(artifact, threads=threads)

    def files(self, artifact: Path) -> tuple[Path, ...]:
        return (Path(artifact),)


def _bn_folded(model: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> torch.nn.Module:
    """A copy of ``model`` with every BatchNorm that directly follows a Conv folded into it.

    XNNPACK's quantizer annotates conv+BN as one pattern that a per-module config cannot match
    (the BN is another module), so it would leave the conv in fp32. Folding keeps module names.
    """
    import copy

    import torch
    from torch.export import export
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def owner(node: torch.fx.Node) -> str | None:
        stack = list(node.meta.get("nn_module_stack", {}).values())
        return stack[-1][0].removeprefix("L['self'].") if stack else None

    pairs = []
    for node in export(model, example).graph.nodes:
        if "batch_norm" in str(node.target) and isinstance(node.args[0], torch.fx.Node) \
                and "conv" in str(node.args[0].target) and len(node.args[0].users) == 1:
            pairs.append((owner(node.args[0]), owner(node)))
    folded = copy.deepcopy(model)
    for conv, bn in pairs:
        if conv and bn:
            folded.set_submodule(conv, fuse_conv_bn_eval(folded.get_submodule(conv), folded.get_submodule(bn)))
            folded.set_submodule(bn, torch.nn.Identity())
    return folded


def _quantized(graph: torch.fx.GraphModule, layers: list[str], example: tuple[torch.Tensor, ...],
               calib: np.ndarray | None) -> torch.nn.Module:
    """``graph`` with PT2E int8 on ``layers`` only, calibrated on up to :data:`CALIB_SAMPLES` samples.

    ``set_module_name`` alone leaves a conv in fp32 whenever the ReLU after it belongs to another module
    (XNNPACK annotates conv+relu as one pattern), so the quantizer's config is global and a node filter
    decides instead: a conv/linear is int8 when its layer is, any other op when every layer upstream of
    it is (the rule the ONNX quantizer follows too, spaces/quantization.py).
    """
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                          get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    quantizer.set_filter_function(_int8_filter(set(layers)))
    prepared = prepare_pt2e(graph, quantizer)
    samples = example[0] if calib is None else torch.from_numpy(np.asarray(calib[:CALIB_SAMPLES], np.float32))
    with torch.no_grad():
        for sample in samples:
            prepared(sample[None])
    return convert_pt2e(prepared)


def _int8_filter(layers: set[str]) -> Callable[[torch.fx.Node], bool]:
    """Node -> whether it belongs to an int8 layer (see :func:`_quantized`)."""
    import torch

    owners: dict[torch.fx.Node, frozenset[str]] = {}

    def upstream(node: torch.fx.Node) -> frozenset[str]:
        if node not in owners:
            stack = list(node.meta.get("nn_module_stack", {}).values())
            if any(word in str(node.target) for word in ("conv", "linear")) and stack:
                owners[node] = frozenset({stack[-1][0].removeprefix("L['self'].")})
            else:
                inputs = [a for a in node.all_input_nodes if a.op == "call_function"]
                owners[node] = frozenset().union(*(upstream(a) for a in inputs)) if inputs else frozenset()
        return owners[node]

    def int8(node: torch.fx.Node) -> bool:
        if node.op != "call_function":
            return True  # weights, biases and the input: what the op using them decides
        # a layer a knob kind replaced by several (lowrank: <layer>.down, <layer>.up) keeps its planned precision
        return bool(upstream(node)) and all(o in layers or any(o.startswith(f"{n}.") for n in layers)
                                            for o in upstream(node))

    return int8
