"""The sensitivity profile of the benchmark's baseline: what it costs, and the plans it seeds.

Run from the repository root (the baseline is trained once and cached, as for run.py):

    .venv/bin/python experiments/mobilenet_v2/sensitivity.py [HYDRA OVERRIDES ...]

Measures the profile autosqueeze measures before its first trial (search/profiling/profile.py) on one
torch thread, as the benchmark's trials ran, and writes sensitivity.md next to this file: the
time per part, the share of the recorded autosqueeze search it would add, the groups ranked by
accuracy cost per parameter, the layers that keep int4, and the seed plans next to the hand plan.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import optuna
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]

from machine import markdown  # noqa: E402
from mobilenet_v2.handplan import FIRST_LATE_BLOCK, late_half_plan  # noqa: E402
from search.cli import build_job, load_config  # noqa: E402
from search.profiling.narrow import narrowed  # noqa: E402
from search.trials.onnx_export import export_onnx  # noqa: E402
from search.profiling.measure import measure_profile  # noqa: E402
from search.profiling.seeds import fp32_outliers, seed_plans  # noqa: E402
from search.trials.trial import SearchContext  # noqa: E402
from search.runner import prepare, preflight  # noqa: E402

HERE = Path(__file__).resolve().parent
RECORDED_WALL_S = 64.0 * 60  # autosqueeze's 36-trial search wall in results.md


def group_table(profile) -> str:
    top = max(profile.ratios)
    rows = sorted(((max(g.at(top).drop, 0.1) / max(g.at(top).params_share, 1e-9), g) for g in profile.groups),
                  key=lambda row: row[0])
    lines = ["| rank | group | " + " | ".join(f"drop @ {r:g}" for r in profile.ratios)
             + f" | params removed @ {top:g} | MACs removed @ {top:g} |",
             "|---|---|" + "---|" * (len(profile.ratios) + 2)]
    for i, (_, g) in enumerate(rows, 1):
        drops = " | ".join(f"{g.at(r).drop:.2f}" for r in profile.ratios)
        lines.append(f"| {i} | {g.name} | {drops} | {100 * g.at(top).params_share:.1f} % | "
                     f"{100 * g.at(top).macs_share:.1f} % |")
    return "\n".join(lines)


def main(overrides: list[str]) -> None:
    torch.set_num_threads(1)
    cfg = load_config(["experiment=mobilenet_v2", "quiet=true", *overrides])
    job = build_job(cfg)
    model, space = prepare(job, preflight(job))
    root = Path(cfg.paths.root) / cfg.search.study_name / "sensitivity"
    path = export_onnx(model, space.example_input, _mkdir(root) / "baseline.onnx")
    ctx = SearchContext(baseline=model, baseline_metrics={}, baseline_path=path, data=job.data, space=space,
                        finetune=job.finetune, evaluators=job.evaluators, run_dir=root, seed=job.search.seed)
    start = time.perf_counter()
    profile = measure_profile(ctx, job.profile)
    wall = time.perf_counter() - start
    (root / "profile.json").write_text(profile.to_json())
    narrow = narrowed(space, profile, optuna.create_study(directions=["maximize"] * 3), quant=job.quant,
                      objectives=job.objectives)
    int4 = [k.name.partition(".")[2] for k in narrow.quant_knobs if "int4" in k.choices]
    hand = {k for k, v in late_half_plan(space, 0.5).prune.items() if v}
    seeds = "\n".join(f"- {seed.text}; groups shared with the hand plan: "
                      f"{len(hand & {k for k, v in seed.plan.prune.items() if v})} of {len(hand)}"
                      for seed in seed_plans(narrow, profile, job.profile))
    seconds = ", ".join(f"{k} {v:.1f} s" for k, v in profile.seconds.items())
    text = f"""# Sensitivity profile of the MobileNetV2 baseline

Command (repository root): `.venv/bin/python experiments/mobilenet_v2/sensitivity.py` (settings:
`conf/experiment/mobilenet_v2.yaml`, `search.profile` defaults), one torch thread.

Measured in **{wall:.0f} s** ({seconds}): {100 * wall / RECORDED_WALL_S:.1f} % of the recorded 36-trial autosqueeze
search ({RECORDED_WALL_S / 60:.0f} min, results.md), {len(profile.groups)} groups x {len(profile.ratios)} ratios on
{profile.samples} validation samples, {len(profile.layers)} layers.

Layers that keep int4 (most bytes per latency, together <= {job.quant.int4_max_latency_share:g} of it):
{', '.join(int4) or 'none'}.
Layers left fp32 in the seeds (int8 SQNR far below the median, and fp32 there wins back at least
{job.profile.fp32_min_gain:g} points): {', '.join(fp32_outliers(
        profile, margin_db=job.profile.fp32_margin_db, max_layers=job.profile.fp32_max_layers,
        min_gain=job.profile.fp32_min_gain)) or 'none'}.

## Seed plans (hand plan: ratio 0.5 on the {len(hand)} groups of blocks {FIRST_LATE_BLOCK}-18)

{seeds}

## Groups, cheapest accuracy per parameter removed first (no fine-tuning)

{group_table(profile)}

## Layers

| layer | int8 SQNR added (dB) | int8 SQNR at output (dB) | latency % | size % |
|---|---|---|---|---|
""" + "\n".join(f"| {x.name} | {x.int8_added_db:.1f} | {x.int8_sqnr_db:.1f} | {100 * x.latency_share:.1f} | "
                f"{100 * x.size_share:.1f} |" for x in profile.layers) + f"\n\n## Machine\n\n{markdown()}\n"
    (HERE / "sensitivity.md").write_text(text)
    print(json.dumps(profile.seconds))


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


if __name__ == "__main__":
    main(sys.argv[1:])
