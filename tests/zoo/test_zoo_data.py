"""idx_splits on the real Fashion-MNIST (small seeded subsets, so it stays fast)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import zoo.data
from zoo.data import DataSplits, idx_splits
from zoo.preprocess import LazyImageDataset


def train_arrays(splits: DataSplits) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*(splits.train[i] for i in range(len(splits.train))))
    return torch.stack(xs).numpy(), torch.stack(ys).numpy()


def test_shapes_and_dtypes(small_fashion: DataSplits) -> None:
    s = small_fashion
    assert isinstance(s.train, TensorDataset) and len(s.train) == 500
    x, y = s.train[0]
    assert x.dtype == torch.float32 and x.shape == (1, 28, 28)
    assert y.dtype == torch.int64 and y.ndim == 0
    assert s.calib.dtype == np.float32 and s.calib.shape == (64, 1, 28, 28)
    assert s.test.inputs.dtype == np.float32 and s.test.inputs.shape == (300, 1, 28, 28)
    assert s.test.labels.dtype == np.int64 and s.test.labels.shape == (300,)
    assert s.num_classes == 10 and s.input_shape == (1, 28, 28)
    assert set(np.unique(s.test.labels)) <= set(range(10))
    pre = json.loads(json.dumps(s.preprocessing))
    assert pre == {"resize": None, "interpolation": "bilinear", "channels": 1, "scale": 1 / 255,
                   "mean": [0.286], "std": [0.353], "layout": "NCHW", "dtype": "float32"}


def test_normalisation(small_fashion: DataSplits) -> None:
    raw = small_fashion.test.inputs * 0.353 + 0.286   # back to [0, 1]
    assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6
    np.testing.assert_allclose(raw * 255, np.round(raw * 255), atol=1e-3)  # whole grey levels
    assert abs(float(raw.mean()) - 0.286) < 0.03                           # Fashion-MNIST's mean
    assert abs(float(small_fashion.test.inputs.mean())) < 0.1
    assert 0.85 < float(small_fashion.test.inputs.std()) < 1.15


def test_seeded_subsets(fashion_root: str, small_fashion: DataSplits) -> None:
    again = idx_splits(root=fashion_root, train_limit=500, eval_limit=300, calib_size=64, seed=0)
    np.testing.assert_array_equal(again.test.inputs, small_fashion.test.inputs)
    np.testing.assert_array_equal(again.calib, small_fashion.calib)
    np.testing.assert_array_equal(train_arrays(again)[0], train_arrays(small_fashion)[0])
    other = idx_splits(root=fashion_root, train_limit=500, eval_limit=300, calib_size=64, seed=1)
    assert not np.array_equal(other.test.labels, small_fashion.test.labels)
    assert not np.array_equal(other.calib, small_fashion.calib)


def test_val_is_held_out_of_train_and_does_not_move_with_the_training_budget(fashion_root: str,
                                                                           small_fashion: DataSplits) -> None:
    train_x, _ = train_arrays(small_fashion)
    val = small_fashion.val
    assert len(val.labels) == 300 and val.inputs.shape[1:] == small_fashion.test.input_shape
    assert not {row.tobytes() for row in train_x} & {row.tobytes() for row in val.inputs}
    bigger = idx_splits(root=fashion_root, train_limit=5000, eval_limit=300, calib_size=64, seed=0)
    np.testing.assert_array_equal(bigger.val.inputs, val.inputs)
    whole = idx_splits(root=fashion_root, train_limit=10, calib_size=4, seed=0)
    assert len(whole.val.labels) == 6000                                  # data.val_fraction 0.1 of 60k


def test_calib_comes_from_train(small_fashion: DataSplits) -> None:
    train_x, _ = train_arrays(small_fashion)
    flat_train = {row.tobytes() for row in train_x}
    assert all(row.tobytes() in flat_train for row in small_fashion.calib)
    assert len({row.tobytes() for row in small_fashion.calib}) == 64      # drawn without replacement
    held_out = {row.tobytes() for row in small_fashion.test.inputs}
    assert not any(row.tobytes() in held_out for row in small_fashion.calib)


def test_three_channels_resized(fashion_root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    eager = idx_splits(root=fashion_root, image_size=32, channels=3, train_limit=64, eval_limit=32, calib_size=8)
    assert eager.input_shape == (3, 32, 32) and eager.calib.shape == (8, 3, 32, 32)
    assert eager.preprocessing["mean"] == [0.485, 0.456, 0.406] and eager.preprocessing["resize"] == 32
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    raw = eager.test.inputs * std + mean
    np.testing.assert_allclose(raw[:, 0], raw[:, 1], atol=1e-5)            # grey repeated
    np.testing.assert_allclose(raw[:, 0], raw[:, 2], atol=1e-5)

    monkeypatch.setattr(zoo.data, "EAGER_LIMIT_BYTES", 0)                   # force lazy items
    lazy = idx_splits(root=fashion_root, image_size=32, channels=3, train_limit=64, eval_limit=32, calib_size=8)
    assert isinstance(lazy.train, LazyImageDataset)
    np.testing.assert_array_equal(lazy.test.inputs, eager.test.inputs)
    x, y = lazy.train[5]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    np.testing.assert_allclose(x.numpy(), eager.train[5][0].numpy(), atol=1e-6)
    xb, yb = next(iter(DataLoader(lazy.train, batch_size=16)))            # batched through __getitems__
    assert xb.shape == (16, 3, 32, 32) and yb.shape == (16,)
    np.testing.assert_allclose(xb.numpy(), eager.train.tensors[0][:16].numpy(), atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"channels": 2}, "channels"),
    ({"mean": (0.1, 0.2)}, "mean has 2 values"),
    ({"std": (0.0,)}, "std"),
    ({"image_size": 0}, "image_size"),
    ({"train_limit": 0}, "train_limit"),
    ({"calib_size": 0}, "calib_size"),
    ({"val_fraction": 1.0}, "val_fraction"),
])
def test_bad_options(fashion_root: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        idx_splits(root=fashion_root, **kwargs)
