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

import optuna
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import markdown  # noqa: E402

HERE = Path(__file__).parent
STAGES = ("prune", "finetune", "export", "quantize", "evaluate", "total")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "search.cli", "search"], cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"the search failed:\n{done.stdout}\n{done.stderr}")
        study = optuna.load_study(study_name="autosqueeze", storage=f"sqlite:///{tmp}/outputs/autosqueeze/study.db")
        front = json.loads((Path(tmp) / "outputs/autosqueeze/front.json").read_text())
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
    stage_table = "\n".join(f"| {s} | {medians[s]:.3f} |" for s in STAGES)
    front_table = "\n".join(
        f"| {r['trial']} | {r['accuracy']:.2f} | {r['accuracy_drop']:.2f} | {r['size_bytes'] / 1e3:.1f} | "
        f"{r['compressed_bytes'] / 1e3:.1f} | {r['latency_ms']:.3f} | {r['speedup']:.2f}x | {r['size_ratio']:.2f}x |"
        for r in rows)
    base = front["baseline"]
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

## Per-stage median over the completed trials (seconds)

| stage | median s |
|---|---|
{stage_table}

Unpruned plans skip fine-tuning, so the fine-tune median mixes 0 s and the pruned trials' time.

## Front

| trial | accuracy % | drop | size KB | zstd KB | latency ms | speedup | smaller |
|---|---|---|---|---|---|---|---|
{front_table}

Latency ratios here are taken across the search (baseline measured once at the start), with 1 intra-op thread.

## Machine
{markdown()}
""")
    print((HERE / "results.md").read_text())


if __name__ == "__main__":
    main()
