"""The small search job the integration, reuse and prescreen tests run: the tiny CNN, three objectives, three trials."""
from __future__ import annotations

from pathlib import Path

from evaluators import Accuracy, Complexity, Constraint, Latency, Objective, Size
from search.trials.finetune import FinetuneSettings
from search.inspect.tracking import TrackingSettings
from search.runner import Job
from search.study import SearchSettings
from spaces.kinds.prune import PruneSpec
from spaces.kinds.quant import QuantSpec
from tinynet import tiny_net

OBJECTIVES = [Objective("accuracy", "maximize"), Objective("size_bytes", "minimize"),
              Objective("latency_ms", "minimize")]


def make_job(tmp: Path, splits, *, n_trials: int = 3, study: str = "it") -> Job:
    return Job(make_model=tiny_net, data=splits, evaluators=[Accuracy(), Size(level=3), Latency(runs=20),
                                                             Complexity()],
               objectives=OBJECTIVES, constraints=[Constraint("accuracy_drop", 1.0)],
               search=SearchSettings(study_name=study, n_trials=n_trials, sampler="random"),
               run_dir=tmp / "run", cache_dir=tmp / "cache", model_key="tiny",
               baseline_training=FinetuneSettings(steps=120, log_every=40),
               finetune=FinetuneSettings(steps=15, log_every=5),
               prune=PruneSpec(ratios=(0.0, 0.25, 0.5)), quant=QuantSpec(precisions=("fp32", "int8", "int4")),
               tracking=TrackingSettings(uri=f"sqlite:///{tmp}/mlflow.db", experiment=study))
