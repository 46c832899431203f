"""Measuring the profile: prune costs on the torch model, int8 errors and shares on the ONNX baseline."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch_pruning as tp

from search.deploy.targets.base import source_onnx
from search.profiling.profile import GroupProfile, LayerProfile, Profile, ProfileSettings, PrunePoint
from evaluators.base import EvalData
from search.profiling.onnx_figures import OTHER, int8_errors, int8_gains, latency_shares, size_shares
from search.profiling.seeds import sqnr_outliers
from search.trials.trial import Stopwatch
from spaces.base import Plan
from spaces.layers import layer_names
from spaces.space import layer_of

if TYPE_CHECKING:
    from torch import nn

    from evaluators.base import EvalData
    from search.trials.trial import SearchContext
    from spaces.space import Space

BATCH = 250


def measure_profile(ctx: SearchContext, settings: ProfileSettings) -> Profile:
    clock = Stopwatch()
    with clock.stage("prune"):
        groups, accuracy, samples = prune_costs(ctx, settings)
    layers = layer_names(ctx.baseline)
    # Per-layer figures come from ONNX Runtime on the baseline's ONNX file whatever the target: they
    # rank layers for the space and the seeds, and every target runs the same QDQ graph.
    onnx_path = source_onnx(ctx.baseline_path)
    with clock.stage("int8"):
        calib = np.asarray(ctx.data.calib, dtype=np.float32)
        errors = int8_errors(onnx_path, layers, calib, samples=calib[:settings.calib_samples],
                             settings=ctx.space.quant_spec.settings)
    with clock.stage("latency"):
        latency = latency_shares(onnx_path, layers, ctx.space.example_input.numpy(),
                                 runs=settings.latency_runs)
    size = size_shares(onnx_path, layers)
    profiled = tuple(LayerProfile(name, *errors.get(name, (math.nan, math.nan)), latency[name], size[name])
                     for name in layers)
    profile = Profile(groups=groups, layers=profiled, baseline_accuracy=accuracy, samples=samples, seed=ctx.seed,
                      latency_unassigned=latency[OTHER])
    with clock.stage("fp32_gain"):
        inputs, labels = val_subset(ctx.data.val, settings.samples, seed=ctx.seed)
        candidates = sqnr_outliers(profile, margin_db=settings.fp32_margin_db, max_layers=settings.fp32_max_layers)
        gains = int8_gains(onnx_path, layers, candidates, calib, EvalData(inputs.numpy(), labels),
                           settings=ctx.space.quant_spec.settings)
    clock.timings["total"] = round(sum(clock.timings.values()), 4)
    return replace(profile, seconds=clock.timings,
                   layers=tuple(replace(layer, fp32_gain=gains.get(layer.name)) for layer in profiled))


def profile_ratios(space: Space) -> tuple[float, ...]:
    """The space's largest ratio and the ratio of its grid nearest half of it."""
    if not space.prune_knobs:
        return ()
    knob = space.prune_knobs[0]
    grid = knob.choices if knob.choices is not None else tuple(
        float(r) for r in np.arange(knob.low, knob.high + knob.step / 2, knob.step))
    top = max(grid)
    if top <= 0:
        return ()
    inner = [r for r in grid if 0 < r < top]
    half = min(inner, key=lambda r: abs(r - top / 2)) if inner else None
    return tuple(sorted({top, *([half] if half is not None else [])}))


def prune_costs(ctx: SearchContext, settings: ProfileSettings) -> tuple[tuple[GroupProfile, ...], float, int]:
    """Each group pruned alone at each profile ratio, no fine-tuning: accuracy lost and model share removed."""
    inputs, labels = val_subset(ctx.data.val, settings.samples, seed=ctx.seed)
    base = top1(ctx.baseline, inputs, labels)
    macs0, params0 = tp.utils.count_ops_and_params(ctx.baseline, ctx.space.example_input)
    groups = []
    for knob in ctx.space.prune_knobs:
        group, points = layer_of(knob.name), []
        for ratio in profile_ratios(ctx.space):
            torch.manual_seed(ctx.seed)  # the "random" importance draws from torch's generator
            pruned = ctx.space.apply(ctx.baseline, Plan(prune={group: ratio}))
            macs, params = tp.utils.count_ops_and_params(pruned, ctx.space.example_input)
            points.append(PrunePoint(ratio=ratio, drop=round(base - top1(pruned, inputs, labels), 4),
                                     params_share=round(1 - params / params0, 6),
                                     macs_share=round(1 - macs / macs0, 6)))
        groups.append(GroupProfile(group, tuple(points)))
    return tuple(groups), base, len(labels)


def val_subset(val: EvalData, n: int, *, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """``n`` validation samples drawn with ``seed``, in their original order."""
    total = len(val.labels)
    index = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
    return torch.from_numpy(np.asarray(val.inputs[index], dtype=np.float32)), np.asarray(val.labels[index])


@torch.no_grad()
def top1(model: nn.Module, inputs: torch.Tensor, labels: Sequence[int]) -> float:
    """Accuracy (%) of ``model`` in eval mode; the model's own mode is restored after."""
    training = model.training
    model.eval()
    try:
        predicted = torch.cat([model(inputs[i:i + BATCH]).argmax(1) for i in range(0, len(inputs), BATCH)])
    finally:
        model.train(training)
    return 100.0 * float((predicted.numpy() == np.asarray(labels)).mean())
