"""The space a study samples from, once the profile is known: latency-aware precision choices.

int4, int16 and fp16 store weights only; on ONNX Runtime's CPU provider such a layer runs as
DequantizeLinear + fp32 compute, so it is slower than int8 and often slower than fp32. With
latency as an objective they stay on offer only on a few layers that together hold a small share
of the latency (``space.quant.int4_max_latency_share``), so Optuna never samples them elsewhere.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Mapping, Sequence

from optuna.distributions import CategoricalDistribution

from spaces.space import layer_of

if TYPE_CHECKING:
    import optuna

    from evaluators.base import Objective
    from search.profiling.profile import Profile
    from spaces.kinds.quant import QuantSpec
    from spaces.space import Space

log = logging.getLogger(__name__)
WEIGHT_ONLY = ("fp16", "int16", "int4")
LATENCY_METRICS = ("latency_ms", "speedup")
ATTR = "precision_choices"


def weight_only_layers(space: Space, profile: Profile, *, max_share: float) -> set[str]:
    """The layers that keep weight-only precisions: most weight bytes per unit of latency first, while together
    they hold at most ``max_share`` of the baseline's latency.

    Each such layer gives up its int8 kernel and adds Quantize/DequantizeLinear at its borders, so the cost
    adds up over layers: on MobileNetV2 five int4 layers of 1-3 % latency share each took the speedup from
    1.68x to 1.32x. A budget over all of them bounds that; the order spends it where int4 saves most bytes.
    """
    layers = [profile.layer(layer_of(k.name)) for k in space.quant_knobs if set(k.choices) & set(WEIGHT_ONLY)]
    ranked = sorted((x for x in layers if x is not None and x.size_share > 0),
                    key=lambda x: (-x.size_share / max(x.latency_share, 1e-9), x.name))
    chosen, spent = set(), 0.0
    for layer in ranked:
        if spent + layer.latency_share <= max_share:
            chosen.add(layer.name)
            spent += layer.latency_share
    return chosen


def latency_choices(space: Space, profile: Profile, *, max_share: float) -> dict[str, tuple[str, ...]]:
    """``{knob name: choices}`` for the precision knobs that lose their weight-only precisions."""
    keep, out = weight_only_layers(space, profile, max_share=max_share), {}
    for knob in space.quant_knobs:
        if layer_of(knob.name) in keep or profile.layer(layer_of(knob.name)) is None:
            continue
        kept = tuple(c for c in knob.choices if c not in WEIGHT_ONLY)
        if kept and kept != knob.choices:  # a layer offered weight-only precisions alone keeps them
            out[knob.name] = kept
    return out


def recorded_choices(study: optuna.Study) -> dict[str, tuple]:
    """The categorical choices each parameter was sampled with in this study's trials."""
    found: dict[str, tuple] = {}
    for trial in study.get_trials(deepcopy=False):
        for name, distribution in trial.distributions.items():
            if isinstance(distribution, CategoricalDistribution):
                found.setdefault(name, tuple(distribution.choices))
    return found


def narrowed(space: Space, profile: Profile, study: optuna.Study, *, quant: QuantSpec,
             objectives: Sequence[Objective]) -> Space:
    """``space`` with latency-aware precision choices, keeping any choices the study already sampled.

    Optuna refuses a categorical parameter whose choices change within a study (every storage
    checks a new trial's distribution against the recorded one), so a study whose trials
    sampled a knob with other choices (one searched before profiles existed) keeps them.
    """
    latency = any(o.metric in LATENCY_METRICS for o in objectives)
    wanted = latency_choices(space, profile, max_share=quant.int4_max_latency_share) \
        if quant.latency_aware and latency else {}
    current = {k.name: tuple(wanted.get(k.name, k.choices or ())) for k in space.knobs if k.choices is not None}
    kept = {name: choices for name, choices in recorded_choices(study).items()
            if name in current and choices != current[name]}
    if kept:
        name = next(iter(kept))
        log.warning("study %r sampled %d knobs with other choices than this config gives them (%s: %s); they "
                    "keep those choices, since Optuna cannot change a parameter's choices within a study; a new "
                    "search.study_name searches the new ones", study.study_name, len(kept), name,
                    ", ".join(map(str, kept[name])))
    result = space.with_choices({**wanted, **kept})
    _record(study, result)
    return result


def _record(study: optuna.Study, space: Space) -> None:
    """The precisions each layer is offered, for the report (which loads no model)."""
    offered = {layer_of(k.name): list(k.choices) for k in space.quant_knobs}
    if study.user_attrs.get(ATTR) != offered:
        study.set_user_attr(ATTR, offered)


def offered(study: optuna.Study) -> Mapping[str, Sequence[str]]:
    return study.user_attrs.get(ATTR, {})
