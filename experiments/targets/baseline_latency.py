"""fp32 resnet_small, batch 1, one thread: ONNX Runtime against OpenVINO, timed interleaved in one process.

    nice -n 10 .venv/bin/python experiments/targets/baseline_latency.py [--rounds 5 --runs 300]

Both runtimes run the same exported ONNX file (OpenVINO as the IR the openvino target ships), with
the evaluators' settings: ONNX Runtime sequential with full graph optimisation; OpenVINO with the
latency hint and f32 inference precision. Each round times both models round-robin (evaluators/
latency.py ``interleaved``), so a slow spell on the shared CPU hits both; the ratio per round and
the median over rounds are what to read, not the milliseconds. Writes results.md beside this file.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from evaluators.base import EvalData  # noqa: E402
from evaluators.latency import interleaved  # noqa: E402
from experiments.machine import markdown  # noqa: E402
from search.deploy.targets.base import Source  # noqa: E402
from search.deploy.targets.openvino import OpenVINO  # noqa: E402
from search.trials.onnx_export import export_onnx  # noqa: E402
from zoo.models import resnet_small  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = resnet_small(num_classes=10, in_channels=1).eval()  # weights do not change an fp32 model's time
    data = EvalData(np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32), np.zeros(8))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(model, torch.from_numpy(data.inputs[:1]), Path(tmp) / "model.onnx")
        ir = OpenVINO().build(Source(onnx=onnx_path))
        for round_ in range(args.rounds):
            ort_t, ov_t = interleaved([onnx_path, ir], data, warmup=args.warmup, runs=args.runs, threads=1)
            rows.append((round_, ort_t["latency_ms"], ov_t["latency_ms"], ort_t["latency_ms"] / ov_t["latency_ms"],
                         ort_t["latency_cv"], ov_t["latency_cv"]))
            print(f"round {round_}: ORT {rows[-1][1]:.4f} ms, OpenVINO {rows[-1][2]:.4f} ms, "
                  f"ORT/OpenVINO {rows[-1][3]:.3f}", flush=True)
    ratios = [r[3] for r in rows]
    lines = ["# fp32 baseline latency: ONNX Runtime vs OpenVINO", "",
             f"Command: `nice -n 10 .venv/bin/python experiments/targets/baseline_latency.py --rounds {args.rounds} "
             f"--runs {args.runs} --warmup {args.warmup}`", "",
             "resnet_small (fp32, untrained weights, seed 0), batch 1, 1 thread, both models timed round-robin "
             "in one process per round (evaluators/latency.py `interleaved`); medians per round.", "",
             "| round | ORT ms | OpenVINO ms | ORT / OpenVINO | ORT cv | OpenVINO cv |", "|---|---|---|---|---|---|",
             *(f"| {r[0]} | {r[1]:.4f} | {r[2]:.4f} | {r[3]:.3f} | {r[4]:.2f} | {r[5]:.2f} |" for r in rows), "",
             f"Median ratio ORT / OpenVINO over {len(rows)} rounds: **{float(np.median(ratios)):.3f}** "
             f"(range {min(ratios):.3f}-{max(ratios):.3f}; above 1 means OpenVINO is faster).", "",
             "Machine:", "", markdown(), ""]
    (Path(__file__).with_name("results.md")).write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
