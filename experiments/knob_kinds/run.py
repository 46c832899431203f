"""What the knob kinds beyond prune and quant buy: lowrank, share and sparse, at equal budget.

Run from the repository root:

    nice -n 5 .venv/bin/python experiments/knob_kinds/run.py [--only demo-all,...]

Every arm is one `autosqueeze search` with ``evaluator=ota`` (the study minimises the zstd-compressed bytes a
device downloads, besides accuracy and latency), in its own study under ``outputs/knob_kinds/``:

- ``demo-*``: the default demo model (built-in ResNet on Fashion-MNIST), ``mlp-*``: the same ResNet with a
  512-512 MLP head (``model=resnet_small_mlp``), where most weights sit in fully connected layers.
- ``*-today``: ``space.kinds=[prune,quant]``; ``*-all``: ``[prune,quant,lowrank,share,sparse]``; same budget.
- ``mnv2-*``: the MobileNetV2 benchmark's model, data and fine-tune recipe (``experiment=mobilenet_v2``).
- ``alone-<kind>``: that kind alone on the demo model, with the uniform plan (the kind's middle value on every
  layer it offers) queued first, so the study holds the hand-made uniform application and the searched plans.

Arms of one model share the baseline (one training, cached under ``outputs/knob_kinds/cache``). Studies resume:
re-running finishes what is missing. ``report.py`` writes results.md from the studies.
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

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]

ALL = "[prune,quant,lowrank,share,sparse]"
MNV2 = ["experiment=mobilenet_v2", "evaluator.evaluators.size.level=19"]
ARMS: dict[str, tuple[list[str], int]] = {  # overrides, completed trials
    "demo-today": (["space.kinds=[prune,quant]"], 20),
    "demo-all": ([f"space.kinds={ALL}"], 20),
    "mlp-today": (["model=resnet_small_mlp", "space.kinds=[prune,quant]"], 12),
    "mlp-all": (["model=resnet_small_mlp", f"space.kinds={ALL}"], 12),
    "alone-lowrank": (["space.kinds=[lowrank]"], 6),
    "alone-share": (["space.kinds=[share]"], 6),
    "alone-sparse": (["space.kinds=[sparse]"], 6),
    # MobileNetV2 (conf/experiment/mobilenet_v2.yaml) at zstd-19 like the rest; 12 completed trials per arm
    "mnv2-today": ([*MNV2, "space.kinds=[prune,quant]"], 12),
    "mnv2-all": ([*MNV2, f"space.kinds={ALL}"], 12),
}
# search.timeout: no trial starts after it; a MobileNetV2 trial fine-tunes for minutes
ARM_TIMEOUT_S = {"mnv2": 5400}


def common(root: Path, arm: str) -> list[str]:
    overrides, n_trials = ARMS[arm]
    return [f"paths.root={root}", "tracking=none", "seed=0", "evaluator=ota", f"search.n_trials={n_trials}",
            f"search.study_name={arm}", *overrides]


def storage_url(root: Path, arm: str) -> str:
    return f"sqlite:///{root / arm / 'study.db'}"


def load(root: Path, arm: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=arm, storage=storage_url(root, arm))
    except KeyError:
        return None


def queue_uniform(root: Path, arm: str) -> None:
    """Queue the kind's uniform plan as the study's first trial: its middle choice on every layer it offers."""
    from search.cli import build_job, load_config
    from search.runner import preflight

    if not arm.startswith("alone-") or (root / arm / "study.db").is_file():
        return
    _, space = preflight(build_job(load_config(common(root, arm))))
    kind = space.kinds[0]  # an alone- arm searches one kind
    uniform = {}
    for knob in space.knobs:
        offered = sorted(c for c in knob.choices if c != kind.neutral)
        uniform[knob.name] = offered[len(offered) // 2] if offered else kind.neutral
    (root / arm).mkdir(parents=True, exist_ok=True)
    from search.cli import objectives_of

    directions = [o.direction for o in objectives_of(load_config(common(root, arm)))]
    study = optuna.create_study(study_name=arm, storage=storage_url(root, arm), directions=directions)
    study.enqueue_trial(uniform, user_attrs={"uniform": True})


def run_arm(root: Path, arm: str) -> tuple[int, float]:
    command = [sys.executable, "-m", "search.cli", "search", *common(root, arm), 
               f"search.timeout={ARM_TIMEOUT_S.get(arm.split('-')[0], 1800)}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # latency is timed on 1 thread; the box is shared
    start = time.perf_counter()
    with (root / f"{arm}.log").open("a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        rc = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    return rc, time.perf_counter() - start


def main(root: Path, only: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    walls_path = root / "walls.json"
    for arm in only or ARMS:
        queue_uniform(root, arm)
        print(f"run {arm}", flush=True)
        rc, seconds = run_arm(root, arm)
        walls = json.loads(walls_path.read_text()) if walls_path.is_file() else {}
        walls[arm] = walls.get(arm, 0.0) + seconds
        walls_path.write_text(json.dumps(walls, indent=2))
        print(f"  {arm}: exit {rc}, {seconds / 60:.1f} min", flush=True)
    from knob_kinds.report import report_of, write_report

    for name in dict.fromkeys(report_of(arm) for arm in only or ARMS):
        print(write_report(root, command=sys.argv[1:], name=name).read_text())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT / "outputs" / "knob_kinds")
    parser.add_argument("--only", default="", help="comma-separated arms (default: all, in order)")
    args = parser.parse_args()
    main(args.root.resolve(), [a for a in args.only.split(",") if a])
