"""Evaluators: what is measured on the exported ONNX artifact."""
from __future__ import annotations

from evaluators.accuracy import Accuracy
from evaluators.base import Constraint, EvalData, Evaluator, Objective, check_metrics
from evaluators.complexity import Complexity
from evaluators.latency import Latency, interleaved
from evaluators.size import Size

__all__ = [
    "Accuracy", "Complexity", "Constraint", "EvalData", "Evaluator", "Latency", "Objective", "Size",
    "check_metrics", "interleaved",
]
