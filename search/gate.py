"""The CI gate: does the finished search's front hold a model good enough to ship?

``gate.require={size_ratio: 4, speedup: 1.5}`` asks for one feasible front member that meets every
requirement at once. Each metric has a fixed sense (:data:`SENSE`): ratios and accuracy are
floors, drops, bytes and milliseconds are ceilings. The verdict is one JSON line a pipeline can
parse, and the exit code: 0 when met, :data:`EXIT_NOT_MET` when not.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    from search.trials.trial import TrialResult

SENSE: Mapping[str, str] = {
    "size_ratio": ">=", "compressed_ratio": ">=", "speedup": ">=", "accuracy": ">=", "test_accuracy": ">=",
    "accuracy_drop": "<=", "test_accuracy_drop": "<=", "size_bytes": "<=", "compressed_bytes": "<=",
    "latency_ms": "<=",
}
"""The metrics a gate can require, and which way each must hold."""
EXIT_NOT_MET = 3
"""Apart from 1 (trials kept failing) and 2 (bad command line), so a pipeline can tell them apart."""


@dataclass(frozen=True)
class Gate:
    """``require``: metric -> the value a front member must reach (see :data:`SENSE` for the direction)."""

    require: Mapping[str, float]

    def __post_init__(self) -> None:
        if not isinstance(self.require, Mapping) or not self.require:
            raise ValueError(f"gate.require={self.require!r} must be a non-empty mapping like "
                             f"{{size_ratio: 4, speedup: 1.5}}; allowed metrics: {', '.join(SENSE)}")
        for metric, value in self.require.items():
            if metric not in SENSE:
                raise ValueError(f"gate.require: unknown metric {metric!r}; allowed: {', '.join(SENSE)}")
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"gate.require.{metric}={value!r} is not a number; give e.g. {metric}: 1.5")
        object.__setattr__(self, "require", {k: float(v) for k, v in self.require.items()})

    def check(self, available: Sequence[str]) -> None:
        """Raise when a required metric is not measured by the configured evaluators."""
        for metric in self.require:
            if metric not in available and metric not in ("test_accuracy", "test_accuracy_drop"):
                raise ValueError(f"gate.require.{metric}: the evaluators do not measure it; "
                                 f"measured: {', '.join(sorted(set(available) & set(SENSE)))}")

    def meets(self, metrics: Mapping[str, float]) -> bool:
        return all(_holds(metrics.get(m), SENSE[m], v) for m, v in self.require.items())

    def shortfall(self, metrics: Mapping[str, float]) -> float:
        """How far a member is from passing: the worst requirement's relative miss (0 when it passes)."""
        misses = [0.0]
        for metric, wanted in self.require.items():
            got = metrics.get(metric)
            if got is None:
                return math.inf
            gap = wanted - got if SENSE[metric] == ">=" else got - wanted
            misses.append(max(0.0, gap) / max(abs(wanted), 1e-9))
        return max(misses)

    def verdict(self, front: Sequence[TrialResult]) -> dict[str, Any]:
        """``{"gate": "met" | "not met", "require", "best": {trial, figures} | None, "front_size"}``."""
        best = min(front, key=lambda r: (self.shortfall(r.metrics), r.number), default=None)
        met = best is not None and self.meets(best.metrics)
        figures = None if best is None else {
            "trial": best.number, **{m: round(float(best.metrics[m]), 6) for m in self.require if m in best.metrics}}
        return {"gate": "met" if met else "not met", "require": dict(self.require), "best": figures,
                "front_size": len(front)}


def _holds(value: float | None, sense: str, wanted: float) -> bool:
    if value is None:
        return False
    return value >= wanted if sense == ">=" else value <= wanted


def verdict_lines(verdict: Mapping[str, Any]) -> tuple[str, str]:
    """The JSON line for a pipeline, and one sentence for a person."""
    wanted = ", ".join(f"{m} {SENSE[m]} {v:g}" for m, v in verdict["require"].items())
    best = verdict["best"]
    if verdict["gate"] == "met":
        text = f"gate met: trial {best['trial']} has {wanted}"
    elif best is None:
        text = f"gate not met: the front is empty, nothing has {wanted}"
    else:
        got = ", ".join(f"{m} {v:g}" for m, v in best.items() if m != "trial")
        text = f"gate not met: no feasible front member has {wanted}; closest is trial {best['trial']} ({got})"
    return json.dumps({"autosqueeze_gate": verdict}, sort_keys=True), text
