"""A search space: the knobs found in one model, and how a sampled plan is applied to it."""
from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from spaces.base import Plan, PlanError
from spaces.kinds import DEFAULT_KINDS, pipeline
from spaces.kinds.base import ApplyEnv, Knob, KnobKind, ModelInfo
from spaces.kinds.prune import PruneSpec
from spaces.kinds.quant import QuantSpec
from spaces.layers import head_name, layer_names
from spaces.pruning import PruneRatio
from spaces.quantization import Precision
from spaces.stages import output_resolutions, stage_blocks

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class Space:
    """Knobs in a fixed order, plus how a plan becomes a compressed model.

    Built once per search from the baseline; the same order of ``suggest`` calls in
    every trial is what lets a finished trial be replayed from its params. Kinds are kept
    in the order they are applied (:func:`spaces.kinds.pipeline`), and so are their knobs.
    """

    kinds: tuple[KnobKind, ...]
    knobs_by_kind: Mapping[str, tuple[Knob, ...]]
    specs: Mapping[str, Any]
    head: str
    example_input: torch.Tensor = field(repr=False)
    # knob names that run at one resolution, one kind per block: what a sampler may move together
    blocks: tuple[tuple[str, ...], ...] = ()

    @classmethod
    def build(cls, model: nn.Module, example_input: torch.Tensor, *, prune_spec: PruneSpec | None = None,
              quant_spec: QuantSpec | None = None, kinds: Sequence[str] = DEFAULT_KINDS,
              specs: Mapping[str, Any] | None = None) -> Space:
        """The space of ``kinds`` on ``model``; a kind without a spec in ``specs`` gets its defaults."""
        given = {"prune": prune_spec or PruneSpec(), "quant": quant_spec or QuantSpec(), **(specs or {})}
        ordered = tuple(pipeline(kinds))
        info = ModelInfo(model, example_input, head_name(model, example_input), tuple(layer_names(model)))
        chosen = {k.name: given[k.name] if k.name in given else k.spec({}) for k in ordered}
        knobs = {k.name: tuple(k.knobs(info, chosen[k.name])) for k in ordered}
        # Pruning knobs only: a stage's precision has few useful moves (the reference and seed plans hold
        # uniform int8 already; fp32 loses size and speed, weight-only precisions speed), and on MobileNetV2
        # the stage-precision moves tried set whole stages back to fp32.
        knob_layers = {k.name: layer_of(k.name) for k in knobs.get("prune", ())}
        blocks = stage_blocks(knob_layers, output_resolutions(model, example_input))
        return cls(ordered, knobs, chosen, info.head, example_input, blocks)

    @property
    def kind_names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.kinds)

    @property
    def knobs(self) -> tuple[Knob, ...]:
        return tuple(knob for kind in self.kinds for knob in self.knobs_by_kind[kind.name])

    @property
    def prune_knobs(self) -> tuple[PruneRatio, ...]:
        return self.knobs_by_kind.get("prune", ())

    @property
    def quant_knobs(self) -> tuple[Precision, ...]:
        return self.knobs_by_kind.get("quant", ())

    @property
    def prune_spec(self) -> PruneSpec:
        return self.specs.get("prune", PruneSpec())

    @property
    def quant_spec(self) -> QuantSpec:
        return self.specs.get("quant", QuantSpec())

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
        knobs = {kind: tuple(replace(k, choices=tuple(choices[k.name])) if k.name in choices else k for k in ks)
                 for kind, ks in self.knobs_by_kind.items()}
        return replace(self, knobs_by_kind=knobs)

    def complete(self, plan: Plan) -> Plan:
        """``plan`` with every knob it leaves out at its kind's neutral value, where the knob offers it.

        A queued plan names every knob: Optuna samples the ones it leaves out, which would turn a hand-made
        plan into a random one in the kinds it does not mention.
        """
        filled = {}
        for kind in self.kinds:
            for knob in self.knobs_by_kind[kind.name]:
                if knob.allows(kind.neutral):
                    filled[knob.name] = kind.neutral
        return Plan.from_params({**filled, **plan.params()})

    def seeded(self, plan: Plan) -> Plan:
        """``plan`` with each kind's ``seed`` value on every layer the plan leaves neutral and the knob allows."""
        added = {}
        for kind in self.kinds:
            if kind.seed is None:
                continue
            planned = plan.of(kind.name)
            for knob in self.knobs_by_kind[kind.name]:
                if planned.get(layer_of(knob.name), kind.neutral) == kind.neutral and knob.allows(kind.seed):
                    added[knob.name] = kind.seed
        return Plan.from_params({**plan.params(), **added}) if added else plan

    def uniform(self, ratio: float, precision: str) -> Plan:
        """The plan a user would write by hand: one ratio and one precision everywhere, other kinds neutral."""
        return self.complete(Plan.from_params({**{k.name: ratio for k in self.prune_knobs},
                                               **{k.name: precision for k in self.quant_knobs}}))

    def reference_plans(self, *, uniform_ratio: float) -> list[Plan]:
        """No compression, int8 only, and a uniform prune with int8: the front's floor."""
        return [self.uniform(0.0, "fp32"), self.uniform(0.0, "int8"), self.uniform(uniform_ratio, "int8")]

    def values(self, kind: str, plan: Plan) -> dict[str, Any]:
        """Every layer with a ``kind`` knob and its value in ``plan``; unplanned layers get the neutral value."""
        neutral = next(k.neutral for k in self.kinds if k.name == kind)
        planned = plan.of(kind)
        return {layer_of(k.name): planned.get(layer_of(k.name), neutral) for k in self.knobs_by_kind[kind]}

    def _env(self, calib: np.ndarray | None = None) -> ApplyEnv:
        return ApplyEnv(self.example_input, self.head, calib)

    def _apply_stage(self, stage: str, model: nn.Module, plan: Plan) -> nn.Module:
        for kind in self.kinds:
            if kind.stage == stage and any(v != kind.neutral for v in plan.of(kind.name).values()):
                model = kind.apply_model(model, self.values(kind.name, plan), self.specs[kind.name], self._env())
        return model

    @property
    def structure_knobs(self) -> dict[str, Any]:
        """``{knob name: neutral value}`` of the kinds that act before fine-tuning (the fine-tuned weights' shape)."""
        return {knob.name: kind.neutral for kind in self.kinds if kind.stage == "structure"
                for knob in self.knobs_by_kind[kind.name]}

    def structure_of(self, plan: Plan) -> dict[str, dict[str, Any]]:
        """Every value of the kinds that act before fine-tuning: all that the fine-tuned weights depend on."""
        return {k.name: self.values(k.name, plan) for k in self.kinds if k.stage == "structure"}

    def apply(self, model: nn.Module, plan: Plan) -> nn.Module:
        """A copy of ``model`` with the plan's ``structure`` kinds applied, ready to fine-tune."""
        return self._apply_stage("structure", copy.deepcopy(model).eval(), plan)

    def finish(self, model: nn.Module, plan: Plan) -> nn.Module:
        """``model`` (fine-tuned) with the plan's ``trained`` kinds applied, ready to export."""
        return self._apply_stage("trained", model, plan)

    def apply_graph(self, source: Path, target: Path, plan: Plan, calib: np.ndarray) -> Path:
        """Write ``target``: the exported ``source`` with the plan's ``graph`` kinds applied in order."""
        graph = [k for k in self.kinds if k.stage == "graph"]
        path = Path(source)
        for i, kind in enumerate(graph):
            step = target if i == len(graph) - 1 else target.with_name(f"{target.stem}.{kind.name}.onnx")
            path = Path(kind.apply_graph(path, step, self.values(kind.name, plan), self.specs[kind.name],
                                         self._env(calib)))
        if path != Path(target):
            shutil.copyfile(path, target)
        return Path(target)

    def precisions(self, plan: Plan) -> dict[str, str]:
        """Every quantizable layer's precision; excluded and unplanned layers stay fp32."""
        return self.values("quant", plan) if "quant" in self.knobs_by_kind else {}


def layer_of(knob_name: str) -> str:
    """``quant.layer1.0.conv1`` → ``layer1.0.conv1``."""
    return knob_name.partition(".")[2]
