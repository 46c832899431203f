"""A per-layer plan made by hand, for comparison with what the searches found.

Run from the repository root, after run.py (it reuses the cached baseline and baseline.json):

    .venv/bin/python experiments/mobilenet_v2/handplan.py [HYDRA OVERRIDES ...]

The plan: int8 on every layer, and channel pruning only in the low-resolution half of the
network (blocks 11 to 18, where most parameters sit and each costs little compute), at one
ratio. Same fine-tune recipe and evaluators as the benchmark; then the baseline and the result
are timed interleaved (300 runs, 1 thread, batch 1). Writes handplan.md next to this file.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]

from evaluators.latency import interleaved  # noqa: E402
from machine import markdown  # noqa: E402
from search.cli import build_job, load_config  # noqa: E402
from search.runner import prepare, preflight  # noqa: E402
from search.trials.trial import SearchContext, run_trial  # noqa: E402
from spaces.base import Plan  # noqa: E402

HERE = Path(__file__).resolve().parent
FIRST_LATE_BLOCK, RUNS, WARMUP = 11, 300, 20
RATIOS = (0.5, 0.375)  # the plan as first written, and one step back when it misses the 1-point limit


def late_half_plan(space, ratio: float) -> Plan:
    """int8 everywhere; ``ratio`` on the prune groups rooted in features.11 and later."""
    uniform = space.uniform(0.0, "int8")
    prune = {k: ratio if int(k.split(".")[1]) >= FIRST_LATE_BLOCK else 0.0 for k in uniform.prune}
    return Plan(prune=prune, quant=uniform.quant)


def main(overrides: list[str]) -> None:
    torch.set_num_threads(1)
    cfg = load_config(["experiment=mobilenet_v2", "quiet=true", *overrides])
    job = build_job(cfg)
    root = Path(cfg.paths.root) / cfg.search.study_name
    base = json.loads((root / "baseline.json").read_text())
    model, space = prepare(job, preflight(job))
    ctx = SearchContext(baseline=model, baseline_metrics=base["metrics"], baseline_path=Path(base["onnx"]),
                        data=job.data, space=space, finetune=job.finetune, evaluators=job.evaluators,
                        run_dir=root / "handplan", seed=job.search.seed)
    plans = {ratio: late_half_plan(space, ratio) for ratio in RATIOS}
    done = {ratio: run_trial(ctx, plan, number=i) for i, (ratio, plan) in enumerate(plans.items())}
    base_t, *hand_t = interleaved([Path(base["onnx"]), *(Path(r.model_path) for r in done.values())], job.data.val,
                                  warmup=WARMUP, runs=RUNS, threads=1)
    # report.py re-times these files beside the searches' front members and checks which dominate them
    (root / "handplan.json").write_text(json.dumps(
        [{"ratio": ratio, "metrics": r.metrics, "model_path": r.model_path} for ratio, r in done.items()], indent=2))
    rows = "\n".join(
        f"| hand plan, ratio {ratio:g} | {r.metrics['accuracy']:.2f} | {r.metrics['accuracy_drop']:.2f} | "
        f"{r.metrics['size_bytes']:,.0f} | {r.metrics['size_ratio']:.2f}x | {t['latency_ms']:.3f} ({t['latency_cv']:.2f}) | "
        f"{base_t['latency_ms'] / t['latency_ms']:.2f}x |" for (ratio, r), t in zip(done.items(), hand_t))
    stages = "; ".join(f"ratio {ratio:g}: " + ", ".join(f"{k} {v:.1f}" for k, v in r.timings.items())
                       for ratio, r in done.items())
    pruned = ", ".join(k for k, v in plans[RATIOS[0]].prune.items() if v)
    text = f"""# A per-layer plan by hand: int8 everywhere, one prune ratio in blocks {FIRST_LATE_BLOCK}-18

Command (repository root): `.venv/bin/python experiments/mobilenet_v2/handplan.py`
(same baseline, fine-tune recipe and evaluators as run.py: `conf/experiment/mobilenet_v2.yaml`;
accuracy on the validation split the searches select on).

| model | top-1 | drop | .onnx bytes | size ratio | latency ms (CV) | speedup |
|---|---|---|---|---|---|---|
| fp32 baseline | {base['metrics']['accuracy']:.2f} | 0 | {base['metrics']['size_bytes']:,.0f} | 1.00x | {base_t['latency_ms']:.3f} ({base_t['latency_cv']:.2f}) | 1.00x |
{rows}

Latency: the files interleaved in one process, ONNX Runtime CPU, 1 intra-op thread, batch 1,
{WARMUP} warm-up + {RUNS} timed runs each, median. Trial stages (s): {stages}.

Pruned groups: {pruned}.

## Machine

{markdown()}
"""
    (HERE / "handplan.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
