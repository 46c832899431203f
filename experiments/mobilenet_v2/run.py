"""MobileNetV2 (ImageNet weights) on Fashion-MNIST 64x64: hand grid vs random search vs autosqueeze.

Run from the repository root:

    .venv/bin/python experiments/mobilenet_v2/run.py [HYDRA OVERRIDES ...]

All three methods share one baseline (trained once, cached under outputs/cache/), one baseline
measurement, one fine-tune recipe and one evaluator set (conf/experiment/mobilenet_v2.yaml):

- ``grid``: the six plans a user tries by hand, uniform ratio {0, 0.25, 0.5} x {fp32, int8};
- ``random``: RandomSampler over autosqueeze's per-layer space, no reference plans;
- ``autosqueeze``: the default sampler (NSGA-II) with its enqueued reference plans, then the seed
  plans of its sensitivity profile (search/profiling/profile.py), and latency-aware precision choices.

``random`` and ``autosqueeze`` get ``search.n_trials`` trials each. Studies resume: re-running the
command finishes what is missing. The report (re-timing, tables, plot) is in ``report.py``.

``--only METHOD`` runs one method's study and skips the report, so that methods can run side by
side (one torch thread each); a final run without it resumes the finished studies and reports.
``--report`` only reports: a study stopped by ``search.timeout`` before its budget is not resumed.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]

from search.cli import build_job, configure_logging, load_config  # noqa: E402
from search.trials.onnx_export import export_onnx  # noqa: E402
from search.runner import Job, prepare, preflight, run_search  # noqa: E402
from search.records.storage import make_storage  # noqa: E402
from search.study import open_study  # noqa: E402
from search.trials.trial import measure, sha256_of  # noqa: E402

HERE = Path(__file__).resolve().parent
GRID = [(ratio, precision) for ratio in (0.0, 0.25, 0.5) for precision in ("fp32", "int8")]
METHODS = ("grid", "random", "autosqueeze")
log = logging.getLogger("autosqueeze")


def method_job(job: Job, method: str, root: Path) -> Job:
    """The shared job with this method's study name, folder, sampler and budget."""
    name = f"{job.search.study_name}-{method}"
    sampler = {"grid": "nsga2", "random": "random", "autosqueeze": job.search.sampler}[method]
    budget = len(GRID) if method == "grid" else job.search.n_trials
    # The profile's seeds and narrowed precisions are part of autosqueeze; grid and random stay as defined.
    # Random gets the same bookkeeping (early stopping, prescreen, reuse); the grid is what a person runs by
    # hand, every plan to the end.
    grid = method == "grid"
    return replace(job, search=replace(job.search, study_name=name, sampler=sampler, n_trials=budget),
                   run_dir=root / name, profile=job.profile if method == "autosqueeze" else None,
                   early_stop=None if grid else job.early_stop, prescreen=None if grid else job.prescreen)


def baseline_metrics(job: Job, model: torch.nn.Module, space, root: Path) -> dict:
    """The fp32 baseline's metrics, measured once and shared by the three studies."""
    path = root / "baseline.json"
    if path.is_file():
        return json.loads(path.read_text())
    onnx_path = export_onnx(model, space.example_input, _mkdir(root / "baseline") / "model.onnx")
    metrics = measure(onnx_path, job.data.val, job.evaluators)
    payload = {"metrics": metrics, "sha256": sha256_of(onnx_path), "onnx": str(onnx_path)}
    path.write_text(json.dumps(payload, indent=2))
    return payload


def seed_study(job: Job, method: str, base: dict, space) -> None:
    """Create the study with the shared baseline; queue the grid, or no references for random."""
    job.run_dir.mkdir(parents=True, exist_ok=True)
    storage = make_storage(job.storage_url, job.heartbeat)
    study = open_study(job.search, storage, job.objectives)
    if study.user_attrs.get("baseline") is None:
        study.set_user_attr("baseline", base["metrics"])
        study.set_user_attr("baseline_sha256", base["sha256"])
    if study.get_trials(deepcopy=False) or method == "autosqueeze":
        return  # autosqueeze: run_search enqueues its own reference plans
    study.set_user_attr("references_enqueued", True)  # grid: its own plans; random: none
    if method == "grid":
        for ratio, precision in GRID:
            plan = space.uniform(ratio, precision)
            study.enqueue_trial(plan.params(), user_attrs={"grid": f"{ratio:g}/{precision}"})


def completed_trials(job: Job) -> list:
    study = optuna.load_study(study_name=job.search.study_name, storage=job.storage_url)
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def add_wall(path: Path, key: str, seconds: float, *, first_only: bool = False) -> float:
    """Add to one entry of walls.json, re-read first: methods run side by side share the file.

    A resumed study adds its new time; a finished one adds nothing.
    """
    walls = json.loads(path.read_text()) if path.is_file() else {}
    walls[key] = walls[key] if first_only and key in walls else walls.get(key, 0.0) + seconds
    path.write_text(json.dumps(walls, indent=2))
    return walls[key]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def main(overrides: list[str], only: str | None = None, report_only: bool = False) -> None:
    torch.set_num_threads(1)  # beside other jobs on 2 cores, 2 torch threads ran ~5x slower per step
    cfg = load_config(["experiment=mobilenet_v2", *overrides])
    configure_logging(cfg)
    job = build_job(cfg)
    root = _mkdir(Path(cfg.paths.root) / cfg.search.study_name)
    start = time.perf_counter()
    model, space = prepare(job, preflight(job))
    base = baseline_metrics(job, model, space, root)
    setup_s = time.perf_counter() - start
    log.info("baseline: %s (setup %.0f s)", base["metrics"], setup_s)
    walls_path = root / "walls.json"
    setup_s = add_wall(walls_path, "setup", setup_s, first_only=True)  # the first run's: it trained the baseline
    for method in () if report_only else (only,) if only else METHODS:
        mjob = method_job(job, method, root)
        seed_study(mjob, method, base, space)
        log.info("=== %s: study %s, budget %d trials", method, mjob.search.study_name, mjob.search.n_trials)
        begin, before = time.perf_counter(), len(completed_trials(mjob))
        outcome = run_search(mjob)
        added = time.perf_counter() - begin if len(completed_trials(mjob)) > before else 0.0
        log.info("=== %s done in %.0f s: %d front members, hypervolume %.4f",
                 method, add_wall(walls_path, method, added), len(outcome.front), outcome.hypervolume)
    if only:
        return
    walls = json.loads(walls_path.read_text())
    from mobilenet_v2.layers import layer_kinds
    from mobilenet_v2.report import write_report

    notes = HERE / "notes.md"  # the hand-written analysis of the committed run
    path = write_report(job, root, base, walls, setup_s=setup_s, overrides=overrides, kinds=layer_kinds(model),
                        out_dir=HERE if cfg.search.study_name == "mobilenet_v2" else root,
                        notes=notes.read_text() if notes.is_file() and cfg.search.study_name == "mobilenet_v2" else "")
    print(path.read_text())


def parse_args(argv: list[str]) -> tuple[list[str], str | None]:
    if "--only" not in argv:
        return argv, None
    at = argv.index("--only")
    if at + 1 >= len(argv) or argv[at + 1] not in METHODS:
        sys.exit(f"--only takes one of {', '.join(METHODS)}")
    return argv[:at] + argv[at + 2:], argv[at + 1]


if __name__ == "__main__":
    report_only = "--report" in sys.argv
    overrides, only = parse_args([a for a in sys.argv[1:] if a != "--report"])
    main(overrides, only, report_only)
