"""The sampler comparison's tables: one row per arm and seed, the mean per arm, and the verdict.

Every figure is read back from the studies (``search.study.results``: re-timed figures where the search
re-timed them), so the report can be rewritten from ``outputs/samplers/`` without running anything.
"""
from __future__ import annotations

import csv
import json
import shlex
import statistics
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping, Sequence

import optuna
from optuna.trial import TrialState

import budget
from machine import markdown
from mobilenet_v2.report import MAX_DROP, RUNS, Method, retime, summary
from samplers.run import ARMS, N_TRIALS, SEEDS, common, load, study_name
from search.inspect import pareto
from search.study import baseline_of, feasible_results, results

HERE = Path(__file__).resolve().parent
TIME_TO = (3.0, 6.0)  # size ratios whose first feasible appearance is timed (uniform int8 alone is 3.5x)
SHOWN = ("hv", "hv_together", "hv_search", "front", "front_sampled", "feasible", "best_size", "best_speedup",
         "best_speedup_together", "early_stopped", "prescreened", "prescreened_distinct", "reused", "failed",
         "finetune_s", "wall_s", *(f"time_to_{x:g}x_s" for x in TIME_TO), "overhead_mean_s", "overhead_max_s")


def objectives_of_study() -> list:
    from search.cli import load_config, objectives_of

    return objectives_of(load_config([]))


def outside_stages(study: optuna.Study) -> list[float]:
    """Per trial, seconds between its start and end not spent in its stages: sampling and bookkeeping."""
    out = []
    for t in study.trials:
        if t.datetime_start is None or t.datetime_complete is None or t.state == TrialState.FAIL:
            continue
        timings = t.user_attrs.get("result", {}).get("timings") or t.user_attrs.get("timings") or {}
        out.append((t.datetime_complete - t.datetime_start).total_seconds() - float(timings.get("total", 0.0)))
    return out


def retime_together(root: Path, studies: Sequence[optuna.Study]) -> dict[str, dict[int, float]]:
    """Speedup per study and trial: the baseline and what each search re-timed at its end, all in one run.

    Each search re-timed its own front when it ended, at its own moment on a shared machine; one
    interleaved run of every arm's members (the MobileNetV2 report's ``retime``) puts them on one clock.
    Kept in ``retimed_together.json``, so a rewritten report reads the same figures.
    """
    path = root / "retimed_together.json"
    if not path.is_file():
        from search.cli import data_splits, load_config

        members = {}
        for study in studies:
            numbers = {int(n) for n in study.user_attrs.get("confirmed", {}).get("trials", {})}
            members[study.study_name] = [r for r in results(study, as_searched=True)
                                         if r.number in numbers and Path(r.model_path).is_file()]
        # arms share their queued plans: a file that several arms produced is timed once
        unique = {r.sha256: r for rs in members.values() for r in rs}.values()
        files = [replace(r, number=i) for i, r in enumerate(unique)]  # retime keys by number: one per file
        timed = Method("all", N_TRIALS, [], files, 0.0, {})
        base_path = root / study_name("nsga2", 0) / "baseline" / "model.onnx"
        (base_t,) = retime([timed], str(base_path), data_splits(load_config(common(root))))
        by_sha = {r.sha256: base_t["latency_ms"] / timed.retimed[r.number]["latency_ms"] for r in files}
        speedups = {name: {r.number: by_sha[r.sha256] for r in rs} for name, rs in members.items()}
        path.write_text(json.dumps({"runs": RUNS, "files": len(files), "baseline": base_t, "speedups": speedups},
                                   indent=2))
    stored = json.loads(path.read_text())["speedups"]
    return {name: {int(n): v for n, v in figures.items()} for name, figures in stored.items()}


def together(study: optuna.Study, speedups: Mapping[int, float], base: Mapping[str, float],
             objectives: Sequence) -> tuple[float, float]:
    """Hypervolume and best speedup within the constraint with the jointly re-timed latencies."""
    joint = [replace(r, metrics={**r.metrics, "latency_ms": base["latency_ms"] / speedups[r.number]})
             if r.number in speedups else r for r in feasible_results(study, as_searched=True)]
    front = pareto.front(joint, objectives)
    ok = [base["latency_ms"] / r.metrics["latency_ms"] for r in front if r.metrics["accuracy_drop"] <= MAX_DROP]
    return pareto.hypervolume(front, objectives, base), max(ok, default=0.0)


