"""Built-in data: MNIST-format IDX files turned into train / calibration / eval splits.

The default root is where Debian's ``dataset-fashion-mnist`` package puts
Fashion-MNIST, so nothing is downloaded at run time. :class:`DataSplits` is the
one shape every data source is brought to, including a user's own factory output
(see :func:`zoo.splits.coerce_splits`, re-exported here).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from evaluators.base import EvalData
from zoo.idx import read_idx, write_idx
from zoo.preprocess import LazyImageDataset, Preprocess

__all__ = [
    "DEFAULT_ROOT", "IDX_FILES", "VAL_FRACTION", "DataSplits", "carve", "coerce_splits", "find_idx_files", "idx_splits",
    "load_idx_arrays", "read_idx", "write_idx",
]

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
"""The four MNIST-format files a root must hold, each raw or with ``.gz`` appended."""

VAL_FRACTION = 0.1
"""Share of the training data held out as the validation split when a source gives none."""

EAGER_LIMIT_BYTES = 256 * 2**20
"""Training sets whose float32 copy would exceed this stay uint8 and are transformed per item."""


@dataclass(frozen=True)
class DataSplits:
    """Everything a search needs from a data source.

    ``train`` fine-tunes pruned models, ``calib`` calibrates ONNX Runtime static
    quantization, ``val`` is what every trial is scored and selected on, ``test`` is
    touched only to report the chosen models (a front picked as the best of many draws on
    one split overstates its accuracy there), and ``preprocessing`` records how raw
    images became these tensors.
    """

    train: Dataset                       # yields (float32 CHW tensor, int64 label)
    calib: np.ndarray                    # float32 NCHW, for ONNX Runtime calibration
    val: EvalData                        # held out from training; the search selects on it
    test: EvalData                       # the held-out test split; only reported
    num_classes: int
    preprocessing: dict                  # JSON-able description of the transform

    def __post_init__(self) -> None:
        if self.val.input_shape != self.test.input_shape:
            raise ValueError(f"data: val samples have shape {self.val.input_shape} but test samples have "
                             f"{self.test.input_shape}; all splits must be preprocessed alike")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, without the batch axis."""
        return self.test.input_shape


def find_idx_files(root: str | Path) -> dict[str, Path]:
    """Locate the four IDX files under ``root``, preferring the raw over the ``.gz`` copy.

    Raises one ``FileNotFoundError`` naming the folder, every missing file and the fix.
    """
    root = Path(root)
    found: dict[str, Path] = {}
    missing: list[str] = []
    for key, name in IDX_FILES.items():
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            missing.append(f"{name}[.gz]")
    if missing:
        where = f"{root}" if root.is_dir() else f"{root} (the folder does not exist)"
        raise FileNotFoundError(
            f"MNIST-format data not found in {where}: missing {', '.join(missing)}. "
            "Install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
            "or set data.root=<folder with MNIST-format IDX files>."
        )
    return found


def load_idx_arrays(root: str | Path = DEFAULT_ROOT) -> dict[str, np.ndarray]:
    """Read and cross-check the four files: uint8 ``(N, H, W)`` images and int64 labels.

    The arrays are read-only and cached per (file, size, mtime), so repeated calls
    (tests, several studies in one process) do not gunzip 30 MB again.
    """
    paths = find_idx_files(root)
    key = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths.values())
    return _load_cached(key, str(root))


@lru_cache(maxsize=2)
def _load_cached(key: tuple[tuple[str, int, int], ...], root: str) -> dict[str, np.ndarray]:
    paths = dict(zip(IDX_FILES, (Path(entry[0]) for entry in key)))
    arrays: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        images = read_idx(paths[f"{split}_images"], expect_ndim=3)
        labels = read_idx(paths[f"{split}_labels"], expect_ndim=1)
        if images.dtype != np.uint8:
            raise ValueError(f"IDX file {paths[f'{split}_images']}: images are {images.dtype}, expected uint8")
        if len(images) != len(labels):
            raise ValueError(f"{split} split in {root}: {len(images)} images but {len(labels)} labels")
        if len(images) == 0:
            raise ValueError(f"IDX file {paths[f'{split}_images']}: holds no images")
        if labels.min() < 0:
            raise ValueError(f"IDX file {paths[f'{split}_labels']}: negative labels")
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels.astype(np.int64)
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise ValueError(f"{root}: train images are {arrays['train_images'].shape[1:]} "
                         f"but test images are {arrays['test_images'].shape[1:]}")
    for array in arrays.values():
        array.setflags(write=False)
    return arrays


