"""Turning uint8 greyscale images into the float32 NCHW tensors a model eats.

The same :class:`Preprocess` object is used for the training set (per item, lazily
when the float32 copy would be too large), the calibration array and the held-out
array, so all three see exactly the same transform, and its ``describe()`` output
is what gets recorded next to the deployed model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

GREY_MEAN, GREY_STD = (0.2860,), (0.3530,)
"""Fashion-MNIST pixel statistics (after scaling to [0, 1])."""
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

CHUNK = 1024
"""Images converted per step when materialising float32 arrays, to bound peak memory."""


@dataclass(frozen=True)
class Preprocess:
    """Scale to [0, 1], optionally resize (bilinear), repeat grey to ``channels``, normalise."""

    image_size: int | None
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def build(cls, *, image_size: int | None, channels: int, mean: Sequence[float] | None,
              std: Sequence[float] | None) -> Preprocess:
        """Fill in default statistics and check every option, with messages naming the option."""
        if channels not in (1, 3):
            raise ValueError(f"data.channels={channels!r}; allowed: 1 (grey) or 3 (grey repeated to RGB)")
        if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
            raise ValueError(f"data.image_size={image_size!r}; "
                             "allowed: a positive int, or None to keep the file's size")
        default_mean, default_std = (GREY_MEAN, GREY_STD) if channels == 1 else (IMAGENET_MEAN, IMAGENET_STD)
        mean_t = tuple(float(m) for m in (default_mean if mean is None else mean))
        std_t = tuple(float(s) for s in (default_std if std is None else std))
        for name, values in (("mean", mean_t), ("std", std_t)):
            if len(values) != channels:
                raise ValueError(f"data.{name} has {len(values)} values but channels={channels}; give one per channel")
        if any(s <= 0 for s in std_t):
            raise ValueError(f"data.std={list(std_t)} must be positive")
        return cls(image_size=image_size, channels=channels, mean=mean_t, std=std_t)

    def output_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """CHW shape of one transformed image whose file size is ``height`` x ``width``."""
        if self.image_size is None:
            return (self.channels, height, width)
        return (self.channels, self.image_size, self.image_size)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, H, W)`` -> float32 ``(N, C, H', W')``."""
        x = images.to(torch.float32).div_(255.0).unsqueeze(1)
        if self.image_size is not None and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        if self.channels != 1:
            x = x.expand(-1, self.channels, -1, -1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return ((x - mean) / std).contiguous()

    def describe(self) -> dict[str, Any]:
        """JSON-able record of the transform, stored with the model so deployment can repeat it."""
        return {
            "resize": self.image_size,
            "interpolation": "bilinear",
            "channels": self.channels,
            "scale": 1.0 / 255.0,
            "mean": list(self.mean),
            "std": list(self.std),
            "layout": "NCHW",
            "dtype": "float32",
        }

    def apply_chunked(self, images: torch.Tensor) -> np.ndarray:
        """Transform a whole uint8 stack into one float32 array, ``CHUNK`` images at a time."""
        n, h, w = images.shape
        out = np.empty((n, *self.output_shape(h, w)), dtype=np.float32)
        for start in range(0, n, CHUNK):
            out[start:start + CHUNK] = self(images[start:start + CHUNK]).numpy()
        return out


class LazyImageDataset(Dataset):
    """uint8 images kept as they are, transformed per item.

    Used when a float32 copy of the training set would be too large (e.g. 60k images
    at 3x64x64 is about 3 GB). ``__getitems__`` lets a DataLoader transform a whole
    batch in one call instead of one image at a time.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, preprocess: Preprocess) -> None:
        if images.dtype != torch.uint8 or images.ndim != 3:
            raise ValueError(f"LazyImageDataset wants uint8 (N, H, W) images, got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"LazyImageDataset: {len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.preprocess(self.images[index].unsqueeze(0))[0], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        idx = torch.as_tensor(list(indices), dtype=torch.int64)
        xs = self.preprocess(self.images[idx])
        return list(zip(xs, self.labels[idx]))
