"""Where MLflow keeps a search's artifacts: ``mlartifacts/`` beside a SQLite store, as the README says."""
from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from search.inspect.tracking import Tracker, TrackingSettings, artifact_location
from stores import fresh_mlflow_store


def store_in(folder: Path, tmp_path_factory) -> None:
    """A migrated ``folder/mlflow.db`` (copied from the session's template) without the experiments used here."""
    folder.mkdir(parents=True, exist_ok=True)
    fresh_mlflow_store(tmp_path_factory, folder, "unrelated")


def log_front_file(tracker: Tracker, tmp: Path) -> Path:
    """What a search logs on its study's run: the front file, under its MLflow artifact root."""
    front = tmp / "front.csv"
    front.write_text("trial,accuracy\n0,90.0\n")
    run_id = tracker.parent_run("study", None, {"settings.n_trials": 1})
    tracker.log_artifact(run_id, str(front))
    return Path(tracker.client.get_run(run_id).info.artifact_uri.removeprefix("file://")) / "front.csv"


def test_the_default_relative_store_puts_artifacts_in_mlartifacts_beside_it(tmp_path, tmp_path_factory,
                                                                            monkeypatch):
    store_in(tmp_path / "project", tmp_path_factory)
    monkeypatch.chdir(tmp_path / "project")  # a search run from its folder with the default tracking.uri
    logged = log_front_file(Tracker(TrackingSettings(uri="sqlite:///mlflow.db", experiment="study")), tmp_path)
    assert logged.is_file()
    assert logged.is_relative_to(tmp_path / "project" / "mlartifacts")
    assert not (tmp_path / "project" / "mlruns").exists()


def test_an_absolute_store_keeps_its_artifacts_beside_it_wherever_the_search_runs(tmp_path, tmp_path_factory,
                                                                                 monkeypatch):
    store_in(tmp_path / "store", tmp_path_factory)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    assert artifact_location(uri) == str(tmp_path / "store" / "mlartifacts")
    logged = log_front_file(Tracker(TrackingSettings(uri=uri, experiment="study")), tmp_path)
    assert logged.is_relative_to(tmp_path / "store" / "mlartifacts") and logged.is_file()
    assert not any((tmp_path / "elsewhere").iterdir())


def test_an_existing_experiment_keeps_its_artifact_location(tmp_path, tmp_path_factory, monkeypatch):
    store_in(tmp_path, tmp_path_factory)
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    old_root = tmp_path / "mlruns" / "1"  # where MLflow's default put a study's artifacts before
    MlflowClient(uri).create_experiment("old", artifact_location=str(old_root))
    logged = log_front_file(Tracker(TrackingSettings(uri=uri, experiment="old")), tmp_path)
    assert logged.is_relative_to(old_root) and logged.is_file()
    assert not (tmp_path / "mlartifacts").exists()


def test_servers_and_other_stores_choose_their_own_location():
    for uri in ("http://127.0.0.1:5000", "postgresql://u@db/mlflow", "file:./mlruns", "databricks"):
        assert artifact_location(uri) is None
