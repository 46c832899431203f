"""How many bytes the deployed model costs: on disk, and after lossless compression.

The compressed size is what a download or an OTA update actually ships; it also
rewards pruning/quantization choices that make weights more repetitive.
"""
from __future__ import annotations

import lzma
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import onnx
import zstandard

from evaluators._session import artifact_files
from evaluators.base import EvalData

LEVELS = {"zstd": range(1, 23), "lzma": range(0, 10)}
"""Allowed compressors and the levels each accepts (zstd 1-22, lzma presets 0-9)."""


@dataclass(frozen=True)
class Size:
    """``size_bytes`` of the artifact's files and ``compressed_bytes`` after ``compressor``.

    The model must be one self-contained file: weights stored as ONNX external data
    would not be counted, so such a model is rejected rather than under-reported.
    """

    compressor: str = "zstd"
    level: int = 19
    metrics: tuple[str, ...] = field(default=("size_bytes", "compressed_bytes"), init=False, repr=False)

    def __post_init__(self) -> None:
        if self.compressor not in LEVELS:
            raise ValueError(f"size: unknown compressor {self.compressor!r}; allowed: {', '.join(LEVELS)}")
        allowed = LEVELS[self.compressor]
        if self.level not in allowed:
            raise ValueError(f"size: {self.compressor} level must be {allowed.start}-{allowed.stop - 1}, "
                             f"got {self.level}")

    def measure(self, model_path: Path, data: EvalData) -> dict[str, float]:
        files = artifact_files(model_path)
        if Path(model_path).suffix == ".onnx":
            check_single_file(model_path)
        raw = b"".join(path.read_bytes() for path in files)  # an IR's .xml and .bin are shipped together
        return {"size_bytes": float(len(raw)), "compressed_bytes": float(len(self.compress(raw)))}

    def compress(self, raw: bytes) -> bytes:
        if self.compressor == "zstd":
            return zstandard.ZstdCompressor(level=self.level).compress(raw)
        return lzma.compress(raw, preset=self.level)


def check_single_file(model_path: Path) -> None:
    """Raise if any tensor of the model lives in an external data file."""
    model = onnx.load(str(model_path), load_external_data=False)
    for tensor in _tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise ValueError(f"size: {model_path} keeps tensor {tensor.name!r} in external data; "
                             "export the model as a single file so its size is measured in full")


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored in ``graph``: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)
