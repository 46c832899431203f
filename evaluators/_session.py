"""The one place evaluators reach a runtime: the artifact's target opens it.

Evaluators never import a runtime. The file itself says which target made it (its suffix, see
``search/deploy/targets/base.py``), so the same evaluator scores an ONNX file with ONNX Runtime
and an OpenVINO IR with OpenVINO, and pairs a candidate with a baseline of the same kind.
The targets are imported on first use: they sit above the evaluators, and most of them pull
a runtime in.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from search.deploy.targets.base import Session


def open_session(artifact: Path, *, threads: int) -> Session:
    """A session on ``artifact`` with ``threads`` inference threads, in the runtime that made it."""
    from search.deploy.targets.base import target_for

    return target_for(artifact).open(Path(artifact), threads=threads)


def artifact_files(artifact: Path) -> tuple[Path, ...]:
    """Every file ``artifact`` consists of (an OpenVINO IR is two), ``artifact`` first."""
    from search.deploy.targets.base import target_for

    return target_for(artifact).files(Path(artifact))


def graph_file(artifact: Path) -> Path:
    """The ONNX graph ``artifact`` was built from: shapes and weights counted on it describe the artifact."""
    from search.deploy.targets.base import source_onnx

    return source_onnx(artifact)
