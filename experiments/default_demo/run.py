"""The default demo end to end, timed: baseline training plus the default 20-trial search.

Run from the repository root:  .venv/bin/python experiments/default_demo/run.py
It runs `autosqueeze search` exactly as the README's quick start does, in a fresh folder
(so the baseline is trained, not read from a cache), and reports the wall time, the
per-stage medians of the trials, the share of a trial spent outside fine-tuning and
evaluation, and the front.
"""
from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import markdown  # noqa: E402
import budget  # noqa: E402

HERE = Path(__file__).parent
STAGES = ("prune", "finetune", "export", "quantize", "evaluate", "total")
REPEATS = 20  # paired timings of the unchanged model, each as long as one trial's


def identity_spread(study: optuna.Study, run_dir: Path) -> list[float]:
    """The unchanged model's speedup, timed against the baseline file as a trial is, ``REPEATS`` times."""
    from evaluators.latency import Latency
    from search.cli import data_splits, load_config

    identity = next(t for t in study.trials if not any(v for k, v in t.params.items() if k.startswith("prune."))
                    and all(v == "fp32" for k, v in t.params.items() if k.startswith("quant.")))
    path = run_dir.parents[1] / identity.user_attrs["result"]["model_path"]  # recorded relative to the search's folder
    val = data_splits(load_config([])).val
    paired = Latency().against(run_dir / "baseline" / "model.onnx", study.user_attrs["baseline"])
    speedups = [identity.user_attrs["result"]["metrics"]["speedup"]]
    for _ in range(REPEATS):
        got = paired.measure(path, val)
        speedups.append(got["baseline_raw_ms"] / got["latency_raw_ms"])
    return speedups


