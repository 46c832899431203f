"""A study remembers its config: export, resume and verify read it; number-changing overrides are refused."""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from search.cli import load_config, main, plain, study_config
from search.records.recorded_config import conflicts, effective, masked_keys, record

STUDY = "rec"
SEARCHED = ["model=custom", "model.factory._target_=tinynet.tiny_net", "model.train.steps=30",
            "data.train_limit=300", "data.eval_limit=200", "data.calib_size=16",
            "evaluator.evaluators.latency.runs=20", "search.n_trials=2", "space.prune.ratios=[0,0.25]",
            "space.quant.precisions=[fp32,int8]", "tracking=none", "quiet=true", f"search.study_name={STUDY}"]


@pytest.fixture(scope="module")
def where(tmp_path_factory) -> list[str]:
    """A 2-trial study searched with non-default data and model; returns the overrides that locate it."""
    tmp = tmp_path_factory.mktemp("recorded")
    located = [f"paths.root={tmp}/outputs", f"search.study_name={STUDY}"]
    assert main(["search", *SEARCHED, *located]) == 0
    return located


def run_dir(where: list[str]) -> Path:
    return Path(where[0].split("=", 1)[1]) / STUDY


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_search_records_its_config_in_the_study(where):
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{run_dir(where)}/study.db")
    recorded = study.user_attrs["config"]
    assert recorded["data"]["eval_limit"] == 200 and recorded["model"]["factory"]["_target_"] == "tinynet.tiny_net"


def test_export_with_only_the_study_name_uses_the_recorded_data(where, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["export", *where, "export.trial=1"]) == 0, capsys.readouterr().err
    manifest = json.loads((run_dir(where) / "deploy" / "manifest.json").read_text())
    # the default data (no eval_limit) would score other images than the trial was logged on
    assert manifest["measured_at_export"]["accuracy"] == manifest["metrics"]["accuracy"]
    assert not (tmp_path / "mlflow.db").exists()  # tracking=none was recorded too


def test_an_output_path_override_is_accepted(where, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["export", *where, "export.trial=1", f"export.out={tmp_path}/elsewhere", "quiet=true"]) == 0
    assert (tmp_path / "elsewhere" / "manifest.json").is_file()


@pytest.mark.parametrize("command, overrides, expected", [
    ("export", ["data.eval_limit=150"], ["data.eval_limit recorded 200, given 150"]),
    ("search", ["data.eval_limit=150", "search.n_trials=3"], ["data.eval_limit recorded 200, given 150"]),
    ("report", ["search.sampler=tpe"], ['search.sampler recorded "nsga2", given "tpe"']),
    ("export", ["model=resnet_small"], ['model.factory._target_ recorded "tinynet.tiny_net", given '
                                       '"zoo.models.resnet_small"', "model.factory.in_channels recorded (unset)"]),
], ids=["export-data", "resume-data", "report-sampler", "export-model-group"])
def test_a_number_changing_override_is_refused_naming_the_key(where, tmp_path, monkeypatch, capsys,
                                                              command, overrides, expected):
    monkeypatch.chdir(tmp_path)
    assert main([command, *where, *overrides]) == 2
    err = one_error_line(capsys)
    assert f"study '{STUDY}' was searched with other settings" in err and "new search.study_name" in err
    for fragment in expected:
        assert fragment in err


def test_a_resume_with_only_the_study_name_keeps_the_recorded_settings(where, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # the default model would need a fresh 1500-step baseline: the cached tiny one is used instead
    assert main(["search", *where]) == 0
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{run_dir(where)}/study.db")
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 2  # the recorded budget


def test_verify_reads_the_data_config_the_manifest_records(where, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["export", *where, "export.trial=1", f"export.out={tmp_path}/pkg", "quiet=true"]) == 0
    recorded = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{run_dir(where)}/study.db").user_attrs["config"]
    manifest_path = tmp_path / "pkg" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["config"] == {"data": recorded["data"], "seed": recorded["seed"]}   # export records it
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "pkg"), "export.verify.max_slowdown=1000", "quiet=true"]) == 0
    assert "PASS accuracy" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "pkg"), "data.eval_limit=150"]) == 2
    assert "data.eval_limit recorded 200, given 150" in one_error_line(capsys)


