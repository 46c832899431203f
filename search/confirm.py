"""The end of a search: time the front again, and measure the test split it was never chosen on.

In-search latencies are paired with the baseline but short (``evaluator.latency.runs``),
and a front picked as the best of many noisy draws favours lucky ones. So the front and
the members near it are timed once more in one interleaved run with more repetitions,
and their accuracy on the test split is measured for the record: nothing selects on it.
The figures are kept on the study (user attribute ``confirmed``), so every reader of
:func:`search.study.results` sees the same numbers.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from evaluators.latency import interleaved, paired
from search.inspect import pareto

if TYPE_CHECKING:
    import optuna

    from evaluators.base import Objective
    from search.trials.trial import SearchContext, TrialResult

log = logging.getLogger(__name__)
ATTR = "confirmed"


@dataclass(frozen=True)
class ConfirmSettings:
    """How the front is re-timed when a search ends."""

    runs: int = 300
    warmup: int = 20
    near: int = 1             # non-dominated layers behind the front that are re-timed too
    max_models: int = 32      # at most this many models in the one interleaved run

    def __post_init__(self) -> None:
        if self.runs < 1 or self.warmup < 0 or self.near < 0 or self.max_models < 1:
            raise ValueError(f"search.confirm: need runs >= 1, warmup >= 0, near >= 0, max_models >= 1; got {self}")


def nearby(results: Sequence[TrialResult], objectives: Sequence[Objective], layers: int) -> list[TrialResult]:
    """The front, then up to ``layers`` further non-dominated layers of what is left, in that order."""
    left, chosen = list(results), []
    for _ in range(layers + 1):
        layer = pareto.front(left, objectives) if left else []
        chosen += layer
        left = [r for r in left if r not in layer]
    return chosen


def confirm(study: optuna.Study, ctx: SearchContext, members: Sequence[TrialResult],
            settings: ConfirmSettings) -> dict[str, Any]:
    """Re-time ``members`` interleaved with the baseline and score them on test; stored on the study."""
    here = [r for r in members if Path(r.model_path).is_file()][:settings.max_models]
    missing = [r.number for r in members if not Path(r.model_path).is_file()]
    if missing:
        log.warning("not re-timed (model file not on this machine): trials %s", missing)
    latency = _evaluator(ctx, "latency_ms")
    accuracy = _evaluator(ctx, "accuracy")
    figures: dict[str, dict[str, float]] = {str(r.number): {} for r in here}
    if latency is not None and here:
        timed = interleaved([ctx.baseline_path, *(Path(r.model_path) for r in here)], ctx.data.val,
                            warmup=settings.warmup, runs=settings.runs, threads=latency.threads)
        reference = float(ctx.baseline_metrics["latency_ms"])
        for result, own in zip(here, timed[1:]):
            row = paired(own, timed[0], reference)
            figures[str(result.number)].update(row, speedup=reference / row["latency_ms"])
    baseline_test = {}
    if accuracy is not None:
        baseline_test = {"test_accuracy": accuracy.measure(ctx.baseline_path, ctx.data.test)["accuracy"]}
        for result in here:
            score = accuracy.measure(Path(result.model_path), ctx.data.test)["accuracy"]
            figures[str(result.number)].update(test_accuracy=score,
                                               test_accuracy_drop=baseline_test["test_accuracy"] - score)
    record = {"runs": settings.runs, "baseline": baseline_test, "trials": figures}
    study.set_user_attr(ATTR, record)
    return record


def _evaluator(ctx: SearchContext, metric: str) -> Any:
    return next((e for e in ctx.evaluators if metric in e.metrics), None)
