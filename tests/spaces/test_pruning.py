"""PruneRatio sampling and torch-pruning structured pruning on the tiny residual CNN."""
from __future__ import annotations

import copy
import math

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution
from torch import nn

from spaces.base import PlanError
from spaces.pruning import IMPORTANCES, PruneRatio, prune
from tinynet import tiny_net

optuna.logging.set_verbosity(optuna.logging.WARNING)


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """(out, in) channels/features of every Conv/Linear."""
    return {name: tuple(module.weight.shape[:2]) for name, module in model.named_modules()
            if isinstance(module, (nn.Conv2d, nn.Linear))}


ORIGINAL = {"stem.0": (16, 1), "layer1.conv1": (16, 16), "layer1.conv2": (16, 16), "down.0": (32, 16),
            "layer2.conv1": (32, 32), "layer2.conv2": (32, 32), "fc": (10, 32)}


# --- PruneRatio ------------------------------------------------------------------------------


def test_choices_suggest_the_fixed_value_and_categorical_distribution():
    knob = PruneRatio("prune.layer1.conv1", choices=(0.0, 0.25, 0.5))
    assert knob.suggest(optuna.trial.FixedTrial({"prune.layer1.conv1": 0.25})) == 0.25
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    value = knob.suggest(trial)
    assert value in (0.0, 0.25, 0.5) and isinstance(value, float)
    assert trial.params == {"prune.layer1.conv1": value}
    assert trial.distributions["prune.layer1.conv1"] == CategoricalDistribution([0.0, 0.25, 0.5])


def test_range_suggest_stays_on_the_step_grid():
    knob = PruneRatio("prune.a", low=0.125, high=0.5, step=0.125)
    assert knob.choices is None
    assert knob.suggest(optuna.trial.FixedTrial({"prune.a": 0.375})) == 0.375
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        value = knob.suggest(trial)
        assert trial.distributions["prune.a"] == FloatDistribution(0.125, 0.5, step=0.125)
        assert 0.125 <= value <= 0.5
        steps = (value - 0.125) / 0.125
        assert math.isclose(steps, round(steps), abs_tol=1e-9)
        seen.add(round(value, 6))
    assert seen <= {0.125, 0.25, 0.375, 0.5} and len(seen) >= 3


def test_choices_are_validated_and_normalised_to_floats():
    assert PruneRatio("p", choices=(0, 0.5)).choices == (0.0, 0.5)
    with pytest.raises(PlanError, match="empty"):
        PruneRatio("p", choices=())
    with pytest.raises(PlanError, match="p"):
        PruneRatio("p", choices=(0.0, 1.0))
    with pytest.raises(PlanError):
        PruneRatio("p", choices=(math.nan,))


@pytest.mark.parametrize("low, high, step", [
    (0.5, 0.25, 0.125),   # low > high
    (0.0, 0.5, 0.0),      # no step
    (0.0, 0.5, -0.1),
    (-0.1, 0.5, 0.1),     # low outside [0, 1)
    (0.0, 1.0, 0.25),     # high outside [0, 1)
    (0.0, math.nan, 0.1),
])
def test_invalid_ranges_are_refused(low, high, step):
    with pytest.raises(PlanError, match="prune.x"):
        PruneRatio("prune.x", low=low, high=high, step=step)


def test_allows_matches_what_can_be_sampled():
    listed = PruneRatio("p", choices=(0.0, 0.25))
    assert listed.allows(0.25) and not listed.allows(0.125)
    ranged = PruneRatio("p", low=0.0, high=0.5, step=0.125)
    assert all(ranged.allows(r) for r in (0.0, 0.125, 0.25, 0.375, 0.5))
    assert not ranged.allows(0.625)
    assert not ranged.allows(-0.125)
    assert not ranged.allows(0.3)  # inside the range, but off the grid Optuna samples
    assert PruneRatio("p", low=0.0, high=0.3, step=0.1).allows(0.3)  # float steps: 0.3 / 0.1 != 3 exactly


# --- prune() ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return tiny_net().eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def test_prune_returns_a_copy_and_leaves_the_original_untouched(model, x):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = prune(model, {"layer1.conv2": 0.5, "layer2.conv1": 0.25}, x, ignored=["fc"])
    assert pruned is not model
    assert shapes(model) == ORIGINAL
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert shapes(pruned) != ORIGINAL
    assert not pruned.training


def test_no_active_ratio_gives_an_equal_copy(model, x):
    pruned = prune(model, {"layer1.conv1": 0.0}, x)
    assert pruned is not model
    assert shapes(pruned) == ORIGINAL
    with torch.no_grad():
        assert torch.equal(pruned(x), model(x))


@pytest.mark.parametrize("ratio, round_to, kept", [
    (0.25, None, 12),   # int(16 * 0.75)
    (0.3, None, 11),    # int(16 * 0.7) = 11
    (0.5, None, 8),
    (0.25, 4, 12),
    (0.2, 4, 12),       # int(16 * 0.8) = 12, already a multiple of 4
    (0.3, 4, 8),        # 11 rounded down to a multiple of 4
    (0.5, 4, 8),
])
def test_channels_removed_from_a_group(model, x, ratio, round_to, kept):
    pruned = prune(model, {"layer1.conv1": ratio}, x, ignored=["fc"], round_to=round_to)
    got = shapes(pruned)
    assert got["layer1.conv1"] == (kept, 16)
    assert got["layer1.conv2"] == (16, kept)  # the consumer loses the same input channels
    assert pruned.layer1.bn1.num_features == kept
    if round_to:
        assert kept % round_to == 0
    # nothing outside the group changes
    assert {k: v for k, v in got.items() if not k.startswith("layer1.")} == \
           {k: v for k, v in ORIGINAL.items() if not k.startswith("layer1.")}
    assert pruned(x).shape == (2, 10)


