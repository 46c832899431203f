"""OpenVINO Runtime on the CPU: the QDQ ONNX file converted to an IR (``model.xml`` + ``model.bin``).

Measured on this machine (OpenVINO 2026.4, tests/search/deploy/targets/test_openvino.py):
int8 layers of the QDQ graph run with u8/i8 kernels, and layers the plan keeps fp32 stay f32;
int16 and int4 weights are decompressed and computed in f32, as ONNX Runtime does, so every
precision the search makes gives ONNX Runtime's logits. A graph with int16 *activations* compiles
but computes other numbers (logits off by 0.2 on the tiny test net), so only 8-bit activations
are allowed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from search.deploy.targets.base import MEASURABLE, Source

COMPILE = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
"""Latency hint (no request batching or streams); f32 because the CPU plugin's default on
bf16-capable CPUs is bf16, which changes the model's numbers."""


class OpenVINOSession:
    """One compiled model and one infer request, reused for every batch."""

    def __init__(self, artifact: Path, *, threads: int) -> None:
        import openvino as ov

        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        compiled = ov.Core().compile_model(str(artifact), "CPU", {**COMPILE, "INFERENCE_NUM_THREADS": threads})
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        first = compiled.input(0).get_partial_shape()[0]
        self.batch = first.get_length() if first.is_static else None

    def run(self, inputs: np.ndarray) -> np.ndarray:
        self.request.infer({0: inputs})
        return np.array(self.request.get_output_tensor(0).data)  # a copy: the request reuses its buffer


@dataclass(frozen=True)
class OpenVINO:
    name: str = "openvino"
    suffix: str = ".xml"
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8", "int16", "int4")
    activation_types: tuple[str, ...] = ("uint8", "int8")
    metrics: tuple[str, ...] = MEASURABLE
    requirements: tuple[str, ...] = ("openvino",)
    torch_free: bool = True
    kinds: tuple[str, ...] = ("prune", "quant", "lowrank", "share", "sparse")

    def build(self, source: Source) -> Path:
        """``<stem>.xml`` + ``<stem>.bin`` beside the ONNX file; weights kept as stored (no fp16 compression)."""
        import openvino as ov

        xml = Path(source.onnx).with_suffix(self.suffix)
        model = ov.Core().read_model(str(source.onnx))
        ov.save_model(model, str(xml), compress_to_fp16=False)  # the default would halve every fp32 weight
        return xml

    def open(self, artifact: Path, *, threads: int) -> OpenVINOSession:
        return OpenVINOSession(artifact, threads=threads)

    def files(self, artifact: Path) -> tuple[Path, ...]:
        return (Path(artifact), Path(artifact).with_suffix(".bin"))
