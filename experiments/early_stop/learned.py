"""The early-stopping rule with and without what a study learns, replayed on calibration.csv.

Run from the repository root:  .venv/bin/python experiments/early_stop/learned.py

calibration.csv holds 16 plans fine-tuned in full (calibrate.py): their subset drop at the default
checks and their final drop. The plans are taken in order, as a study would meet them; a plan the
rule lets through joins what later plans learn from, one it stops does not (a stopped trial has no
final drop). The rule itself is search/trials/early_stop.py's: ``EarlyStop.bound``,
``EarlyStop.shares`` and ``EarlyStop.learned_bound``, at the default settings. Writes learned.md.
"""
from __future__ import annotations

import csv
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from search.trials.early_stop import EarlyStop  # noqa: E402

HERE = Path(__file__).parent
MAX_DROP = 1.0


def load() -> tuple[int, dict[int, dict[int, tuple[float, float]]], dict[int, float]]:
    checks: dict[int, dict[int, tuple[float, float]]] = defaultdict(dict)
    final, steps = {}, 0
    with open(HERE / "calibration.csv") as f:
        for row in csv.DictReader(f):
            plan = int(row["plan"])
            checks[plan][int(row["step"])] = (float(row["subset_drop"]), float(row["se"]))
            final[plan], steps = float(row["final_drop"]), int(row["steps"])
    return steps, checks, final


def replay(settings: EarlyStop, steps: int, checks, final) -> list[tuple[int, int | None, float]]:
    """``(plan, step it was stopped at or None, final drop)`` in plan order."""
    schedule = settings.schedule(steps)
    finished, out = [], []
    for plan in sorted(checks):
        shares = settings.shares(finished)
        stopped, passed = None, []
        for step, slack in schedule.items():
            drop, se = checks[plan][step]
            bound = settings.bound(MAX_DROP, slack, se)
            if step in shares:
                bound = min(bound, settings.learned_bound(MAX_DROP, shares[step], se))
            if drop > bound:
                stopped = step
                break
            passed.append((step, drop, se, bound))
        if stopped is None:
            finished.append((passed, final[plan]))
        out.append((plan, stopped, final[plan]))
    return out


def main() -> None:
    steps, checks, final = load()
    lines = ["# Early stopping with what the study learns: replayed on calibration.csv", "",
             "Command: `.venv/bin/python experiments/early_stop/learned.py` (no training: it replays the 16 "
             "plans of calibration.csv, default demo, in order).", "",
             "| rule | stopped (plan@step) | steps saved | of all steps | false stops (final drop <= 1) |",
             "|---|---|---|---|---|"]
    for name, settings in (("fixed slack", EarlyStop(learn=False)), ("learned (defaults)", EarlyStop()),
                           ("learned, after 3", EarlyStop(learn_after=3))):
        result = replay(settings, steps, checks, final)
        stops = [(p, s, f) for p, s, f in result if s is not None]
        saved = sum(steps - s for _, s, _ in stops)
        false = [p for p, _, f in stops if f <= MAX_DROP]
        shown = ", ".join(f"{p}@{s}" for p, s, _ in stops)
        lines.append(f"| {name} | {shown} | {saved} | {100 * saved / (steps * len(result)):.0f} % | "
                     f"{len(false)} of {len(stops)} |")
    (HERE / "learned.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
