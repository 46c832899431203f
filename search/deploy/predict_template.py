#!/usr/bin/env python3
"""Classify images with the exported model: ``python predict.py IMAGES.npy [--model model_fp32.onnx]``.

Every deploy package holds this file as ``predict.py``, with the block between the ``runtime``
markers replaced by the package's target's (``search/deploy/targets/predict_<target>.py``). It
needs only numpy and that runtime (``pip install -r requirements.txt``), never torch, and reads
the model the manifest names and ``manifest.json`` from its own folder.

``IMAGES.npy`` holds one of:
  * raw images, ``(N, H, W)`` or a single ``(H, W)``: uint8 pixels 0-255, or floats
    already scaled to [0, 1]. They get the manifest's preprocessing: scale, resize
    (antialiased bilinear, as the search's torch pipeline does it), grey repeated to
    the model's channels, then ``(x - mean) / std``;
  * preprocessed float arrays ``(N, C, H, W)`` in the manifest's input shape, fed as they are.

Prints one line per image: ``<index> <class>``. Exit code 2 on unusable input.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
BATCH = 64

# <runtime>
def load_session(model_path: Path) -> Any:
    """An object with ``batch`` (the input's fixed batch size, or None) and ``run(batch) -> logits``."""
    raise NotImplementedError("the package's target fills this in (search/deploy/targets/predict_<target>.py)")
# </runtime>


def resize_weights(in_size: int, out_size: int) -> np.ndarray:
    """``(out_size, in_size)`` antialiased bilinear weights, computed as torch (antialias=True) and PIL do."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0  # the triangle filter widens when shrinking
    inverse = 1.0 / scale if scale >= 1.0 else 1.0
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        low = max(int(center - support + 0.5), 0)
        high = min(int(center + support + 0.5), in_size)
        taps = np.arange(low, high, dtype=np.float64)
        w = np.clip(1.0 - np.abs((taps - center + 0.5) * inverse), 0.0, None)
        weights[i, low:high] = w / w.sum()
    return weights


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """``(N, H, W)`` float images to ``(N, size, size)``: separable, rows then columns."""
    rows = resize_weights(images.shape[1], size)
    cols = resize_weights(images.shape[2], size)
    out = np.einsum("oh,nhw,pw->nop", rows, images.astype(np.float64), cols)
    return out.astype(np.float32)


def preprocess(images: np.ndarray, spec: Mapping[str, Any], input_shape: Sequence[int]) -> np.ndarray:
    """Turn ``images`` into the float32 ``(N, C, H, W)`` batch the model takes (see the module doc)."""
    x = np.asarray(images)
    shape = tuple(int(d) for d in input_shape)
    if x.ndim == 4:
        if tuple(x.shape[1:]) != shape:
            raise ValueError(f"preprocessed input must be (N, {', '.join(map(str, shape))}), got {x.shape}")
        return np.ascontiguousarray(x, dtype=np.float32)
    x = x[None] if x.ndim == 2 else x
    if x.ndim != 3:
        raise ValueError(f"images must be (N, H, W), (H, W) or (N, C, H, W); got shape {x.shape}")
    if "mean" not in spec or "std" not in spec:
        raise ValueError("the manifest records no preprocessing recipe: pass preprocessed "
                         f"(N, {', '.join(map(str, shape))}) float32 arrays")
    x = x.astype(np.float32)
    if np.asarray(images).dtype == np.uint8:
        x = x / np.float32(round(1.0 / float(spec.get("scale", 1.0 / 255.0)), 6))
    size = spec.get("resize")
    if size and tuple(x.shape[1:]) != (size, size):
        x = resize(x, int(size))
    channels = int(spec.get("channels", 1))
    x = np.repeat(x[:, None], channels, axis=1)
    mean = np.asarray(spec["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec["std"], dtype=np.float32).reshape(1, -1, 1, 1)
    x = (x - mean) / std
    if tuple(x.shape[1:]) != shape:
        raise ValueError(f"images of {images.shape[-2:]} preprocess to {x.shape[1:]}, the model takes {shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def predict(session: Any, batch: np.ndarray) -> np.ndarray:
    """Arg-max class per sample, in chunks (a model with a fixed batch size gets exactly that size)."""
    fixed = session.batch
    step = fixed or BATCH
    classes = []
    for start in range(0, len(batch), step):
        chunk = batch[start:start + step]
        real = len(chunk)
        if fixed and real < fixed:
            chunk = np.concatenate([chunk, np.zeros((fixed - real, *chunk.shape[1:]), dtype=np.float32)])
        logits = np.asarray(session.run(chunk)).reshape(len(chunk), -1)
        classes.append(logits[:real].argmax(axis=1))
    return np.concatenate(classes) if classes else np.zeros(0, dtype=np.int64)


def main(argv: Sequence[str] | None = None) -> int:
    """Print ``<index> <class>`` per image; exit 2 (one line on stderr) when the input cannot be used."""
    manifest = json.loads((HERE / "manifest.json").read_text(encoding="utf-8"))
    model = manifest.get("model", "model.onnx")
    fallback = model.replace("model.", "model_fp32.", 1)
    parser = argparse.ArgumentParser(description="Classify images with the exported model.")
    parser.add_argument("images", type=Path, help=".npy file: (N, H, W) raw images or (N, C, H, W) preprocessed")
    parser.add_argument("--model", type=Path, default=HERE / model,
                        help=f"model file to run (default: {model}; {fallback} is the fp32 fallback)")
    args = parser.parse_args(argv)
    try:
        images = np.load(args.images, allow_pickle=False)
        batch = preprocess(images, manifest.get("preprocessing") or {}, manifest["input"]["shape"][1:])
    except (OSError, ValueError) as exc:
        print(f"predict.py: {exc}", file=sys.stderr)
        return 2
    for index, label in enumerate(predict(load_session(args.model), batch)):
        print(index, int(label))
    return 0


if __name__ == "__main__":
    sys.exit(main())
