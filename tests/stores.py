"""Test helpers shared by the export, verify and UI tests: cheap MLflow stores and one baseline cache.

Creating an MLflow sqlite store runs every schema migration (seconds); a migrated empty
store is made once per test session and copied. Artifacts go under the test's folder.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient


def fresh_mlflow_store(factory: pytest.TempPathFactory, folder: Path, experiment: str) -> str:
    """``sqlite:///<folder>/mlflow.db`` holding ``experiment``, whose artifacts live in ``folder/mlartifacts``."""
    template = factory.getbasetemp() / "mlflow-template.db"
    if not template.exists():
        MlflowClient(f"sqlite:///{template}").search_experiments()  # creates and migrates the schema
    shutil.copyfile(template, folder / "mlflow.db")
    uri = f"sqlite:///{folder}/mlflow.db"
    MlflowClient(uri).create_experiment(experiment, artifact_location=str(folder / "mlartifacts"))
    return uri


def baseline_cache(factory: pytest.TempPathFactory) -> Path:
    """One cache folder per session: tests with the same model, data and recipe train the baseline once."""
    return factory.getbasetemp() / "baseline-cache"
