"""The data a search samples and applies: knobs, and the plan they produce.

A knob's ``name`` is ``"<kind>.<dotted module name>"`` (``prune.layer1.0.conv1``,
``quant.fc``). That one string is the Optuna parameter, the MLflow parameter and,
split at the first dot, the key of the plan, so a value can be followed from the
sampler to the deployed file without translation.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping, Protocol

if TYPE_CHECKING:
    import optuna

PRECISIONS = ("fp32", "fp16", "int8", "int16", "int4")
"""Per-layer precisions. fp16/int16/int4 shrink weights only; int8 runs integer kernels."""

KINDS = ("prune", "quant")


class PlanError(ValueError):
    """A plan or a space names a value that is not allowed."""


def check_ratio(key: str, ratio: float) -> float:
    try:
        ratio = float(ratio)
    except (TypeError, ValueError):
        raise PlanError(f"{key}: pruning ratio {ratio!r} is not a number in [0, 1)") from None
    if not (0.0 <= ratio < 1.0) or math.isnan(ratio):
        raise PlanError(f"{key}: pruning ratio {ratio!r} is outside [0, 1)")
    return ratio


def check_precision(key: str, precision: str) -> str:
    if precision not in PRECISIONS:
        raise PlanError(f"{key}: unknown precision {precision!r}; allowed: {', '.join(PRECISIONS)}")
    return precision


@dataclass(frozen=True)
class Plan:
    """What one trial does to the model: a prune ratio and a precision per layer.

    Layers not named keep ratio 0 and the default precision ``fp32``.
    """

    prune: Mapping[str, float] = field(default_factory=dict)
    quant: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        prune = {k: check_ratio(f"prune.{k}", v) for k, v in self.prune.items()}
        quant = {k: check_precision(f"quant.{k}", v) for k, v in self.quant.items()}
        object.__setattr__(self, "prune", MappingProxyType(dict(sorted(prune.items()))))
        object.__setattr__(self, "quant", MappingProxyType(dict(sorted(quant.items()))))

    def __hash__(self) -> int:  # the generated hash fails on the mapping proxies
        return hash((tuple(self.prune.items()), tuple(self.quant.items())))

    @property
    def is_identity(self) -> bool:
        return all(r == 0 for r in self.prune.values()) and all(p == "fp32" for p in self.quant.values())

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {"prune": dict(self.prune), "quant": dict(self.quant)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, Any]]) -> Plan:
        unknown = set(data) - set(KINDS)
        if unknown:
            raise PlanError(f"plan has unknown sections {sorted(unknown)}; allowed: {', '.join(KINDS)}")
        return cls(prune=dict(data.get("prune", {})), quant=dict(data.get("quant", {})))

    def params(self) -> dict[str, Any]:
        """The flat ``{knob name: value}`` view used for Optuna and MLflow."""
        flat: dict[str, Any] = {f"prune.{k}": v for k, v in self.prune.items()}
        flat.update({f"quant.{k}": v for k, v in self.quant.items()})
        return flat

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Plan:
        """Inverse of :meth:`params`; parameters of other kinds are ignored."""
        sections: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
        for name, value in params.items():
            kind, _, layer = name.partition(".")
            if kind in sections and layer:
                sections[kind][layer] = value
        return cls(prune=sections["prune"], quant=sections["quant"])

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))


class Knob(Protocol):
    """One searchable setting of one layer.

    ``suggest`` is called once per trial, in the space's fixed order, so that
    Optuna sees the same parameters in every trial and a ``FixedTrial`` built
    from a finished trial's params replays it exactly.
    """

    name: str

    def suggest(self, trial: optuna.trial.BaseTrial) -> Any: ...