@pytest.mark.parametrize("ratio, round_to, kept", [
    (0.95, None, 1),    # int(16 * 0.05) = 0 would empty the group: one channel stays
    (0.99, None, 1),
    (0.6, 8, 8),        # int(16 * 0.4) = 6 rounds down to 0: one multiple of 8 stays
    (0.9, 4, 4),
])
def test_a_ratio_that_would_empty_the_group_keeps_the_minimum(model, x, ratio, round_to, kept):
    pruned = prune(model, {"layer1.conv1": ratio}, x, ignored=["fc"], round_to=round_to)
    assert pruned.layer1.conv1.out_channels == kept
    assert pruned(x).shape == (2, 10)


@pytest.mark.parametrize("round_to", [None, 4])
def test_a_larger_ratio_never_keeps_more_channels(model, x, round_to):
    kept = [prune(model, {"layer1.conv1": r / 20}, x, ignored=["fc"], round_to=round_to).layer1.conv1.out_channels
            for r in range(20)]
    assert kept[0] == 16
    assert all(a >= b for a, b in zip(kept, kept[1:])), kept
    assert kept[-1] == (round_to or 1)


def test_residual_group_is_pruned_together_and_still_runs(model, x):
    pruned = prune(model, {"layer1.conv2": 0.5}, x, ignored=["fc"], round_to=None)
    got = shapes(pruned)
    # stem output, layer1.conv2 output and the residual add share one set of channels
    assert got["stem.0"] == (8, 1)
    assert got["layer1.conv2"] == (8, 16)
    assert got["layer1.conv1"] == (16, 8)
    assert got["down.0"] == (32, 8)
    assert pruned.stem[1].num_features == 8 and pruned.layer1.bn2.num_features == 8
    with torch.no_grad():
        out = pruned(x)
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_last_residual_group_shrinks_the_head_input_but_not_its_output(model, x):
    pruned = prune(model, {"layer2.conv2": 0.5, "layer2.conv1": 0.25, "layer1.conv2": 0.25,
                           "layer1.conv1": 0.5}, x, ignored=["fc"], round_to=4)
    got = shapes(pruned)
    assert got["fc"] == (10, 16)
    assert got["down.0"] == (16, 12)
    assert got["layer2.conv1"] == (24, 16)
    assert all(out % 4 == 0 for name, (out, _) in got.items() if name != "fc")
    assert pruned(x).shape == (2, 10)


def test_head_is_never_pruned_when_ignored(model, x):
    pruned = prune(model, {"fc": 0.5, "layer2.conv2": 0.5}, x, ignored=["fc"])
    assert pruned.fc.out_features == 10
    assert pruned(x).shape == (2, 10)


def test_excluded_layers_are_untouched(model, x):
    pruned = prune(model, {"layer1.conv1": 0.5, "layer2.conv1": 0.5}, x, ignored=["fc", "layer1.conv1"])
    assert shapes(pruned)["layer1.conv1"] == (16, 16)
    assert torch.equal(pruned.layer1.conv1.weight, model.layer1.conv1.weight)
    assert shapes(pruned)["layer2.conv1"] == (16, 32)


@pytest.mark.parametrize("importance", sorted(IMPORTANCES))
def test_every_importance_prunes(model, x, importance):
    pruned = prune(model, {"layer2.conv1": 0.5}, x, ignored=["fc"], importance=importance)
    assert shapes(pruned)["layer2.conv1"] == (16, 32)


@pytest.mark.parametrize("importance", ["l1", "l2"])
def test_magnitude_importance_removes_the_smallest_channels(model, x, importance):
    weak = copy.deepcopy(model)
    with torch.no_grad():  # every even channel of layer2.conv1 carries almost nothing
        weak.layer2.conv1.weight[::2] *= 1e-3
        weak.layer2.bn1.weight[::2] *= 1e-3
        weak.layer2.conv2.weight[:, ::2] *= 1e-3
    pruned = prune(weak, {"layer2.conv1": 0.5}, x, ignored=["fc"], importance=importance)
    assert torch.equal(pruned.layer2.conv1.weight, weak.layer2.conv1.weight[1::2])
    assert torch.equal(pruned.layer2.conv2.weight, weak.layer2.conv2.weight[:, 1::2])


def test_unknown_importance_is_refused(model, x):
    with pytest.raises(PlanError) as info:
        prune(model, {"layer1.conv1": 0.5}, x, importance="taylor")
    message = str(info.value)
    assert "taylor" in message
    assert all(name in message for name in IMPORTANCES)


def test_unknown_layer_is_refused(model, x):
    with pytest.raises(PlanError, match="layer9"):
        prune(model, {"layer9.conv1": 0.5}, x)
