"""The reference model: loaded from a checkpoint, or trained once and cached."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from search.trials.finetune import FinetuneSettings, finetune

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or whose weights do not fit the model."""


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state_dict strictly; only tensors are unpickled (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model.checkpoint={str(path)!r}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises a different type for each way a file can be bad
        raise CheckpointError(f"model.checkpoint={str(path)!r} is not a readable torch checkpoint "
                              f"(a state_dict saved with torch.save): {_load_failure(exc)}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"model.checkpoint={str(path)!r} holds a {type(state).__name__}, not a state_dict")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    not_tensors = sorted(k for k in set(expected) & set(state) if not isinstance(state[k], torch.Tensor))
    if not_tensors:
        raise CheckpointError(f"model.checkpoint={str(path)!r}: {not_tensors[:5]} hold no tensors")
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"model.checkpoint={str(path)!r} does not match the model: "
            f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}, wrong shapes {wrong[:5]}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def _load_failure(exc: Exception) -> str:
    """torch's reason in one line: for a refused object, which class it was; no terminal colours."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return f"it holds a {refused.group(1)} object, and only tensors are loaded (weights_only=True)"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return f"{type(exc).__name__}: {first}"


HELD_OUT_ONLY = ("eval_limit", "calib_size")
"""Data settings that shape only the held-out and calibration splits: the baseline never reads them."""


def cache_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def training_data(data: dict[str, Any]) -> dict[str, Any]:
    """The part of a data config that the baseline's training reads, for its cache key."""
    return {k: v for k, v in data.items() if k not in HELD_OUT_ONLY}


NOT_TRAINING = ("trained",)
"""Model settings that decide whether the baseline is trained at all, not what training makes of it."""


def baseline_key(model: dict[str, Any], data: dict[str, Any]) -> str:
    """The cached baseline's key: the model and data settings its training reads, and nothing else."""
    return cache_key({k: v for k, v in model.items() if k not in NOT_TRAINING}, training_data(data))


def trained_baseline(make_model: Callable[[], nn.Module], train: torch.utils.data.Dataset, *,
                     settings: FinetuneSettings, cache_dir: Path, key: str, seed: int = 0,
                     log_curve: Callable[[int, float, float], None] | None = None, head_steps: int = 0,
                     example: torch.Tensor | None = None) -> nn.Module:
    """Train the baseline with ``settings``, or reuse the checkpoint a previous run cached.

    With ``head_steps`` (and an ``example`` input to find the head) only the classifier head
    is trained first, so a pretrained backbone is not disturbed by a random head's gradients.
    """
    path = cache_dir / f"baseline-{key}.pt"
    torch.manual_seed(seed)
    model = make_model()
    if path.is_file():
        log.info("reusing cached baseline %s", path)
        return load_checkpoint(model, path)
    log.info("no checkpoint given: training the baseline (%d steps), cached at %s", settings.steps, path)
    if head_steps > 0 and example is not None:
        _train_head(model, train, settings, head_steps, example, seed)
    finetune(model, train, settings, seed=seed, log=log_curve or (
        lambda step, loss, acc: log.info("baseline step %d/%d: loss %.3f, train accuracy %.1f%%",
                                         step, settings.steps, loss, acc)))
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(model.state_dict(), partial)
    os.replace(partial, path)  # atomic: a concurrent worker never reads half a file
    return model.eval()


def _train_head(model: nn.Module, train: torch.utils.data.Dataset, settings: FinetuneSettings, steps: int,
                example: torch.Tensor, seed: int) -> None:
    """Train only the classifier head for ``steps``, then make every parameter trainable again."""
    from dataclasses import replace

    from spaces.layers import head_name

    head = model.get_submodule(head_name(model, example))
    frozen = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in head.parameters())]
    for param in frozen:
        param.requires_grad_(False)
    log.info("baseline: training the head %s alone for %d steps", type(head).__name__, steps)
    try:
        finetune(model, train, replace(settings, steps=steps), seed=seed, log=lambda step, loss, acc: log.info(
            "baseline head step %d/%d: loss %.3f, train accuracy %.1f%%", step, steps, loss, acc))
    finally:
        for param in frozen:
            param.requires_grad_(True)
