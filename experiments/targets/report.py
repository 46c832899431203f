"""The per-target MobileNetV2 runs as a table: fronts, baselines and the cross scores, from ``outputs/targets/``."""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from machine import markdown  # noqa: E402
from search.inspect import pareto  # noqa: E402
from search.study import baseline_of, feasible_results  # noqa: E402
from targets.run import MAX_DROP, TARGETS  # noqa: E402

HERE = Path(__file__).resolve().parent


def section(root: Path, target: str, walls: dict) -> list[str]:
    path = root / f"mnv2-{target}" / "study.db"
    if not path.is_file():
        return [f"### target={target}", "", "not run", ""]
    study = optuna.load_study(study_name=f"mnv2-{target}", storage=f"sqlite:///{path}")
    from search.cli import load_config, objectives_of

    objectives = objectives_of(load_config([]))
    base = baseline_of(study)
    feasible = feasible_results(study)
    front = sorted(pareto.front(feasible, objectives), key=lambda r: r.number)
    states = [t.state for t in study.trials]
    lines = [f"### target={target}", "",
             f"Baseline on this runtime: {base.get('accuracy', float('nan')):.2f} % val, "
             f"{base.get('size_bytes', 0) / 1e3:.1f} kB, {base.get('latency_ms', float('nan')):.3f} ms. "
             f"{states.count(TrialState.COMPLETE)} completed, {states.count(TrialState.PRUNED)} stopped early, "
             f"{walls.get(target, 0) / 60:.0f} min.", "",
             "| trial | val drop | test drop | size ratio | speedup (confirmed, paired) |", "|---|---|---|---|---|"]
    for r in front:
        m = r.metrics
        lines.append(f"| {r.number} | {m.get('accuracy_drop', float('nan')):.2f} | "
                     f"{m.get('test_accuracy_drop', float('nan')):.2f} | {m.get('size_ratio', float('nan')):.2f}x | "
                     f"{m.get('speedup', float('nan')):.2f}x |")
    inside = [r for r in feasible if r.metrics.get("accuracy_drop", 99) <= MAX_DROP]
    if inside:
        fastest = max(inside, key=lambda r: r.metrics.get("speedup", 0.0))
        lines += ["", f"Best speedup within {MAX_DROP:g} point: **{fastest.metrics['speedup']:.2f}x** "
                      f"(trial {fastest.number}, {fastest.metrics['size_ratio']:.2f}x smaller)."]
    return [*lines, ""]


def write(root: Path) -> Path:
    walls = json.loads((root / "walls.json").read_text()) if (root / "walls.json").is_file() else {}
    cross = json.loads((root / "cross.json").read_text()) if (root / "cross.json").is_file() else []
    trials = json.loads((root / "settings.json").read_text())["trials"] if (root / "settings.json").is_file() else 6
    text = ["# MobileNetV2 per target", "",
            "Command: `nice -n 5 .venv/bin/python experiments/targets/run.py --root /work/bench-out/targets "
            f"--trials {trials} --only TARGET --no-score` for the three targets side by side, then `run.py "
            f"--trials {trials} --no-search` and `.venv/bin/python experiments/targets/report.py "
            "/work/bench-out/targets`.", "",
            "`experiment=mobilenet_v2` with `space.quant.precisions=[fp32,int8]` (what all three targets run), "
            f"{trials} completed trials per target (3 references, the profile's 4 seeds, then NSGA-II's children), "
            "one cached baseline.", ""]
    timed = json.loads((root / "baselines.json").read_text()) if (root / "baselines.json").is_file() else []
    if timed:
        text += ["## The fp32 baselines side by side", "",
                 "The three baseline artifacts timed round-robin in one process (batch 1, 1 thread, 300 runs), "
                 "median ms per round:", "", "| round | " + " | ".join(TARGETS) + " |", "|---" * (len(TARGETS) + 1) + "|"]
        text += [f"| {i} | " + " | ".join(f"{r[t]:.3f}" for t in TARGETS) + " |" for i, r in enumerate(timed)]
        text += [""]
    for target in TARGETS:
        text += section(root, target, walls)
    text += ["## Each target's best plan on the other targets", "",
             "Speedup against the scoring target's own fp32 baseline artifact, timed interleaved in one process "
             "(300 runs). ExecuTorch compiles from the fine-tuned torch model, which a finished trial does not "
             "keep, so it scores no other target's plan.", "",
             "| plan of | trial | scored on | speedup there | speedup in its own search |", "|---|---|---|---|---|"]
    text += [f"| {c['plan_of']} | {c['trial']} | {c['scored_on']} | {c['speedup']:.2f}x | "
             f"{c['in_its_own_search']:.2f}x |" for c in cross]
    notes = HERE / "search_notes.md"
    text += ["", *(notes.read_text().splitlines() if notes.is_file() else []), "", "## Machine", "", markdown(), ""]
    out = HERE / "search.md"
    out.write_text("\n".join(text))
    return out


if __name__ == "__main__":
    print(write(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "outputs" / "targets").read_text())
