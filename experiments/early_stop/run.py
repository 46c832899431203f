"""Early stopping on the default demo: fine-tune time saved, and how often a stopped plan was feasible.

Run from the repository root:  .venv/bin/python experiments/early_stop/run.py [N_RERUN]
It runs `autosqueeze search` with the defaults, except a budget of 12 completed trials and a
prune space widened to 0.75 (so some plans are hopeless), in a fresh folder whose baseline
cache is shared with calibrate.py. Then:

- time saved: for each stopped trial, the fine-tune it would have run in full
  (its fine-tune seconds so far x steps / steps done) minus what it ran;
- false stops: up to N_RERUN (default 6) stopped plans, drawn with a fixed seed, run to the
  end with the rule off (same plan, same seed, same code path as a trial); a false stop is
  one whose quantized ONNX file ends within the constraint.

Written beside this file: results.md and results.csv (one row per stopped trial).
"""
from __future__ import annotations

import csv
import random
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))
from machine import markdown  # noqa: E402
from search.cli import build_job, load_config  # noqa: E402
from search.trials.early_stop import EarlyStop, StopRule  # noqa: E402
from search.runner import build_context, prepare  # noqa: E402
from search.trials.trial import run_trial  # noqa: E402
from spaces.base import Plan  # noqa: E402

HERE = Path(__file__).parent
WORK = Path("/tmp/autosqueeze-early-stop")
STUDY = "early-stop"
N_TRIALS = 12
RATIOS = "[0,0.125,0.25,0.375,0.5,0.625,0.75]"
OVERRIDES = [f"search.n_trials={N_TRIALS}", f"space.prune.ratios={RATIOS}", f"search.study_name={STUDY}",
             f"paths.cache_dir={WORK}/outputs/cache"]


def search(folder: Path) -> tuple[optuna.Study, float]:
    folder.mkdir(parents=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "search.cli", "search", "quiet=true", *OVERRIDES], cwd=folder,
                          capture_output=True, text=True, env=_env())
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"the search failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    storage = f"sqlite:///{folder}/outputs/{STUDY}/study.db"
    return optuna.load_study(study_name=STUDY, storage=storage), wall


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT)}


def projected(trial: optuna.trial.FrozenTrial) -> float:
    """The fine-tune seconds the stopped trial would have spent in full: fine-tune time is linear in steps."""
    record = trial.user_attrs["early_stop"]
    return trial.user_attrs["timings"]["finetune"] * record["steps"] / record["step"]


def rerun(folder: Path, stopped: list[optuna.trial.FrozenTrial], study: optuna.Study) -> dict[int, dict]:
    """The sampled stopped plans run to the end with the rule off, as trials of this study's context."""
    import os

    os.chdir(folder)  # the relative paths of the config resolve as in the search
    job = build_job(load_config(OVERRIDES))
    ctx = replace(build_context(job, study, prepare(job)), run_dir=folder / "rerun")
    out = {}
    for trial in stopped:
        result = run_trial(ctx, Plan.from_params(trial.params), number=trial.number)
        out[trial.number] = {"full_finetune_s": result.timings["finetune"],
                             "final_drop": result.metrics["accuracy_drop"]}
        print(f"trial {trial.number} run to the end: drop {out[trial.number]['final_drop']:.2f}, "
              f"fine-tune {result.timings['finetune']:.1f} s", flush=True)
    rule = StopRule(EarlyStop(), max_drop=1.0, baseline=ctx.baseline, val=ctx.data.val, seed=job.search.seed)
    rule.baseline_correct  # noqa: B018 - scored once, as in a search
    start = time.perf_counter()
    for _ in range(5):
        rule.correct(ctx.baseline)
    out["check_s"] = (time.perf_counter() - start) / 5
    return out


