"""A search space: the knobs found in one model, and how a sampled plan is applied to it."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Mapping

import torch
from torch import nn

from spaces.base import Plan, PlanError
from spaces.layers import check_names, head_name, layer_names, prunable_groups, resolve_members
from spaces.pruning import IMPORTANCES, PruneRatio, prune
from spaces.quantization import Precision, QuantSettings
from spaces.stages import output_resolutions, stage_blocks

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class PruneSpec:
    """How pruning knobs are made: the ratios each may take and the layers never pruned."""

    ratios: tuple[float, ...] | None = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625)
    low: float = 0.0
    high: float = 0.625
    step: float = 0.125
    exclude: tuple[str, ...] = ()
    round_to: int | None = 4
    importance: str = "l2"

    def __post_init__(self) -> None:  # fail at config load, not in every trial
        if self.importance not in IMPORTANCES:
            raise PlanError(f"space.prune.importance={self.importance!r} is unknown; "
                            f"allowed: {', '.join(IMPORTANCES)}")
        PruneRatio("space.prune.ratios", self.ratios, self.low, self.high, self.step)


@dataclass(frozen=True)
class QuantSpec:
    """How precision knobs are made: the precisions each may take and the layers kept fp32."""

    precisions: tuple[str, ...] = ("fp32", "int8", "int16", "int4")
    exclude: tuple[str, ...] = ()
    settings: QuantSettings = field(default_factory=QuantSettings)
    # Weight-only precisions (int4, int16, fp16) run as DequantizeLinear + fp32 compute on CPU: with
    # latency as an objective they are offered only on layers holding together at most this latency share.
    latency_aware: bool = True
    int4_max_latency_share: float = 0.02

    def __post_init__(self) -> None:
        Precision("space.quant.precisions", self.precisions)
        if not 0.0 <= self.int4_max_latency_share <= 1.0:
            raise PlanError(f"space.quant.int4_max_latency_share={self.int4_max_latency_share!r} is outside [0, 1]; "
                            "it is the share of the baseline's latency that int4 layers may hold together")


@dataclass(frozen=True)
class Space:
    """Knobs in a fixed order, plus how a plan becomes a pruned model.

    Built once per search from the baseline; the same order of ``suggest`` calls in
    every trial is what lets a finished trial be replayed from its params.
    """

    prune_knobs: tuple[PruneRatio, ...]
    quant_knobs: tuple[Precision, ...]
    prune_spec: PruneSpec
    quant_spec: QuantSpec
    head: str
    example_input: torch.Tensor = field(repr=False)
    # knob names that run at one resolution, one kind per block: what a sampler may move together
    blocks: tuple[tuple[str, ...], ...] = ()

    @classmethod
    def build(cls, model: nn.Module, example_input: torch.Tensor, *, prune_spec: PruneSpec,
              quant_spec: QuantSpec) -> Space:
        layers = layer_names(model)
        check_names("space.prune.exclude", prune_spec.exclude, layers)
        check_names("space.quant.exclude", quant_spec.exclude, layers)
        head = head_name(model, example_input)
        groups = prunable_groups(model, example_input, ignored=[head])
        skipped = resolve_members(groups, prune_spec.exclude)
        prune_knobs = tuple(
            PruneRatio(f"prune.{root}", prune_spec.ratios, prune_spec.low, prune_spec.high, prune_spec.step)
            for root in groups if root not in skipped)
        quant_knobs = tuple(Precision(f"quant.{name}", quant_spec.precisions)
                            for name in layers if name not in quant_spec.exclude)
        # Pruning knobs only: a stage's precision has few useful moves (the reference and seed plans hold
        # uniform int8 already; fp32 loses size and speed, weight-only precisions speed), and on MobileNetV2
        # the stage-precision moves tried set whole stages back to fp32.
        knob_layers = {k.name: layer_of(k.name) for k in prune_knobs}
        blocks = stage_blocks(knob_layers, output_resolutions(model, example_input))
        return cls(prune_knobs, quant_knobs, prune_spec, quant_spec, head, example_input, blocks)

    @property
    def knobs(self) -> tuple[PruneRatio | Precision, ...]:
        return (*self.prune_knobs, *self.quant_knobs)

    def suggest(self, trial: optuna.trial.BaseTrial) -> Plan:
        return Plan.from_params({knob.name: knob.suggest(trial) for knob in self.knobs})

    def check(self, plan: Plan) -> None:
        """Reject a plan that names a layer or value this space does not offer."""
        knobs = {k.name: k for k in self.knobs}
        for name, value in plan.params().items():
            if name not in knobs:
                shown = ", ".join(list(knobs)[:12]) + (", ..." if len(knobs) > 12 else "")
                raise PlanError(f"{name}: not a knob of this space; knobs are: {shown}")
            if not knobs[name].allows(value):
                raise PlanError(f"{name}={value!r} is outside the space")

    def with_choices(self, choices: Mapping[str, tuple]) -> Space:
        """This space with other values for the named knobs (``{knob name: choices}``); order unchanged."""
        unknown = sorted(set(choices) - {k.name for k in self.knobs})
        if unknown:
            raise PlanError(f"{unknown[0]}: not a knob of this space")
        prune = tuple(replace(k, choices=tuple(choices[k.name])) if k.name in choices else k for k in self.prune_knobs)
        quant = tuple(replace(k, choices=tuple(choices[k.name])) if k.name in choices else k for k in self.quant_knobs)
        return replace(self, prune_knobs=prune, quant_knobs=quant)

    def uniform(self, ratio: float, precision: str) -> Plan:
        """The plan a user would write by hand: one ratio and one precision everywhere."""
        return Plan.from_params({**{k.name: ratio for k in self.prune_knobs},
                                 **{k.name: precision for k in self.quant_knobs}})

    def reference_plans(self, *, uniform_ratio: float) -> list[Plan]:
        """No compression, int8 only, and a uniform prune with int8: the front's floor."""
        return [self.uniform(0.0, "fp32"), self.uniform(0.0, "int8"), self.uniform(uniform_ratio, "int8")]

    def apply(self, model: nn.Module, plan: Plan) -> nn.Module:
        """A pruned copy of ``model``; quantization happens later, on the exported graph."""
        return prune(model, plan.prune, self.example_input, ignored=[self.head, *self.prune_spec.exclude],
                     round_to=self.prune_spec.round_to, importance=self.prune_spec.importance)

    def precisions(self, plan: Plan) -> dict[str, str]:
        """Every quantizable layer's precision; excluded and unplanned layers stay fp32."""
        layers = (layer_of(k.name) for k in self.quant_knobs)
        return {layer: plan.quant.get(layer, "fp32") for layer in layers}


def layer_of(knob_name: str) -> str:
    """``quant.layer1.0.conv1`` → ``layer1.0.conv1``."""
    return knob_name.partition(".")[2]
