"""A short, deterministic training recipe for the built-in classifiers.

Used to make the baseline model a search starts from, and to fine-tune after
pruning. One-cycle learning rate (warm up, then cosine down to ~0) gets good
accuracy in few epochs, which matters on a 2-core CPU.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

if TYPE_CHECKING:
    import numpy as np

OPTIMIZERS = ("adam", "adamw", "sgd")

RESNET_SMALL_RECIPE: dict[str, float | int | str] = {"epochs": 4, "batch_size": 128, "lr": 4e-3, "optimizer": "adam"}
"""Baseline recipe for ``resnet_small`` on Fashion-MNIST 28x28 (1876 steps): 91.3-92.0 % test
accuracy, about 90 s on 2 idle CPU cores, up to ~3 min when other work shares them.
Re-measure with ``python -m zoo.baseline``."""

LogFn = Callable[[int, float, float], None]
"""``log(step, loss, running_accuracy)``, called every ``log_every`` steps and at the end."""


def train_classifier(model: nn.Module, train_dataset: Dataset, *, epochs: float, batch_size: int, lr: float,
                     optimizer: str = "adam", weight_decay: float = 0.0, seed: int = 0,
                     log: LogFn | None = None, log_every: int = 50, label_smoothing: float = 0.0) -> nn.Module:
    """Train ``model`` in place with cross-entropy and a one-cycle schedule; return it in eval mode.

    ``epochs`` may be fractional (e.g. 0.5 for half a pass). Shuffling, dropout and
    initial order are seeded, so the same call gives the same model. ``lr`` is the
    peak learning rate.
    """
    if epochs <= 0 or batch_size < 1 or lr <= 0:
        raise ValueError(f"train_classifier: epochs={epochs}, batch_size={batch_size}, lr={lr}; all must be positive")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"train_classifier: optimizer={optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
    n = len(train_dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("train_classifier: the training set is empty")
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = max(1, round(epochs * steps_per_epoch))

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _optimizer(optimizer, params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=total_steps, pct_start=0.15, anneal_strategy="cos",
        cycle_momentum=optimizer == "sgd", div_factor=10.0, final_div_factor=100.0,
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    model.train()
    correct = seen = 0
    running_loss = 0.0
    step = 0
    for inputs, labels in _batches(train_dataset, batch_size, generator, total_steps):
        logits = model(inputs)
        loss = loss_fn(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        step += 1
        # Exponential running loss; accuracy over the current logging window.
        running_loss = loss.item() if step == 1 else 0.9 * running_loss + 0.1 * loss.item()
        correct += int((logits.argmax(1) == labels).sum())
        seen += len(labels)
        if log is not None and (step % log_every == 0 or step == total_steps):
            log(step, running_loss, correct / max(seen, 1))
            correct = seen = 0
    return model.eval()


def _optimizer(name: str, params: list[nn.Parameter], *, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)


def _batches(dataset: Dataset, batch_size: int, generator: torch.Generator,
             total_steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled batches, epoch after epoch, until ``total_steps`` batches were given.

    A TensorDataset is sliced directly (one gather per batch instead of one
    ``__getitem__`` per sample), which is several times faster for small images.
    """
    step = 0
    while True:
        if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
            order = torch.randperm(len(dataset), generator=generator)
            xs, ys = dataset.tensors
            batches: Iterator = ((xs[idx], ys[idx]) for idx in order.split(batch_size))
        else:
            batches = iter(DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator))
        for inputs, labels in batches:
            yield inputs, labels.long()
            step += 1
            if step >= total_steps:
                return


@torch.no_grad()
def accuracy(model: nn.Module, inputs: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, *,
             batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on whole arrays, with plain torch."""
    inputs = torch.as_tensor(inputs)
    labels = torch.as_tensor(labels)
    model.eval()
    correct = 0
    for start in range(0, len(inputs), batch_size):
        logits = model(inputs[start:start + batch_size])
        correct += int((logits.argmax(1) == labels[start:start + batch_size]).sum())
    return correct / max(len(inputs), 1)