def row(study: optuna.Study, arm: str, seed: int, base: Mapping[str, float], objectives: Sequence,
        wall_s: float, speedups: Mapping[int, float]) -> dict[str, Any]:
    """One arm and seed: hypervolume on ``base``'s reference point, best members, where the budget went."""
    front = pareto.front(feasible_results(study), objectives)
    retimed = {r.number: {"latency_ms": r.metrics["latency_ms"]} for r in front}
    method = Method(arm, N_TRIALS, results(study), front, wall_s, retimed, study=study)
    s = summary(method, SimpleNamespace(objectives=objectives), base, {"latency_ms": base["latency_ms"]})
    searched = pareto.front(feasible_results(study, as_searched=True), objectives)
    profile_s = study.user_attrs.get("profile", {}).get("seconds", {}).get("total", 0.0)
    shared = "shared_from" in study.user_attrs
    t0 = budget.started_at(study, profile_s)
    searched_all = results(study, as_searched=True)
    hits = {x: budget.time_to(study, searched_all, t0, size_ratio=x, max_drop=MAX_DROP) for x in TIME_TO}
    spent = budget.spend(study.trials)
    overhead = outside_stages(study) or [0.0]
    hv_together, speed_together = together(study, speedups, base, objectives)
    queued = {t.number for t in study.trials if t.system_attrs.get("fixed_params")}
    screened = {json.dumps(t.params, sort_keys=True) for t in study.trials if "prescreen" in t.user_attrs}
    return {"arm": arm, "seed": seed, "study": study.study_name, "completed": spent.completed,
            "trials": len(study.trials), "fixed_plans": len(queued), "hv": s["hv_retimed"],
            "hv_search": pareto.hypervolume(searched, objectives, base), "hv_together": hv_together,
            "front": len(front), "front_sampled": sum(r.number not in queued for r in front),
            "feasible": len(feasible_results(study)),
            "best_size": s["smallest"].metrics["size_ratio"] if s["smallest"] else 0.0,
            "best_size_trial": s["smallest"].number if s["smallest"] else "",
            "best_speedup": base["latency_ms"] / s["fastest"].metrics["latency_ms"] if s["fastest"] else 0.0,
            "best_speedup_trial": s["fastest"].number if s["fastest"] else "", "best_speedup_together": speed_together,
            "early_stopped": spent.early_stopped, "prescreened": spent.prescreened,
            "prescreened_distinct": len(screened), "reused": spent.reused,
            "knobs": len({k for t in study.trials for k in t.params}),
            "failed": sum(t.state == TrialState.FAIL for t in study.trials),
            "block_moves": sum("block_move" in t.user_attrs for t in study.trials),
            "finetune_s": spent.finetune_s, "wall_s": wall_s + (profile_s if shared else 0.0),
            "profile_s": profile_s,
            **{f"time_to_{x:g}x_s": float("nan") if h is None else h for x, h in hits.items()},
            "overhead_mean_s": statistics.mean(overhead), "overhead_max_s": max(overhead)}


def means(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for arm in ARMS:
        mine = [r for r in rows if r["arm"] == arm]
        if not mine:
            continue
        mean = {"arm": arm, "seed": f"mean of {len(mine)}", "seeds": len(mine)}
        for key in SHOWN + ("completed", "trials", "block_moves"):
            values = [r[key] for r in mine if r[key] == r[key]]  # a time to a size is NaN where never reached
            mean[key] = statistics.mean(values) if values else float("nan")
        for x in TIME_TO:
            mean[f"reached_{x:g}x"] = sum(r[f"time_to_{x:g}x_s"] == r[f"time_to_{x:g}x_s"] for r in mine)
        out.append(mean)
    return out


def _min(seconds: float) -> str:
    return "never" if seconds != seconds else f"{seconds / 60:.1f}"


def table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| arm | seed | HV (re-timed) | HV (re-timed together) | HV (in-search) | front (sampled) | feasible / completed | "
             "best size <=1 pt | best speedup <=1 pt (together) | stopped early | prescreened (distinct plans) | reused | failed | fine-tune s | wall min | "
             + "".join(f"min to {x:g}x | " for x in TIME_TO) + "outside stages s/trial (mean, max) |",
             "|---" * (16 + len(TIME_TO)) + "|"]
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['seed']} | {r['hv']:.4f} | {r['hv_together']:.4f} | {r['hv_search']:.4f} | "
            f"{r['front']:.3g} ({r['front_sampled']:.3g}) | {r['feasible']:.3g} / {r['completed']:.3g} | {r['best_size']:.2f}x | "
            f"{r['best_speedup']:.2f}x ({r['best_speedup_together']:.2f}x) | "
            f"{r['early_stopped']:.3g} | {r['prescreened']:.3g} ({r['prescreened_distinct']:.3g}) | {r['reused']:.3g} | {r['failed']:.3g} | "
            f"{r['finetune_s']:.0f} | {r['wall_s'] / 60:.1f} | "
            + "".join(f"{_min(r[f'time_to_{x:g}x_s'])} | " for x in TIME_TO) +
            f"{r['overhead_mean_s']:.1f}, {r['overhead_max_s']:.1f} |")
    return "\n".join(lines)


