"""Batch-1 CPU latency of the exported model, on real samples, one thread by default.

One thread and sequential execution make the number reproducible and comparable
across machines with different core counts; the median resists outliers, p90 and the
coefficient of variation show how noisy the measurement was.
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from evaluators._session import make_session
from evaluators.base import EvalData

SAMPLES = 8
"""How many distinct samples the timed runs cycle through."""


class Runnable(Protocol):
    """The part of ``ort.InferenceSession`` the timing loop uses."""

    def run(self, output_names: Any, input_feed: dict[str, np.ndarray]) -> Any: ...


@dataclass(frozen=True)
class Latency:
    """``latency_ms`` (median), ``latency_p90_ms`` and ``latency_cv`` of one model."""

    warmup: int = 10
    runs: int = 100
    threads: int = 1
    metrics: tuple[str, ...] = field(default=("latency_ms", "latency_p90_ms", "latency_cv"),
                                     init=False, repr=False)

    def __post_init__(self) -> None:
        _check_counts(self.warmup, self.runs)
        if self.threads < 1:
            raise ValueError(f"latency: threads must be >= 1, got {self.threads}")

    def measure(self, model_path: Path, data: EvalData) -> dict[str, float]:
        return interleaved([model_path], data, warmup=self.warmup, runs=self.runs, threads=self.threads)[0]


def interleaved(paths: Sequence[Path], data: EvalData, *, warmup: int, runs: int,
                threads: int = 1) -> list[dict[str, float]]:
    """Time several models round-robin in one process; returns one metrics dict per path.

    Each round runs every model once (starting with a different model each round), so
    a slow spell on a noisy machine hits all models alike and their ratios hold.
    """
    _check_counts(warmup, runs)
    if len(data.inputs) == 0:
        raise ValueError("latency: no eval samples to time on")
    sessions = [make_session(path, threads=threads) for path in paths]
    samples = [np.ascontiguousarray(data.inputs[i:i + 1], dtype=np.float32)
               for i in range(min(SAMPLES, len(data.inputs)))]
    feeds = [[{session.get_inputs()[0].name: sample} for sample in samples] for session in sessions]
    return [summarize(row) for row in time_runs(sessions, feeds, warmup=warmup, runs=runs)]


def time_runs(sessions: Sequence[Runnable], feeds: Sequence[Sequence[dict[str, np.ndarray]]], *,
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
                sessions[index].run(None, feed)
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
