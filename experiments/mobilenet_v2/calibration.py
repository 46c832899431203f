"""What int8 calibration costs on MobileNetV2: each setting on the baseline and on the hand plan.

Run from the repository root, after run.py has trained and cached the baseline:

    .venv/bin/python experiments/mobilenet_v2/calibration.py [HYDRA OVERRIDES ...]

Every layer int8 (U8S8, per-channel weights), calibrated on the same 256 training images with
each method, with the weight range space.quant.reduce_range=auto picks on this CPU, and the default
calibration once more with the other range; accuracy on the validation split the searches select on. The hand plan (0.5 on
blocks 11-18, handplan.py) is pruned and fine-tuned once with the benchmark's recipe, so the
int8 cost is read against its own fp32 export. Writes calibration.md next to this file.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]

from machine import markdown  # noqa: E402
from mobilenet_v2.handplan import late_half_plan  # noqa: E402
from search.cli import build_job, load_config  # noqa: E402
from search.runner import prepare, preflight  # noqa: E402
from search.trials.finetune import finetune  # noqa: E402
from search.trials.onnx_export import export_onnx  # noqa: E402
from search.trials.trial import measure  # noqa: E402
from spaces.quantization import INT8_DOT_FLAGS, QuantSettings, int8_saturates, quantize  # noqa: E402

HERE = Path(__file__).resolve().parent
BITS = {False: "8-bit weights", True: "7-bit weights"}
AUTO = BITS[QuantSettings().reduce_range]  # what space.quant.reduce_range=auto chooses on this CPU
SETTINGS = {
    f"minmax, {AUTO}": QuantSettings(calibration="minmax"),
    f"percentile 99.999 (ONNX Runtime's default), {AUTO}": QuantSettings(calibration="percentile", percentile=99.999),
    f"percentile 99.99 (autosqueeze's default), {AUTO}": QuantSettings(calibration="percentile", percentile=99.99),
    f"percentile 99.9, {AUTO}": QuantSettings(calibration="percentile", percentile=99.9),
    **{f"percentile 99.99, {BITS[reduce]}": QuantSettings(percentile=99.99, reduce_range=reduce)
       for reduce in BITS if BITS[reduce] != AUTO},
}


def int8_costs(fp32: Path, precisions: dict[str, str], job, folder: Path) -> tuple[float, dict[str, float]]:
    """The fp32 file's accuracy, and each setting's accuracy loss in points when every layer is int8."""
    accuracy = [e for e in job.evaluators if "accuracy" in e.metrics]
    reference = measure(fp32, job.data.val, accuracy)["accuracy"]
    costs = {}
    for i, (name, settings) in enumerate(SETTINGS.items()):
        path = quantize(fp32, folder / f"int8_{i}.onnx", precisions, job.data.calib, settings=settings)
        costs[name] = reference - measure(path, job.data.val, accuracy)["accuracy"]
    return reference, costs


def main(overrides: list[str]) -> None:
    torch.set_num_threads(1)
    cfg = load_config(["experiment=mobilenet_v2", "quiet=true", *overrides])
    job = build_job(cfg)
    baseline, space = prepare(job, preflight(job))
    hand = late_half_plan(space, 0.5)
    precisions = space.precisions(hand)  # int8 on every layer
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base_acc, base_costs = int8_costs(export_onnx(baseline, space.example_input, folder / "base.onnx"),
                                          precisions, job, folder)
        start = time.perf_counter()
        pruned = space.apply(baseline, hand)
        finetune(pruned, job.data.train, job.finetune, seed=job.search.seed, teacher=baseline)
        tuned_s = time.perf_counter() - start
        hand_acc, hand_costs = int8_costs(export_onnx(pruned, space.example_input, folder / "hand.onnx"),
                                          precisions, job, folder)
    rows = "\n".join(f"| {name} | {base_costs[name]:.2f} | {hand_costs[name]:.2f} | "
                     f"{base_acc - hand_acc + hand_costs[name]:.2f} |" for name in SETTINGS)
    text = f"""# int8 calibration on MobileNetV2: what each setting costs

Command (repository root): `.venv/bin/python experiments/mobilenet_v2/calibration.py`
(baseline, data and fine-tune recipe of `conf/experiment/mobilenet_v2.yaml`).

Every layer int8 (uint8 activations, per-channel int8 weights, QDQ), calibrated on the same
{len(job.data.calib)} training images; top-1 on {len(job.data.val.labels)} validation images. fp32 top-1: baseline
{base_acc:.2f}, hand plan (0.5 on blocks 11-18, {job.finetune.steps} fine-tune steps, {tuned_s:.0f} s) {hand_acc:.2f}.

| calibration | int8 cost, baseline (points) | int8 cost, hand plan (points) | hand plan drop vs fp32 baseline |
|---|---|---|---|
{rows}

The int8 cost is the fp32 file's accuracy minus the int8 file's, both on the same images; one image is
{100 / len(job.data.val.labels):.2f} points. `space.quant.reduce_range=auto` chose {AUTO} on this CPU
(int8 dot-product flags {', '.join(sorted(INT8_DOT_FLAGS))}: {'none' if int8_saturates() else 'present'}).

## Machine

{markdown()}
"""
    (HERE / "calibration.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
