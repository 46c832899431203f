"""The knobs a search turns, and how a sampled plan is applied to a model."""
from spaces.base import PRECISIONS, Plan, PlanError
from spaces.kinds.prune import PruneSpec
from spaces.kinds.quant import QuantSpec
from spaces.pruning import PruneRatio, prune
from spaces.quantization import Precision, QuantSettings, quantize
from spaces.space import Space

__all__ = ["PRECISIONS", "Plan", "PlanError", "PruneRatio", "Precision", "PruneSpec", "QuantSettings",
           "QuantSpec", "Space", "prune", "quantize"]
