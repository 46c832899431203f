"""The knob-kind seam: discovery, the order kinds are applied in, and today's search kept exactly."""
from __future__ import annotations

import pytest
import torch

from spaces.base import Plan, PlanError
from spaces.kinds import DEFAULT_KINDS, kind_named, pipeline, registry
from spaces.kinds.base import STAGES
from spaces.space import Space
from tinynet import tiny_net


def test_every_module_defining_a_kind_is_registered_under_its_name():
    kinds = registry()
    assert {"prune", "quant"} <= set(kinds)
    for name, kind in kinds.items():
        assert kind.name == name and kind.stage in STAGES
        assert kind.check(f"{name}.x", kind.neutral) == kind.neutral  # its neutral value is a valid value


def test_kinds_apply_by_stage_then_rank_whatever_order_they_are_listed_in():
    names = list(registry())
    forward, backward = pipeline(names), pipeline(list(reversed(names)))
    assert forward == backward
    keys = [(STAGES.index(k.stage), k.rank) for k in forward]
    assert keys == sorted(keys)
    assert [k.name for k in pipeline(["quant", "prune"])] == ["prune", "quant"]  # structure before the graph


def test_an_unknown_kind_in_the_space_names_the_known_ones():
    with pytest.raises(PlanError) as info:
        pipeline(["prune", "distill"])
    assert "space.kinds" in str(info.value) and "'distill'" in str(info.value) and "prune" in str(info.value)


def test_an_unknown_setting_of_a_kind_names_the_allowed_ones():
    with pytest.raises(PlanError, match=r"space\.prune\.ratio is not a setting.*allowed: .*ratios"):
        kind_named("prune").spec({"ratio": 0.5})


def test_default_kinds_build_todays_space():
    x = torch.zeros(1, 1, 28, 28)
    space = Space.build(tiny_net(), x)
    assert space.kind_names == DEFAULT_KINDS
    assert [k.name.partition(".")[0] for k in space.knobs] == (
        ["prune"] * len(space.prune_knobs) + ["quant"] * len(space.quant_knobs))
    only_prune = Space.build(tiny_net(), x, kinds=["prune"])
    assert only_prune.quant_knobs == () and only_prune.prune_knobs == space.prune_knobs
    assert only_prune.precisions(space.uniform(0.0, "int8")) == {}


def test_a_plan_of_a_kind_the_space_does_not_search_is_refused():
    space = Space.build(tiny_net(), torch.zeros(1, 1, 28, 28), kinds=["prune"])
    with pytest.raises(PlanError, match="not a knob of this space"):
        space.check(Plan(quant={"fc": "int8"}))


def test_queued_hand_plans_set_every_other_kind_to_its_neutral_value():
    space = Space.build(tiny_net(), torch.zeros(1, 1, 28, 28), kinds=["prune", "quant", "lowrank"])
    uniform = space.uniform(0.25, "int8")
    assert set(uniform.params()) == {k.name for k in space.knobs}  # nothing left for Optuna to draw at random
    assert set(uniform.of("lowrank").values()) == {1.0} and not uniform.of("lowrank") == {}
    partial = Plan(prune={"layer1.conv1": 0.5})
    assert space.complete(partial).prune["layer1.conv1"] == 0.5
    assert space.complete(partial).of("quant") == {k.name.partition(".")[2]: "fp32" for k in space.quant_knobs}


TOY_KIND = '''
from spaces.kinds.base import Choice, KindBase


class Scale(KindBase):
    """Multiplies a layer's weight after fine-tuning: a kind written outside this package."""

    name, stage, rank, neutral = "scale", "trained", 0, 1.0

    def spec(self, section):
        return dict(section)

    def check(self, key, value):
        return float(value)

    def knobs(self, info, spec):
        return tuple(Choice(f"scale.{layer}", (1.0, 2.0)) for layer in info.layers)

    def apply_model(self, model, values, spec, env):
        for layer, factor in values.items():
            model.get_submodule(layer).weight.data *= factor
        return model


KIND = Scale()
'''


def test_a_new_kind_is_one_module_and_nothing_else(tmp_path, monkeypatch):
    import sys

    import spaces.kinds

    (tmp_path / "scale.py").write_text(TOY_KIND)
    monkeypatch.setattr(spaces.kinds, "__path__", [*spaces.kinds.__path__, str(tmp_path)])
    registry.cache_clear()
    try:
        model = tiny_net().eval()
        space = Space.build(model, torch.zeros(1, 1, 28, 28), kinds=["prune", "quant", "scale"])
        assert [k.name for k in space.kinds] == ["prune", "scale", "quant"]  # structure, trained, graph
        plan = space.complete(Plan(scale={"fc": 2.0}))
        assert Plan.from_params(plan.params()) == plan
        finished = space.finish(space.apply(model, plan), plan)
        assert torch.equal(finished.fc.weight, 2 * model.fc.weight)
        assert torch.equal(finished.stem[0].weight, model.stem[0].weight)
    finally:
        monkeypatch.undo()
        sys.modules.pop("spaces.kinds.scale", None)
        registry.cache_clear()
    assert "scale" not in registry()


def test_seeded_plans_add_each_kinds_seed_value_only_where_the_plan_is_neutral():
    space = Space.build(tiny_net(), torch.zeros(1, 1, 28, 28), kinds=["prune", "quant", "share"])
    plan = space.complete(Plan(prune={"layer1.conv1": 0.5}, share={"fc": 4}))
    seeded = space.seeded(plan)
    assert seeded.prune == plan.prune and seeded.quant == plan.quant
    assert seeded.of("share")["fc"] == 4 and set(seeded.of("share").values()) == {4, 6}
    today = Space.build(tiny_net(), torch.zeros(1, 1, 28, 28))
    assert today.seeded(today.complete(plan.__class__(prune=plan.prune))) == today.complete(Plan(prune=plan.prune))
