"""What is measured on an exported model, and which measurements the study optimises.

Evaluators only ever see the ONNX file that would be deployed, plus the data to
score it on; they never see the torch model, so what they report is what ships.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, Protocol, Sequence

import numpy as np

Direction = Literal["maximize", "minimize"]


@dataclass(frozen=True)
class EvalData:
    """Held-out inputs (float32, NCHW, already preprocessed) and integer labels."""

    inputs: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.labels):
            raise ValueError(f"eval data: {len(self.inputs)} inputs but {len(self.labels)} labels")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, without the batch axis."""
        return tuple(self.inputs.shape[1:])


class Evaluator(Protocol):
    """Measures one aspect of an ONNX artifact.

    ``measure`` returns a flat ``{metric name: value}``; every name it can return is
    listed in ``metrics`` so objectives and constraints can be checked at config load.
    """

    metrics: tuple[str, ...]

    def measure(self, model_path: Path, data: EvalData) -> dict[str, float]: ...


@dataclass(frozen=True)
class Objective:
    """One optimisation target: a metric an evaluator reports, and which way is better."""

    metric: str
    direction: Direction

    def __post_init__(self) -> None:
        if self.direction not in ("maximize", "minimize"):
            raise ValueError(f"objective {self.metric}: direction {self.direction!r}; allowed: maximize, minimize")


@dataclass(frozen=True)
class Constraint:
    """A hard limit ``metric <= max``; a trial that breaks it is infeasible."""

    metric: str
    max: float

    def violation(self, metrics: Mapping[str, float]) -> float:
        """Optuna's convention: <= 0 means satisfied."""
        return float(metrics[self.metric]) - self.max


def check_metrics(objectives: Sequence[Objective], constraints: Sequence[Constraint],
                  available: Sequence[str]) -> None:
    """Fail at config load if an objective or constraint names a metric nothing measures."""
    for item in (*objectives, *constraints):
        if item.metric not in available:
            raise ValueError(f"metric {item.metric!r} is not measured; available: {', '.join(sorted(available))}")
