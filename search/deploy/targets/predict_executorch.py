"""The executorch part of a package's predict.py: the block between the markers replaces the template's."""
from __future__ import annotations

from pathlib import Path

import numpy as np

# <runtime>
import torch  # ExecuTorch's pip runtime links libtorch and imports it itself; tensors cross as torch tensors
from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
from executorch.runtime import Runtime


class _Session:
    """One XNNPACK thread, batch 1: the setting every figure in the manifest was measured with."""

    batch = 1

    def __init__(self, model_path: Path) -> None:
        _unsafe_reset_threadpool(1)
        self.method = Runtime.get().load_program(str(model_path)).load_method("forward")

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.method.execute([torch.from_numpy(np.ascontiguousarray(batch))])[0].numpy()


def load_session(model_path: Path) -> _Session:
    return _Session(model_path)
# </runtime>
