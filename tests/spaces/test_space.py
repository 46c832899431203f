"""Space: which knobs a model gets, how they are sampled and replayed, and how a plan is applied."""
from __future__ import annotations

import optuna
import pytest
import torch
from torch import nn

from spaces.base import Plan, PlanError
from spaces.layers import prunable_groups
from spaces.pruning import PruneRatio
from spaces.quantization import Precision
from spaces.kinds.prune import PruneSpec
from spaces.kinds.quant import QuantSpec
from spaces.space import Space, layer_of
from tinynet import tiny_net

optuna.logging.set_verbosity(optuna.logging.WARNING)

LAYERS = ["stem.0", "layer1.conv1", "layer1.conv2", "down.0", "layer2.conv1", "layer2.conv2", "fc"]
GROUP_ROOTS = {"layer1.conv1", "layer1.conv2", "layer2.conv1", "layer2.conv2"}


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return tiny_net().eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def build(model, x, *, prune: PruneSpec = PruneSpec(), quant: QuantSpec = QuantSpec()) -> Space:
    return Space.build(model, x, prune_spec=prune, quant_spec=quant)


@pytest.fixture(scope="module")
def space(model, x) -> Space:
    return build(model, x)


def names(knobs) -> list[str]:
    return [k.name for k in knobs]


def test_build_makes_one_prune_knob_per_group_and_one_precision_per_layer(space, model, x):
    assert space.head == "fc"
    expected_roots = list(prunable_groups(model, x, ignored=["fc"]))
    assert set(expected_roots) == GROUP_ROOTS
    assert names(space.prune_knobs) == [f"prune.{root}" for root in expected_roots]
    assert names(space.quant_knobs) == [f"quant.{layer}" for layer in LAYERS]  # definition order
    assert space.knobs == (*space.prune_knobs, *space.quant_knobs)  # prune first, then quant
    assert all(isinstance(k, PruneRatio) and k.choices == PruneSpec().ratios for k in space.prune_knobs)
    assert all(isinstance(k, Precision) and k.choices == QuantSpec().precisions for k in space.quant_knobs)
    assert "prune.fc" not in names(space.knobs)  # the head's outputs are the classes


def test_knob_order_is_stable_across_builds(space, model, x):
    again = build(tiny_net(), x)
    assert names(again.knobs) == names(space.knobs)


def test_range_spec_makes_range_knobs(model, x):
    space = build(model, x, prune=PruneSpec(ratios=None, low=0.0, high=0.25, step=0.125))
    knob = space.prune_knobs[0]
    assert knob.choices is None and (knob.low, knob.high, knob.step) == (0.0, 0.25, 0.125)


def test_invalid_ratio_in_spec_is_refused(model, x):
    with pytest.raises(PlanError, match=r"prune.*1\.0.*outside \[0, 1\)"):
        build(model, x, prune=PruneSpec(ratios=(0.0, 1.0)))
    with pytest.raises(PlanError, match="low <= high"):
        build(model, x, prune=PruneSpec(ratios=None, low=0.5, high=0.25))


def test_invalid_precision_in_spec_is_refused(model, x):
    with pytest.raises(PlanError, match="quant.*unknown precision 'int3'"):
        build(model, x, quant=QuantSpec(precisions=("fp32", "int3")))


def test_unknown_importance_fails_at_config_time():
    with pytest.raises(PlanError, match="importance.*taylor"):
        PruneSpec(importance="taylor")


def test_prune_exclusion_removes_the_whole_group_containing_the_layer(model, x):
    # stem.0 is no root, but it shares channels with layer1.conv2 through the residual add
    space = build(model, x, prune=PruneSpec(exclude=("stem.0",)))
    assert set(names(space.prune_knobs)) == {"prune.layer1.conv1", "prune.layer2.conv1", "prune.layer2.conv2"}
    assert len(space.quant_knobs) == len(LAYERS)  # quantization is not affected
    # layer1.conv1 sits in its own group and, by its inputs, in layer1.conv2's
    space = build(model, x, prune=PruneSpec(exclude=("layer1.conv1",)))
    assert set(names(space.prune_knobs)) == {"prune.layer2.conv1", "prune.layer2.conv2"}


def test_quant_exclusion_removes_only_that_knob(model, x):
    space = build(model, x, quant=QuantSpec(exclude=("fc", "stem.0")))
    assert names(space.quant_knobs) == [f"quant.{n}" for n in LAYERS if n not in ("fc", "stem.0")]
    assert set(names(space.prune_knobs)) == {f"prune.{r}" for r in GROUP_ROOTS}


@pytest.mark.parametrize("kind", ["prune", "quant"])
def test_unknown_excluded_layer_is_a_plan_error_listing_the_layers(model, x, kind):
    spec = {"prune": PruneSpec(exclude=("layer9",)), "quant": QuantSpec(exclude=("layer9",))}[kind]
    with pytest.raises(PlanError) as info:
        build(model, x, **{kind: spec})
    message = str(info.value)
    assert f"space.{kind}.exclude" in message and "'layer9'" in message
    assert all(layer in message for layer in LAYERS)


def test_suggest_replays_from_fixed_trial_params(space):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    plans = []
    for _ in range(5):
        trial = study.ask()
        plan = space.suggest(trial)
        assert list(trial.params) == names(space.knobs)  # every knob, in the space's order
        assert plan.params() == trial.params
        replayed = space.suggest(optuna.trial.FixedTrial(trial.params))
        assert replayed == plan
        space.check(plan)
        plans.append(plan)
    assert len(set(plans)) > 1


