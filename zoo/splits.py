"""Coercing a user's own data factory output into :class:`zoo.data.DataSplits`.

Users should not have to learn our dataclass to bring their data: a dict or a
3-tuple of torch Datasets or ``(x, y)`` numpy pairs is enough. Anything else is
rejected with a message that says which part was wrong and what is allowed.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, TensorDataset

from evaluators.base import EvalData
from zoo.data import VAL_FRACTION, DataSplits, carve

ALLOWED = (
    "a DataSplits, or a mapping with train, calib, eval (or test) and optionally val, or a 3-tuple "
    "(train, calib, eval); each given as a torch Dataset yielding (x, label) or as an (x, y) pair of "
    "numpy arrays (calib may also be just x)"
)
KEYS = ("train", "calib", "eval", "test", "val", "num_classes", "preprocessing")
_ARRAY_TYPES = (np.ndarray, torch.Tensor)


def coerce_splits(obj: Any, *, num_classes: int | None = None, val_fraction: float = VAL_FRACTION,
                  seed: int = 0) -> DataSplits:
    """See :func:`zoo.data.coerce_splits`."""
    if isinstance(obj, DataSplits):
        if num_classes is not None and obj.num_classes != num_classes:
            raise ValueError(f"data has num_classes={obj.num_classes} but {num_classes} was asked for")
        return obj
    parts, preprocessing = _parts(obj)
    train = _train_dataset(parts["train"])
    calib = _inputs_only(parts["calib"])
    test = _labelled(parts["test"], "eval")
    if "val" in parts:
        val = _labelled(parts["val"], "val")
    else:
        train, val = _hold_out(train, val_fraction, seed)

    sample_shape = tuple(_as_numpy(train[0][0]).shape)
    for name, shape in (("train", sample_shape), ("calib", calib.shape[1:]), ("val", val.input_shape)):
        if tuple(shape) != test.input_shape:
            raise ValueError(f"data {name}: samples have shape {tuple(shape)} but eval samples have "
                             f"{test.input_shape}; all splits must be preprocessed alike")
    seen = int(max(test.labels.max(), val.labels.max())) + 1
    if isinstance(train, TensorDataset) and len(train.tensors) > 1:
        seen = max(seen, int(train.tensors[1].max()) + 1)
    if num_classes is None:
        num_classes = int(parts.get("num_classes") or seen)
    if seen > num_classes:
        raise ValueError(f"data labels go up to {seen - 1} but num_classes={num_classes}")
    return DataSplits(train=train, calib=calib, val=val, test=test, num_classes=int(num_classes),
                      preprocessing=dict(preprocessing))


def _hold_out(train: Dataset, fraction: float, seed: int) -> tuple[Dataset, EvalData]:
    """A seeded ``fraction`` of ``train`` becomes the validation split; training keeps the rest."""
    rest, held = carve(len(train), fraction, seed)  # type: ignore[arg-type]
    if isinstance(train, TensorDataset):  # arrays: slice them, no per-item copies
        rest_t, held_t = torch.from_numpy(rest), torch.from_numpy(held)
        return (TensorDataset(*(t[rest_t] for t in train.tensors)),
                _labelled(tuple(t[held_t] for t in train.tensors[:2]), "val (held out of train)"))
    return Subset(train, rest.tolist()), _labelled(Subset(train, held.tolist()), "val (held out of train)")


def _labelled(value: Any, name: str) -> EvalData:
    x, y = _pair(value, name)
    if y is None:
        raise ValueError(f"data {name}: labels are required; give (x, y) or a Dataset yielding (x, label)")
    return EvalData(inputs=x, labels=y)


def _parts(obj: Any) -> tuple[dict[str, Any], Mapping[str, Any]]:
    """Split the container into its named parts (``eval`` read as ``test``), checking the required ones."""
    if isinstance(obj, Mapping):
        if "eval" in obj and "test" in obj:
            raise ValueError("data factory returned both eval and test; they name the same split, give one")
        missing = [k for k in ("train", "calib") if k not in obj]
        missing += [] if ("eval" in obj or "test" in obj) else ["eval (or test)"]
        if missing:
            raise ValueError(f"data factory returned a mapping without {', '.join(missing)}; expected {ALLOWED}")
        extra = set(obj) - set(KEYS)
        if extra:
            raise ValueError(f"data factory returned unknown keys {sorted(extra)}; allowed: {', '.join(KEYS)}")
        preprocessing = obj.get("preprocessing") or {}
        if not isinstance(preprocessing, Mapping):
            raise TypeError(f"data preprocessing must be a dict, got {type(preprocessing).__name__}")
        parts = dict(obj)
        parts["test"] = parts.pop("eval", parts.get("test"))
        return parts, preprocessing
    if isinstance(obj, (tuple, list)) and len(obj) == 3:
        return {"train": obj[0], "calib": obj[1], "test": obj[2]}, {}
    raise TypeError(f"data factory returned {type(obj).__name__}; expected {ALLOWED}")


def _is_array(value: Any) -> bool:
    return isinstance(value, _ARRAY_TYPES)


def _pair(value: Any, name: str, *, labels_optional: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """An ``(x, y)`` pair, a bare ``x`` (when allowed) or a Dataset, as float32 x and int64 y."""
    if isinstance(value, Dataset):
        x, y = _collect(value, name, labels_optional=labels_optional)
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_array(v) for v in value):
        x, y = _as_numpy(value[0]), _as_numpy(value[1])
    elif labels_optional and _is_array(value):
        x, y = _as_numpy(value), None
    else:
        kinds = "a torch Dataset, an (x, y) pair of numpy arrays" + (", or an x array" if labels_optional else "")
        raise TypeError(f"data {name}: got {type(value).__name__}; allowed: {kinds}")
    if x.ndim < 2:
        raise ValueError(f"data {name}: x has shape {x.shape}; expected a batch axis then the sample's axes (NCHW)")
    if len(x) == 0:
        raise ValueError(f"data {name}: is empty")
    if not np.issubdtype(x.dtype, np.number):
        raise TypeError(f"data {name}: x has dtype {x.dtype}; expected numbers")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if y is not None:
        y = _labels(y, name, len(x))
    return x, y


def _labels(y: np.ndarray, name: str, n: int) -> np.ndarray:
    y = np.asarray(y).reshape(-1) if np.ndim(y) == 2 and np.shape(y)[1] == 1 else np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"data {name}: labels have shape {y.shape}; expected ({n},) integer class ids")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(np.mod(y, 1) == 0):
            raise TypeError(f"data {name}: labels have dtype {y.dtype}; expected integer class ids")
    if y.min() < 0:
        raise ValueError(f"data {name}: negative labels; expected class ids 0..num_classes-1")
    return y.astype(np.int64)


def _collect(ds: Dataset, name: str, *, labels_optional: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a whole Dataset into arrays, in batches through a DataLoader."""
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for batch in DataLoader(ds, batch_size=256, shuffle=False):
        if isinstance(batch, (tuple, list)) and len(batch) >= 2:
            xs.append(_as_numpy(batch[0]))
            ys.append(_as_numpy(batch[1]))
        elif labels_optional and _is_array(batch):
            xs.append(_as_numpy(batch))
        else:
            raise TypeError(f"data {name}: the Dataset yields {type(batch).__name__}; expected (x, label) pairs")
    if not xs:
        raise ValueError(f"data {name}: is empty")
    return np.concatenate(xs), (np.concatenate(ys) if ys else None)


def _inputs_only(value: Any) -> np.ndarray:
    x, _ = _pair(value, "calib", labels_optional=True)
    return x


def _train_dataset(value: Any) -> Dataset:
    """A Dataset stays as given; an ``(x, y)`` pair becomes a float32 / int64 TensorDataset."""
    if isinstance(value, IterableDataset):
        raise TypeError("data train: an IterableDataset cannot be shuffled; give a map-style Dataset "
                        "(__len__ and __getitem__) or an (x, y) pair of numpy arrays")
    if isinstance(value, Dataset):
        if len(value) == 0:  # type: ignore[arg-type]
            raise ValueError("data train: is empty")
        item = value[0]
        if not (isinstance(item, (tuple, list)) and len(item) >= 2):
            raise TypeError(f"data train: the Dataset yields {type(item).__name__}; expected (x, label) pairs")
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_array(v) for v in value):
        x, y = _pair(value, "train")
        assert y is not None
        return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    raise TypeError(f"data train: got {type(value).__name__}; "
                    "allowed: a torch Dataset or an (x, y) pair of numpy arrays")


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)
