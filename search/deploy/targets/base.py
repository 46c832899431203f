"""The runtime a study targets: what artifact ships, how it runs, and what it can measure.

A study targets one runtime. Its :class:`Target` turns the quantized QDQ ONNX file every trial
makes into the artifact that ships (for ONNX Runtime that file itself, for OpenVINO an IR), and
opens a :class:`Session` on it; the evaluators time and score the artifact only through that
session, so the numbers on the front are the deployed runtime's numbers.

Adding a runtime: one module in this folder with a frozen dataclass satisfying :class:`Target`,
a ``predict_<name>.py`` beside it (the runtime part of the package's ``predict.py``), one line in
:data:`TARGETS`, one file in ``conf/target/``, and tests under ``tests/search/deploy/targets/``.

The Hydra config builds the study's target through ``_target_``. :data:`TARGETS` exists for the
code that holds only a file: ``autosqueeze verify`` (the manifest names the target) and the
evaluators (the artifact's suffix names it). Modules are imported on first use, so a machine
without OpenVINO can run an ONNX Runtime study.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

TARGETS: Mapping[str, str] = {
    "onnxruntime": "search.deploy.targets.onnxruntime:OnnxRuntime",
    "openvino": "search.deploy.targets.openvino:OpenVINO",
    "executorch": "search.deploy.targets.executorch:ExecuTorch",
}
"""Target name -> ``module:class``, built with its defaults."""

SUFFIXES: Mapping[str, str] = {".onnx": "onnxruntime", ".xml": "openvino", ".pte": "executorch"}
"""An artifact's file suffix -> the target that runs it."""

MEASURABLE = ("accuracy", "size_bytes", "compressed_bytes", "latency_ms", "latency_p90_ms", "latency_cv",
              "latency_raw_ms", "baseline_raw_ms", "params", "macs",
              "accuracy_drop", "size_ratio", "compressed_ratio", "speedup", "test_accuracy", "test_accuracy_drop")
"""What every evaluator and derived figure reports (test figures once the search ends); a target lists the
subset it can measure."""


@dataclass(frozen=True)
class Source:
    """What a target builds an artifact from.

    ``onnx`` is always there: the trial's QDQ ONNX file (or a pruned fp32 one), and the artifact is
    written beside it with the same stem. A target that compiles from torch (ExecuTorch) also gets the
    pruned, fine-tuned ``model``, the planned ``precisions`` per layer, an ``example`` input and the
    calibration samples; where there is no model (the fp32 fallback at export) they are left empty.
    """

    onnx: Path
    model: nn.Module | None = None
    precisions: Mapping[str, str] = field(default_factory=dict)
    example: torch.Tensor | None = None
    calib: np.ndarray | None = None


class Session(Protocol):
    """A loaded artifact, ready to run batches of float32 NCHW inputs."""

    batch: int | None
    """The batch size the artifact's input is fixed to; None when the batch axis is dynamic."""

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Logits ``(N, classes)`` for ``inputs`` ``(N, C, H, W)`` (``N == batch`` when it is fixed)."""
        ...


class Target(Protocol):
    """One runtime. Call order in a trial: ``build`` the artifact, then ``open`` it (once per evaluator).

    ``precisions``, ``activation_types`` and ``metrics`` are what the runtime executes as the QDQ
    graph says and what can be measured on it; :func:`check_supported` refuses the rest at config load.
    """

    name: str
    suffix: str
    precisions: tuple[str, ...]
    activation_types: tuple[str, ...]
    metrics: tuple[str, ...]
    requirements: tuple[str, ...]
    """Distributions ``predict.py`` needs (pinned to the installed versions in the package)."""
    torch_free: bool
    """Whether ``predict.py`` runs where torch cannot be imported (``verify`` checks that it does)."""
    kinds: tuple[str, ...]
    """The knob kinds (spaces/kinds/) whose output the artifact carries as the search measured it."""

    def build(self, source: Source) -> Path:
        """The artifact for ``source``, written beside ``source.onnx``."""
        ...

    def open(self, artifact: Path, *, threads: int) -> Session:
        """A session on ``artifact`` with ``threads`` inference threads."""
        ...

    def files(self, artifact: Path) -> tuple[Path, ...]:
        """Every file the artifact consists of, ``artifact`` first: what is shipped, sized and hashed."""
        ...


class UnsupportedError(ValueError):
    """The configuration asks a target for something its runtime does not do."""


def target_named(name: str) -> Target:
    """The target called ``name``, with its defaults."""
    if name not in TARGETS:
        raise UnsupportedError(f"target {name!r} is unknown; allowed: {', '.join(TARGETS)}")
    module, _, cls = TARGETS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()


def target_for(artifact: Path) -> Target:
    """The target whose artifacts carry ``artifact``'s suffix."""
    suffix = Path(artifact).suffix
    if suffix not in SUFFIXES:
        raise UnsupportedError(f"{artifact}: no target runs {suffix or 'suffix-less'} files; "
                               f"known: {', '.join(SUFFIXES)}")
    return target_named(SUFFIXES[suffix])


def source_onnx(artifact: Path) -> Path:
    """The ONNX file an artifact was built from; every target writes its artifact beside it, same stem."""
    return Path(artifact).with_suffix(".onnx")


def check_supported(target: Target, *, precisions: Sequence[str], activation_type: str,
                    metrics: Sequence[str], kinds: Sequence[str] = ()) -> None:
    """Raise at config load, in one line, when the space or the objectives ask what ``target`` cannot do."""
    for kind in kinds:
        if kind not in target.kinds:
            raise UnsupportedError(f"space.kinds: target={target.name} does not ship what {kind!r} makes; "
                                   f"allowed with target={target.name}: {', '.join(target.kinds)}")
    for precision in precisions:
        if precision not in target.precisions:
            raise UnsupportedError(f"space.quant.precisions: {target.name} does not run {precision!r} as the "
                                   f"quantized graph says; allowed with target={target.name}: "
                                   f"{', '.join(target.precisions)}")
    if activation_type not in target.activation_types:
        raise UnsupportedError(f"space.quant.activation_type={activation_type!r}: {target.name} does not run "
                               f"such activations as quantized; allowed: {', '.join(target.activation_types)}")
    for metric in metrics:
        if metric not in target.metrics:
            raise UnsupportedError(f"metric {metric!r} cannot be measured with target={target.name}; "
                                   f"measurable: {', '.join(target.metrics)}")


MARKERS = ("# <runtime>\n", "# </runtime>\n")
TEMPLATE = Path(__file__).parent.parent / "predict_template.py"


def predict_source(target: Target) -> str:
    """``predict.py`` for ``target``: the shared template with the target's runtime block put in."""
    def block(text: str, where: Path) -> tuple[int, int]:
        start, end = text.find(MARKERS[0]), text.find(MARKERS[1])
        if start < 0 or end < start:
            raise ValueError(f"{where} lacks the {MARKERS[0].strip()} ... {MARKERS[1].strip()} block")
        return start, end + len(MARKERS[1])

    template = TEMPLATE.read_text(encoding="utf-8")
    own = Path(__file__).with_name(f"predict_{target.name}.py")
    runtime = own.read_text(encoding="utf-8")
    (t0, t1), (r0, r1) = block(template, TEMPLATE), block(runtime, own)
    return template[:t0] + runtime[r0:r1] + template[t1:]
