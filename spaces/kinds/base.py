"""The seam every compression technique plugs into: one :class:`KnobKind` per module in this package.

A kind names its knobs ``"<kind>.<layer>"``; that one string is the Optuna parameter, the MLflow
parameter and, split at the first dot, the key of the plan. Where a kind acts is its ``stage``:

- ``structure``: on the torch model before fine-tuning (pruning, factorization);
- ``trained``: on the torch model after fine-tuning, so training does not undo it (sharing, sparsity);
- ``graph``: on the exported ONNX file (quantization, sparse storage).

Within a stage kinds run in ``rank`` order. :func:`spaces.kinds.pipeline` gives the whole order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Protocol, Sequence

import numpy as np

from spaces.base import PlanError

if TYPE_CHECKING:
    import optuna
    import torch
    from torch import nn

Stage = Literal["structure", "trained", "graph"]
STAGES: tuple[Stage, ...] = ("structure", "trained", "graph")


@dataclass(frozen=True)
class ModelInfo:
    """What a kind may read when it decides which layers get a knob."""

    model: nn.Module
    example_input: torch.Tensor
    head: str                    # the classifier: never pruned or factorized
    layers: tuple[str, ...]      # every Conv/Linear, in definition order


@dataclass(frozen=True)
class ApplyEnv:
    """What applying a plan may need besides the model: the example input, the head, calibration data."""

    example_input: torch.Tensor
    head: str
    calib: np.ndarray | None = field(default=None, repr=False)


class Knob(Protocol):
    """One searchable setting of one layer.

    ``suggest`` is called once per trial, in the space's fixed order, so that Optuna sees the
    same parameters in every trial and a ``FixedTrial`` built from a finished trial's params
    replays it exactly.
    """

    name: str
    choices: tuple | None

    def suggest(self, trial: optuna.trial.BaseTrial) -> Any: ...

    def allows(self, value: Any) -> bool: ...


class KnobKind(Protocol):
    """One compression technique: its knobs, and how a plan's values for them change the model."""

    name: str
    stage: Stage
    rank: int
    neutral: Any        # the value that leaves a layer exactly as it was
    finetune: bool      # a non-neutral value needs fine-tuning afterwards
    seed: Any           # what the profile's seed plans also try on every layer; None: seeds stay neutral here

    def spec(self, section: Mapping[str, Any]) -> Any:
        """The kind's settings from its ``space.<name>`` config section; PlanError names a bad key."""

    def check(self, key: str, value: Any) -> Any:
        """``value`` as stored in a plan, or PlanError naming ``key`` and what is allowed."""

    def knobs(self, info: ModelInfo, spec: Any) -> tuple[Knob, ...]:
        """The knobs this kind offers on ``info.model``; a layer where it cannot help gets none."""

    def apply_model(self, model: nn.Module, values: Mapping[str, Any], spec: Any, env: ApplyEnv) -> nn.Module:
        """``structure``/``trained`` kinds: the model with ``values`` applied (may be changed in place)."""

    def apply_graph(self, source: Path, target: Path, values: Mapping[str, Any], spec: Any, env: ApplyEnv) -> Path:
        """``graph`` kinds: write ``target`` from ``source`` with ``values`` applied; return the file to use."""

    def describe(self, value: Any) -> str:
        """A short cell for the report's plan table."""


class KindBase:
    """Defaults for the stage a kind does not act in."""

    finetune = False
    seed = None

    def apply_model(self, model, values, spec, env):
        return model

    def apply_graph(self, source, target, values, spec, env):
        return source

    def describe(self, value: Any) -> str:
        return str(value) if value != getattr(self, "neutral", None) else ""


@dataclass(frozen=True)
class Choice:
    """A categorical knob over a fixed tuple of values."""

    name: str
    choices: tuple

    def __post_init__(self) -> None:
        if not self.choices:
            raise PlanError(f"{self.name}: no choices; give at least one value")

    def suggest(self, trial: optuna.trial.BaseTrial) -> Any:
        return trial.suggest_categorical(self.name, list(self.choices))

    def allows(self, value: Any) -> bool:
        return value in self.choices


def check_fraction(key: str, value: Any, *, low: float, high: float, what: str) -> float:
    """``value`` as a float in ``[low, high]``, or one PlanError naming ``key`` and the interval."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PlanError(f"{key}: {what} {value!r} is not a number in [{low:g}, {high:g}]") from None
    if not low <= number <= high:
        raise PlanError(f"{key}: {what} {value!r} is outside [{low:g}, {high:g}]")
    return number


def check_keys(kind: str, section: Mapping[str, Any], allowed: Any) -> None:
    """One PlanError for a ``space.<kind>`` setting the kind does not have, listing those it has."""
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise PlanError(f"space.{kind}.{unknown[0]} is not a setting of knob kind {kind!r}; "
                        f"allowed: {', '.join(sorted(allowed))}")


def layer_knobs(kind: str, info: ModelInfo, exclude: Sequence[str], make: Callable[[str], Knob]) -> tuple[Knob, ...]:
    """One knob per Conv/Linear layer not in ``exclude`` (checked against the model's layers), named for ``kind``."""
    from spaces.layers import check_names

    check_names(f"space.{kind}.exclude", exclude, info.layers)
    return tuple(make(f"{kind}.{name}") for name in info.layers if name not in exclude)
