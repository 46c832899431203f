"""Which sampler the default search should use: NSGA-II (with and without block moves), TPE, GP and random.

Run from the repository root:

    nice -n 5 .venv/bin/python experiments/samplers/run.py [--max-minutes 100]

Each arm runs the default demo search (`autosqueeze search`, built-in residual CNN on Fashion-MNIST,
20 completed trials) once per sampler seed, in its own study under ``outputs/samplers/``:

- ``seed`` (data split and baseline) stays 0; only ``search.seed`` (sampler, fine-tune and early-stop
  subset) changes. ``seed`` enters the data config and so the baseline's cache key: varying it would
  train one baseline per seed on another validation split, and the arms could not share a reference point.
- The baseline is trained once, before the first arm. The first study measures the baseline's metrics and
  the sensitivity profile; every later study starts with a copy of both (as the MobileNetV2 benchmark
  shares its baseline), so all arms queue the same reference and seed plans and are scored against one
  baseline. The profile's seconds are charged to every arm's wall time.
- Studies resume: re-running finishes what is missing, and a finished study is only read.
- Seed 0 of every arm runs first; a seed-1 arm that would end past ``--max-minutes`` is skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]

from mobilenet_v2.run import add_wall  # noqa: E402

HERE = Path(__file__).resolve().parent
ARMS: dict[str, list[str]] = {
    "nsga2": ["search.sampler=nsga2"],  # the default: block moves with probability 0.5
    "nsga2-flat": ["search.sampler=nsga2", "search.block_move_prob=0"],
    "tpe": ["search.sampler=tpe"],
    "gp": ["search.sampler=gp"],
    "random": ["search.sampler=random"],
}
SEEDS = (0, 1)
N_TRIALS = 20
ARM_TIMEOUT_S = 1800  # search.timeout: no trial starts after it (a free key: it changes no number)
SHARED_ATTRS = ("baseline", "baseline_sha256", "profile")


def common(root: Path) -> list[str]:
    return [f"paths.root={root}", "tracking=none", "seed=0", f"search.n_trials={N_TRIALS}"]


def study_name(arm: str, seed: int) -> str:
    return f"samplers-{arm}-s{seed}"


def storage_url(root: Path, name: str) -> str:
    return f"sqlite:///{root / name / 'study.db'}"


def load(root: Path, name: str) -> optuna.Study | None:
    if not (root / name / "study.db").is_file():
        return None
    try:
        return optuna.load_study(study_name=name, storage=storage_url(root, name))
    except KeyError:
        return None


def finished(study: optuna.Study | None) -> bool:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if study else []
    return len(done) >= N_TRIALS and "confirmed" in study.user_attrs


def train_baseline(root: Path) -> float:
    """Train (or read back) the one baseline every arm uses; seconds spent."""
    import torch

    from search.cli import build_job, load_config
    from search.runner import prepare

    torch.set_num_threads(1)
    start = time.perf_counter()
    prepare(build_job(load_config(common(root))))
    return time.perf_counter() - start


def share_reference(root: Path, name: str, source: optuna.Study | None) -> bool:
    """Create study ``name`` holding ``source``'s baseline metrics and profile; False when there is none."""
    if source is None or "profile" not in source.user_attrs or load(root, name) is not None:
        return False
    (root / name).mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=name, storage=storage_url(root, name), directions=source.directions)
    for key in SHARED_ATTRS:
        study.set_user_attr(key, source.user_attrs[key])
    study.set_user_attr("shared_from", source.study_name)
    return True


def run_arm(root: Path, arm: str, seed: int) -> tuple[int, float]:
    """One `autosqueeze search`, its output in ``<root>/<study>.log``; exit code and seconds."""
    name = study_name(arm, seed)
    command = [sys.executable, "-m", "search.cli", "search", *common(root), *ARMS[arm], f"search.seed={seed}",
               f"search.study_name={name}", f"search.timeout={ARM_TIMEOUT_S}"]
    # one torch thread: two long benchmarks share the machine's 2 cores (latency is timed on 1 thread anyway)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    with (root / f"{name}.log").open("a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        rc = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    return rc, time.perf_counter() - start


def last_error(root: Path, name: str) -> str:
    path = root / f"{name}.log"
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []
    errors = [ln for ln in lines if "Error" in ln or "ERROR" in ln or "error" in ln]
    return (errors or lines or ["no log"])[-1][:300]


def run_one(root: Path, arm: str, seed: int, source: optuna.Study | None) -> str | None:
    """Run (or resume) one arm and seed; why it did not finish, or None."""
    name = study_name(arm, seed)
    shared = share_reference(root, name, source)
    before = len(load(root, name).trials) if load(root, name) else 0
    print(f"run {name} ({'shared baseline and profile' if shared else 'own or resumed'})", flush=True)
    rc, seconds = run_arm(root, arm, seed)
    study = load(root, name)
    if study is not None and len(study.trials) > before:
        add_wall(root / "walls.json", name, seconds)
    print(f"  {name}: exit {rc}, {seconds / 60:.1f} min", flush=True)
    if rc != 0:
        return f"exit {rc}: {last_error(root, name)}"
    if not finished(study):
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) if study else 0
        return f"search.timeout={ARM_TIMEOUT_S} s reached with {done}/{N_TRIALS} completed trials"
    return None


def main(max_minutes: float, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    start, walls_path, errors_path = time.perf_counter(), root / "walls.json", root / "errors.json"
    add_wall(walls_path, "baseline", train_baseline(root), first_only=True)
    errors: dict[str, str] = json.loads(errors_path.read_text()) if errors_path.is_file() else {}
    for seed in SEEDS:
        for arm in ARMS:
            name = study_name(arm, seed)
            if finished(load(root, name)):
                continue
            expected = json.loads(walls_path.read_text()).get(study_name(arm, 0), 0.0)
            errors.pop(name, None)
            if seed > 0 and time.perf_counter() - start + expected > max_minutes * 60:
                errors[name] = f"not run: would end past {max_minutes:g} min (seed 0 took {expected / 60:.0f} min)"
                print(f"skip {name}: {errors[name]}", flush=True)
            else:
                source = next((s for s in (load(root, study_name(a, z)) for z in SEEDS for a in ARMS)
                               if s is not None and "profile" in s.user_attrs), None)
                errors.update({name: why} if (why := run_one(root, arm, seed, source)) else {})
            errors_path.write_text(json.dumps(errors, indent=2))
    from samplers.report import write_report

    print(write_report(root, errors, command=sys.argv[1:]).read_text())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-minutes", type=float, default=100.0)
    parser.add_argument("--root", type=Path, default=ROOT / "outputs" / "samplers")
    args = parser.parse_args()
    main(args.max_minutes, args.root.resolve())
