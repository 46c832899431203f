"""The benchmark's report: re-time every front member beside the baseline, then table, CSV and plot."""
from __future__ import annotations

import csv
import json
import logging
import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import optuna
from matplotlib.figure import Figure

from evaluators.latency import interleaved
from machine import markdown
import budget
from mobilenet_v2.layers import kind_probe, mix_table, precision_mix
from search.inspect import pareto
from search.study import feasible_results, results
from search.trials.trial import STAGES, TrialResult

if TYPE_CHECKING:
    from search.runner import Job

log = logging.getLogger("autosqueeze")
RUNS, WARMUP, MAX_DROP = 300, 20, 1.0
# the hand plan's figures (handplan.md) rounded up, and the goal beyond them
SIZE_TARGET, SPEED_TARGET, GOAL_SIZE, GOAL_SPEED = 8.4, 2.1, 8.0, 2.5
TIME_TO = 6.0  # size ratio whose first feasible appearance is timed
COLORS = {"grid": "tab:gray", "random": "tab:orange", "autosqueeze": "tab:blue"}
MARKERS = {"grid": "s", "random": "^", "autosqueeze": "o"}


@dataclass
class Method:
    name: str
    budget: int
    trials: list[TrialResult]
    front: list[TrialResult]
    wall_s: float
    retimed: dict[int, dict[str, float]]  # trial number -> interleaved latency metrics
    profile_s: float = 0.0  # the sensitivity profile, measured once before the first trial
    study: optuna.Study | None = None
    as_searched: list[TrialResult] | None = None  # the same trials with their in-search latencies


def load(job: Job, root: Path, method: str, wall_s: float) -> Method:
    from mobilenet_v2.run import method_job

    mjob = method_job(job, method, root)
    study = optuna.load_study(study_name=mjob.search.study_name, storage=mjob.storage_url)
    # Equal budgets: only the first n_trials completed trials count, whatever else the study holds.
    trials = results(study)[:mjob.search.n_trials]
    counted = {r.number for r in trials}
    front = pareto.front([r for r in feasible_results(study) if r.number in counted], job.objectives)
    profile_s = study.user_attrs.get("profile", {}).get("seconds", {}).get("total", 0.0)
    as_searched = [r for r in results(study, as_searched=True) if r.number in counted]
    return Method(method, mjob.search.n_trials, trials, front, wall_s, {}, profile_s, study, as_searched)


def retime(methods: Sequence[Method], base_path: str, data, extra: Sequence[str] = ()) -> list[dict[str, float]]:
    """Baseline + every front member (+ ``extra`` files), interleaved round-robin in one process, 1 thread, batch 1.

    Returns the baseline's figures, then those of ``extra``.
    """
    members = [(m, r) for m in methods for r in m.front]
    timed = interleaved([Path(base_path)] + [Path(r.model_path) for _, r in members] + [Path(p) for p in extra],
                        data.val, warmup=WARMUP, runs=RUNS, threads=1)
    for (m, r), t in zip(members, timed[1:]):
        m.retimed[r.number] = t
    return [timed[0], *timed[1 + len(members):]]


def with_latency(r: TrialResult, latency: float) -> TrialResult:
    return replace(r, metrics={**r.metrics, "latency_ms": latency})


def speedup(m: Method, r: TrialResult, base_t: Mapping[str, float]) -> float:
    return base_t["latency_ms"] / m.retimed[r.number]["latency_ms"]


def summary(m: Method, job: Job, base: Mapping[str, float], base_t: Mapping[str, float]) -> dict:
    ok = [r for r in m.front if r.metrics["accuracy_drop"] <= MAX_DROP]
    smallest = max(ok, key=lambda r: r.metrics["size_ratio"], default=None)
    fastest = max(ok, key=lambda r: speedup(m, r, base_t), default=None)
    retimed_front = [with_latency(r, m.retimed[r.number]["latency_ms"]) for r in m.front]
    hits = [r for r in ok if r.metrics["size_ratio"] >= SIZE_TARGET and speedup(m, r, base_t) >= SPEED_TARGET]
    stretch = [r for r in ok if r.metrics["size_ratio"] >= GOAL_SIZE and speedup(m, r, base_t) >= GOAL_SPEED]
    return {
        "method": m.name, "trials": len(m.trials), "budget": m.budget, "front": len(m.front),
        "hv_search": pareto.hypervolume(m.front, job.objectives, base),
        "hv_retimed": pareto.hypervolume(retimed_front, job.objectives, {**base, "latency_ms": base_t["latency_ms"]}),
        "smallest": smallest, "fastest": fastest, "hits": hits, "stretch": stretch, "wall_s": m.wall_s,
        "trial_s": float(np.mean([r.timings.get("total", 0.0) for r in m.trials])) if m.trials else 0.0}


