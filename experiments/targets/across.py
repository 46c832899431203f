"""One search's plans scored for size and speed on every target: is the fastest plan within 1 point the same?

Run from the repository root, once ``run.py --only onnxruntime --no-score`` has made the source study:

    nice -n 5 .venv/bin/python experiments/targets/across.py --root /work/bench-out/targets [--source onnxruntime]

A plan's size and speed depend only on its structure and precisions (search/trials/prescreen.py), so every
completed plan of the source study is applied to the cached baseline and built for each target without
fine-tuning, then timed interleaved with that target's own fp32 baseline artifact (paired speedup). That
reaches ExecuTorch too, which compiles from a torch model that a finished trial does not keep. Accuracy is
the source search's own (fine-tuned, measured on its runtime). Writes ``across.json`` under the root and
``across.md`` here.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]

from targets.run import MAX_DROP, TARGETS, overrides  # noqa: E402

HERE = Path(__file__).resolve().parent
RUNS = 300  # paired latency runs per plan and target (a search times 100)


def score(root: Path, source: str, trials: int, targets: tuple[str, ...] = TARGETS, repeats: int = 1) -> list[dict]:
    """Every completed plan of ``mnv2-<source>`` built and timed on ``targets``, ``repeats`` times each (median)."""
    import optuna

    from search.cli import build_job, load_config
    from search.runner import build_context, prepare
    from search.study import results
    from search.trials.prescreen import structure_figures
    from search.trials.trial import relative

    study = optuna.load_study(study_name=f"mnv2-{source}", storage=f"sqlite:///{root}/mnv2-{source}/study.db")
    plans = results(study, as_searched=True)
    rows = []
    for target in targets:
        cfg = load_config([*overrides(root, target, trials), f"paths.run_dir={root}/across/{target}",
                           f"evaluator.evaluators.latency.runs={RUNS}"])
        job = build_job(cfg)
        ctx = build_context(job, optuna.create_study(directions=["minimize"]), prepare(job))
        for result in plans:
            start = time.perf_counter()
            timed = []
            for _ in range(repeats):
                with tempfile.TemporaryDirectory(dir=root) as work:
                    timed.append(structure_figures(ctx, ctx.space.apply(ctx.baseline, result.plan), result.plan,
                                                   Path(work)))
            speedups = [f["baseline_raw_ms"] / f["latency_raw_ms"] for f in timed]
            figures = timed[speedups.index(statistics.median_low(speedups))]
            ratios = relative(figures, ctx.baseline_metrics)
            rows.append({"trial": result.number, "target": target, "size_ratio": round(ratios["size_ratio"], 3),
                         "speedup": round(statistics.median(speedups), 3),
                         "speedups": [round(v, 3) for v in speedups],
                         "latency_cv": round(figures["latency_cv"], 3),
                         "accuracy_drop": round(result.metrics["accuracy_drop"], 3),
                         "speedup_in_search": round(result.metrics.get("speedup", float("nan")), 3),
                         "seconds": round(time.perf_counter() - start, 1)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def spearman(a: list[float], b: list[float]) -> float:
    """Rank agreement of two targets' speedups over the same plans (scipy, which scikit-learn brings)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) > 2 else float("nan")


def write(rows: list[dict], source: str) -> Path:
    from machine import markdown

    trials = sorted(set.intersection(*({r["trial"] for r in rows if r["target"] == t} for t in TARGETS)))
    cell = {(r["trial"], r["target"]): r for r in rows}
    text = ["# One search's plans on every target", "",
            "Command: `nice -n 5 .venv/bin/python experiments/targets/across.py --root ROOT [--targets T,...] "
            f"[--repeats N]` (the runs behind these numbers are listed below), after "
            f"`experiments/targets/run.py --only {source} --no-score` made the source study "
            f"(`experiment=mobilenet_v2`, `space.quant.precisions=[fp32,int8]`).", "",
            f"Every completed plan of the `target={source}` study, applied to the same cached baseline and built for "
            "each target without fine-tuning (size and speed depend only on structure and precisions), timed "
            f"interleaved with that target's own fp32 baseline artifact ({RUNS} runs, batch 1, 1 thread; the median "
            "of the repeats where a plan was built and timed more than once, see across.json). The "
            f"accuracy drop is the {source} search's, after fine-tuning, on validation.", "",
            "| trial | val drop | " + " | ".join(f"{t} size | {t} speedup" for t in TARGETS) + " |",
            "|---|---|" + "---|---|" * len(TARGETS)]
    for trial in trials:
        drop = cell[(trial, TARGETS[0])]["accuracy_drop"]
        text.append(f"| {trial} | {drop:.2f} | " + " | ".join(
            f"{cell[(trial, t)]['size_ratio']:.2f}x | {cell[(trial, t)]['speedup']:.2f}x" for t in TARGETS) + " |")
    text += ["", f"## The fastest plan within {MAX_DROP:g} point, per target", "",
             "| target | trial | speedup | runner-up (speedup) |", "|---|---|---|---|"]
    inside = [t for t in trials if cell[(t, TARGETS[0])]["accuracy_drop"] <= MAX_DROP]
    for target in TARGETS:
        ordered = sorted(inside, key=lambda t: -cell[(t, target)]["speedup"])
        if ordered:
            runner = (f"{ordered[1]} ({cell[(ordered[1], target)]['speedup']:.2f}x)" if len(ordered) > 1 else "none")
            text.append(f"| {target} | {ordered[0]} | {cell[(ordered[0], target)]['speedup']:.2f}x | {runner} |")
    text += ["", "Rank agreement of the speedups over all plans (Spearman):", "",
             "| | " + " | ".join(TARGETS) + " |", "|---" * (len(TARGETS) + 1) + "|"]
    for a in TARGETS:
        text.append(f"| {a} | " + " | ".join(
            f"{spearman([cell[(t, a)]['speedup'] for t in trials], [cell[(t, b)]['speedup'] for t in trials]):.2f}"
            for b in TARGETS) + " |")
    notes = HERE / "across_notes.md"
    text += ["", *(notes.read_text().splitlines() if notes.is_file() else []), "", "## Machine", "", markdown(), ""]
    out = HERE / "across.md"
    out.write_text("\n".join(text))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT / "outputs" / "targets")
    parser.add_argument("--source", default="onnxruntime", choices=TARGETS)
    parser.add_argument("--targets", default=",".join(TARGETS), help="score on these (their rows in across.json "
                        "are replaced, the others kept)")
    parser.add_argument("--repeats", type=int, default=1, help="build and time each plan this many times (median)")
    parser.add_argument("--report-only", action="store_true", help="rewrite across.md from across.json")
    args = parser.parse_args()
    root = args.root.resolve()
    trials = json.loads((root / "settings.json").read_text())["trials"] if (root / "settings.json").is_file() else 6
    saved = root / "across.json"
    if not args.report_only:
        chosen = tuple(t for t in args.targets.split(",") if t)
        kept = [r for r in json.loads(saved.read_text()) if r["target"] not in chosen] if saved.is_file() else []
        fresh = score(root, args.source, trials, chosen, args.repeats)
        saved.write_text(json.dumps(sorted(kept + fresh, key=lambda r: (TARGETS.index(r["target"]), r["trial"])),
                                    indent=2))
    print(write(json.loads(saved.read_text()), args.source).read_text())