def spearman(a: list[float], b: list[float]) -> float:
    ranks = [np.argsort(np.argsort(x)) for x in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "search.cli", "search"], cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"the search failed:\n{done.stdout}\n{done.stderr}")
        study = optuna.load_study(study_name="autosqueeze", storage=f"sqlite:///{tmp}/outputs/autosqueeze/study.db")
        front = json.loads((Path(tmp) / "outputs/autosqueeze/front.json").read_text())
        spread = identity_spread(study, Path(tmp) / "outputs/autosqueeze")
    confirmed = study.user_attrs["confirmed"]["trials"]
    searched = {t.number: t.user_attrs["result"]["metrics"]["speedup"] for t in study.trials if "result" in t.user_attrs}
    retimed = sorted(int(n) for n in confirmed)
    rho = spearman([searched[n] for n in retimed], [confirmed[str(n)]["speedup"] for n in retimed])
    trials = [t for t in study.trials if t.state == TrialState.COMPLETE]
    timings = {s: [t.user_attrs["result"]["timings"].get(s, 0.0) for t in trials] for s in STAGES}
    medians = {s: statistics.median(v) for s, v in timings.items()}
    overhead = [(t["prune"] + t["export"] + t["quantize"]) / t["total"]
                for t in (x.user_attrs["result"]["timings"] for x in trials) if t["total"] > 0]
    pruned = [t for t in trials if any(v > 0 for k, v in t.params.items() if k.startswith("prune."))]
    rows = [{"trial": m["trial"], **{k: round(v, 4) for k, v in m["metrics"].items()}} for m in front["front"]]
    with (HERE / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    best = max((r for r in rows if r["accuracy_drop"] <= 1.0), key=lambda r: r["size_ratio"])
    gaps = [r["test_accuracy_drop"] - r["accuracy_drop"] for r in rows if "test_accuracy_drop" in r]
    stage_table = "\n".join(f"| {s} | {medians[s]:.3f} |" for s in STAGES)
    front_table = "\n".join(
        f"| {r['trial']} | {r['accuracy']:.2f} | {r['accuracy_drop']:.2f} | {r['test_accuracy']:.2f} | "
        f"{r['test_accuracy_drop']:.2f} | {r['size_bytes'] / 1e3:.1f} | {r['compressed_bytes'] / 1e3:.1f} | "
        f"{r['latency_ms']:.3f} | {r['search_speedup']:.2f}x | {r['speedup']:.2f}x | {r['size_ratio']:.2f}x |"
        for r in rows)
    base = front["baseline"]
    spent = budget.spend(study.trials)
    moves = [t for t in trials if "block_move" in t.user_attrs]
    moved_front = sorted({r["trial"] for r in rows} & {t.number for t in moves})
    kept = [t for t in trials if "kept_structure" in t.user_attrs]
    kept_front = sorted({r["trial"] for r in rows} & {t.number for t in kept})
    seeds = {t.number for t in study.trials if "seed" in t.user_attrs}
    (HERE / "results.md").write_text(f"""# Default demo: `autosqueeze search` on a fresh machine

Command: `.venv/bin/python experiments/default_demo/run.py` (runs `autosqueeze search` with the built-in
defaults in an empty folder: resnet_small trained on Fashion-MNIST, then {len(study.trials)} trials).

- Wall time, baseline training included: **{wall:.0f} s**
- Completed trials: {len(trials)} ({len(pruned)} pruned, so fine-tuned)
- Median trial: **{medians['total']:.2f} s**; the slowest: {max(timings['total']):.2f} s
- Outside fine-tuning and evaluation (prune + export + quantize), median share of a trial: **{100 * statistics.median(overhead):.1f} %**
- Baseline: {base['accuracy']:.2f} % top-1, {base['size_bytes'] / 1e3:.1f} KB, {base['latency_ms']:.3f} ms (batch 1, 1 thread)
- Smallest front member within the 1-point constraint: trial {best['trial']}, **{best['size_ratio']:.2f}x smaller**,
  {best['accuracy_drop']:.2f} points drop, {best['speedup']:.2f}x speed
- Hypervolume: {front['hypervolume']:.4f}

## Where the budget went

{budget.HEADER}
{spent.row("autosqueeze")}

- Trials that ended early: {spent.early_stopped} by the fine-tune checks ({spent.against_rival} of them held to a
  rival's drop), {spent.prescreened} before fine-tuning (beaten on size and speed by a near-baseline member), of
  {len(study.trials)} trials in all. Completed trials that loaded a same-structure trial's fine-tuned weights
  instead of fine-tuning: {spent.loaded}.
- NSGA-II children with a block move (one resolution stage's knobs set to one value): {len(moves)} of the
  completed trials; front members among them: {moved_front or 'none'}. Children that kept a front member's
  structure (precision variants, no fine-tune): {len(kept)} of the completed trials; front members among them:
  {kept_front or 'none'}. Seed plans from the profile: trials {sorted(seeds) or 'none'}.

## Per-stage median over the completed trials (seconds)

| stage | median s |
|---|---|
{stage_table}

Unpruned plans skip fine-tuning, so the fine-tune median mixes 0 s and the pruned trials' time.

## Front

val: the validation split (6,000 images held out of the training file) the search selected on; test: the
10,000 test images, measured once the search ended and never used to choose. Speedups are the baseline's
median over the member's, timed interleaved with the baseline file in one process (1 intra-op thread):
"in search" with 100 runs during the trial, "confirmed" with 300 runs when the search ended.

| trial | val % | val drop | test % | test drop | size KB | zstd KB | latency ms | speedup in search | speedup confirmed | smaller |
|---|---|---|---|---|---|---|---|---|---|---|
{front_table}

- Test drop minus validation drop over the front: median {statistics.median(gaps):+.2f} points, range
  {min(gaps):+.2f} to {max(gaps):+.2f}.

## Latency fidelity

- The unchanged model (fp32, no pruning) timed against the baseline file as every trial is (100 interleaved
  runs), once in the search and {REPEATS} more times after it: speedup median **{statistics.median(spread):.3f}x**,
  range {min(spread):.3f}x to {max(spread):.3f}x (largest deviation from 1.00x:
  **{100 * max(abs(x - 1) for x in spread):.1f} %**). In-search value: {spread[0]:.3f}x.
- Rank agreement (Spearman) between in-search and confirmed speedups over the {len(retimed)} re-timed
  members (front and the next non-dominated layer): **{rho:.2f}**.

## Machine
{markdown()}
""")
    print((HERE / "results.md").read_text())


if __name__ == "__main__":
    main()
