"""Brief supervised training: recovers accuracy after pruning, and trains a missing baseline."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Collection

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from search.budget import check_interrupt

OPTIMIZERS = ("adam", "adamw", "sgd")


class DivergedError(RuntimeError):
    """The loss became NaN or infinite; the trial cannot be scored."""


@dataclass(frozen=True)
class FinetuneSettings:
    """``steps`` optimizer updates of ``batch_size`` samples, cosine-decayed from ``lr``."""

    steps: int = 150
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    log_every: int = 25
    # Knowledge distillation from the unpruned baseline: the loss is
    # (1 - distill) * cross-entropy + distill * T^2 * KL(teacher_T || student_T).
    distill: float = 0.0
    temperature: float = 4.0
    not_in_fingerprint = ("log_every",)  # how often progress is logged changes no weight

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r} is unknown; allowed: {', '.join(OPTIMIZERS)}")
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"fine-tune needs steps >= 0, batch_size >= 1 and lr > 0; got {self}")
        if not 0.0 <= self.distill <= 1.0 or self.temperature <= 0:
            raise ValueError(f"fine-tune needs 0 <= distill <= 1 and temperature > 0; got distill={self.distill}, "
                             f"temperature={self.temperature}")


Logger = Callable[[int, float, float], None]
"""Called as ``log(step, loss, running_accuracy_percent)`` every ``log_every`` steps."""


def _optimizer(model: nn.Module, settings: FinetuneSettings) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=0.9, nesterov=True,
                               weight_decay=settings.weight_decay)
    cls = torch.optim.AdamW if settings.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=settings.lr, weight_decay=settings.weight_decay)


def _distilled(loss_fn: nn.Module, settings: FinetuneSettings,
               teacher: nn.Module | None) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss: cross-entropy, blended with the teacher's softened outputs when given."""
    if teacher is None or settings.distill == 0:
        return lambda logits, labels, inputs: loss_fn(logits, labels)
    teacher.eval()
    t = settings.temperature

    def loss(logits: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            soft = F.log_softmax(teacher(inputs) / t, dim=1)
        kd = F.kl_div(F.log_softmax(logits / t, dim=1), soft, log_target=True, reduction="batchmean") * t * t
        return (1 - settings.distill) * loss_fn(logits, labels) + settings.distill * kd

    return loss


def finetune(model: nn.Module, train: Dataset, settings: FinetuneSettings, *, seed: int = 0,
             log: Logger | None = None, teacher: nn.Module | None = None,
             check: Callable[[int, nn.Module], None] | None = None,
             check_at: Collection[int] = ()) -> list[tuple[int, float, float]]:
    """Train ``model`` in place; returns the logged curve ``[(step, loss, accuracy), ...]``.

    With a ``teacher`` and ``settings.distill > 0`` the student also learns the teacher's
    output distribution, which recovers a pruned model faster than labels alone.
    Raises :class:`DivergedError` on a non-finite loss so the trial fails with a reason.
    ``check(step, model)`` runs after each step in ``check_at`` (the model then in whatever
    mode it leaves it, training resumes in train mode); what it raises ends the fine-tune.
    """
    if settings.steps == 0:
        return []
    generator = torch.Generator().manual_seed(seed)
    # Full batches only (a last tiny batch makes BatchNorm noisy), unless the data is smaller than one.
    loader = DataLoader(train, batch_size=settings.batch_size, shuffle=True,
                        drop_last=len(train) >= settings.batch_size, generator=generator)  # type: ignore[arg-type]
    if len(train) == 0:  # type: ignore[arg-type]
        raise ValueError("fine-tune: the training split is empty; give at least one batch of samples")
    optimizer = _optimizer(model, settings)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.steps)
    objective = _distilled(nn.CrossEntropyLoss(), settings, teacher)
    curve: list[tuple[int, float, float]] = []
    seen = correct = 0
    loss_sum = 0.0
    step = 0
    model.train()
    while step < settings.steps:
        for inputs, labels in loader:
            # A Ctrl-C the garbage collector swallowed inside torch (search/budget.py) ends the fine-tune
            # at the next step, not when all its steps are done.
            check_interrupt()
            logits = model(inputs)
            loss = objective(logits, labels, inputs)
            if not math.isfinite(loss.item()):
                raise DivergedError(f"fine-tune loss became {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            try:
                optimizer.step()
            except RuntimeError as exc:  # an overflowing update surfaces here before the loss shows it
                raise DivergedError(f"fine-tune update failed at step {step}: {exc}") from exc
            schedule.step()
            step += 1
            loss_sum += loss.item() * len(labels)
            seen += len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            if step % settings.log_every == 0 or step == settings.steps:
                point = (step, loss_sum / seen, 100.0 * correct / seen)
                curve.append(point)
                if log is not None:
                    log(*point)
                seen = correct = 0
                loss_sum = 0.0
            if check is not None and step in check_at:
                check(step, model)
                model.train()
            if step >= settings.steps:
                break
    model.eval()
    return curve