def main(n_rerun: int = 6) -> None:
    folder = WORK / f"bench-{int(time.time())}"
    study, wall = search(folder)
    trials = study.get_trials(deepcopy=False)
    stopped = [t for t in trials if t.state == TrialState.PRUNED and "pruned_reason" in t.user_attrs]
    complete = [t for t in trials if t.state == TrialState.COMPLETE and "result" in t.user_attrs]
    tuned = [t.user_attrs["result"]["timings"]["finetune"] for t in complete
             if t.user_attrs["result"]["timings"]["finetune"] > 0]
    sample = sorted(random.Random(0).sample(stopped, min(n_rerun, len(stopped))), key=lambda t: t.number)
    print(f"search: {wall:.0f} s, {len(complete)} completed, {len(stopped)} stopped; rerunning {len(sample)}",
          flush=True)
    reruns = rerun(folder, sample, study)
    check_s = reruns.pop("check_s")
    rows = []
    for t in stopped:
        row = {"trial": t.number, "step": t.user_attrs["early_stop"]["step"],
               "steps": t.user_attrs["early_stop"]["steps"],
               "subset_drop": t.user_attrs["early_stop"]["subset_drop"], "bound": t.user_attrs["early_stop"]["bound"],
               "finetune_s": t.user_attrs["timings"]["finetune"], "projected_full_s": round(projected(t), 3)}
        row.update(reruns.get(t.number, {"full_finetune_s": "", "final_drop": ""}))
        rows.append(row)
    write_csv(rows)
    write_md(rows, wall=wall, complete=complete, tuned=tuned, check_s=check_s, n_trials=len(trials),
             checks=len(EarlyStop().schedule(200)))


