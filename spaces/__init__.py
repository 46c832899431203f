"""The knobs a search turns, and how a sampled plan is applied to a model."""
from spaces.base import PRECISIONS, Plan, PlanError
from spaces.pruning import PruneRatio, prune
from spaces.quantization import Precision, QuantSettings, quantize
from spaces.space import PruneSpec, QuantSpec, Space

__all__ = ["PRECISIONS", "Plan", "PlanError", "PruneRatio", "Precision", "PruneSpec", "QuantSettings",
           "QuantSpec", "Space", "prune", "quantize"]
