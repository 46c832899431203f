"""The openvino part of a package's predict.py: the block between the markers replaces the template's."""
from __future__ import annotations

from pathlib import Path

import numpy as np

# <runtime>
import openvino as ov


class _Session:
    """CPU, one thread, latency hint, f32: the setting every figure in the manifest was measured with."""

    def __init__(self, model_path: Path) -> None:
        config = {"INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        compiled = ov.Core().compile_model(str(model_path), "CPU", config)
        self.request = compiled.create_infer_request()
        first = compiled.input(0).get_partial_shape()[0]
        self.batch = first.get_length() if first.is_static else None

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.request.infer({0: batch})
        return np.array(self.request.get_output_tensor(0).data)


def load_session(model_path: Path) -> _Session:
    return _Session(model_path)
# </runtime>
