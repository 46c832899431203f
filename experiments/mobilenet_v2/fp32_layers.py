"""fp32 layers between int8 layers: do they keep float weights in ONNX Runtime, and at what speed?

Run from the repository root, after run.py has exported the baseline:

    .venv/bin/python experiments/mobilenet_v2/fp32_layers.py [BASELINE_ONNX]

(default: outputs/mobilenet_v2/baseline/model.onnx). Three plans (one fp32 depthwise conv, every other layer
fp32, all int8), each written three ways: as autosqueeze writes it; without the fp32-weight protection, loaded
with ONNX Runtime's WeightBiasQuantization pass disabled (the reference: what the plan means); and without the
protection, loaded as usual (the pass then quantizes the fp32 layers' weights per tensor). Outputs are compared
with the reference on 8 inputs; latency interleaved in one process, 1 intra-op thread, batch 1, 300 runs,
median. Calibration and inputs are random normal images: this measures equivalence and speed, not accuracy
(results.md has the accuracy). Writes fp32_layers.md next to this file.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]

import spaces.quantization as quantization  # noqa: E402
from machine import markdown  # noqa: E402
from spaces.layers import onnx_layer_names  # noqa: E402

HERE = Path(__file__).resolve().parent
RUNS, WARMUP = 300, 20


def plans(layers: list[str]) -> dict[str, dict[str, str]]:
    return {"one fp32 depthwise (features.1.conv.0.0)": {n: "fp32" if n == "features.1.conv.0.0" else "int8"
                                                         for n in layers},
            "every other layer fp32": {n: "fp32" if i % 2 else "int8" for i, n in enumerate(layers)},
            "all int8": dict.fromkeys(layers, "int8")}


def session(path: Path, disabled: tuple[str, ...] = ()) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(disabled))


def main(baseline: Path) -> None:
    model = onnx.load(str(baseline))
    layers = onnx_layer_names(model)
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((64, 3, 64, 64)).astype(np.float32)
    inputs = rng.standard_normal((8, 3, 64, 64)).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, plan in plans(layers).items():
            shipped = quantization.quantize(baseline, Path(tmp) / "shipped.onnx", plan, calib)
            with mock.patch.object(quantization, "_keep_float_weights", lambda *_: None):
                bare = quantization.quantize(baseline, Path(tmp) / "bare.onnx", plan, calib)
            sessions = {"as written": session(shipped),
                        "reference (pass off)": session(bare, ("WeightBiasQuantization",)),
                        "unprotected": session(bare)}
            feed = sessions["as written"].get_inputs()[0].name
            reference = sessions["reference (pass off)"].run(None, {feed: inputs})[0]
            diff = {k: float(np.abs(s.run(None, {feed: inputs})[0] - reference).max()) for k, s in sessions.items()}
            times: dict[str, list[float]] = {k: [] for k in sessions}
            for i in range(WARMUP + RUNS):
                for k, s in sessions.items():
                    start = time.perf_counter()
                    s.run(None, {feed: inputs[:1]})
                    if i >= WARMUP:
                        times[k].append(time.perf_counter() - start)
            ms = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
            rows.append(f"| {name} | {ms['as written']:.3f} | {ms['reference (pass off)']:.3f} | "
                        f"{ms['unprotected']:.3f} | {diff['as written']:.2g} | {diff['unprotected']:.2g} |")
            print(rows[-1], flush=True)
    text = ["# fp32 layers between int8 layers in ONNX Runtime", "",
            "Command (repository root): `.venv/bin/python experiments/mobilenet_v2/fp32_layers.py`", "",
            "| plan | as written, ms | reference, ms | unprotected, ms | as written: max abs diff | "
            "unprotected: max abs diff |", "|---|---|---|---|---|---|", *rows, "",
            "Max abs diff: logits against the reference on 8 random inputs. A diff of 0 means the fp32 layers "
            "computed with their float weights.", "", "## Machine", "", markdown()]
    (HERE / "fp32_layers.md").write_text("\n".join(text) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "outputs" / "mobilenet_v2" / "baseline" / "model.onnx")
