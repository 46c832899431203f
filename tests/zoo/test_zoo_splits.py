"""coerce_splits: what a user's own data factory may return, and what it may not."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, IterableDataset, TensorDataset

from evaluators.base import EvalData
from zoo.data import DataSplits, coerce_splits

RNG = np.random.default_rng(0)


def xy(n: int, *, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    return RNG.normal(size=(n, 1, 6, 6)).astype(np.float64), np.arange(n) % classes


class PairDataset(Dataset):
    """A map-style Dataset yielding (tensor, python int), like most user datasets."""

    def __init__(self, n: int) -> None:
        self.x, self.y = xy(n)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.x[i]).float(), int(self.y[i])


class Stream(IterableDataset):
    def __iter__(self):
        yield torch.zeros(1, 6, 6), 0


def test_numpy_pairs() -> None:
    out = coerce_splits({"train": xy(20), "calib": xy(8)[0], "eval": xy(10),
                         "preprocessing": {"scale": 1.0}})
    assert isinstance(out, DataSplits) and isinstance(out.train, TensorDataset)
    x, y = out.train[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert out.calib.dtype == np.float32 and out.calib.shape == (8, 1, 6, 6)
    assert out.test.inputs.dtype == np.float32 and out.test.labels.dtype == np.int64
    assert out.num_classes == 3 and out.input_shape == (1, 6, 6)
    assert out.preprocessing == {"scale": 1.0}
    as_tuple = coerce_splits((xy(20), xy(8), xy(10)), num_classes=7)
    assert as_tuple.num_classes == 7 and as_tuple.calib.shape == (8, 1, 6, 6)


def test_torch_datasets() -> None:
    train, held_out = PairDataset(12), PairDataset(300)   # 300 > one DataLoader batch
    out = coerce_splits({"train": train, "calib": PairDataset(5), "eval": held_out, "val": PairDataset(4)})
    assert out.train is train and len(out.val.labels) == 4
    assert out.calib.shape == (5, 1, 6, 6) and out.calib.dtype == np.float32
    assert out.test.inputs.shape == (300, 1, 6, 6) and out.test.labels.dtype == np.int64
    np.testing.assert_allclose(out.test.inputs, held_out.x.astype(np.float32))
    np.testing.assert_array_equal(out.test.labels, held_out.y)
    tensors = TensorDataset(torch.zeros(4, 1, 6, 6), torch.tensor([0, 1, 2, 4]))
    mixed = coerce_splits((tensors, torch.zeros(2, 1, 6, 6), (np.zeros((3, 1, 6, 6)), np.zeros(3, int))))
    assert mixed.num_classes == 5


def test_without_val_a_seeded_tenth_of_train_is_held_out() -> None:
    x, y = xy(50)
    out = coerce_splits({"train": (x, y), "calib": x[:4], "test": xy(10)}, seed=3)
    assert len(out.train) == 45 and len(out.val.labels) == 5
    trained = {row.numpy().tobytes() for row, _ in out.train}
    assert not trained & {row.tobytes() for row in out.val.inputs}      # never trained on
    again = coerce_splits({"train": (x, y), "calib": x[:4], "test": xy(10)}, seed=3)
    np.testing.assert_array_equal(again.val.inputs, out.val.inputs)     # reproducible
    from_dataset = coerce_splits({"train": PairDataset(20), "calib": x[:4], "eval": xy(10)})
    assert len(from_dataset.train) == 18 and len(from_dataset.val.labels) == 2


def test_existing_splits_pass_through() -> None:
    held = EvalData(np.zeros((1, 1), np.float32), np.zeros(1, np.int64))
    splits = DataSplits(train=TensorDataset(torch.zeros(2, 1)), calib=np.zeros((1, 1), np.float32), val=held, test=held,
                        num_classes=2, preprocessing={})
    assert coerce_splits(splits) is splits
    with pytest.raises(ValueError, match="num_classes=2"):
        coerce_splits(splits, num_classes=5)


@pytest.mark.parametrize("obj, error, match", [
    ("data.npz", TypeError, "returned str; expected a DataSplits"),
    ({"train": xy(4), "calib": xy(2)}, ValueError, "without eval"),
    ({"train": xy(4), "calib": xy(2), "eval": xy(2), "test": xy(2)}, ValueError, "both eval and test"),
    ({"train": xy(4), "calib": xy(2), "eval": xy(2), "valid": 1}, ValueError, "unknown keys"),
    ((xy(4), xy(2)), TypeError, "returned tuple"),
    ({"train": [1, 2, 3], "calib": xy(2), "eval": xy(2)}, TypeError, "data train: got list"),
    ({"train": Stream(), "calib": xy(2), "eval": xy(2)}, TypeError, "IterableDataset"),
    ({"train": xy(4), "calib": "x", "eval": xy(2)}, TypeError, "data calib: got str"),
    ({"train": xy(4), "calib": xy(2), "eval": xy(2)[0]}, TypeError, "data eval: got ndarray"),
    ({"train": xy(4), "calib": np.zeros((2, 1, 5, 5)), "eval": xy(2)}, ValueError, "calib: samples have shape"),
    ({"train": xy(4), "calib": xy(2), "eval": (xy(2)[0], np.array([0.5, 1]))}, TypeError, "integer class ids"),
    ({"train": xy(4), "calib": xy(2), "eval": (xy(2)[0], np.array([0, 1, 2]))}, ValueError, r"expected \(2,\)"),
    ({"train": xy(4), "calib": xy(2), "eval": (np.zeros((0, 1, 6, 6)), np.zeros(0, int))}, ValueError, "empty"),
    ({"train": xy(4), "calib": xy(2), "eval": (xy(2)[0], np.array([0, -1]))}, ValueError, "negative"),
    ({"train": xy(4), "calib": xy(2), "eval": xy(2), "preprocessing": "imagenet"}, TypeError, "preprocessing"),
])
def test_bad_input(obj: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        coerce_splits(obj)


def test_labels_beyond_num_classes() -> None:
    with pytest.raises(ValueError, match="labels go up to 2 but num_classes=2"):
        coerce_splits({"train": xy(4), "calib": xy(2), "eval": xy(6)}, num_classes=2)
