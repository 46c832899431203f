"""ONNX Runtime on the CPU: the QDQ ONNX file the search makes is the artifact itself."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from search.deploy.targets.base import MEASURABLE, Source


def make_session(model_path: Path, *, threads: int, inter_threads: int = 1) -> ort.InferenceSession:
    """``model_path`` on the CPU provider with ``threads`` intra-op threads.

    Full graph optimisation (what a deployment would use), sequential execution, and explicit
    thread counts so measurements do not depend on how many cores the machine happens to have.
    """
    if threads < 1 or inter_threads < 1:
        raise ValueError(f"thread counts must be >= 1, got threads={threads}, inter_threads={inter_threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = inter_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: QDQ graphs log harmless warnings
    return ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])


class OrtSession:
    """An ``InferenceSession`` behind the :class:`~search.deploy.targets.base.Session` interface."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.inner = session
        model_input = session.get_inputs()[0]
        self.input_name = model_input.name
        fixed = model_input.shape[0] if model_input.shape else None
        self.batch = fixed if isinstance(fixed, int) and fixed > 0 else None

    def run(self, inputs: np.ndarray) -> np.ndarray:
        return np.asarray(self.inner.run(None, {self.input_name: inputs})[0])


@dataclass(frozen=True)
class OnnxRuntime:
    """Every precision the search makes runs as written: int8 with integer kernels, the rest weight-only."""

    name: str = "onnxruntime"
    suffix: str = ".onnx"
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8", "int16", "int4")
    activation_types: tuple[str, ...] = ("uint8", "int8")
    metrics: tuple[str, ...] = MEASURABLE
    requirements: tuple[str, ...] = ("onnxruntime",)
    torch_free: bool = True
    kinds: tuple[str, ...] = ("prune", "quant", "lowrank", "share", "sparse")

    def build(self, source: Source) -> Path:
        return Path(source.onnx)

    def open(self, artifact: Path, *, threads: int) -> OrtSession:
        return OrtSession(make_session(artifact, threads=threads))

    def files(self, artifact: Path) -> tuple[Path, ...]:
        return (Path(artifact),)