def _desc(m: Method, r: TrialResult | None, base_t: Mapping[str, float]) -> str:
    if r is None:
        return "none within 1 pt"
    return (f"**{r.metrics['size_ratio']:.2f}x** smaller, {speedup(m, r, base_t):.2f}x faster, "
            f"drop {r.metrics['accuracy_drop']:.2f} (trial {r.number})")


def _desc_fast(m: Method, r: TrialResult | None, base_t: Mapping[str, float]) -> str:
    if r is None:
        return "none within 1 pt"
    return (f"**{speedup(m, r, base_t):.2f}x** faster, {r.metrics['size_ratio']:.2f}x smaller, "
            f"drop {r.metrics['accuracy_drop']:.2f} (trial {r.number})")


def plan_summary(r: TrialResult) -> dict[str, float | int]:
    ratios = list(r.plan.prune.values()) or [0.0]
    quant = list(r.plan.quant.values())
    return {"mean_prune": round(float(np.mean(ratios)), 3), "max_prune": max(ratios),
            **{f"n_{p}": quant.count(p) for p in ("fp32", "int8", "int4")}}


def write_csv(path: Path, methods: Sequence[Method], base: Mapping[str, float], base_t: Mapping[str, float]) -> None:
    rows = [{"method": "baseline", "trial": "", "accuracy": base["accuracy"], "accuracy_drop": 0.0,
             "size_bytes": base["size_bytes"], "size_ratio": 1.0, "compressed_bytes": base["compressed_bytes"],
             "latency_ms": base_t["latency_ms"], "latency_p90_ms": base_t["latency_p90_ms"],
             "latency_cv": base_t["latency_cv"], "speedup": 1.0, "search_latency_ms": base["latency_ms"]}]
    for m in methods:
        for r in sorted(m.front, key=lambda r: r.metrics["size_bytes"]):
            t = m.retimed[r.number]
            rows.append({"method": m.name, "trial": r.number, "accuracy": r.metrics["accuracy"],
                         "accuracy_drop": r.metrics["accuracy_drop"], "size_bytes": r.metrics["size_bytes"],
                         "size_ratio": r.metrics["size_ratio"], "compressed_bytes": r.metrics["compressed_bytes"],
                         "latency_ms": t["latency_ms"], "latency_p90_ms": t["latency_p90_ms"],
                         "latency_cv": t["latency_cv"], "speedup": base_t["latency_ms"] / t["latency_ms"],
                         "search_latency_ms": r.metrics["latency_ms"], **plan_summary(r),
                         **{f"t_{s}": r.timings.get(s, 0.0) for s in STAGES}})
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in rows)


