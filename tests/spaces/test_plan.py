"""Plan: validation, immutability and every serialised form it round-trips through."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest

from spaces.base import PRECISIONS, Plan, PlanError, check_precision, check_ratio
from spaces.kinds import registry

PLAN = Plan(prune={"layer2.conv1": 0.25, "layer1.conv1": 0.5, "b.0": 0.0},
            quant={"fc": "int8", "stem.0": "fp16", "a": "int4", "layer1.conv1": "int16"})


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, math.nan, math.inf, -math.inf])
def test_ratio_outside_unit_interval_is_refused_with_its_key(ratio):
    with pytest.raises(PlanError) as info:
        Plan(prune={"layer1.conv1": ratio})
    message = str(info.value)
    assert "prune.layer1.conv1" in message
    assert "[0, 1)" in message


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.999])
def test_ratio_inside_unit_interval_is_kept_as_float(ratio):
    plan = Plan(prune={"x": ratio})
    assert plan.prune["x"] == ratio
    assert type(plan.prune["x"]) is float


def test_ratio_given_as_int_or_string_is_converted():
    assert Plan(prune={"x": 0}).prune["x"] == 0.0
    assert Plan(prune={"x": "0.25"}).prune["x"] == 0.25


@pytest.mark.parametrize("ratio", [None, "half", [0.5]])
def test_ratio_that_is_not_a_number_is_a_plan_error(ratio):
    with pytest.raises(PlanError, match=r"prune\.x"):
        Plan(prune={"x": ratio})


@pytest.mark.parametrize("precision", ["int2", "FP32", "bf16", "", 8])
def test_unknown_precision_names_key_and_allowed_values(precision):
    with pytest.raises(PlanError) as info:
        Plan(quant={"layer2.conv2": precision})
    message = str(info.value)
    assert "quant.layer2.conv2" in message
    assert repr(precision) in message
    for allowed in PRECISIONS:
        assert allowed in message


def test_check_helpers_return_their_value():
    assert check_ratio("k", 0.125) == 0.125
    for precision in PRECISIONS:
        assert check_precision("k", precision) == precision


def test_plan_is_frozen():
    plan = Plan(prune={"a": 0.25})
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.prune = {}  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.quant = {}  # type: ignore[misc]


def test_mappings_are_immutable_and_independent_of_the_input():
    source = {"b": 0.25, "a": 0.5}
    plan = Plan(prune=source, quant={"z": "int8"})
    with pytest.raises(TypeError):
        plan.prune["a"] = 0.0  # type: ignore[index]
    with pytest.raises(TypeError):
        plan.quant["z"] = "fp32"  # type: ignore[index]
    source["a"] = 0.75
    source["c"] = 0.1
    assert dict(plan.prune) == {"a": 0.5, "b": 0.25}


def test_mappings_are_sorted_by_layer_name():
    assert list(PLAN.prune) == sorted(PLAN.prune) == ["b.0", "layer1.conv1", "layer2.conv1"]
    assert list(PLAN.quant) == ["a", "fc", "layer1.conv1", "stem.0"]


def test_equal_plans_from_differently_ordered_input_are_equal_and_hash_equal():
    other = Plan(prune=dict(reversed(list(PLAN.prune.items()))), quant=dict(reversed(list(PLAN.quant.items()))))
    assert other == PLAN
    assert hash(other) == hash(PLAN)
    assert len({other, PLAN}) == 1
    assert Plan(prune={"a": 0.25}) != Plan(prune={"a": 0.5})
    assert Plan(quant={"a": "int8"}) != Plan(quant={"a": "int4"})


def test_is_identity():
    assert Plan().is_identity
    assert Plan(prune={"a": 0.0}, quant={"a": "fp32"}).is_identity
    assert not Plan(prune={"a": 0.125}).is_identity
    assert not Plan(quant={"a": "fp16"}).is_identity


def test_to_dict_from_dict_round_trip():
    data = PLAN.to_dict()
    assert data == {"prune": {"b.0": 0.0, "layer1.conv1": 0.5, "layer2.conv1": 0.25},
                    "quant": {"a": "int4", "fc": "int8", "layer1.conv1": "int16", "stem.0": "fp16"}}
    assert type(data["prune"]) is dict and type(data["quant"]) is dict
    assert Plan.from_dict(data) == PLAN
    data["prune"]["b.0"] = 0.5  # a plain copy: editing it leaves the plan alone
    assert PLAN.prune["b.0"] == 0.0


def test_from_dict_with_missing_sections_is_empty():
    assert Plan.from_dict({}) == Plan()
    assert Plan.from_dict({"quant": {"fc": "int8"}}) == Plan(quant={"fc": "int8"})


def test_from_dict_validates_values():
    with pytest.raises(PlanError, match="prune.x"):
        Plan.from_dict({"prune": {"x": 1.0}})
    with pytest.raises(PlanError, match="quant.x"):
        Plan.from_dict({"quant": {"x": "int3"}})


def test_unknown_section_is_refused_with_its_name_and_the_allowed_ones():
    with pytest.raises(PlanError) as info:
        Plan.from_dict({"prune": {}, "distill": {"a": 1}, "zz": {}})
    message = str(info.value)
    assert "distill" in message and "zz" in message
    for kind in registry():
        assert kind in message


def test_json_round_trip():
    text = PLAN.to_json()
    assert json.loads(text) == PLAN.to_dict()
    assert Plan.from_json(text) == PLAN
    assert Plan.from_json(Plan().to_json()) == Plan()


def test_from_json_refuses_invalid_content():
    with pytest.raises(PlanError):
        Plan.from_json('{"prune": {"a": 2.0}}')
    with pytest.raises(PlanError):
        Plan.from_json('{"quantize": {}}')


def test_params_are_flat_knob_names():
    assert PLAN.params() == {
        "prune.b.0": 0.0, "prune.layer1.conv1": 0.5, "prune.layer2.conv1": 0.25,
        "quant.a": "int4", "quant.fc": "int8", "quant.layer1.conv1": "int16", "quant.stem.0": "fp16",
    }


def test_from_params_inverts_params():
    assert Plan.from_params(PLAN.params()) == PLAN
    # the layer part keeps its own dots: only the first one separates the kind
    assert Plan.from_params({"prune.a.b.c": 0.25}).prune == {"a.b.c": 0.25}


def test_from_params_validates_values():
    with pytest.raises(PlanError, match="prune.layer1.conv1"):
        Plan.from_params({"prune.layer1.conv1": 1.0})
    with pytest.raises(PlanError, match="quant.fc"):
        Plan.from_params({"quant.fc": "int32"})


@pytest.mark.parametrize("extra", [{"lr": 0.1}, {"finetune.steps": 10}, {"distill.fc": 0.5}])
def test_from_params_refuses_a_parameter_of_no_known_kind(extra):
    """A stored study whose params name a kind this version lacks must not load as a smaller plan."""
    with pytest.raises(PlanError) as info:
        Plan.from_params({**PLAN.params(), **extra})
    assert next(iter(extra)).partition(".")[0] in str(info.value)


def test_needs_finetune_only_for_kinds_that_change_the_structure():
    assert Plan(prune={"a": 0.25}).needs_finetune
    assert not Plan(prune={"a": 0.0}, quant={"a": "int8"}).needs_finetune