def verdict(rows: Sequence[dict[str, Any]], mean_rows: Sequence[dict[str, Any]], key: str, label: str) -> str:
    ranked = sorted(mean_rows, key=lambda r: -r[key])
    if not ranked:
        return "No arm finished."
    best, rest = ranked[0], ranked[1:]
    per = {m["arm"]: [r[key] for r in rows if r["arm"] == m["arm"]] for m in ranked}
    lines = [f"Ranking on mean {label}: " + " > ".join(
        f"{m['arm']} {m[key]:.4f} ({', '.join(f'{v:.4f}' for v in per[m['arm']])})" for m in ranked) + "."]
    for other in rest:
        apart = min(per[best["arm"]]) > max(per[other["arm"]])
        single = min(len(per[best["arm"]]), len(per[other["arm"]])) < 2
        lines.append(f"- {best['arm']} vs {other['arm']}: {best[key] - other[key]:+.4f} mean; " + (
            "one seed on a side: no spread to compare" if single else
            "every seed of the first above every seed of the second" if apart else "the seeds overlap: not separated"))
    return "\n".join(lines)


def reached(mean_rows: Sequence[dict[str, Any]]) -> str:
    return "; ".join(f"{x:g}x: " + ", ".join(f"{m['arm']} {m[f'reached_{x:g}x']}/{m['seeds']}" for m in mean_rows)
                     for x in TIME_TO)


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows)


def collect(root: Path) -> tuple[list[dict[str, Any]], dict[str, float], list[str]]:
    walls = json.loads((root / "walls.json").read_text()) if (root / "walls.json").is_file() else {}
    studies = {(a, z): load(root, study_name(a, z)) for z in SEEDS for a in ARMS}
    studies = {k: s for k, s in studies.items() if s is not None and s.user_attrs.get("baseline")}
    objectives = objectives_of_study()
    base = baseline_of(studies[("nsga2", 0)] if ("nsga2", 0) in studies else next(iter(studies.values())))
    odd = [s.study_name for s in studies.values()
           if any(baseline_of(s)[k] != base[k] for k in ("accuracy", "size_bytes", "latency_ms"))]
    speedups = retime_together(root, list(studies.values()))
    rows = [row(s, a, z, base, objectives, walls.get(s.study_name, float("nan")), speedups.get(s.study_name, {}))
            for (a, z), s in studies.items()]
    return sorted(rows, key=lambda r: (list(ARMS).index(r["arm"]), r["seed"])), base, odd


