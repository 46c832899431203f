"""``share``: weight sharing, each output channel of a Conv/Linear layer clustered into ``2**bits`` values.

A planned layer's weights are replaced by the centres of their 1-D k-means clusters. It runs after
fine-tuning (stage ``trained``) so that training cannot spread the shared values apart again, and
needs no fine-tuning of its own: what it costs in accuracy is measured as it is.

What it buys is entropy, not bytes. The ONNX file still stores one fp32 (after ``quant``, one int8)
number per weight, so the raw file size and the latency do not change at all; only the size after
lossless compression (``compressed_bytes``, zstd) goes down. Export folds BatchNorm into the weights
(a factor per output channel) and ``quant`` scales each output channel on its own; neither adds
values to a channel, so the shipped int8 codes hold at most ``2**bits`` values per output channel.

``codebook`` says what one set of centres covers. Measured on tiny_net trained on Fashion-MNIST
(2,000 validation images, every layer shared, then int8 QDQ; validation accuracy / zstd-19 bytes;
int8 without sharing: 85.15 % / 30.4 kB):

- ``layer`` (default), one k-means per layer over the weights divided by their channel's largest
  magnitude, then scaled back: 3 bits 80.3 % / 16.1 kB, 4 bits 83.3 % / 21.7 kB, 6 bits 84.6 % /
  25.9 kB. A channel's largest weight is 1 in magnitude before clustering and mostly one of the two
  outermost centres after it, so per-channel int8 scaling maps the channels of a layer onto the
  same few codes, and zstd sees few of them.
- ``channel``, one k-means per output channel: 2 bits 79.2 % / 14.6 kB, 3 bits 84.6 % / 21.3 kB,
  4 bits 84.4 % / 27.7 kB, 6 bits no smaller than int8 alone. More accurate at a given size up to
  4 bits, but one fit per channel is slow on real models: every MobileNetV2 layer at 4 bits took
  319 s against 22 s for ``layer`` on this project's two-core machine.

Plain per-layer clustering, without the division, was worse than ``layer`` at every bit count
(4 bits 82.6 % / 22.7 kB): channels with small weights were left with a few centres.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields
from typing import Any, Mapping

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from torch import nn

from spaces.base import PlanError
from spaces.kinds.base import ApplyEnv, Choice, KindBase, ModelInfo, check_keys, layer_knobs
from spaces.layers import LAYER_TYPES

MAX_BITS = 8  # int8 codes cannot tell more than 256 values apart, so more clusters buy nothing
CODEBOOKS = ("layer", "channel")


def check_bits(key: str, value: Any) -> int:
    """``value`` as a whole number of bits in ``[0, MAX_BITS]`` (MLflow hands back ``"4"``), or a PlanError."""
    allowed = f"allowed: 0 (not shared) or a whole number of bits 1-{MAX_BITS} (2**bits shared values)"
    try:
        # a bool is an int to Python, never a bit count to a user
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not number.is_integer() or not 0 <= number <= MAX_BITS:
        raise PlanError(f"{key}: sharing bits {value!r} is not allowed; {allowed}")
    return int(number)


@dataclass(frozen=True)
class ShareSpec:
    """How sharing knobs are made: the bit counts each may take and the layers never shared."""

    bits: tuple[int, ...] = (0, 4, 6)
    codebook: str = "layer"
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:  # fail at config load, not in every trial
        if not self.bits:
            raise PlanError(f"space.share.bits is empty; give at least one of 0 (not shared) or 1-{MAX_BITS}")
        object.__setattr__(self, "bits", tuple(check_bits("space.share.bits", b) for b in self.bits))
        if self.codebook not in CODEBOOKS:
            raise PlanError(f"space.share.codebook={self.codebook!r} is unknown; allowed: {', '.join(CODEBOOKS)}")


class ShareKind(KindBase):
    name = "share"
    stage = "trained"
    rank = 0
    neutral = 0
    finetune = False
    # Seed plans also try 6 bits everywhere: on the demo ResNet's pruned int8 plan (experiments/knob_kinds) it
    # took the zstd size from 146.7 to 116.3 kB for 0.01 point; 4 bits cost more than the 1-point constraint.
    seed = 6

    def spec(self, section: Mapping[str, Any]) -> ShareSpec:
        s = dict(section)
        check_keys(self.name, s, [f.name for f in fields(ShareSpec)])
        return ShareSpec(bits=tuple(s.pop("bits", ShareSpec.bits)), exclude=tuple(s.pop("exclude", ())), **s)

    def check(self, key: str, value: Any) -> int:
        return check_bits(key, value)

    def knobs(self, info: ModelInfo, spec: ShareSpec) -> tuple[Choice, ...]:
        return layer_knobs(self.name, info, spec.exclude, lambda name: Choice(name, spec.bits))

    def apply_model(self, model: nn.Module, values: Mapping[str, int], spec: ShareSpec, env: ApplyEnv) -> nn.Module:
        with torch.no_grad():
            for layer, bits in values.items():
                if bits:
                    for module in _weighted(model.get_submodule(layer)):
                        weight = module.weight.detach().cpu().numpy()
                        module.weight.copy_(torch.from_numpy(shared(weight, 2 ** bits, codebook=spec.codebook)))
        return model

    def describe(self, value: int) -> str:
        return f"{value} bits" if value else ""


def _weighted(module: nn.Module) -> list[nn.Module]:
    """The Conv/Linear modules a planned layer is now made of: itself, or those a structure kind
    put in its place (a factorized layer becomes a module of two)."""
    return [m for m in module.modules() if isinstance(m, LAYER_TYPES)]


def shared(weight: np.ndarray, clusters: int, *, codebook: str = "layer") -> np.ndarray:
    """``weight`` (output channels first) with at most ``clusters`` values per output channel."""
    rows = weight.reshape(len(weight), -1)
    if codebook == "channel":
        return np.stack([_clustered(row, clusters) for row in rows]).reshape(weight.shape)
    # dividing by the channel's peak lets one codebook serve channels of any scale
    peak = np.abs(rows).max(axis=1, keepdims=True)
    peak[peak == 0] = 1  # an all-zero channel stays zero whatever it is divided by
    return (_clustered(rows / peak, clusters) * peak).astype(weight.dtype).reshape(weight.shape)


def _clustered(values: np.ndarray, clusters: int) -> np.ndarray:
    """``values`` each replaced by its k-means centre among ``clusters`` centres.

    Centres start evenly spaced between the smallest and largest value, not at random: the few
    large weights matter most, and a start that follows the density leaves them without a centre
    of their own. One start and a fixed seed give the same centres in every run.
    """
    column = values.reshape(-1, 1).astype(np.float64)
    if len(np.unique(column)) <= clusters:
        return values  # already no more values than the codebook holds
    start = np.linspace(column.min(), column.max(), clusters).reshape(-1, 1)
    with warnings.catch_warnings():
        # fewer distinct centres than asked for only means some values were already equal
        warnings.simplefilter("ignore", ConvergenceWarning)
        fit = KMeans(n_clusters=clusters, init=start, n_init=1, random_state=0).fit(column)
    return fit.cluster_centers_[fit.labels_, 0].astype(values.dtype).reshape(values.shape)


KIND = ShareKind()
