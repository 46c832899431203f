"""The knob-kind comparison's tables, read back from the studies under ``outputs/knob_kinds/``."""
from __future__ import annotations

import csv
import json
import shlex
from pathlib import Path
from typing import Any, Sequence

import sys

from optuna.trial import TrialState

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]

from knob_kinds.run import ARMS, common, load  # noqa: E402
from machine import markdown  # noqa: E402
from search.inspect import pareto  # noqa: E402
from search.study import baseline_of, feasible_results, results  # noqa: E402

HERE = Path(__file__).resolve().parent
MAX_DROP = 1.0
COLUMNS = ("arm", "kinds", "trials", "completed", "stopped", "feasible", "front", "hv", "best_shipped",
           "best_shipped_trial", "best_shipped_test_drop", "best_shipped_speedup", "best_raw", "wall_min")


def objectives(arm: str, root: Path) -> list:
    from search.cli import load_config, objectives_of

    return objectives_of(load_config(common(root, arm)))


def best_within(members: Sequence, metric: str) -> Any:
    inside = [r for r in members if r.metrics.get("accuracy_drop", 99.0) <= MAX_DROP and metric in r.metrics]
    return max(inside, key=lambda r: r.metrics[metric]) if inside else None


def row(root: Path, arm: str, walls: dict[str, float]) -> dict[str, Any]:
    study = load(root, arm)
    out: dict[str, Any] = {"arm": arm, "kinds": next(o.split("=", 1)[1] for o in ARMS[arm][0] if "kinds" in o)}
    if study is None:
        return out
    states = [t.state for t in study.trials]
    feasible = feasible_results(study)
    front = pareto.front(feasible, objectives(arm, root))
    best = best_within(feasible, "compressed_ratio")
    raw = best_within(feasible, "size_ratio")
    out.update(trials=len(states), completed=states.count(TrialState.COMPLETE), stopped=states.count(TrialState.PRUNED),
               feasible=len(feasible), front=len(front),
               hv=round(pareto.hypervolume(front, objectives(arm, root), baseline_of(study)), 5),
               wall_min=round(walls.get(arm, 0.0) / 60, 1))
    if best is not None:
        out.update(best_shipped=round(best.metrics["compressed_ratio"], 2), best_shipped_trial=best.number,
                   best_shipped_test_drop=round(best.metrics.get("test_accuracy_drop", float("nan")), 2),
                   best_shipped_speedup=round(best.metrics.get("speedup", float("nan")), 2))
    if raw is not None:
        out["best_raw"] = round(raw.metrics["size_ratio"], 2)
    return out


def uniform_rows(root: Path) -> list[str]:
    """For each ``alone-`` arm: the uniform plan against the best searched plan within the constraint."""
    lines = []
    for arm in (a for a in ARMS if a.startswith("alone-")):
        study = load(root, arm)
        if study is None:
            continue
        done = {r.number: r for r in results(study)}
        uniform = next((t.number for t in study.trials if t.user_attrs.get("uniform")), None)
        searched = best_within([r for n, r in done.items() if n != uniform], "compressed_ratio")
        u = done.get(uniform)

        stopped = next((t.user_attrs.get("pruned_reason", "") for t in study.trials
                        if t.number == uniform and t.state == TrialState.PRUNED), None)

        def cell(r: Any) -> str:
            if r is None:
                return "none within 1 point" if r is searched else f"stopped early: {stopped}"[:160]
            m = r.metrics
            return (f"trial {r.number}: {m['compressed_ratio']:.2f}x shipped, {m['size_ratio']:.2f}x raw, "
                    f"drop {m['accuracy_drop']:.2f}, {m.get('speedup', float('nan')):.2f}x speed")
        lines.append(f"| {arm.removeprefix('alone-')} | {cell(u)} | {cell(searched)} |")
    return lines


def report_of(arm: str) -> str:
    """Which file an arm's row goes to: ``mobilenet_v2`` for the MobileNetV2 arms, ``results`` for the rest."""
    return "mobilenet_v2" if arm.startswith("mnv2-") else "results"


def write_report(root: Path, *, command: Sequence[str] = (), name: str = "results") -> Path:
    """``<name>.md`` and ``<name>.csv`` for the arms that belong to ``name``, read from their studies."""
    walls_path = root / "walls.json"
    walls = json.loads(walls_path.read_text()) if walls_path.is_file() else {}
    table = [row(root, arm, walls) for arm in ARMS if report_of(arm) == name]
    with (HERE / f"{name}.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(table)
    title = "MobileNetV2" if name == "mobilenet_v2" else "Knob kinds"
    text = [f"# {title} at equal budget (evaluator=ota: accuracy, compressed bytes, latency)", "",
            f"Command: `nice -n 5 .venv/bin/python experiments/knob_kinds/run.py {shlex.join(command)}`".rstrip() + "",
            "", "Shipped = the zstd-19 compressed model file (`compressed_bytes`), raw = the .onnx file; both as",
            "ratios to the fp32 baseline. Best = the feasible member (validation drop <= 1 point) with the",
            "largest shipped ratio; its test drop is measured once the search ended. HV: hypervolume of the",
            "front on the study's three objectives, normalised by the study's baseline.", "",
            "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    text += ["| " + " | ".join(str(r.get(c, "")) for c in COLUMNS) + " |" for r in table]
    notes = HERE / ("notes.md" if name == "results" else f"{name}_notes.md")
    text += ["", *(notes.read_text().splitlines() if notes.is_file() else [])]
    if name == "results":
        text += ["", "## Each new kind alone: the uniform plan against the search", "",
                 "| kind | uniform plan (queued first) | best searched plan within 1 point |", "|---|---|---|",
                 *uniform_rows(root)]
    text += ["", "## Machine", "", markdown(), ""]
    out = HERE / f"{name}.md"
    out.write_text("\n".join(text))
    return out


if __name__ == "__main__":
    # report.py [ROOT] [NAME]: NAME is results (the demo, MLP and alone arms) or mobilenet_v2
    where = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "outputs" / "knob_kinds"
    name = sys.argv[2] if len(sys.argv) > 2 else "results"
    arms = ",".join(a for a in ARMS if report_of(a) == name)  # the run.py command that makes these studies
    print(write_report(where.resolve(), command=["--root", str(where), "--only", arms], name=name).read_text())