def write_report(root: Path, errors: Mapping[str, str], *, command: Sequence[str] = ()) -> Path:
    rows, base, odd = collect(root)
    mean_rows = means(rows)
    write_csv(HERE / "results.csv", [*rows, *mean_rows])
    walls = json.loads((root / "walls.json").read_text())
    joint = json.loads((root / "retimed_together.json").read_text())
    first = rows[0] if rows else {}
    notes = "\n".join(f"- {name}: {why}" for name, why in errors.items()) or "- none"
    written = HERE / "notes.md"  # the hand-written reading of the committed run
    analysis = f"## Analysis\n\n{written.read_text().strip()}\n\n" if written.is_file() else ""
    cmd = " ".join(["nice -n 5 .venv/bin/python experiments/samplers/run.py", *map(shlex.quote, command)])
    text = f"""# Sampler comparison on the default demo (issue 8)

Command (repository root): `{cmd}`

Each arm is `autosqueeze search` with the default config (resnet_small on Fashion-MNIST, {N_TRIALS} completed
trials, early stopping, prescreen, profile seeds, re-timing of the front at the end) and
`tracking=none seed=0 search.seed=S search.sampler=...` over the default space's {first.get('knobs', 0)} knobs (one prune
ratio per channel group, one precision per layer); `nsga2` is the default (block moves,
`search.block_move_prob=0.5`), `nsga2-flat` the same with `search.block_move_prob=0`. GP is Optuna's
`GPSampler` (logCEHVI with constraints, random or queued plans for the first 8 trials); TPE is multivariate
with constraints.

- One baseline for every arm: `seed` (data split and baseline training) stays 0 and only `search.seed`
  (sampler, fine-tune order, early-stop subset) varies. `seed` enters the data config and so the baseline's
  cache key (`search/baseline.py`): `seed=1` would mean another validation split and another baseline.
  Baseline training, once: {walls.get('baseline', 0):.0f} s (not in any arm's wall).
- One profile and one baseline measurement: the first study measured them ({first.get('profile_s', 0):.0f} s
  of profile), every other study started with a copy, so every arm queued the same
  {first.get('fixed_plans', 0)} fixed plans first (3 references + the profile's seeds) and was scored
  against the same baseline figures. The profile's seconds are charged to every arm's wall.
  {'Studies whose baseline figures differ: ' + ', '.join(odd) if odd else 'All studies hold the same baseline figures.'}
- Hypervolume: one reference point for every arm (`search.inspect.pareto.hypervolume`, the MobileNetV2
  report's `summary`): objectives over the baseline's, accuracy at 0.95 x baseline ({base['accuracy']:.2f} %),
  size and latency at 1.0 x baseline ({base['size_bytes'] / 1e3:.1f} KB, {base['latency_ms']:.3f} ms).
  "Re-timed" uses the figures each search measured when it ended (`search.study.results`: its front and
  the next layer re-timed, 300 runs, interleaved with the baseline); "re-timed together" re-times the same members
  of every arm and the baseline once more, all in one interleaved run ({RUNS} runs each, after the last
  search, `retimed_together.json`: {joint['files']} distinct files, baseline {joint['baseline']['latency_ms']:.3f} ms,
  CV {joint['baseline']['latency_cv']:.2f}), so no arm is timed in a noisier moment than another; "in-search" uses
  the latencies measured during the trials. Best size / speedup: feasible front members (drop <= {MAX_DROP:g}
  point on validation), speedup re-timed. "Front (sampled)": members the sampler proposed, not queued plans.
- Minutes to {' / '.join(f"{x:g}x" for x in TIME_TO)}: from the study's start (profile included) until the first
  feasible trial at least that much smaller completed (the uniform int8 reference plan alone is 3.5x). "Outside stages": a trial's duration minus its stages (prune, fine-tune,
  export, quantize, evaluate): the sampler's time to propose the plan plus the study's bookkeeping.
- Runs: one search at a time under `nice -n 5`, `OMP_NUM_THREADS=1`, beside two long MobileNetV2
  benchmarks on the same 2 cores: absolute times are inflated and noisy; the budget is trials, not time.

## Per arm and seed

{table(rows)}

## Mean over seeds

{table(mean_rows)}

Mean "min to" is over the seeds that reached it: {reached(mean_rows)}.
NSGA-II children with a block move (mean per study): {', '.join(f"{m['arm']} {m['block_moves']:.1f}" for m in mean_rows if m['arm'].startswith('nsga2'))}.

## Verdict

{verdict(rows, mean_rows, "hv", "hypervolume, each search's own re-timing (confirmed figures)")}

{verdict(rows, mean_rows, "hv_together", "hypervolume, every arm re-timed together")}

Seeds per arm: {', '.join(f"{m['arm']} {m['seeds']}" for m in mean_rows)}; a difference inside the
seed-to-seed spread is not evidence.

{analysis}## Not run or not finished

{notes}

## Machine

{markdown()}
"""
    path = HERE / "results.md"
    path.write_text(text)
    return path
