"""The onnxruntime part of a package's predict.py: the block between the markers replaces the template's."""
from __future__ import annotations

from pathlib import Path

import numpy as np

# <runtime>
import onnxruntime as ort


class _Session:
    """One thread, sequential: the setting every latency in the manifest was measured with."""

    def __init__(self, model_path: Path) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # quantized graphs log harmless warnings
        self.inner = ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])
        model_input = self.inner.get_inputs()[0]
        self.name = model_input.name
        fixed = model_input.shape[0]
        self.batch = fixed if isinstance(fixed, int) and fixed > 0 else None

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.inner.run(None, {self.name: batch})[0]


def load_session(model_path: Path) -> _Session:
    return _Session(model_path)
# </runtime>
