"""The commands a search prints when it ends: filled in for its study, and each one runs as printed."""
from __future__ import annotations

import io
import json
import shlex
from contextlib import redirect_stdout
from pathlib import Path

import optuna
import pytest

from evaluators import Constraint
from search.cli import load_config, located, main
from search.inspect.next_steps import next_steps
from search.study import feasible_results
from search.trials.trial import TrialResult
from spaces.base import Plan
from stores import fresh_mlflow_store

STUDY = "next"
SEARCHED = ["model=custom", "model.factory._target_=tinynet.tiny_net", "model.train.steps=30",
            "data.train_limit=300", "data.eval_limit=200", "data.calib_size=16",
            "evaluator.evaluators.latency.runs=20", "search.n_trials=2", "space.prune.ratios=[0,0.25]",
            "space.quant.precisions=[fp32,int8]", "quiet=true", f"search.study_name={STUDY}", "paths.root=runs"]


@pytest.fixture(scope="module")
def printed(tmp_path_factory) -> tuple[Path, str]:
    """A 2-trial search run from its own folder with the default tracking.uri; what it printed."""
    tmp = tmp_path_factory.mktemp("next-steps")
    fresh_mlflow_store(tmp_path_factory, tmp, STUDY)  # ./mlflow.db there, already migrated
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(out):
        patch.chdir(tmp)
        assert main(["search", *SEARCHED]) == 0
    return tmp, out.getvalue()


def commands(text: str) -> dict[str, list[str]]:
    """The printed commands after ``next:`` by program and subcommand: {"report": [...], "export": [...], ...}."""
    tail = text.split("\nnext:\n", 1)[1]
    found = [shlex.split(line) for line in tail.splitlines() if line.startswith("    ")]
    return {argv[1]: argv for argv in found}


def test_the_search_ends_with_the_next_three_commands_for_its_study(printed):
    tmp, text = printed
    found = commands(text)
    where = [f"search.study_name={STUDY}", "paths.root=runs"]
    assert found["report"] == ["autosqueeze", "report", *where]
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp / 'runs' / STUDY / 'study.db'}")
    smallest = min(feasible_results(study), key=lambda r: r.metrics["size_bytes"])
    assert found["export"] == ["autosqueeze", "export", *where, f"export.trial={smallest.number}"]
    assert (f"trial {smallest.number}: the smallest front member (size_bytes); every front member meets "
            "accuracy_drop <= 1") in text
    assert found["ui"] == ["mlflow", "ui", "--backend-store-uri", "sqlite:///mlflow.db"]


def test_the_printed_report_and_export_commands_run_as_printed(printed, monkeypatch, capsys):
    tmp, text = printed
    found = commands(text)
    monkeypatch.chdir(tmp)
    assert main(found["report"][1:]) == 0, capsys.readouterr().err
    assert (tmp / "runs" / STUDY / "report.html").is_file()
    assert main([*found["export"][1:], "quiet=true"]) == 0, capsys.readouterr().err
    manifest = json.loads((tmp / "runs" / STUDY / "deploy" / "manifest.json").read_text())
    assert f"export.trial={manifest['trial']}" in found["export"]


def member(number: int, size: float) -> TrialResult:
    return TrialResult(number=number, plan=Plan(), metrics={"accuracy": 90.0, "size_bytes": size}, curve=(),
                       timings={}, model_path="", sha256="")


def test_other_trackers_no_front_and_passwords():
    limit = [Constraint("accuracy_drop", 0.5)]
    text = next_steps([member(3, 900.0), member(5, 400.0)], located=["search.study_name=s"], constraints=limit,
                      tracking_uri="http://u:hunter2@mlflow:5000")
    assert "autosqueeze export search.study_name=s export.trial=5" in text
    assert "http://u:***@mlflow:5000" in text and "hunter2" not in text and "mlflow ui" not in text
    empty = next_steps([], located=["search.study_name=s"], constraints=limit, tracking_uri=None)
    assert "no front member to export: no trial met accuracy_drop <= 0.5" in empty
    assert "export.trial" not in empty and "mlflow" not in empty


def test_located_names_what_an_experiment_file_set_and_masks_passwords():
    assert located(load_config(["experiment=quick"]), ["experiment=quick"]) == ["search.study_name=quick"]
    given = ["storage=postgresql://u:hunter2@db/optuna", "paths.root=/data/runs", "search.n_trials=5"]
    assert located(load_config(given), given) == [
        "search.study_name=autosqueeze", "storage=postgresql://u:***@db/optuna", "paths.root=/data/runs"]


def test_a_study_minimising_compressed_bytes_suggests_the_smallest_shipped_member():
    from evaluators.base import Objective
    from search.inspect.next_steps import size_metric

    ota = [Objective("accuracy", "maximize"), Objective("compressed_bytes", "minimize")]
    assert size_metric(ota) == "compressed_bytes"
    assert size_metric([Objective("accuracy", "maximize"), Objective("size_bytes", "minimize")]) == "size_bytes"
    big_file_small_zip, small_file = member(3, 900.0), member(5, 400.0)
    big_file_small_zip.metrics["compressed_bytes"], small_file.metrics["compressed_bytes"] = 100.0, 300.0
    text = next_steps([big_file_small_zip, small_file], located=["search.study_name=s"], constraints=[],
                      tracking_uri=None, size=size_metric(ota))
    assert "trial 3: the smallest front member (compressed_bytes)" in text and "export.trial=3" in text