def write_csv(rows: list[dict]) -> None:
    fields = ["trial", "step", "steps", "subset_drop", "bound", "finetune_s", "projected_full_s",
              "full_finetune_s", "final_drop"]
    with (HERE / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def write_md(rows: list[dict], *, wall: float, complete: list, tuned: list[float], check_s: float,
             n_trials: int, checks: int) -> None:
    spent = sum(r["finetune_s"] for r in rows)
    full = sum(r["projected_full_s"] for r in rows)
    rerun = [r for r in rows if r["final_drop"] != ""]
    feasible = [r for r in rerun if r["final_drop"] <= 1.0]
    measured_full = [r["full_finetune_s"] for r in rerun]
    all_tuning = sum(tuned) + spent
    overhead = len(tuned) * checks * check_s  # the checks every completed pruned trial ran and passed
    lines = [
        "# Early stopping of hopeless fine-tunes: default demo",
        "",
        f"Command: `.venv/bin/python experiments/early_stop/run.py` (runs `autosqueeze search "
        f"{' '.join(o for o in OVERRIDES if not o.startswith('paths.'))}` in a fresh folder, baseline from the cache, "
        "then runs a seeded sample of the stopped plans to the end with the rule off).",
        "",
        "Rule (defaults, `search.early_stop`): checks at 34 % and 67 % of the 200 fine-tune steps on 1,000 seeded "
        "validation samples; stop when the subset drop > 1.0 + slack (3.0, then 1.5) + 2 standard errors.",
        "",
        f"- Search wall time: {wall:.0f} s; trials: {n_trials} ({len(complete)} completed, {len(rows)} stopped early)",
        f"- Fine-tune seconds of the stopped trials: **{spent:.1f} s** spent, **{full:.1f} s** had they run in full "
        f"(x steps / steps done): **{full - spent:.1f} s saved**, {100 * (full - spent) / full if full else 0:.0f} % "
        "of their fine-tuning",
        f"- Share of the search's whole fine-tune time saved: "
        f"{100 * (full - spent) / (all_tuning + full - spent) if all_tuning else 0:.0f} % "
        f"({all_tuning:.1f} s spent in all, {all_tuning + full - spent:.1f} s without the rule)",
        f"- Median per stopped trial: {_median([r['finetune_s'] for r in rows]):.1f} s spent, "
        f"{_median([r['projected_full_s'] for r in rows]):.1f} s projected in full "
        f"(median measured full fine-tune of the re-run sample: {_median(measured_full):.1f} s; "
        f"of the completed pruned trials: {_median(tuned):.1f} s)",
        f"- False stops: **{len(feasible)} of {len(rerun)}** re-run stopped plans ended within the constraint; "
        f"median final drop of the re-run plans {_median([r['final_drop'] for r in rerun]):.2f} points "
        f"(min {min((r['final_drop'] for r in rerun), default=float('nan')):.2f})",
        f"- Cost of one check (1,000 samples, torch eval mode): {check_s * 1000:.0f} ms; the {len(tuned)} "
        f"completed pruned trials passed {checks} each: {overhead:.1f} s in all, so "
        f"**{full - spent - overhead:.1f} s saved net**",
        "",
        "Re-run seconds are wall-clock and include whatever else ran on the machine then; the saving is computed "
        "from the search's own fine-tune seconds.",
        "",
        "## Stopped trials",
        "",
        "| trial | stopped at step | subset drop | bound | fine-tune s | projected full s | re-run full s | "
        "re-run final drop |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        final = f"{r['final_drop']:.2f}" if r["final_drop"] != "" else ""
        measured = f"{r['full_finetune_s']:.1f}" if r["full_finetune_s"] != "" else ""
        lines.append(f"| {r['trial']} | {r['step']}/{r['steps']} | {r['subset_drop']:.2f} | {r['bound']:.2f} | "
                     f"{r['finetune_s']:.1f} | {r['projected_full_s']:.1f} | {measured} | {final} |")
    lines += calibration_section()
    lines += ["", "## Machine", markdown(), ""]
    (HERE / "results.md").write_text("\n".join(lines))


def calibration_section() -> list[str]:
    """What the rule would have done to the plans calibrate.py ran to the end (calibration.csv), if present."""
    path = HERE / "calibration.csv"
    if not path.is_file():
        return []
    with path.open() as handle:
        points = list(csv.DictReader(handle))
    rule = EarlyStop()
    plans: dict[int, dict] = {}
    for p in points:
        plan = plans.setdefault(int(p["plan"]), {"final": float(p["final_drop"]), "at": {}})
        plan["at"][int(p["step"])] = (float(p["subset_drop"]), float(p["se"]))
    steps = int(points[0]["steps"])
    schedule = rule.schedule(steps)
    lines = ["", "## Calibration: plans run to the end, and what the rule would have done",
             "", f"`.venv/bin/python experiments/early_stop/calibrate.py` ({len(plans)} plans of the same widened "
             "space, fine-tuned in full with the rule only recording; final drop = the quantized ONNX file on all of "
             "validation).", "",
             "| plan | final drop | " + " | ".join(f"drop at step {s} (bound)" for s in schedule) + " | rule |",
             "|---|---|" + "---|" * len(schedule) + "---|"]
    worst: dict[int, float] = {s: 0.0 for s in schedule}
    lowest: dict[int, float] = {s: float("inf") for s in schedule}
    for number, plan in sorted(plans.items()):
        cells, verdict = [], "goes on"
        for step, slack in schedule.items():
            drop, se = plan["at"][step]
            bound = rule.bound(1.0, slack, se)
            lowest[step] = min(lowest[step], bound)
            cells.append(f"{drop:.2f} ({bound:.2f})")
            if verdict == "goes on" and drop > bound:
                verdict = f"stopped at {step}" + (" **(false stop)**" if plan["final"] <= 1.0 else "")
            if drop >= 2.0:  # below that, noise dominates the ratio
                worst[step] = max(worst[step], (drop - plan["final"]) / drop)
        lines.append(f"| {number} | {plan['final']:.2f} | " + " | ".join(cells) + f" | {verdict} |")
    lines += ["", "Largest share of its check-time drop that a plan at least 2 points down still recovered: "
              + ", ".join(f"{100 * w:.0f} % after step {s}" for s, w in worst.items())
              + ". A plan that ends at the 1.0-point limit would therefore show at most about "
              + ", ".join(f"{1.0 / (1 - w):.1f} points at step {s}" for s, w in worst.items() if w < 1)
              + "; the lowest bounds were " + ", ".join(f"{b:.1f} at step {s}" for s, b in lowest.items()) + "."]
    return lines


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6)
