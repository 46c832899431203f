"""One place that opens ONNX Runtime sessions, so every evaluator runs the model the same way.

CPU only, full graph optimisation (what a deployment would use), sequential
execution, and explicit thread counts so measurements do not depend on how many
cores the machine happens to have.
"""
from __future__ import annotations

from pathlib import Path

import onnxruntime as ort


def make_session(model_path: Path, *, threads: int, inter_threads: int = 1) -> ort.InferenceSession:
    """Open ``model_path`` on the CPU provider with ``threads`` intra-op threads."""
    if threads < 1 or inter_threads < 1:
        raise ValueError(f"thread counts must be >= 1, got threads={threads}, inter_threads={inter_threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = inter_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: QDQ graphs log harmless warnings
    return ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])
