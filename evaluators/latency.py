"""Batch-1 CPU latency of the shipped artifact in its target's runtime, on real samples, one thread.

One thread and sequential execution make the number reproducible and comparable
across machines with different core counts; the median resists outliers, p90 and the
coefficient of variation show how noisy the measurement was.

On this kind of machine a model timed alone reads 2-4x apart from one minute to the
next, so during a search every candidate is timed interleaved with the baseline file
(:meth:`Latency.against`): the ratio of the two medians is what is compared across
trials, and ``latency_ms`` is the baseline's reference median divided by that ratio.
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from evaluators._session import open_session
from evaluators.base import EvalData

SAMPLES = 8
"""How many distinct samples the timed runs cycle through."""


class Runnable(Protocol):
    """The part of a target's session the timing loop uses."""

    def run(self, inputs: np.ndarray) -> Any: ...


@dataclass(frozen=True)
class Latency:
    """``latency_ms`` (median), ``latency_p90_ms`` and ``latency_cv`` of one model.

    Paired with a ``reference`` file (see :meth:`against`), ``latency_ms`` and
    ``latency_p90_ms`` are scaled to the reference's median ``reference_ms``, and the raw
    medians of this run are kept as ``latency_raw_ms`` and ``baseline_raw_ms``.
    """

    warmup: int = 10
    runs: int = 100
    threads: int = 1
    reference: str | None = None
    reference_ms: float | None = None
    metrics: tuple[str, ...] = field(
        default=("latency_ms", "latency_p90_ms", "latency_cv", "latency_raw_ms", "baseline_raw_ms"),
        init=False, repr=False)

    def __post_init__(self) -> None:
        _check_counts(self.warmup, self.runs)
        if self.threads < 1:
            raise ValueError(f"latency: threads must be >= 1, got {self.threads}")
        if (self.reference is None) != (self.reference_ms is None):
            raise ValueError("latency: reference and reference_ms go together")

    def against(self, baseline_path: Path, baseline_metrics: dict[str, float]) -> Latency:
        """This evaluator, timing every model interleaved with ``baseline_path``."""
        return replace(self, reference=str(baseline_path), reference_ms=float(baseline_metrics["latency_ms"]))

    def measure(self, model_path: Path, data: EvalData) -> dict[str, float]:
        if self.reference is None or self.reference_ms is None:
            return interleaved([model_path], data, warmup=self.warmup, runs=self.runs, threads=self.threads)[0]
        base, own = interleaved([Path(self.reference), model_path], data, warmup=self.warmup, runs=self.runs,
                                threads=self.threads)
        return paired(own, base, self.reference_ms)


def paired(own: dict[str, float], base: dict[str, float], reference_ms: float) -> dict[str, float]:
    """One model's timings against the baseline timed in the same run, scaled to ``reference_ms``."""
    scale = reference_ms / base["latency_ms"]
    return {"latency_ms": own["latency_ms"] * scale, "latency_p90_ms": own["latency_p90_ms"] * scale,
            "latency_cv": own["latency_cv"], "latency_raw_ms": own["latency_ms"],
            "baseline_raw_ms": base["latency_ms"]}


def interleaved(paths: Sequence[Path], data: EvalData, *, warmup: int, runs: int,
                threads: int = 1) -> list[dict[str, float]]:
    """Time several models round-robin in one process; returns one metrics dict per path.

    Each round runs every model once (starting with a different model each round), so
    a slow spell on a noisy machine hits all models alike and their ratios hold.
    """
    _check_counts(warmup, runs)
    if len(data.inputs) == 0:
        raise ValueError("latency: no eval samples to time on")
    sessions = [open_session(path, threads=threads) for path in paths]
    samples = [np.ascontiguousarray(data.inputs[i:i + 1], dtype=np.float32)
               for i in range(min(SAMPLES, len(data.inputs)))]
    feeds = [samples for _ in sessions]
    return [summarize(row) for row in time_runs(sessions, feeds, warmup=warmup, runs=runs)]


def time_runs(sessions: Sequence[Runnable], feeds: Sequence[Sequence[np.ndarray]], *,
              warmup: int, runs: int) -> np.ndarray:
    """Nanoseconds per timed run, shape ``(len(sessions), runs)``; ``feeds[i]`` is cycled for session i."""
    count = len(sessions)
    timings = np.zeros((count, runs), dtype=np.int64)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection in the middle of a run is noise, not model latency
    try:
        for step in range(warmup + runs):
            for offset in range(count):
                index = (step + offset) % count
                feed = feeds[index][step % len(feeds[index])]
                start = time.perf_counter_ns()
                sessions[index].run(feed)
                elapsed = time.perf_counter_ns() - start
                if step >= warmup:
                    timings[index, step - warmup] = elapsed
    finally:
        if gc_was_enabled:
            gc.enable()
    return timings


def summarize(timings_ns: np.ndarray) -> dict[str, float]:
    """Median and p90 in milliseconds, and the coefficient of variation (std / mean)."""
    ms = np.asarray(timings_ns, dtype=np.float64) / 1e6
    mean = float(ms.mean())
    return {
        "latency_ms": float(np.median(ms)),
        "latency_p90_ms": float(np.percentile(ms, 90)),
        "latency_cv": float(ms.std() / mean) if mean > 0 else 0.0,
    }


def _check_counts(warmup: int, runs: int) -> None:
    if warmup < 0 or runs < 1:
        raise ValueError(f"latency: need warmup >= 0 and runs >= 1, got warmup={warmup}, runs={runs}")
