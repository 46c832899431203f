"""A whole search, from plain settings: baseline, study, trials, front, files and MLflow."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import optuna
import torch

from evaluators.base import check_metrics
from search.deploy.targets.base import Source, check_supported
from search.deploy.targets.onnxruntime import OnnxRuntime
from search.gate import Gate
from search.inspect import pareto
from search.baseline import load_checkpoint, trained_baseline
from search.budget import interruptible, last_stop_signal
from search.confirm import ConfirmSettings, confirm, nearby
from search.trials.early_stop import EarlyStop, stop_rule
from search.trials.prescreen import Prescreen
from search.records.fingerprint import check_fingerprint, fingerprint
from search.trials.finetune import FinetuneSettings
from search.trials.onnx_export import export_onnx
from search.inspect.plots import write_plots
from search.profiling.profile import ProfileSettings
from search.profiling.prepare import profiled
from search.progress import Progress
from search.records.secrets import redact
from search.records.storage import HeartbeatSettings, make_storage, storage_url
from search.study import (LOCAL_WORKER_ENV, BudgetCallback, FailureLimit, SearchSettings, baseline_of, completed,
                          enqueue_references, feasible_results, objective_fn, open_study)
from search.inspect.tracking import Tracker, TrackingSettings
from search.trials.trial import SearchContext, TrialResult, measure, sha256_of
from spaces.kinds import DEFAULT_KINDS
from spaces.kinds.prune import PruneSpec
from spaces.kinds.quant import QuantSpec
from spaces.space import Space

if TYPE_CHECKING:
    from torch import nn

    from evaluators.base import Constraint, Evaluator, Objective
    from search.deploy.targets.base import Target
    from zoo.data import DataSplits

log = logging.getLogger("autosqueeze")
DERIVED = ("accuracy_drop", "size_ratio", "compressed_ratio", "speedup")
NO_BASELINE = ("model: no baseline weights; give model.checkpoint=FILE (a state_dict), model.trained=true (the "
               "factory returns a trained model) or a model.train recipe to train one")


@dataclass(frozen=True)
class Job:
    """A search fully described by plain objects (the CLI builds it from the Hydra config)."""

    make_model: Callable[[], nn.Module]
    data: DataSplits
    evaluators: Sequence[Evaluator]
    objectives: Sequence[Objective]
    constraints: Sequence[Constraint]
    search: SearchSettings
    run_dir: Path
    cache_dir: Path
    model_key: str
    checkpoint: str | None = None
    trained: bool = False  # the factory's weights are the baseline: no checkpoint, no training
    baseline_training: FinetuneSettings | None = field(default_factory=lambda: FinetuneSettings(steps=1500))
    head_steps: int = 0  # baseline: train only the classifier head this many steps first
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    prune: PruneSpec = field(default_factory=PruneSpec)
    quant: QuantSpec = field(default_factory=QuantSpec)
    kinds: tuple[str, ...] = DEFAULT_KINDS         # the knob kinds searched (space.kinds)
    specs: Mapping[str, Any] = field(default_factory=dict)  # settings of the kinds other than prune and quant
    tracking: TrackingSettings | None = field(default_factory=TrackingSettings)
    storage: str | None = None
    heartbeat: HeartbeatSettings = field(default_factory=HeartbeatSettings)
    confirm: ConfirmSettings = field(default_factory=ConfirmSettings)
    early_stop: EarlyStop | None = None  # None fine-tunes every plan in full
    prescreen: Prescreen | None = None   # None fine-tunes every plan, however it compares before
    profile: ProfileSettings | None = field(default_factory=ProfileSettings)  # None: no profile, seeds or narrowing
    settings_params: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)  # the composed config, recorded on a new study
    target: Target = field(default_factory=OnnxRuntime)  # the runtime the artifacts are built for and measured in
    gate: Gate | None = None  # requirements the front must meet, else the search exits non-zero

    @property
    def storage_url(self) -> str:
        return storage_url(self.storage, self.run_dir)

    def check(self) -> None:
        """Config errors that need no model: raise before any training."""
        available = [m for e in self.evaluators for m in e.metrics] + list(DERIVED)
        check_metrics(self.objectives, self.constraints, available)
        asked = [o.metric for o in self.objectives] + [c.metric for c in self.constraints]
        check_supported(self.target, precisions=self.quant.precisions,
                        activation_type=self.quant.settings.activation_type,
                        metrics=asked + (list(self.gate.require) if self.gate else []), kinds=self.kinds)
        if self.gate:
            self.gate.check(available)
        if not (self.checkpoint or self.trained or self.baseline_training is not None):
            raise ValueError(NO_BASELINE)


def preflight(job: Job) -> tuple[nn.Module, Space]:
    """Every check that needs the model but no training: checkpoint, layer names, exportability.

    The space depends only on the architecture, so it is built from the untrained model.
    """
    job.check()
    torch.manual_seed(job.search.seed)
    model = job.make_model()
    if job.checkpoint:
        load_checkpoint(model, job.checkpoint)
    example = torch.from_numpy(job.data.val.inputs[:1]).float()
    space = Space.build(model, example, prune_spec=job.prune, quant_spec=job.quant, kinds=job.kinds,
                        specs=job.specs)
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(model, example, Path(tmp) / "check.onnx")
    return model.eval(), space


def prepare(job: Job, checked: tuple[nn.Module, Space] | None = None) -> tuple[nn.Module, Space]:
    """The baseline (the checkpoint, the factory's own weights, or trained and cached) and the space."""
    model, space = checked or preflight(job)
    if job.trained and not job.checkpoint:
        log.info("model.trained=true: the factory's weights are the baseline, no training")
    elif not job.checkpoint:
        assert job.baseline_training is not None  # Job.check
        model = trained_baseline(job.make_model, job.data.train, settings=job.baseline_training,
                                 cache_dir=job.cache_dir, key=job.model_key, seed=job.search.seed,
                                 head_steps=job.head_steps, example=space.example_input)
    return model, space


def build_context(job: Job, study: optuna.Study, prepared: tuple[nn.Module, Space] | None = None) -> SearchContext:
    """The baseline, its metrics (measured once per study and shared) and the space.

    The baseline file is exported on every machine that runs trials, so each worker times
    its candidates against its own copy, never against a number another machine measured.
    """
    model, space = prepared or prepare(job)
    path = _baseline_file(model, space.example_input, _mkdir(job.run_dir / "baseline"), job.target)
    metrics = study.user_attrs.get("baseline")
    if metrics is None:
        metrics = measure(path, job.data.val, job.evaluators)
        study.set_user_attr("baseline", metrics)
        study.set_user_attr("baseline_sha256", sha256_of(*job.target.files(path)))
    return SearchContext(baseline=model, baseline_metrics=metrics, baseline_path=path, data=job.data,
                         space=space, finetune=job.finetune, evaluators=paired(job.evaluators, path, metrics),
                         run_dir=job.run_dir, seed=job.search.seed, target=job.target)


def _baseline_file(model: nn.Module, example: torch.Tensor, folder: Path, target: Target) -> Path:
    """``folder/model.onnx`` and the target's artifact of it, each file replaced atomically.

    Local workers may be timing the previous copy. Returns the artifact.
    """
    partial = export_onnx(model, example, folder / f".model-{os.getpid()}.onnx")
    built = target.build(Source(onnx=partial, model=model, example=example))
    for part in dict.fromkeys((*target.files(built), partial)):  # the ONNX last: complexity counts on it
        os.replace(part, folder / f"model{part.suffix}")
    return folder / f"model{built.suffix}"


def paired(evaluators: Sequence[Evaluator], baseline_path: Path, baseline: dict) -> list[Evaluator]:
    """Evaluators that compare with the baseline file (latency) get it; the others stay as they are."""
    return [e.against(baseline_path, baseline) if hasattr(e, "against") else e for e in evaluators]


def _mark_killed(tracker: Tracker | None) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None:
    """A dead worker's trial: end its MLflow run as KILLED instead of RUNNING forever."""
    if tracker is None:
        return None

    def mark(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            tracker.fail_trial(run_id, "worker stopped sending heartbeats", status="KILLED")

    return mark


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


class FrontWatch:
    """After each trial: recompute the front, move MLflow's ``pareto`` tag, report progress."""

    def __init__(self, objectives: Sequence[Objective], tracker: Tracker | None, progress: Progress) -> None:
        self.objectives, self.tracker, self.progress = objectives, tracker, progress
        self.members: set[str] = set()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        feasible = feasible_results(study)
        front = pareto.front(feasible, self.objectives)
        self.progress.trial_done(study, trial, len(front), feasible=feasible)
        if self.tracker is None:
            return
        run_ids = {t.number: t.user_attrs.get("mlflow_run_id") for t in study.get_trials(deepcopy=False)}
        current = {run_ids[r.number] for r in front} - {None}
        self.tracker.mark_front({rid: rid in current for rid in current ^ self.members})
        self.members = current


@dataclass(frozen=True)
class SearchOutcome:
    study: optuna.Study
    front: list[TrialResult]
    baseline: dict
    hypervolume: float
    files: tuple[Path, ...]
    ending: str = "complete"
    """``complete`` (budget or time reached), ``interrupted`` (Ctrl-C, SIGTERM) or ``failures`` (max_failures in a row)."""
    left: tuple[TrialResult, ...] = ()
    """In-search front members that the re-timing at the end pushed off the front."""
    stopped_by: int = signal.SIGINT
    """The signal of an ``interrupted`` search: the exit code is 128 + it, as the shell reports a killed process."""

    @property
    def exit_code(self) -> int:
        return {"complete": 0, "failures": 1}.get(self.ending, 128 + self.stopped_by)


def run_search(job: Job, *, worker_command: Sequence[str] | None = None) -> SearchOutcome:
    """Run trials until the study holds ``job.search.n_trials`` completed ones (or time runs out).

    With ``worker_command`` this process only prepares the study (baseline, reference
    plans, MLflow parent run) and then runs ``job.search.workers`` copies of that command,
    which share the study through its storage, and gathers the front when all have ended.
    """
    checked = preflight(job)
    tracker = Tracker(job.tracking) if job.tracking else None
    job.run_dir.mkdir(parents=True, exist_ok=True)
    storage = make_storage(job.storage_url, job.heartbeat, on_stale=_mark_killed(tracker))
    prepared = prepare(job, checked)
    study = open_study(job.search, storage, job.objectives, blocks=prepared[1].blocks,
                       structure=prepared[1].structure_knobs, unchanged=prepared[1].uniform(0.0, "fp32").params())
    if job.config and "config" not in study.user_attrs:
        study.set_user_attr("config", job.config)
    check_fingerprint(study, fingerprint(data=job.data, baseline=prepared[0], constraints=job.constraints,
                                         evaluators=job.evaluators, finetune=job.finetune, target=job.target.name))
    ctx = build_context(job, study, prepared)
    # Only the search's own trials are stopped early; an export rebuilding a chosen trial never is.
    ctx = replace(ctx, early_stop=stop_rule(job.early_stop, job.constraints, baseline=ctx.baseline,
                                            val=ctx.data.val, seed=job.search.seed))
    parent = None
    if tracker:
        parent = tracker.parent_run(job.search.study_name, study.user_attrs.get("mlflow_parent_run_id"),
                                    {**job.settings_params, "storage": redact(job.storage_url)})
        if parent:
            study.set_user_attr("mlflow_parent_run_id", parent)
            tracker.log_baseline(parent, ctx.baseline_metrics)
    enqueue_references(study, ctx, job.search.reference_ratio)
    ctx, ladder = profiled(study, ctx, job, tracker=tracker, parent=parent)
    limit = FailureLimit(job.search.max_failures)
    budget = job.search.n_trials
    done = completed(study)
    # Local workers share the terminal: only a process that runs the trials itself draws a live display.
    progress = Progress(budget, job.search.timeout, done, finetune_steps=job.finetune.steps,
                        live=False if worker_command or os.environ.get(LOCAL_WORKER_ENV) else None)
    callbacks = [limit, BudgetCallback(budget), FrontWatch(job.objectives, tracker, progress),
                 *([ladder] if ladder else [])]
    log.info("study %r: %d trials completed, budget %s", job.search.study_name, done, budget)
    ending, stopped_by = "complete", signal.SIGINT
    try:
        with progress.shown(), interruptible():
            if worker_command and (budget is None or done < budget):
                run_workers(worker_command, job.search.workers)
            elif budget is None or done < budget:
                study.optimize(objective_fn(ctx, job.objectives, job.constraints, tracker=tracker,
                                            parent_run=parent, trial_params=job.settings_params, budget=budget,
                                            trial_timeout=job.search.trial_timeout, on_stage=progress.stage,
                                            on_step=progress.step, prescreen=job.prescreen),
                               timeout=job.search.timeout, catch=(Exception,), callbacks=callbacks)
    except KeyboardInterrupt:
        ending, stopped_by = "interrupted", last_stop_signal()
        log.warning("interrupted by %s: the current trial was recorded as failed; the front so far follows",
                    signal.Signals(stopped_by).name)
    if limit.tripped:
        ending = "failures"
        log.error("stopped after %d consecutive failed trials (search.max_failures); last error: %s",
                  limit.streak, limit.last_error)
    return replace(finish(job, study, ctx, tracker, parent, ending=ending), stopped_by=stopped_by)


def run_workers(command: Sequence[str], count: int) -> None:
    """Start ``count`` worker processes and wait for all; Ctrl-C is passed on to each."""
    log.info("starting %d workers: %s", count, redact(" ".join(command)))
    # Each worker gets its share of the cores: torch's OpenMP threads spin, and two workers with
    # two threads each on two cores ran every trial ~15x slower than one worker alone.
    threads = str(max(1, (os.cpu_count() or 1) // count))
    env = {**os.environ, LOCAL_WORKER_ENV: "1", "OMP_NUM_THREADS": threads}
    workers = [subprocess.Popen([*command, f"evaluator.evaluators.accuracy.threads={threads}"], env=env)
               for _ in range(count)]
    try:
        codes = [w.wait() for w in workers]
    except KeyboardInterrupt:
        for w in workers:
            w.send_signal(signal.SIGINT)
        for w in workers:
            w.wait()
        raise
    failed = [c for c in codes if c not in (0, 1)]
    if failed:
        log.warning("%d of %d workers exited with an error (codes %s)", len(failed), count, failed)


def finish(job: Job, study: optuna.Study, ctx: SearchContext, tracker: Tracker | None, parent: str | None, *,
           ending: str = "complete") -> SearchOutcome:
    """Re-time the front, then write the front, hypervolume, files and final MLflow logging.

    An interrupted search skips the re-timing (the user asked it to stop); local workers
    leave it to the process that started them.
    """
    searched = pareto.front(feasible_results(study, as_searched=True), job.objectives)
    record = None
    if ending != "interrupted" and not os.environ.get(LOCAL_WORKER_ENV):
        near = nearby(feasible_results(study, as_searched=True), job.objectives, job.confirm.near)
        record = confirm(study, ctx, near, job.confirm)
    feasible = feasible_results(study)
    members = pareto.front(feasible, job.objectives)
    kept = {m.number for m in members}
    left = [r for r in feasible if r.number in {s.number for s in searched} - kept]
    baseline = baseline_of(study)
    hv = pareto.hypervolume(members, job.objectives, baseline)
    files = pareto.write_front(members, out_dir=job.run_dir, baseline=baseline, hv=hv, objectives=job.objectives,
                               left=left)
    files = (*files, *write_plots(study, job.objectives, job.run_dir / "plots"))
    if tracker and parent:
        run_ids = {t.number: t.user_attrs.get("mlflow_run_id") for t in study.trials}
        for number, figures in (record or {}).get("trials", {}).items():
            if run_ids.get(int(number)):
                tracker.log_confirmed(run_ids[int(number)], figures)
        # re-timing can move members in or out of the front the search tagged: the tags follow front.json
        tracker.mark_front({run_ids[n]: n in kept for n in kept | {s.number for s in searched} if run_ids.get(n)})
        tracker.log_front(parent, {"hypervolume": hv, "front_size": len(members),
                                   "n_trials": len(study.trials)})
        for path in files:
            tracker.log_artifact(parent, str(path))
        if job.tracking and job.tracking.log_front_models:
            for member in members:
                if run_ids.get(member.number) and Path(member.model_path).is_file():
                    tracker.log_artifact(run_ids[member.number], member.model_path, "model")
        tracker.end_study(parent, status={"complete": "FINISHED", "interrupted": "KILLED"}.get(ending, "FAILED"))
    return SearchOutcome(study=study, front=members, baseline=baseline, hypervolume=hv, files=files, ending=ending,
                         left=tuple(left))