def test_suggest_from_a_hand_written_trial(space):
    params = {**{k.name: 0.25 for k in space.prune_knobs}, **{k.name: "int4" for k in space.quant_knobs}}
    params["prune.layer1.conv1"] = 0.5
    params["quant.fc"] = "fp32"
    plan = space.suggest(optuna.trial.FixedTrial(params))
    assert plan.prune["layer1.conv1"] == 0.5 and plan.prune["layer2.conv2"] == 0.25
    assert plan.quant["fc"] == "fp32" and plan.quant["stem.0"] == "int4"


def test_check_accepts_plans_of_the_space(space):
    space.check(Plan())
    space.check(Plan(prune={"layer1.conv2": 0.375}, quant={"fc": "int16"}))


def test_check_rejects_an_unknown_knob(space):
    with pytest.raises(PlanError) as info:
        space.check(Plan(prune={"fc": 0.25}))
    message = str(info.value)
    assert message.startswith("prune.fc: not a knob")
    assert "prune.layer1.conv1" in message
    with pytest.raises(PlanError, match="quant.layer9"):
        space.check(Plan(quant={"layer9": "int8"}))
    # an excluded layer is no knob either
    excluded = build(tiny_net(), torch.zeros(1, 1, 28, 28), quant=QuantSpec(exclude=("fc",)))
    with pytest.raises(PlanError, match="quant.fc"):
        excluded.check(Plan(quant={"fc": "int8"}))


def test_check_rejects_values_outside_the_space(space):
    with pytest.raises(PlanError, match=r"prune.layer1.conv1=0.3 is outside"):
        space.check(Plan(prune={"layer1.conv1": 0.3}))
    with pytest.raises(PlanError, match="quant.fc='fp16' is outside"):
        space.check(Plan(quant={"fc": "fp16"}))  # a valid precision, but not offered


def test_check_with_a_range_space_respects_the_grid(model, x):
    space = build(model, x, prune=PruneSpec(ratios=None, low=0.0, high=0.5, step=0.125))
    space.check(Plan(prune={"layer1.conv1": 0.375}))
    for off in (0.3, 0.625):
        with pytest.raises(PlanError, match="outside"):
            space.check(Plan(prune={"layer1.conv1": off}))


def test_uniform_and_reference_plans(space):
    plan = space.uniform(0.25, "int8")
    assert plan.prune == {root: 0.25 for root in GROUP_ROOTS}
    assert plan.quant == {layer: "int8" for layer in LAYERS}
    space.check(plan)
    identity, int8, pruned = space.reference_plans(uniform_ratio=0.5)
    assert identity.is_identity and identity == space.uniform(0.0, "fp32")
    assert int8 == space.uniform(0.0, "int8")
    assert pruned == space.uniform(0.5, "int8")
    with pytest.raises(PlanError):
        space.uniform(1.0, "int8")


def test_precisions_default_to_fp32(space, model, x):
    assert space.precisions(Plan()) == {layer: "fp32" for layer in LAYERS}
    assert list(space.precisions(Plan())) == LAYERS
    got = space.precisions(Plan(quant={"fc": "int4", "stem.0": "fp16"}))
    assert got == {**{layer: "fp32" for layer in LAYERS}, "fc": "int4", "stem.0": "fp16"}
    excluded = build(model, x, quant=QuantSpec(exclude=("fc",)))
    assert "fc" not in excluded.precisions(Plan())  # left out entirely: quantize() keeps it fp32


def test_apply_returns_a_pruned_copy(space, model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = space.apply(model, space.uniform(0.5, "int8"))
    assert pruned is not model
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert pruned.layer1.conv1.out_channels == 8
    assert pruned.stem[0].out_channels == 8
    assert pruned.layer2.conv2.out_channels == 16
    assert pruned.fc.in_features == 16 and pruned.fc.out_features == 10
    assert pruned(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_apply_rounds_channels_and_honours_exclusions(model, x):
    space = build(model, x, prune=PruneSpec(ratios=(0.0, 0.3), exclude=("stem.0",), round_to=4))
    plan = space.uniform(0.3, "fp32")
    assert "layer1.conv2" not in plan.prune
    pruned = space.apply(model, plan)
    assert pruned.layer1.conv1.out_channels == 8       # int(16 * 0.7) = 11, rounded down to 8
    assert pruned.layer2.conv1.out_channels == 20      # int(32 * 0.7) = 22, rounded down to 20
    assert pruned.stem[0].out_channels == 16           # excluded group untouched
    assert pruned.layer1.conv2.out_channels == 16


def test_apply_with_identity_plan_changes_nothing(space, model, x):
    pruned = space.apply(model, space.uniform(0.0, "int8"))
    with torch.no_grad():
        assert torch.equal(pruned(x), model(x))


def test_layer_of():
    assert layer_of("quant.layer1.0.conv1") == "layer1.0.conv1"
    assert layer_of("prune.fc") == "fc"


def test_blocks_hold_the_prune_knobs_of_one_resolution(space):
    # 28x28 input: layer1 runs at 14x14, layer2 at 7x7
    assert sorted(map(sorted, space.blocks)) == [["prune.layer1.conv1", "prune.layer1.conv2"],
                                                 ["prune.layer2.conv1", "prune.layer2.conv2"]]


def test_stage_blocks_group_by_kind_and_resolution():
    from spaces.stages import stage_blocks

    knobs = {"prune.a": "a", "prune.b": "b", "quant.a": "a", "quant.b": "b", "prune.c": "c"}
    assert stage_blocks(knobs, {"a": "8x8", "b": "8x8", "c": "4x4"}) == (("prune.a", "prune.b"),
                                                                        ("quant.a", "quant.b"))


def test_blocks_survive_narrowed_choices(space):
    assert space.with_choices({"quant.fc": ("fp32",)}).blocks == space.blocks
