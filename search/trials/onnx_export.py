"""Torch → single-file ONNX, with the legacy TorchScript exporter.

The dynamo exporter took 1.6–3.7 s per model here against 0.06–0.3 s for the
legacy one, and export runs in every trial (see experiments/ for the measurement).
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path
from typing import Iterator

import onnx
import torch
from torch import nn

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17


class ExportError(RuntimeError):
    """The model contains something the ONNX exporter cannot express."""


@contextlib.contextmanager
def _silent_stdout() -> Iterator[None]:
    """Swallow output written to file descriptor 1, which the exporter's C++ side uses too."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: Path) -> Path:
    """Write ``model`` (eval mode, BatchNorm folded) to ``path`` with a dynamic batch axis."""
    model.eval()
    try:
        # the legacy exporter's deprecation notice (once per trial), and on failure the whole
        # TorchScript graph printed to stdout: the one-line error below says what matters
        with warnings.catch_warnings(), _silent_stdout():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example_input,), str(path), dynamo=False, opset_version=OPSET,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              do_constant_folding=True)
    except (RuntimeError, TypeError, ValueError, NotImplementedError, AttributeError) as exc:
        # what the tracer and the symbolic functions raise for something ONNX cannot express
        raise ExportError(f"ONNX export of {type(model).__name__} failed: {exc}".splitlines()[0]) from exc
    onnx.checker.check_model(str(path))
    return path
