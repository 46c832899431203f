from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evaluators import EvalData, Latency, interleaved
from evaluators.latency import summarize, time_runs

KEYS = {"latency_ms", "latency_p90_ms", "latency_cv"}
PAIRED = KEYS | {"latency_raw_ms", "baseline_raw_ms"}


def check(result: dict[str, float]) -> None:
    assert set(result) == KEYS
    assert 0 < result["latency_ms"] <= result["latency_p90_ms"]
    assert result["latency_cv"] >= 0


@pytest.mark.parametrize("kind", ["fp32", "qdq"])
def test_measure(models: dict[str, Path], data: EvalData, kind: str) -> None:
    latency = Latency(warmup=2, runs=5)
    assert set(latency.metrics) == PAIRED
    check(latency.measure(models[kind], data))


def test_paired_with_a_reference_reports_the_ratio_scaled_to_the_reference(models: dict[str, Path],
                                                                            data: EvalData) -> None:
    paired = Latency(warmup=2, runs=5).against(models["fp32"], {"latency_ms": 7.0})
    got = paired.measure(models["qdq"], data)
    assert set(got) == PAIRED
    # latency is the reference median divided by the ratio of the two medians timed together
    assert got["latency_ms"] == pytest.approx(7.0 * got["latency_raw_ms"] / got["baseline_raw_ms"])
    with pytest.raises(ValueError, match="reference and reference_ms"):
        Latency(reference="x.onnx")


def test_interleaved(models: dict[str, Path], data: EvalData) -> None:
    results = interleaved([models["fp32"], models["qdq"], models["fp32"]], data, warmup=1, runs=4)
    assert len(results) == 3
    for result in results:
        check(result)


class Recorder:
    """Stands in for a session: logs which session ran which feed, in order."""

    def __init__(self, index: int, log: list[tuple[int, int]]) -> None:
        self.index, self.log = index, log

    def run(self, inputs: np.ndarray) -> np.ndarray:
        self.log.append((self.index, int(inputs[0])))
        return inputs


def test_time_runs_counts_and_round_robin() -> None:
    log: list[tuple[int, int]] = []
    sessions = [Recorder(i, log) for i in range(3)]
    feeds = [[np.array([k]) for k in range(2)] for _ in sessions]
    timings = time_runs(sessions, feeds, warmup=2, runs=5)
    assert timings.shape == (3, 5) and (timings >= 0).all()
    assert len(log) == 3 * (2 + 5)
    rounds = [log[i:i + 3] for i in range(0, len(log), 3)]
    for step, calls in enumerate(rounds):
        assert [s for s, _ in calls] == [(step + k) % 3 for k in range(3)]  # each model once, rotating start
        assert {feed for _, feed in calls} == {step % 2}  # samples cycled, same one for all models


def test_summarize() -> None:
    result = summarize(np.array([1, 2, 3, 4]) * 1_000_000)
    assert result["latency_ms"] == pytest.approx(2.5)
    assert result["latency_p90_ms"] == pytest.approx(3.7)
    assert result["latency_cv"] == pytest.approx(np.std([1, 2, 3, 4]) / 2.5)


def test_bad_options() -> None:
    for kwargs in ({"runs": 0}, {"warmup": -1}, {"threads": 0}):
        with pytest.raises(ValueError):
            Latency(**kwargs)
