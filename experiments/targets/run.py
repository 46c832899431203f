"""The MobileNetV2 benchmark's autosqueeze arm once per target, and each target's best plan scored on the others.

Run from the repository root:

    nice -n 5 .venv/bin/python experiments/targets/run.py [--trials 6] [--only onnxruntime,openvino]
        [--no-score | --no-search]

Every target searches the same space (``experiment=mobilenet_v2`` with precisions fp32 and int8, the ones all
three targets run) at the same budget, in its own study under ``outputs/targets/``; the baseline is trained
once and cached. Then the best member within 1 point of each study (the fastest) is scored on the other
targets that build from the trial's QDQ ONNX file (ONNX Runtime and OpenVINO; ExecuTorch compiles from the
fine-tuned torch model, which a finished trial does not keep), timed interleaved with that target's own
baseline artifact in one process. ``results.md`` gets the fronts, the baselines and the cross table.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]

TARGETS = ("onnxruntime", "openvino", "executorch")
FROM_ONNX = ("onnxruntime", "openvino")  # targets that build an artifact from a trial's QDQ ONNX file
MAX_DROP = 1.0


def overrides(root: Path, target: str, trials: int) -> list[str]:
    return [f"paths.root={root}", "experiment=mobilenet_v2", f"target={target}", f"search.n_trials={trials}",
            f"search.study_name=mnv2-{target}", "space.quant.precisions=[fp32,int8]"]


def run(root: Path, target: str, trials: int) -> float:
    command = [sys.executable, "-m", "search.cli", "search", *overrides(root, target, trials)]
    start = time.perf_counter()
    with (root / f"mnv2-{target}.log").open("a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=log,
                       stderr=subprocess.STDOUT)
    return time.perf_counter() - start


def best(study) -> object | None:
    from search.study import feasible_results

    inside = [r for r in feasible_results(study) if r.metrics.get("accuracy_drop", 99) <= MAX_DROP]
    return max(inside, key=lambda r: r.metrics.get("speedup", 0.0)) if inside else None


def cross(root: Path, trials: int) -> list[dict]:
    """Each target's best plan (its QDQ ONNX file) built and timed on the targets that build from ONNX."""
    import optuna

    from evaluators.latency import Latency
    from search.cli import data_splits, load_config
    from search.deploy.targets import Source, target_named
    from search.study import baseline_of

    data = data_splits(load_config(overrides(root, TARGETS[0], trials))).val
    rows = []
    for source in TARGETS:
        study = optuna.load_study(study_name=f"mnv2-{source}", storage=f"sqlite:///{root}/mnv2-{source}/study.db")
        member = best(study)
        if member is None:
            continue
        onnx = ROOT / Path(member.model_path).with_suffix(".onnx")
        onnx = onnx if onnx.is_file() else Path(member.model_path).with_suffix(".onnx")
        for scorer in FROM_ONNX:
            other = optuna.load_study(study_name=f"mnv2-{scorer}", storage=f"sqlite:///{root}/mnv2-{scorer}/study.db")
            work = root / "cross" / f"{source}-on-{scorer}"
            work.mkdir(parents=True, exist_ok=True)
            copy = shutil.copy(onnx, work / "model.onnx")
            artifact = target_named(scorer).build(Source(onnx=Path(copy)))
            baseline_dir = root / f"mnv2-{scorer}" / "baseline"
            reference = next(p for p in baseline_dir.iterdir() if p.suffix == target_named(scorer).suffix)
            latency = Latency(runs=300, warmup=30).against(reference, baseline_of(other))
            figures = latency.measure(artifact, data)
            rows.append({"plan_of": source, "trial": member.number, "scored_on": scorer,
                         "speedup": round(baseline_of(other)["latency_ms"] / figures["latency_ms"], 3),
                         "in_its_own_search": round(member.metrics.get("speedup", float("nan")), 3)})
    return rows


def baselines(root: Path, trials: int, rounds: int = 3) -> list[dict[str, float]]:
    """The three fp32 baseline artifacts timed round-robin in one process, ``rounds`` times: median ms each."""
    from evaluators.latency import interleaved
    from search.cli import data_splits, load_config
    from search.deploy.targets import target_named

    data = data_splits(load_config(overrides(root, TARGETS[0], trials))).val
    paths = [next(p for p in (root / f"mnv2-{t}" / "baseline").iterdir() if p.suffix == target_named(t).suffix)
             for t in TARGETS]
    out = []
    for _ in range(rounds):
        timed = interleaved(paths, data, warmup=30, runs=300, threads=1)
        out.append({t: round(m["latency_ms"], 4) for t, m in zip(TARGETS, timed)})
    return out


def main(root: Path, trials: int, only: list[str], *, search: bool = True, score: bool = True) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "settings.json").write_text(json.dumps({"trials": trials}))
    for target in (only or TARGETS) if search else ():
        print(f"search with target={target}", flush=True)
        seconds = run(root, target, trials)
        # read again: searches of other targets may run beside this one (--only, --no-score) and write it too
        walls = json.loads((root / "walls.json").read_text()) if (root / "walls.json").is_file() else {}
        walls[target] = walls.get(target, 0.0) + seconds
        (root / "walls.json").write_text(json.dumps(walls, indent=2))
    if not score:
        return
    (root / "baselines.json").write_text(json.dumps(baselines(root, trials), indent=2))
    (root / "cross.json").write_text(json.dumps(cross(root, trials), indent=2))
    print((root / "cross.json").read_text())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT / "outputs" / "targets")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--only", default="")
    parser.add_argument("--no-search", dest="search", action="store_false",
                        help="only time the baselines and score the best plans across targets")
    parser.add_argument("--no-score", dest="score", action="store_false",
                        help="only search (several targets may then search side by side, one process each)")
    args = parser.parse_args()
    main(args.root.resolve(), args.trials, [t for t in args.only.split(",") if t], search=args.search,
         score=args.score)
