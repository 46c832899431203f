"""IDX reading and writing, and the errors a broken or missing data folder gives."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from zoo.data import IDX_FILES, idx_splits, load_idx_arrays, read_idx, write_idx


def make_idx_folder(folder: Path, *, n_train: int = 40, n_test: int = 20, size: int = 8,
                    gz: bool = True) -> dict[str, np.ndarray]:
    """Write a tiny MNIST-format data set (labels 0..4) into ``folder``."""
    rng = np.random.default_rng(123)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 5).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % 5).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key, array in arrays.items():
        write_idx(folder / (IDX_FILES[key] + (".gz" if gz else "")), array)
    return arrays


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_round_trip(tmp_path: Path, suffix: str, dtype: type) -> None:
    array = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    path = write_idx(tmp_path / f"a-idx3{suffix}", array)
    if suffix:
        assert path.read_bytes()[:2] == b"\x1f\x8b"
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, array)


def test_known_header_bytes(tmp_path: Path) -> None:
    """The exact MNIST label-file layout: 0x00000801, count, then one byte per label."""
    path = tmp_path / "labels"
    path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 9]))
    np.testing.assert_array_equal(read_idx(path, expect_ndim=1), [7, 2, 9])


def test_corrupt_files_name_the_file(tmp_path: Path) -> None:
    good = write_idx(tmp_path / "good", np.zeros((4, 2, 2), np.uint8)).read_bytes()
    cases = {
        "bad-magic": b"\x12\x34" + good[2:],
        "truncated": good[:-3],
        "too-long": good + b"\x00",
        "bad-type": good[:2] + b"\x07" + good[3:],
        "empty": b"",
    }
    for name, payload in cases.items():
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(ValueError, match=name):
            read_idx(tmp_path / name)
    (tmp_path / "broken.gz").write_bytes(gzip.compress(good)[:-10])
    with pytest.raises(ValueError, match="broken.gz"):
        read_idx(tmp_path / "broken.gz")
    with pytest.raises(ValueError, match="3 dimensions, expected 1"):
        read_idx(tmp_path / "good", expect_ndim=1)


def test_missing_files_message(tmp_path: Path) -> None:
    make_idx_folder(tmp_path)
    (tmp_path / (IDX_FILES["test_labels"] + ".gz")).unlink()
    (tmp_path / (IDX_FILES["train_images"] + ".gz")).unlink()
    with pytest.raises(FileNotFoundError) as info:
        idx_splits(root=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path) in message
    assert "t10k-labels-idx1-ubyte" in message and "train-images-idx3-ubyte" in message
    assert "train-labels-idx1-ubyte" not in message
    assert "apt-get install dataset-fashion-mnist" in message and "data.root=" in message
    with pytest.raises(FileNotFoundError, match="does not exist"):
        idx_splits(root=str(tmp_path / "nowhere"))


def test_inconsistent_files(tmp_path: Path) -> None:
    make_idx_folder(tmp_path, gz=False)
    write_idx(tmp_path / IDX_FILES["train_labels"], np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="40 images but 3 labels"):
        load_idx_arrays(tmp_path)


def test_splits_from_small_raw_and_gz_files(tmp_path: Path) -> None:
    """A user's own MNIST-format folder (raw files) works end to end, like the .gz one."""
    for gz in (False, True):
        root = tmp_path / f"gz{gz}"
        arrays = make_idx_folder(root, gz=gz)
        splits = idx_splits(root=str(root), calib_size=8, mean=(0.5,), std=(0.25,))
        assert splits.num_classes == 5
        assert splits.input_shape == (1, 8, 8)
        assert splits.calib.shape == (8, 1, 8, 8)
        expected = (arrays["test_images"][:, None].astype(np.float32) / 255 - 0.5) / 0.25
        np.testing.assert_allclose(splits.test.inputs, expected, atol=1e-6)
        np.testing.assert_array_equal(splits.test.labels, arrays["test_labels"])