def test_a_study_without_a_recorded_config_reads_the_command_line(tmp_path):
    where = [f"paths.root={tmp_path}", "search.study_name=old"]
    (tmp_path / "old").mkdir()
    optuna.create_study(study_name="old", storage=f"sqlite:///{tmp_path}/old/study.db")
    cfg = load_config([*where, "data.eval_limit=150"])
    assert study_config(cfg, [*where, "data.eval_limit=150"]) is cfg


def test_defaults_that_moved_since_the_record_are_not_conflicts():
    given = default = {"data": {"eval_limit": None}, "paths": {"root": "new"}, "search": {"n_trials": 20}}
    recorded = {"data": {"eval_limit": 200}, "paths": {"root": "old"}, "search": {"n_trials": 6}}
    assert conflicts(recorded, given, default) == []
    assert effective(recorded, given, default) == {"data": {"eval_limit": 200}, "paths": {"root": "new"},
                                                   "search": {"n_trials": 6}}
    raised = {**given, "search": {"n_trials": 9}}
    assert effective(recorded, raised, default)["search"]["n_trials"] == 9


def test_a_masked_password_comes_back_from_the_command_line_only():
    url = "postgresql://u:hunter2@db/optuna"
    recorded = record({"tracking": {"uri": url}, "storage": url})
    assert "hunter2" not in json.dumps(recorded)
    same = {"tracking": {"uri": url}, "storage": url}
    assert masked_keys(effective(recorded, same, same)) == []
    other = {"tracking": {"uri": None}, "storage": url}
    assert masked_keys(effective(recorded, other, other)) == ["tracking.uri"]


def test_plain_round_trip_of_the_composed_config_has_no_conflicts():
    cfg = plain(load_config(SEARCHED))
    assert conflicts(record(cfg), cfg, plain(load_config([f"search.study_name={STUDY}"]))) == []


def copied_study(where: list[str], tmp_path: Path) -> tuple[list[str], optuna.Study]:
    """A copy of the module's study (and its cached baseline) that a test may change."""
    import shutil

    root = Path(where[0].split("=", 1)[1])
    shutil.copytree(root, tmp_path / "outputs")
    located = [f"paths.root={tmp_path}/outputs", f"search.study_name={STUDY}"]
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path}/outputs/{STUDY}/study.db")
    return located, study


def test_a_study_recorded_before_knob_kinds_resumes_with_prune_and_quant(where, tmp_path, monkeypatch):
    located, study = copied_study(where, tmp_path)
    config = study.user_attrs["config"]
    assert config["space"].pop("kinds") == ["prune", "quant"]
    study.set_user_attr("config", config)  # as a study from before space.kinds recorded it
    monkeypatch.chdir(tmp_path)
    assert main(["search", *located, "search.n_trials=3"]) == 0
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 3
    assert {name.partition(".")[0] for t in done for name in t.params} == {"prune", "quant"}


def test_a_stored_trial_of_an_unknown_kind_is_one_clear_error(where, tmp_path, monkeypatch, capsys):
    located, study = copied_study(where, tmp_path)
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))[0]
    result = dict(done.user_attrs["result"])
    result["plan"] = {**result["plan"], "distill": {"fc": 0.5}}  # written by a version with one more kind
    study.add_trial(optuna.trial.create_trial(
        params={**done.params, "distill.fc": 0.5},
        distributions={**done.distributions, "distill.fc": optuna.distributions.FloatDistribution(0, 1)},
        values=done.values, user_attrs={**done.user_attrs, "result": result}, system_attrs=done.system_attrs))
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["report", *located]) == 2
    err = one_error_line(capsys)
    assert "unknown knob kinds ['distill']" in err and "known kinds: " in err and "prune" in err


@pytest.mark.parametrize("given", ["auto", "true", "false"])
def test_the_mlflow_params_hold_the_int8_weight_range_in_effect(given, tmp_path):
    from search.cli import build_job
    from spaces.quantization import int8_saturates

    job = build_job(load_config([*SEARCHED, f"paths.root={tmp_path}", f"space.quant.reduce_range={given}"]))
    applied = {"auto": int8_saturates(), "true": True, "false": False}[given]
    assert job.settings_params["settings.space.quant.reduce_range"] is applied
    assert job.config["space"]["quant"]["reduce_range"] is applied  # recorded: workers and exports reuse it
