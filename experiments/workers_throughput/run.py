"""Trials per hour of the default demo with 1 and with 2 worker processes on this machine.

Run from the repository root:  .venv/bin/python experiments/workers_throughput/run.py
Both searches reuse the cached baseline, so only trials are timed: from the first trial's
start to the last trial's end, as the study records them.
"""
from __future__ import annotations

import csv
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import markdown  # noqa: E402

HERE = Path(__file__).parent
TRIALS = 12


def run(workers: int, workdir: Path) -> dict[str, float]:
    name = f"throughput-{workers}w"
    command = [sys.executable, "-m", "search.cli", "search", f"search.study_name={name}", f"search.n_trials={TRIALS}",
               f"search.workers={workers}", "tracking=none", "quiet=true"]
    subprocess.run(command, cwd=workdir, check=True, stdout=subprocess.DEVNULL)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{workdir}/outputs/{name}/study.db")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    seconds = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    return {"workers": workers, "completed": len(done), "seconds": round(seconds, 1),
            "trials_per_hour": round(3600 * len(done) / seconds, 1)}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        repo_cache = Path("outputs/cache")
        if repo_cache.is_dir():  # reuse a baseline trained earlier in this checkout
            (workdir / "outputs").mkdir()
            (workdir / "outputs" / "cache").symlink_to(repo_cache.resolve())
        rows = [run(1, workdir), run(2, workdir)]
    with (HERE / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = "\n".join(f"| {r['workers']} | {r['completed']} | {r['seconds']} | {r['trials_per_hour']} |" for r in rows)
    ratio = rows[1]["trials_per_hour"] / rows[0]["trials_per_hour"]
    (HERE / "results.md").write_text(
        f"# Trials per hour, default demo, 1 vs 2 workers\n\nCommand: `.venv/bin/python experiments/workers_throughput/run.py` "
        f"(each run: `autosqueeze search search.n_trials={TRIALS} search.workers=N tracking=none`)\n\n"
        f"| workers | completed trials | seconds (first start → last end) | trials/hour |\n|---|---|---|---|\n"
        f"{table}\n\n2 workers / 1 worker: **{ratio:.2f}x**\n\n## Machine\n{markdown()}\n")
    print((HERE / "results.md").read_text())


if __name__ == "__main__":
    main()
