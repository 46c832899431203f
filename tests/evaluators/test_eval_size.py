from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from evaluators import EvalData, Size


@pytest.fixture()
def redundant(tmp_path: Path) -> Path:
    """A model whose 64 KiB weight is one repeated row: very compressible."""
    weight = numpy_helper.from_array(np.tile(np.arange(16, dtype=np.float32), (1024, 1)), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1024])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], [weight])
    path = tmp_path / "redundant.onnx"
    onnx.save_model(helper.make_model(graph), str(path))
    return path


@pytest.mark.parametrize("kind", ["fp32", "qdq"])
def test_size_bytes_is_file_size(models: dict[str, Path], data: EvalData, kind: str) -> None:
    result = Size().measure(models[kind], data)
    assert set(result) == set(Size().metrics)
    assert result["size_bytes"] == os.path.getsize(models[kind])
    assert 0 < result["compressed_bytes"]


@pytest.mark.parametrize("size", [Size(), Size(level=3), Size(compressor="lzma", level=6)])
def test_compressors_shrink_redundant_model(redundant: Path, data: EvalData, size: Size) -> None:
    result = size.measure(redundant, data)
    assert result["size_bytes"] == os.path.getsize(redundant)
    assert result["compressed_bytes"] < result["size_bytes"] / 10


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="allowed: zstd, lzma"):
        Size(compressor="gzip")
    with pytest.raises(ValueError, match="lzma level must be 0-9"):
        Size(compressor="lzma")  # the default level 19 is a zstd level


def test_external_data_is_rejected(models: dict[str, Path], data: EvalData, tmp_path: Path) -> None:
    path = tmp_path / "external.onnx"
    onnx.save_model(onnx.load(str(models["fp32"])), str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    with pytest.raises(ValueError, match="external data"):
        Size().measure(path, data)
