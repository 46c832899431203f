"""The CI gate: met / not met / bad requirement, as exit codes and one JSON line, on a real 2-trial study."""
from __future__ import annotations

import json

import pytest

from search.cli import main
from search.gate import EXIT_NOT_MET, SENSE, Gate
from search.trials.trial import TrialResult
from spaces.base import Plan

SEARCHED = ["model=custom", "model.factory._target_=tinynet.tiny_net", "model.train.steps=30",
            "data.train_limit=300", "data.eval_limit=200", "data.calib_size=16",
            "evaluator.evaluators.latency.runs=20", "search.n_trials=2", "space.prune.ratios=[0,0.25]",
            "space.quant.precisions=[fp32,int8]", "tracking=none", "quiet=true", "search.study_name=gated"]


def member(number: int, **metrics: float) -> TrialResult:
    return TrialResult(number=number, plan=Plan.from_dict({"prune": {}, "quant": {}}), metrics=metrics,
                       timings={}, model_path="m.onnx", sha256="0")


def test_one_member_must_meet_every_requirement_at_once():
    gate = Gate(require={"size_ratio": 4, "speedup": 1.5})
    small_slow, big_fast = member(0, size_ratio=5.0, speedup=1.1), member(1, size_ratio=2.0, speedup=2.0)
    assert gate.verdict([small_slow, big_fast])["gate"] == "not met"
    both = member(2, size_ratio=4.0, speedup=1.5)
    verdict = gate.verdict([small_slow, both, big_fast])
    assert verdict == {"gate": "met", "require": {"size_ratio": 4.0, "speedup": 1.5},
                       "best": {"trial": 2, "size_ratio": 4.0, "speedup": 1.5}, "front_size": 3}


def test_ceilings_and_the_closest_member():
    gate = Gate(require={"accuracy_drop": 0.5, "size_ratio": 2})
    verdict = gate.verdict([member(0, accuracy_drop=2.0, size_ratio=3.0), member(1, accuracy_drop=0.6,
                                                                                 size_ratio=2.0)])
    assert verdict["gate"] == "not met" and verdict["best"]["trial"] == 1
    assert Gate(require={"accuracy_drop": 0.5}).verdict([])["best"] is None


@pytest.mark.parametrize("require, fragment", [
    ({"size": 4}, "unknown metric 'size'; allowed: " + ", ".join(SENSE)),
    ({"speedup": "fast"}, "gate.require.speedup='fast' is not a number"),
    ({"speedup": True}, "is not a number"),
    ({}, "non-empty mapping"),
    (4, "non-empty mapping"),
])
def test_bad_requirements_name_what_is_allowed(require, fragment):
    with pytest.raises(ValueError, match="gate.require") as caught:
        Gate(require=require)
    assert fragment in str(caught.value)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("gate")


def gated(root, capsys, requirement: str) -> tuple[int, dict, str]:
    code = main(["search", *SEARCHED, f"paths.root={root}/outputs", f"gate.require={requirement}"])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    return code, json.loads(lines[-1])["autosqueeze_gate"], err.strip()


def test_met_exits_0_with_a_json_line(root, capsys):
    code, verdict, _ = gated(root, capsys, "{size_ratio: 1.0, accuracy_drop: 100}")
    assert code == 0 and verdict["gate"] == "met"
    assert verdict["require"] == {"size_ratio": 1.0, "accuracy_drop": 100.0}
    assert set(verdict["best"]) == {"trial", "size_ratio", "accuracy_drop"}


def test_not_met_exits_3_with_one_line_and_the_json(root, capsys):
    code, verdict, err = gated(root, capsys, "{size_ratio: 1000, speedup: 1.5}")  # resumes the study above
    assert code == EXIT_NOT_MET and verdict["gate"] == "not met" and verdict["best"]["trial"] in (0, 1)
    assert err.splitlines()[-1].startswith("gate not met: no feasible front member has size_ratio >= 1000")


@pytest.mark.parametrize("requirement, fragment", [
    ("{size: 4}", "unknown metric 'size'; allowed: size_ratio"),
    ("{speedup: fast}", "gate.require.speedup='fast' is not a number"),
])
def test_bad_syntax_exits_2_before_any_trial(tmp_path, monkeypatch, capsys, requirement, fragment):
    monkeypatch.chdir(tmp_path)
    code = main(["search", *SEARCHED, "search.study_name=bad", f"gate.require={requirement}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / "outputs").exists()


def test_a_searched_study_refuses_another_target(root, capsys):
    code = main(["search", *SEARCHED, f"paths.root={root}/outputs", "target=openvino"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "target._target_" in err, err
