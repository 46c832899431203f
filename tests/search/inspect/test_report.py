"""The HTML report of a real study, the per-layer sensitivity rule and the ``report`` command."""
from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest

from search.cli import main
from search.inspect.plots import PlotData
from search.inspect.report import sensitivity, write_report
from search.trials.trial import TrialResult
from spaces.base import Plan
from test_plots import OBJECTIVES, STUDY, built_study, open_study


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, small_splits) -> Path:
    return built_study(tmp_path_factory, small_splits)


@pytest.fixture(scope="module")
def report(run_dir, tmp_path_factory) -> tuple[PlotData, str]:
    study = open_study(run_dir)
    out = tmp_path_factory.mktemp("report") / "report.html"
    path = write_report(study, OBJECTIVES, out, export_hint=lambda n: f"autosqueeze export "
                                                                      f"search.study_name={STUDY} export.trial={n}")
    assert path == out and (out.parent / "plots" / "front.png").is_file()
    return PlotData.from_study(study, OBJECTIVES), out.read_text(encoding="utf-8")


def test_report_shows_baseline_front_and_export_commands(report):
    data, text = report
    assert f"{data.baseline['accuracy']:.2f}" in text
    front_table = text.split("<h2>Pareto front</h2>")[1].split("<h2>")[0]
    assert data.front
    for member in data.front:
        assert f"<td>{member.number}</td>" in front_table
        assert f"autosqueeze export search.study_name={STUDY} export.trial={member.number}" in text


def test_report_has_the_sensitivity_table_with_its_rule(report):
    data, text = report
    section = text.split("<h2>Per-layer sensitivity</h2>")[1].split("<h2>")[0]
    assert "sensitive</b> when" in section and "ratio ≥ 0.25" in section
    for layer in data.layers:
        assert f"<td class=l>{layer}</td>" in section
    assert re.search(r"class='(sensitive|tolerant|unknown)'", section)


def test_report_is_self_contained(report):
    _, text = report
    assert text.count("src='data:image/png;base64,") == 4  # front, hypervolume, layers, profile
    assert not re.search(r"https?://", text), "the report must not reference anything on the network"
    assert "<script" not in text and "<link" not in text
    assert "href='plots/front.html'" in text  # the interactive twin, next to the report


def drop_result(number: int, drop: float, prune: dict[str, float], quant: dict[str, str]) -> TrialResult:
    return TrialResult(number, Plan(prune=prune, quant=quant), {"accuracy": 90 - drop, "accuracy_drop": drop}, {},
                       "", "")


def test_sensitivity_rule_separates_tolerant_and_sensitive_layers():
    # pruning "a" costs 5 points; pruning "b" costs nothing; "c" is int8 in only one trial
    trials = [drop_result(0, 0.0, {"a": 0.0, "b": 0.0}, {"c": "fp32"}),
              drop_result(1, 0.2, {"a": 0.0, "b": 0.5}, {"c": "fp32"}),
              drop_result(2, 5.0, {"a": 0.5, "b": 0.0}, {"c": "fp32"}),
              drop_result(3, 5.1, {"a": 0.25, "b": 0.5}, {"c": "int8"})]
    rows = {row.layer: row for row in sensitivity(trials, ["a", "b", "c"], {"accuracy": 90.0})}
    assert rows["a"].prune.verdict == "sensitive" and rows["a"].prune.delta == pytest.approx(4.95)
    assert rows["b"].prune.verdict == "tolerant" and rows["b"].quant is None
    assert rows["c"].prune is None and rows["c"].quant.verdict == "too few trials"


def test_report_command_writes_the_report_of_an_existing_study(run_dir, capsys):
    assert main(["report", f"search.study_name={STUDY}", f"paths.run_dir={run_dir}"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(run_dir / "report.html") and Path(printed).is_file()
    assert (run_dir / "plots" / "layers.png").is_file()
    text = Path(printed).read_text(encoding="utf-8")
    assert f"export.trial={data_front(run_dir)[0]} paths.run_dir={run_dir}" in text  # locates the study again


def data_front(run_dir: Path) -> list[int]:
    return [r.number for r in PlotData.from_study(open_study(run_dir), OBJECTIVES).front]


def test_report_command_on_a_missing_study_exits_2_with_a_clear_message(run_dir, tmp_path, capsys):
    assert main(["report", "search.study_name=absent", f"paths.run_dir={tmp_path / 'nowhere'}"]) == 2
    assert "no such study" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()  # nothing created as a side effect
    assert main(["report", "search.study_name=absent", f"paths.run_dir={run_dir}"]) == 2
    assert "no such study" in capsys.readouterr().err


def test_a_study_without_feasible_trials_still_gets_a_report(tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.set_user_attr("baseline", {"accuracy": 90.0, "size_bytes": 1e5, "compressed_bytes": 9e4, "latency_ms": 1.0})
    for number, drop in enumerate((20.0, 30.0)):
        result = drop_result(number, drop, {"a": 0.5}, {"a": "int8"})
        metrics = {**result.metrics, "size_bytes": 5e4, "compressed_bytes": 4e4, "latency_ms": 0.5}
        attrs = TrialResult(number, result.plan, metrics, {}, "", "").to_attrs()
        study.add_trial(optuna.trial.create_trial(values=[70.0 - number, 5e4, 0.5],
                                                  user_attrs={"result": attrs, "constraints": [drop - 1.0]}))
    text = write_report(study, OBJECTIVES, tmp_path / "report.html", export_hint=str).read_text(encoding="utf-8")
    assert "No feasible trial yet" in text and "No front member to export" in text
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["front.html", "front.png", "hypervolume.html",
                                                                      "hypervolume.png", "plotly.min.js"]
