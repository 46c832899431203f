"""The plan a search samples: per knob kind, a value per layer.

A knob's ``name`` is ``"<kind>.<dotted module name>"`` (``prune.layer1.0.conv1``,
``quant.fc``). That one string is the Optuna parameter, the MLflow parameter and,
split at the first dot, the key of the plan, so a value can be followed from the
sampler to the deployed file without translation.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

PRECISIONS = ("fp32", "fp16", "int8", "int16", "int4")
"""Per-layer precisions. fp16/int16/int4 shrink weights only; int8 runs integer kernels."""


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


@dataclass(frozen=True, init=False)
class Plan:
    """What one trial does to the model: per knob kind, a value per layer.

    ``Plan(prune={...}, quant={...}, lowrank={...})``. Layers not named keep their kind's
    neutral value (ratio 0, precision ``fp32``, ...). A kind no module in spaces/kinds/
    defines is an error, never dropped: a plan that loses a section silently scores
    another model than the one it names.
    """

    values: Mapping[str, Mapping[str, Any]]

    def __init__(self, values: Mapping[str, Mapping[str, Any]] | None = None, **by_kind: Mapping[str, Any]) -> None:
        from spaces.kinds import kind_named, registry

        given = {**(values or {}), **by_kind}
        unknown = sorted(set(given) - set(registry()))
        if unknown:
            raise PlanError(f"plan has unknown knob kinds {unknown}; known kinds: {', '.join(sorted(registry()))}")
        checked: dict[str, Mapping[str, Any]] = {}
        for name, layers in given.items():
            kind = kind_named(name)
            section = {layer: kind.check(f"{name}.{layer}", v) for layer, v in dict(layers).items()}
            if section:
                checked[name] = MappingProxyType(dict(sorted(section.items())))
        object.__setattr__(self, "values", MappingProxyType(dict(sorted(checked.items()))))

    def __hash__(self) -> int:  # the generated hash fails on the mapping proxies
        return hash(tuple((kind, tuple(layers.items())) for kind, layers in self.values.items()))

    def __repr__(self) -> str:
        return "Plan(" + ", ".join(f"{k}={dict(v)!r}" for k, v in self.values.items()) + ")"

    def of(self, kind: str) -> Mapping[str, Any]:
        """``{layer: value}`` of one kind; empty when the plan does not use it."""
        return self.values.get(kind, MappingProxyType({}))

    @property
    def prune(self) -> Mapping[str, float]:
        return self.of("prune")

    @property
    def quant(self) -> Mapping[str, str]:
        return self.of("quant")

    @property
    def is_identity(self) -> bool:
        from spaces.kinds import kind_named

        return all(v == kind_named(k).neutral for k, layers in self.values.items() for v in layers.values())

    @property
    def needs_finetune(self) -> bool:
        """Whether a kind that changes what the model computes before fine-tuning has a non-neutral value."""
        from spaces.kinds import kind_named

        kinds = {k: kind_named(k) for k in self.values}
        return any(kinds[k].finetune and v != kinds[k].neutral for k, layers in self.values.items()
                   for v in layers.values())

    def to_dict(self) -> dict[str, dict[str, Any]]:
        # prune and quant are always written: records from before other kinds existed had both
        return {"prune": {}, "quant": {}, **{k: dict(v) for k, v in self.values.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, Any]]) -> Plan:
        return cls(values=data)

    def params(self) -> dict[str, Any]:
        """The flat ``{knob name: value}`` view used for Optuna and MLflow."""
        return {f"{kind}.{layer}": v for kind, layers in self.values.items() for layer, v in layers.items()}

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Plan:
        """Inverse of :meth:`params`; a parameter of an unknown kind is a PlanError."""
        sections: dict[str, dict[str, Any]] = {}
        for name, value in params.items():
            kind, _, layer = name.partition(".")
            if not layer:
                raise PlanError(f"parameter {name!r} is not a knob name '<kind>.<layer>'")
            sections.setdefault(kind, {})[layer] = value
        return cls(values=sections)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))