def idx_splits(*, root: str = DEFAULT_ROOT, image_size: int | None = None, channels: int = 1,
               train_limit: int | None = None, eval_limit: int | None = None, calib_size: int = 256,
               val_fraction: float = VAL_FRACTION, seed: int = 0, mean: tuple[float, ...] | None = None,
               std: tuple[float, ...] | None = None) -> DataSplits:
    """Train / calib / val / test splits from MNIST-format files (Fashion-MNIST by default).

    ``val`` is a seeded ``val_fraction`` of the training file, carved before
    ``train_limit`` applies, so the validation images never change with the training
    budget and are never trained on. ``train_limit`` keeps a seeded subset of the rest;
    ``eval_limit`` keeps a seeded subset of each held-out split (val and test), for tests
    and quick runs. ``calib`` is ``calib_size`` images drawn, seeded, from the training set.
    Pixels are scaled to [0, 1], resized to ``image_size`` if given, repeated to
    ``channels`` and normalised with ``mean`` / ``std`` (defaults: Fashion-MNIST
    statistics for 1 channel, ImageNet's for 3).

    The held-out splits are always held as float32 arrays (10k images at 3x64x64 is about
    0.5 GB); for large ``image_size`` set ``eval_limit``. A training set whose float32
    copy would pass 256 MiB stays uint8 and is transformed per item instead.
    """
    preprocess = Preprocess.build(image_size=image_size, channels=channels, mean=mean, std=std)
    for name, value in (("train_limit", train_limit), ("eval_limit", eval_limit)):
        if value is not None and value < 1:
            raise ValueError(f"data.{name}={value!r}; allowed: a positive int, or None for the whole split")
    if calib_size < 1:
        raise ValueError(f"data.calib_size={calib_size!r}; allowed: a positive int")
    arrays = load_idx_arrays(root)
    pool, held = carve(len(arrays["train_images"]), val_fraction, seed)
    train_idx = pool[_subset(len(pool), train_limit, seed, stream=0)]
    val_idx = held[_subset(len(held), eval_limit, seed, stream=3)]
    eval_idx = _subset(len(arrays["test_images"]), eval_limit, seed, stream=1)
    train_x = torch.from_numpy(arrays["train_images"][train_idx])
    train_y = torch.from_numpy(arrays["train_labels"][train_idx])
    test_x = torch.from_numpy(arrays["test_images"][eval_idx])
    test_y = arrays["test_labels"][eval_idx]

    calib_rng = np.random.default_rng([seed, 2])
    calib_idx = np.sort(calib_rng.choice(len(train_x), size=min(calib_size, len(train_x)), replace=False))
    calib = preprocess.apply_chunked(train_x[torch.from_numpy(calib_idx)])

    per_image = int(np.prod(preprocess.output_shape(*train_x.shape[1:]))) * 4
    if per_image * len(train_x) <= EAGER_LIMIT_BYTES:
        train: Dataset = TensorDataset(torch.from_numpy(preprocess.apply_chunked(train_x)), train_y)
    else:
        train = LazyImageDataset(train_x, train_y, preprocess)
    num_classes = int(max(arrays["train_labels"].max(), arrays["test_labels"].max())) + 1
    return DataSplits(
        train=train,
        calib=calib,
        val=EvalData(inputs=preprocess.apply_chunked(torch.from_numpy(arrays["train_images"][val_idx])),
                     labels=arrays["train_labels"][val_idx]),
        test=EvalData(inputs=preprocess.apply_chunked(test_x), labels=test_y),
        num_classes=num_classes,
        preprocessing=preprocess.describe(),
    )


def carve(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices ``(rest, held)`` of a seeded ``fraction`` of ``range(n)`` held out for validation.

    The same ``n``, ``fraction`` and ``seed`` always hold out the same samples, on any machine.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.val_fraction={fraction!r}; allowed: a fraction strictly between 0 and 1")
    count = min(n - 1, max(1, round(n * fraction)))
    if count < 1:
        raise ValueError(f"data: {n} training samples are too few to hold out a validation split")
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng([seed, 4]).choice(n, size=count, replace=False)] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def _subset(n: int, limit: int | None, seed: int, *, stream: int) -> np.ndarray:
    """Sorted indices of a seeded subset of ``range(n)``; all of it when ``limit`` is None or >= n."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, stream]).choice(n, size=limit, replace=False))


def coerce_splits(obj: Any, *, num_classes: int | None = None, val_fraction: float = VAL_FRACTION,
                  seed: int = 0) -> DataSplits:
    """Bring what a user's data factory returned to a :class:`DataSplits`.

    Accepts a DataSplits, or a mapping / 3-tuple of ``train``, ``calib``, ``eval``
    (the test split; ``test`` is the same key's other name) and optionally ``val``, each
    a torch Dataset or an ``(x, y)`` array pair (``calib`` may be just ``x``). Without
    ``val``, a seeded ``val_fraction`` of ``train`` is held out for validation.
    The work is in ``zoo.splits``, imported here lazily because it builds on this module.
    """
    from zoo.splits import coerce_splits as _coerce

    return _coerce(obj, num_classes=num_classes, val_fraction=val_fraction, seed=seed)
