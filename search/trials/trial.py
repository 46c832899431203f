"""One trial: apply the plan → fine-tune → export → quantize → evaluate the ONNX file."""
from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import torch

from search.deploy.targets.base import Source
from search.deploy.targets.onnxruntime import OnnxRuntime
from search.trials.early_stop import HopelessTrial
from search.trials.finetune import FinetuneSettings, Logger, finetune
from search.trials.onnx_export import export_onnx
from search.trials.prescreen import DominatedPlan, Screen, structure_figures
from spaces.base import Plan

if TYPE_CHECKING:
    from torch import nn

    from evaluators.base import EvalData, Evaluator
    from search.deploy.targets.base import Target
    from search.trials.early_stop import Checkpoint, StopRule
    from spaces.space import Space
    from zoo.data import DataSplits

STAGES = ("prune", "prescreen", "finetune", "export", "quantize", "evaluate")
WEIGHTS = "finetuned.pt"
"""A fine-tuned trial's torch weights, beside its artifact: a later plan with the same structure loads them."""
RETIMED = ("latency_ms", "latency_p90_ms", "latency_cv", "speedup")
"""Metrics the end of a search measures again, with more runs; the in-search values stay as ``search_*``."""


@dataclass(frozen=True)
class SearchContext:
    """Everything a trial needs that does not change between trials."""

    baseline: nn.Module
    baseline_metrics: Mapping[str, float]
    baseline_path: Path
    data: DataSplits
    space: Space
    finetune: FinetuneSettings
    evaluators: Sequence[Evaluator]   # latency paired with ``baseline_path``
    run_dir: Path
    seed: int = 0
    early_stop: StopRule | None = None  # stops hopeless fine-tunes; None fine-tunes every plan in full
    target: Target = field(default_factory=OnnxRuntime)  # turns the QDQ ONNX file into what ships


@dataclass(frozen=True)
class TrialResult:
    """What one trial produced. The front, the report, MLflow and export all read this."""

    number: int
    plan: Plan
    metrics: Mapping[str, float]
    timings: Mapping[str, float]
    model_path: str
    sha256: str
    curve: Sequence[tuple[int, float, float]] = field(default_factory=tuple)
    before_finetune: Mapping[str, float] = field(default_factory=dict)  # size and speed, measured before
    checks: Sequence[Checkpoint] = field(default_factory=tuple)  # the early-stopping checks it passed

    def confirmed(self, figures: Mapping[str, float] | None) -> TrialResult:
        """This result with the figures measured after the search; the in-search ones stay as ``search_*``."""
        if not figures:
            return self
        kept = {f"search_{k}": v for k, v in self.metrics.items() if k in figures and k in RETIMED}
        return replace(self, metrics={**self.metrics, **kept, **figures})

    def to_attrs(self) -> dict[str, Any]:
        """JSON-able form stored in the Optuna trial's user attributes."""
        return {"plan": self.plan.to_dict(), "metrics": dict(self.metrics), "timings": dict(self.timings),
                "model_path": self.model_path, "sha256": self.sha256, "curve": [list(p) for p in self.curve],
                "before_finetune": dict(self.before_finetune), "checks": [list(c) for c in self.checks]}

    @classmethod
    def from_attrs(cls, number: int, attrs: Mapping[str, Any]) -> TrialResult:
        return cls(number=number, plan=Plan.from_dict(attrs["plan"]), metrics=dict(attrs["metrics"]),
                   timings=dict(attrs["timings"]), model_path=attrs["model_path"], sha256=attrs["sha256"],
                   curve=tuple(tuple(p) for p in attrs.get("curve", ())),
                   before_finetune=dict(attrs.get("before_finetune", {})),
                   checks=tuple(tuple(c) for c in attrs.get("checks", ())))