def plot(path: Path, methods: Sequence[Method], base: Mapping[str, float], base_t: Mapping[str, float]) -> None:
    fig = Figure(figsize=(12, 4.8), dpi=100)
    axes = fig.subplots(1, 2)
    for ax, (label, value) in zip(axes, (("ONNX file size (KB)", lambda m, r: r.metrics["size_bytes"] / 1e3),
                                         ("latency, batch 1, 1 thread, re-timed (ms)",
                                          lambda m, r: m.retimed[r.number]["latency_ms"]))):
        for m in methods:
            if "size" in label:  # every completed trial, faint: where the infeasible ones landed
                ax.scatter([r.metrics["size_bytes"] / 1e3 for r in m.trials], [r.metrics["accuracy"] for r in m.trials],
                           marker=MARKERS[m.name], color=COLORS[m.name], alpha=0.25, s=18)
            pts = sorted((value(m, r), r.metrics["accuracy"]) for r in m.front)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], MARKERS[m.name] + "-", color=COLORS[m.name],
                    label=f"{m.name} ({len(m.trials)} trials)", alpha=0.85)
        x0 = base["size_bytes"] / 1e3 if "size" in label else base_t["latency_ms"]
        ax.plot([x0], [base["accuracy"]], "k*", markersize=12, label="fp32 baseline")
        ax.axhline(base["accuracy"] - MAX_DROP, color="red", linestyle=":", label="1-point drop")
        ax.set_xscale("log")
        ax.set_ylim(base["accuracy"] - 12, base["accuracy"] + 1)
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("MobileNetV2 -> Fashion-MNIST 64x64: feasible Pareto fronts (lines); all trials faint, "
                 "left (below 12-point drop: off the chart)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def stage_table(methods: Sequence[Method]) -> str:
    lines = ["| method | trials | " + " | ".join(STAGES) + " | total | pruned trials: finetune |",
             "|---|---|" + "---|" * (len(STAGES) + 2)]
    for m in methods:
        mean = {s: np.mean([r.timings.get(s, 0.0) for r in m.trials]) for s in (*STAGES, "total")}
        pruned = [r.timings["finetune"] for r in m.trials  # a reused result ran nothing: no stages
                  if "finetune" in r.timings and any(v > 0 for v in r.plan.prune.values())]
        lines.append(f"| {m.name} | {len(m.trials)} | " + " | ".join(f"{mean[s]:.1f}" for s in STAGES)
                     + f" | {mean['total']:.1f} | {np.mean(pruned) if pruned else 0:.1f} ({len(pruned)}) |")
    profiled = [f"{m.name} {m.profile_s:.0f} s ({100 * m.profile_s / m.wall_s:.1f} % of its search wall)"
                for m in methods if m.profile_s and m.wall_s]
    return "\n".join(lines) + (f"\n\nSensitivity profile (once, before the first trial): {'; '.join(profiled)}."
                               if profiled else "")


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else ("inf (the other is 0)" if a > 0 else "n/a")


def hand_line(methods: Sequence[Method], hand: Mapping, hand_t: Mapping[str, float],
              base_t: Mapping[str, float]) -> str:
    """Which front members dominate a hand plan, all of them re-timed in the same run."""
    size, speed = hand["metrics"]["size_ratio"], base_t["latency_ms"] / hand_t["latency_ms"]
    parts = []
    for m in methods:
        beat = [r.number for r in m.front if r.metrics["accuracy_drop"] <= MAX_DROP
                and r.metrics["size_ratio"] >= size and speedup(m, r, base_t) >= speed]
        parts.append(f"{m.name} {beat if beat else 'none'}")
    return (f"- hand plan (ratio {hand['ratio']:g}) re-timed in this run: {size:.2f}x smaller, {speed:.2f}x faster, drop "
            f"{hand['metrics']['accuracy_drop']:.2f}; members within 1 pt at least as small and as fast: "
            + ", ".join(parts))


def time_section(methods: Sequence[Method], job: Job, base: Mapping[str, float]) -> str:
    """Time to a 6x member, and each method's hypervolume at equal wall-clock times (in-search latencies)."""
    starts = {m.name: budget.started_at(m.study, m.profile_s) for m in methods}
    ends = {m.name: max(t.datetime_complete.timestamp() for t in m.study.trials if t.datetime_complete)
            - starts[m.name] for m in methods}
    lines = [f"## Time\n\nWall clock from the study's start (its sensitivity profile included) until the first "
             f"feasible member at least {TIME_TO:g}x smaller within {MAX_DROP:g} point completed:\n"]
    for m in methods:
        hit = budget.time_to(m.study, m.as_searched, starts[m.name], size_ratio=TIME_TO, max_drop=MAX_DROP)
        lines.append(f"- {m.name}: " + (f"{hit / 60:.1f} min" if hit is not None else
                                         f"not reached in {ends[m.name] / 60:.1f} min"))
    marks = sorted({round(v) for v in ends.values()})
    lines += ["", "Hypervolume (in-search latencies, same reference point) of what each method had completed "
              "by the same wall-clock time:", "",
              "| method | " + " | ".join(f"{t / 60:.0f} min" for t in marks) + " |",
              "|---|" + "---|" * len(marks)]
    for m in methods:
        hv = [budget.hv_by(m.study, m.as_searched, t, starts[m.name], job.objectives, base) for t in marks]
        lines.append(f"| {m.name} | " + " | ".join(f"{v:.4f}" for v in hv) + " |")
    return "\n".join(lines)


def write_report(job: Job, root: Path, base: dict, walls: Mapping[str, float], *, setup_s: float,
                 overrides: Sequence[str], out_dir: Path, kinds: Mapping[str, str],
                 notes: str = "") -> Path:
    metrics = base["metrics"]
    notes = f"\n## Analysis\n\n{notes.strip()}\n" if notes.strip() else ""
    methods = [load(job, root, name, walls.get(name, 0.0)) for name in ("grid", "random", "autosqueeze")]
    log.info("re-timing the baseline and %d front members interleaved (%d runs)", sum(len(m.front) for m in methods),
             RUNS)
    hand = json.loads((root / "handplan.json").read_text()) if (root / "handplan.json").is_file() else None
    base_t, *hand_t = retime(methods, base["onnx"], job.data, [h["model_path"] for h in hand or ()])
    probe = kind_probe(Path(base["onnx"]), root / "probe", kinds, job.data, runs=RUNS, warmup=WARMUP)
    sums = [summary(m, job, metrics, base_t) for m in methods]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "results.csv", methods, metrics, base_t)
    plot(out_dir / "fronts.png", methods, metrics, base_t)
    rows = "\n".join(
        f"| {s['method']} | {s['trials']} (budget {s['budget']}) | {s['front']} | {s['hv_search']:.4f} | "
        f"{s['hv_retimed']:.4f} | {_desc(m, s['smallest'], base_t)} | {_desc_fast(m, s['fastest'], base_t)} | "
        f"{s['wall_s'] / 60:.1f} min | {s['trial_s']:.0f} s |" for s, m in zip(sums, methods))
    targets = "\n".join(
        f"- {s['method']}: size >= {SIZE_TARGET}x and speed >= {SPEED_TARGET}x within 1 pt: "
        f"{'**met** by trials ' + str([r.number for r in s['hits']]) if s['hits'] else 'not met'}; "
        f"goal >= {GOAL_SIZE}x and >= {GOAL_SPEED}x: "
        f"{'**met** ' + str([r.number for r in s['stretch']]) if s['stretch'] else 'not met'}"
        for s in sums)
    targets += "".join("\n" + hand_line(methods, h, t, base_t) for h, t in zip(hand or (), hand_t))
    targets += "" if hand else "\n- hand plans: not run (experiments/mobilenet_v2/handplan.py)"
    hv = {s["method"]: s["hv_retimed"] for s in sums}
    hv_search = {s["method"]: s["hv_search"] for s in sums}
    mixes = "\n\n".join(mix_table(f"{m.name} front ({len(m.front)} plans): layers at", precision_mix(
        [r.plan.quant for r in m.front], kinds), ("fp32", "int8", "int4")) for m in methods[1:])
    probe_rows = "\n".join(f"| {p['variant']} | {p['latency_ms']:.3f} | {p['speedup']:.2f}x | {p['latency_cv']:.3f} | "
                           f"{p['size_bytes'] / 1e3:.0f} |" for p in probe)
    command = " ".join([".venv/bin/python experiments/mobilenet_v2/run.py", *map(shlex.quote, overrides)])
    text = f"""# MobileNetV2 (ImageNet weights) -> Fashion-MNIST 64x64: grid vs random vs autosqueeze

Command (repository root): `{command}` (settings: `conf/experiment/mobilenet_v2.yaml`).

Baseline (fp32, {base['onnx']}): top-1 **{metrics['accuracy']:.2f}%** on {len(job.data.val.labels)} validation images,
{metrics['size_bytes'] / 1e6:.2f} MB ONNX file, {base_t['latency_ms']:.3f} ms median
(p90 {base_t['latency_p90_ms']:.3f} ms, CV {base_t['latency_cv']:.3f}) re-timed; baseline setup (head + full training, export, measurement; once, then cached) {setup_s:.0f} s.

| method | trials | front | HV (search latency) | HV (re-timed) | best size within 1 pt | best speed within 1 pt | search wall | mean trial |
|---|---|---|---|---|---|---|---|---|
{rows}

Size ratio = baseline .onnx bytes / member .onnx bytes. Speedups are from the re-timing: the baseline and
every front member of all three methods in one process, round-robin, ONNX Runtime CPU, 1 intra-op thread,
batch 1, {WARMUP} warm-up + {RUNS} timed runs each, median; p90 and CV per model are in results.csv.
Both hypervolumes use one reference point for all three methods (objectives / baseline; accuracy at
0.95 x baseline, size and latency at 1.0 x baseline). "HV (search latency)" uses the latency each trial
measured during its search (beside whatever else ran then); "HV (re-timed)" the interleaved re-timing of the
same front members.

## Targets

{targets}
- Hypervolume (re-timed): autosqueeze {hv['autosqueeze']:.4f} vs random {hv['random']:.4f} vs grid {hv['grid']:.4f}
  (autosqueeze / grid {_ratio(hv['autosqueeze'], hv['grid'])}, / random {_ratio(hv['autosqueeze'], hv['random'])}; target >= 1.2 each);
  with search latencies: {hv_search['autosqueeze']:.4f} vs {hv_search['random']:.4f} vs {hv_search['grid']:.4f}.
{notes}
## Where the budget went

{budget.HEADER}
{chr(10).join(budget.spend(m.study.trials).row(m.name) for m in methods)}

Fine-tune seconds come from each trial's own stage timings (stopped trials up to where they stopped);
"fine-tune per completed trial" divides all of it by the completed trials, so a stopped trial's cost is
carried by the trials that finished. A skipped trial was exported, quantized and timed before fine-tuning
and beaten on size and speed by a feasible member within 0.1 point of the baseline (search/trials/prescreen.py).

{time_section(methods, job, metrics)}

## Where int8 pays on this CPU (unpruned baseline, interleaved, {RUNS} runs)

| variant | latency ms | speedup vs fp32 | CV | bytes (KB) |
|---|---|---|---|---|
{probe_rows}

## Which precision the front members chose, per layer kind

{mixes}

## Trial time by stage (seconds, mean over completed trials)

{stage_table(methods)}

## Machine

{markdown()}
"""
    path = out_dir / "results.md"
    path.write_text(text)
    (root / "summary.json").write_text(json.dumps({"base_retimed": base_t, "hv": hv, "hv_search": hv_search,
                                                   "probe": probe}, indent=2))
    return path
