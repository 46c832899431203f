"""Brief supervised training: it learns, it logs, it reports divergence, it refuses bad settings."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from search.trials.finetune import DivergedError, FinetuneSettings, finetune
from tinynet import tiny_net


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_loss_decreases_on_fashion_mnist(small_splits):
    model = tiny_net()
    logged = []
    curve = finetune(model, small_splits.train, FinetuneSettings(steps=60, batch_size=64, lr=3e-3, log_every=20),
                     log=lambda *point: logged.append(point))
    assert [step for step, _, _ in curve] == [20, 40, 60]
    assert logged == curve
    losses = [loss for _, loss, _ in curve]
    assert losses[-1] < 0.8 * losses[0]
    assert losses[0] < math.log(10) + 0.5  # starts near chance level, not exploded
    assert curve[-1][2] > 50.0  # running accuracy in percent, well above 10 % chance
    assert all(0.0 <= acc <= 100.0 for _, _, acc in curve)
    assert not model.training  # handed back in eval mode


def test_curve_logs_every_n_steps_and_the_last_step():
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 8), torch.randint(0, 3, (64,)))
    calls = []
    curve = finetune(nn.Linear(8, 3), data, FinetuneSettings(steps=23, batch_size=16, log_every=5),
                     log=lambda step, loss, acc: calls.append(step))
    assert [step for step, _, _ in curve] == [5, 10, 15, 20, 23]
    assert calls == [5, 10, 15, 20, 23]
    assert all(isinstance(loss, float) and loss > 0 for _, loss, _ in curve)


def test_training_runs_over_several_epochs():
    """64 samples in batches of 16 are 4 steps an epoch: 10 steps need the loader three times."""
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 8), torch.randint(0, 3, (64,)))
    curve = finetune(nn.Linear(8, 3), data, FinetuneSettings(steps=10, batch_size=16, log_every=100))
    assert curve[-1][0] == 10 and len(curve) == 1


def test_same_seed_same_result():
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 8), torch.randint(0, 3, (64,)))
    settings = FinetuneSettings(steps=8, batch_size=16, log_every=4, lr=1e-2)
    models = []
    for seed in (1, 1, 2):
        torch.manual_seed(0)
        model = nn.Linear(8, 3)
        finetune(model, data, settings, seed=seed)
        models.append(params_of(model))
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])
    assert not all(torch.equal(models[0][k], models[2][k]) for k in models[0])


def test_zero_steps_leaves_the_model_alone():
    model = nn.Linear(8, 3)
    before = params_of(model)
    data = TensorDataset(torch.randn(32, 8), torch.randint(0, 3, (32,)))
    assert finetune(model, data, FinetuneSettings(steps=0)) == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_every_optimizer_updates_the_weights(optimizer):
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    before = params_of(model)
    data = TensorDataset(torch.randn(32, 8), torch.randint(0, 3, (32,)))
    finetune(model, data, FinetuneSettings(steps=2, batch_size=16, optimizer=optimizer, weight_decay=0.01))
    assert not torch.equal(before["weight"], model.weight)


class NaNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * float("nan")


def test_a_model_producing_nan_diverges_at_step_zero():
    data = TensorDataset(torch.randn(32, 8), torch.randint(0, 3, (32,)))
    with pytest.raises(DivergedError, match="nan at step 0"):
        finetune(NaNNet(), data, FinetuneSettings(steps=5, batch_size=16))


def test_a_huge_learning_rate_diverges():
    """Without BatchNorm to renormalise, one SGD step of lr=1e38 overflows the logits."""
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)))
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with pytest.raises(DivergedError) as info:
        finetune(model, data, FinetuneSettings(steps=20, batch_size=16, lr=1e38, optimizer="sgd"))
    assert "fine-tune loss became" in str(info.value)
    assert isinstance(info.value, RuntimeError)


@pytest.mark.parametrize("kwargs, word", [
    ({"optimizer": "rmsprop"}, "rmsprop"),
    ({"steps": -1}, "steps"),
    ({"batch_size": 0}, "batch_size"),
    ({"lr": 0.0}, "lr"),
    ({"lr": -1e-3}, "lr"),
])
def test_invalid_settings_are_refused(kwargs, word):
    with pytest.raises(ValueError, match=word):
        FinetuneSettings(**kwargs)


def test_allowed_optimizers_are_listed():
    with pytest.raises(ValueError) as info:
        FinetuneSettings(optimizer="lion")
    assert all(name in str(info.value) for name in ("adam", "adamw", "sgd"))


class LoopGuard(Dataset):
    """A tiny dataset that stops a runaway loop: every new epoch asks for its length."""

    def __init__(self, n: int) -> None:
        self.inputs, self.labels = torch.randn(n, 4), torch.randint(0, 2, (n,))
        self.len_calls = 0

    def __len__(self) -> int:
        self.len_calls += 1
        if self.len_calls > 10_000:
            raise RuntimeError("finetune keeps restarting an epoch that yields no batch")
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.inputs[index], self.labels[index]


def test_a_training_set_smaller_than_a_batch_does_not_hang():
    data = LoopGuard(10)
    try:
        curve = finetune(nn.Linear(4, 2), data, FinetuneSettings(steps=3, batch_size=32))
    except ValueError as exc:  # a clear refusal is fine too
        assert "batch" in str(exc)
        return
    assert curve[-1][0] == 3


def test_a_ctrl_c_the_garbage_collector_swallowed_ends_the_fine_tune_at_the_next_step(monkeypatch):
    """CI saw a search keep fine-tuning for minutes after Ctrl-C: the interrupt had been dropped inside torch."""
    from search import budget

    data = TensorDataset(torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)))
    steps: list[int] = []

    def log(step: int, loss: float, accuracy: float) -> None:
        steps.append(step)
        if step == 2:
            monkeypatch.setattr(budget._Interrupt, "pending", True)  # as _on_sigint leaves it

    with pytest.raises(KeyboardInterrupt):
        finetune(tiny_net(), data, FinetuneSettings(steps=50, batch_size=16, log_every=1), log=log)
    assert steps == [1, 2]
