"""Learning curves behind the early-stopping slack: how much a fine-tune still recovers after a check.

Run from the repository root:  .venv/bin/python experiments/early_stop/calibrate.py [N_PLANS]
On the default demo (resnet_small, Fashion-MNIST, the default fine-tune) it fine-tunes N_PLANS
plans in full (default 16), drawn from a prune space widened to 0.75 so their final drops
spread from well inside the 1-point constraint to far outside it, and records the subset drop
the rule would see every 10 % of the steps and at the default checks. Nothing is stopped. Each
plan's final drop is the trial's own number: the quantized ONNX file on the whole validation split.

Written: calibration.csv (one row per plan and check step) beside this file.
"""
from __future__ import annotations

import csv
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from search.cli import build_job, load_config  # noqa: E402
from search.trials.early_stop import EarlyStop, StopRule, paired_drop  # noqa: E402
from search.runner import build_context, prepare  # noqa: E402
from search.trials.trial import run_trial  # noqa: E402
from spaces.base import Plan  # noqa: E402

HERE = Path(__file__).parent
WORK = Path("/tmp/autosqueeze-early-stop")  # the cached baseline is shared with run.py
RATIOS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
OVERRIDES = [f"paths.root={WORK}/outputs", "search.study_name=calibrate", "tracking.uri=null",
             f"space.prune.ratios=[{','.join(map(str, RATIOS))}]"]
EVERY = 0.1  # record the subset drop every 10 % of the steps


class Recorder:
    """Stands in for the rule: records the subset drop at each step, never stops."""

    def __init__(self, rule: StopRule, steps: int) -> None:
        self.rule = rule
        tenths = {max(1, round(k * EVERY * steps)) for k in range(1, round(1 / EVERY))}
        self.at = frozenset(tenths | set(EarlyStop().schedule(steps)))  # and the default checks themselves
        self.points: list[tuple[int, float, float, float]] = []

    def __call__(self, step: int, model) -> None:
        start = time.perf_counter()
        drop, se = paired_drop(self.rule.baseline_correct, self.rule.correct(model))
        self.points.append((step, drop, se, time.perf_counter() - start))


class Recording:
    """A ``ctx.early_stop`` whose checks only record."""

    def __init__(self, rule: StopRule) -> None:
        self.rule = rule
        self.last: Recorder | None = None

    def check(self, steps: int) -> Recorder:
        self.last = Recorder(self.rule, steps)
        return self.last


def plans(space, n: int, seed: int = 0) -> list[Plan]:
    """Random per-group ratios up to a random ceiling (so mild and harsh plans both occur), random precisions."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ceiling = rng.choice((0.25, 0.375, 0.5, 0.75))
        params = {k.name: rng.choice([r for r in RATIOS if r <= ceiling]) for k in space.prune_knobs}
        params.update({k.name: rng.choice(k.choices) for k in space.quant_knobs})
        out.append(Plan.from_params(params))
    return out


def main(n_plans: int = 16) -> None:
    job = build_job(load_config(OVERRIDES))
    study = optuna.create_study(directions=[o.direction for o in job.objectives])
    ctx = build_context(job, study, prepare(job))
    recording = Recording(StopRule(EarlyStop(), max_drop=1.0, baseline=ctx.baseline, val=ctx.data.val,
                                   seed=job.search.seed))
    ctx = replace(ctx, early_stop=recording)
    rows = []
    for number, plan in enumerate(plans(ctx.space, n_plans)):
        result = run_trial(ctx, plan, number=number)
        final = result.metrics["accuracy_drop"]
        points = recording.last.points if any(r > 0 for r in plan.prune.values()) else []
        print(f"plan {number}: final drop {final:.2f}, finetune {result.timings['finetune']:.1f} s, "
              f"subset drops {[round(d, 1) for _, d, _, _ in points]}", flush=True)
        for step, drop, se, seconds in points:
            rows.append({"plan": number, "step": step, "steps": job.finetune.steps, "subset_drop": round(drop, 3),
                         "se": round(se, 3), "check_s": round(seconds, 4), "final_drop": round(final, 3),
                         "finetune_s": result.timings["finetune"]})
    with (HERE / "calibration.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 16)
