"""Several worker processes on one study in a real database; one is SIGKILLed mid-trial."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.storages import RetryFailedTrialCallback
from optuna.trial import TrialState

from search.records.storage import make_storage

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
MARIADB = "mysql+pymysql://root@127.0.0.1:3306/test"
BUDGET = 6


def search_command(storage: str, study: str, tmp: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "search.cli", "search", "model=custom", "model.factory._target_=tinynet.tiny_net",
            "model.train.steps=60", "data.train_limit=1500", "data.eval_limit=300", "data.calib_size=32",
            f"storage={storage}", f"search.study_name={study}", f"search.n_trials={BUDGET}",
            "search.sampler=random", "search.finetune.steps=60", "evaluator.evaluators.latency.runs=20",
            "search.heartbeat.interval=1", "search.heartbeat.grace_period=4", f"paths.root={tmp / 'outputs'}",
            f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}", "quiet=true", *extra]


def env() -> dict[str, str]:
    tests = Path(__file__).resolve().parents[1]
    # the repository first: tests/search would otherwise shadow the search package
    path = [str(tests.parent), str(tests), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p), "OMP_NUM_THREADS": "1"}


def kill_a_running_worker(storage: str, study_name: str, deadline: float) -> optuna.trial.FrozenTrial:
    """SIGKILL the process running the first non-reference trial while it fine-tunes.

    Waiting for the fine-tune stage leaves export, quantization and evaluation still to run,
    so the trial cannot complete between the read and the kill.
    """
    # One storage for the whole wait: a URL given to load_study opens a new engine (and its connection
    # pool) on every call, and ten polls a second exhausted PostgreSQL's max_connections.
    polled = optuna.storages.RDBStorage(storage)
    try:
        while time.time() < deadline:
            try:
                study = optuna.load_study(study_name=study_name, storage=polled)
            except KeyError:
                time.sleep(0.5)
                continue
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                attrs = trial.user_attrs
                if trial.number >= 1 and "mlflow_run_id" in attrs and attrs.get("stage") == "finetune":
                    os.kill(int(attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
                    return trial
            time.sleep(0.1)
    finally:
        polled.engine.dispose()
    raise AssertionError("no trial was seen running")


@pytest.mark.parametrize("storage", [POSTGRES, MARIADB], ids=["postgresql", "mariadb"])
def test_killed_worker_loses_nothing_and_its_trial_is_retried(storage, tmp_path):
    name = f"kill-{uuid.uuid4().hex[:8]}"
    parent = subprocess.Popen(search_command(storage, name, tmp_path, "search.workers=2"), env=env(),
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        killed = kill_a_running_worker(storage, name, time.time() + 240)
        output, _ = parent.communicate(timeout=300)
    finally:
        parent.kill()
    assert parent.returncode == 0, output
    study = optuna.load_study(study_name=name, storage=make_storage(storage))
    try:
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        assert len(complete) == BUDGET
        dead = trials[killed.number]
        assert dead.state == TrialState.FAIL
        retries = [t for t in trials if RetryFailedTrialCallback.retried_trial_number(t) == killed.number]
        assert retries and retries[0].state == TrialState.COMPLETE
        assert retries[0].params == dead.params
        run = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(dead.user_attrs["mlflow_run_id"])
        assert run.info.status == "KILLED"
        assert "Pareto front" in output
    finally:
        optuna.delete_study(study_name=name, storage=storage)