def sha256_of(*paths: Path) -> str:
    """One digest of an artifact's files in order (one file: that file's sha256)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def measure(model_path: Path, split: EvalData, evaluators: Sequence[Evaluator]) -> dict[str, float]:
    """Run every evaluator on the ONNX file over ``split``; a metric measured twice is a config error."""
    metrics: dict[str, float] = {}
    for evaluator in evaluators:
        for name, value in evaluator.measure(Path(model_path), split).items():
            if name in metrics:
                raise ValueError(f"metric {name!r} is reported by two evaluators")
            metrics[name] = float(value)
    return metrics


def relative(metrics: Mapping[str, float], baseline: Mapping[str, float]) -> dict[str, float]:
    """Metrics against the fp32 baseline: accuracy drop in points, size and speed ratios."""
    out: dict[str, float] = {}
    if "accuracy" in metrics and "accuracy" in baseline:
        out["accuracy_drop"] = baseline["accuracy"] - metrics["accuracy"]
    if "size_bytes" in metrics and "size_bytes" in baseline:
        out["size_ratio"] = baseline["size_bytes"] / metrics["size_bytes"]
    if "compressed_bytes" in metrics and "compressed_bytes" in baseline:
        out["compressed_ratio"] = baseline["compressed_bytes"] / metrics["compressed_bytes"]
    if "latency_ms" in metrics and "latency_ms" in baseline:
        out["speedup"] = baseline["latency_ms"] / metrics["latency_ms"]
    return out


class Stopwatch:
    """Times named stages and tells an observer which stage is running."""

    def __init__(self, on_stage: Callable[[str], None] | None = None) -> None:
        self.timings: dict[str, float] = {}
        self._on_stage = on_stage

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self._on_stage is not None:
            self._on_stage(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - start, 4)


def run_trial(ctx: SearchContext, plan: Plan, *, number: int, on_stage: Callable[[str], None] | None = None,
              log: Logger | None = None, screen: Screen | None = None, trained: Path | None = None,
              finished: Sequence[tuple[Sequence[Checkpoint], float]] = ()) -> TrialResult:
    """Build, export and score the model ``plan`` describes; files go to ``run_dir/trials/<number>``.

    ``screen`` sees the plan's size and speed before fine-tuning (search/trials/prescreen.py) and may end the trial.
    ``finished``: the checkpoints and final drops of the study's fine-tunes that ran to the end, from which
    the early-stopping rule learns how much a plan still recovers after each check.
    ``trained`` is an earlier trial's :data:`WEIGHTS` for the same structure (``Space.structure_of``): they are
    loaded instead of fine-tuning, which is fp32 and seeded, so it would compute them again; the kinds that
    act after it (precisions, sharing, sparsity) are what differs.
    """
    out_dir = ctx.run_dir / "trials" / f"{number:04d}"
    out_dir.mkdir(parents=True, exist_ok=True)
    clock = Stopwatch(on_stage)
    with clock.stage("prune"):
        model = ctx.space.apply(ctx.baseline, plan)
    # A model whose structure is unchanged is the converged baseline: training it again only adds noise.
    pruned = plan.needs_finetune
    before: dict[str, float] = {}
    rival = None
    try:
        if pruned and screen is not None:
            with clock.stage("prescreen"):
                before = structure_figures(ctx, model, plan, out_dir)
            rival = screen(before)
        check = ctx.early_stop.check(ctx.finetune.steps, rival=rival, finished=finished) if ctx.early_stop else None
        with clock.stage("finetune"):
            if pruned and trained is not None:
                model.load_state_dict(torch.load(trained, weights_only=True))
                curve = []
            else:
                curve = (finetune(model, ctx.data.train, ctx.finetune, seed=ctx.seed, log=log,
                                  teacher=ctx.baseline, check=check, check_at=check.at if check else ())
                         if pruned else [])
                if pruned:
                    torch.save(model.state_dict(), out_dir / WEIGHTS)
    except (HopelessTrial, DominatedPlan) as stop:
        stop.timings = {**clock.timings, "total": round(sum(clock.timings.values()), 4)}  # its cost, for the record
        raise
    with clock.stage("export"):
        model = ctx.space.finish(model, plan)
        fp32_path = export_onnx(model, ctx.space.example_input, out_dir / "model_fp32.onnx")
    with clock.stage("quantize"):
        model_path = ctx.space.apply_graph(fp32_path, out_dir / "model.onnx", plan, ctx.data.calib)
        model_path = ctx.target.build(Source(onnx=model_path, model=model, precisions=ctx.space.precisions(plan),
                                             example=ctx.space.example_input, calib=ctx.data.calib))
    with clock.stage("evaluate"):
        metrics = measure(model_path, ctx.data.val, ctx.evaluators)
        metrics.update(relative(metrics, ctx.baseline_metrics))
    clock.timings["total"] = round(sum(clock.timings.values()), 4)
    return TrialResult(number=number, plan=plan, metrics=metrics, timings=clock.timings,
                       model_path=str(model_path), sha256=sha256_of(*ctx.target.files(model_path)), curve=tuple(curve),
                       before_finetune=before, checks=tuple(check.passed) if check else ())
