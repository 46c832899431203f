"""The Pareto front, its hypervolume against the baseline, and the files it is written to."""
from __future__ import annotations

import csv
import json
import math

import pytest

from evaluators.base import Objective
from search.inspect.pareto import COLUMNS, front, hypervolume, rows, table, write_front
from search.trials.trial import TrialResult
from spaces.base import Plan

ACC = Objective("accuracy", "maximize")
SIZE = Objective("size_bytes", "minimize")
LAT = Objective("latency_ms", "minimize")

BASELINE = {"accuracy": 90.0, "size_bytes": 1000.0, "compressed_bytes": 900.0, "latency_ms": 2.0}


def result(number: int, accuracy: float, size: float, latency: float = 1.0, **extra: float) -> TrialResult:
    metrics = {"accuracy": accuracy, "size_bytes": size, "compressed_bytes": size * 0.9, "latency_ms": latency,
               "accuracy_drop": BASELINE["accuracy"] - accuracy, "size_ratio": BASELINE["size_bytes"] / size,
               "speedup": BASELINE["latency_ms"] / latency, **extra}
    return TrialResult(number=number, plan=Plan(prune={"a": 0.125 * (number % 4)}, quant={"fc": "int8"}),
                       metrics=metrics, timings={"total": 1.0}, model_path=f"/runs/{number}/model.onnx",
                       sha256=f"{number:064x}")


def numbers(results) -> list[int]:
    return [r.number for r in results]


# --- front -----------------------------------------------------------------------------------


def test_members_that_left_the_front_when_re_timed_are_marked_not_dropped(tmp_path):
    kept, left = result(1, 89.5, 300.0), result(2, 89.0, 200.0, test_accuracy=88.1, test_accuracy_drop=1.2)
    text = table([kept], BASELINE, [left])
    assert "*2" in text.splitlines()[-2] and "left the front when re-timed" in text.splitlines()[-1]
    assert "88.10" in text and "test %" in text.splitlines()[0]
    csv_path, json_path = write_front([kept], out_dir=tmp_path, baseline=BASELINE, hv=0.1, objectives=[ACC, SIZE],
                                      left=[left])
    with csv_path.open() as handle:
        assert [(r["trial"], r["status"]) for r in csv.DictReader(handle)] == [
            ("1", "front"), ("2", "left the front when re-timed")]
    assert [m["trial"] for m in json.loads(json_path.read_text())["left_when_retimed"]] == [2]


def test_front_removes_dominated_results_in_trial_order():
    results = [
        result(0, 90.0, 1000.0),   # baseline-like
        result(1, 89.0, 500.0),    # front
        result(2, 88.0, 600.0),    # dominated by 1 (less accurate and larger)
        result(3, 85.0, 200.0),    # front
        result(4, 89.0, 700.0),    # dominated by 1 (same accuracy, larger)
        result(5, 91.0, 1200.0),   # front: most accurate
    ]
    assert numbers(front(results, [ACC, SIZE])) == [0, 1, 3, 5]


def test_front_respects_directions():
    results = [result(0, 90.0, 1000.0), result(1, 80.0, 100.0)]
    # with accuracy maximised neither dominates; minimising it makes 1 dominate 0
    assert numbers(front(results, [ACC, SIZE])) == [0, 1]
    assert numbers(front(results, [Objective("accuracy", "minimize"), SIZE])) == [1]
    # maximising size as well (silly, but the sign must follow the direction) makes 0 dominate
    assert numbers(front(results, [ACC, Objective("size_bytes", "maximize")])) == [0]


def test_front_collapses_duplicates_to_the_first():
    results = [result(3, 88.0, 400.0), result(4, 88.0, 400.0), result(5, 88.0, 400.0, latency=9.0)]
    # on (accuracy, size) all three are equal: one is kept
    assert numbers(front(results, [ACC, SIZE])) == [3]
    # latency separates 5, which is then dominated
    assert numbers(front(results, [ACC, SIZE, LAT])) == [3]
    assert numbers(front(results[::-1], [ACC, SIZE])) == [5]


def test_front_three_objectives():
    results = [result(0, 90.0, 500.0, 2.0), result(1, 90.0, 500.0, 1.0), result(2, 85.0, 400.0, 3.0),
               result(3, 84.0, 450.0, 3.0)]
    assert numbers(front(results, [ACC, SIZE, LAT])) == [1, 2]


def test_front_of_nothing_and_of_one():
    assert front([], [ACC, SIZE]) == []
    only = result(7, 50.0, 5000.0)
    assert front([only], [ACC, SIZE]) == [only]


# --- hypervolume -----------------------------------------------------------------------------
# Normalised losses: accuracy -> -acc/90 with reference -(1 - margin) = -0.95; size -> size/1000, ref 1.


def test_hypervolume_one_point_2d():
    hv = hypervolume([result(1, 88.2, 250.0)], [ACC, SIZE], BASELINE)
    # accuracy: -0.98 against -0.95 -> 0.03 wide; size: 0.25 against 1 -> 0.75 high
    assert hv == pytest.approx(0.03 * 0.75)


def test_hypervolume_two_points_2d():
    points = [result(1, 88.2, 250.0), result(2, 86.4, 100.0)]
    # rectangles [-0.98, -0.95] x [0.25, 1] and [-0.96, -0.95] x [0.1, 1]; they overlap in
    # [-0.96, -0.95] x [0.25, 1]
    expected = 0.03 * 0.75 + 0.01 * 0.90 - 0.01 * 0.75
    assert hypervolume(points, [ACC, SIZE], BASELINE) == pytest.approx(expected)
    assert hypervolume(points[::-1], [ACC, SIZE], BASELINE) == pytest.approx(expected)


def test_hypervolume_margin_moves_the_accuracy_reference():
    point = [result(1, 88.2, 250.0)]
    assert hypervolume(point, [ACC, SIZE], BASELINE, margin=0.1) == pytest.approx((0.98 - 0.9) * 0.75)
    assert hypervolume(point, [ACC, SIZE], BASELINE, margin=0.0) == 0.0  # less accurate than the baseline
    better = [result(2, 91.8, 250.0)]  # -1.02 against -1.0
    assert hypervolume(better, [ACC, SIZE], BASELINE, margin=0.0) == pytest.approx(0.02 * 0.75)


def test_hypervolume_one_point_3d():
    hv = hypervolume([result(1, 88.2, 250.0, latency=1.5)], [ACC, SIZE, LAT], BASELINE)
    # latency 1.5 / 2 = 0.75 against 1 -> 0.25 deep
    assert hv == pytest.approx(0.03 * 0.75 * 0.25)


def test_hypervolume_two_points_3d():
    a = result(1, 88.2, 250.0, latency=1.5)   # corner (-0.98, 0.25, 0.75)
    b = result(2, 86.4, 500.0, latency=0.5)   # corner (-0.96, 0.50, 0.25)
    vol_a = 0.03 * 0.75 * 0.25
    vol_b = 0.01 * 0.50 * 0.75
    overlap = 0.01 * 0.50 * 0.25               # from the component-wise worse corner (-0.96, 0.5, 0.75)
    assert hypervolume([a, b], [ACC, SIZE, LAT], BASELINE) == pytest.approx(vol_a + vol_b - overlap)


def test_dominated_points_add_nothing():
    good = result(1, 88.2, 250.0)
    assert hypervolume([good, result(2, 87.0, 300.0)], [ACC, SIZE], BASELINE) == \
        pytest.approx(hypervolume([good], [ACC, SIZE], BASELINE))


@pytest.mark.parametrize("accuracy, size", [
    (85.0, 250.0),    # accuracy below 95 % of the baseline's
    (89.0, 1000.0),   # no smaller than the baseline: exactly on the reference
    (89.0, 1500.0),   # larger than the baseline
])
def test_points_outside_the_reference_give_zero(accuracy, size):
    assert hypervolume([result(1, accuracy, size)], [ACC, SIZE], BASELINE) == 0.0


def test_points_outside_are_ignored_next_to_points_inside():
    inside = result(1, 88.2, 250.0)
    hv = hypervolume([inside, result(2, 50.0, 10.0), result(3, 95.0, 2000.0)], [ACC, SIZE], BASELINE)
    assert hv == pytest.approx(0.03 * 0.75)


def test_hypervolume_of_nothing_is_zero():
    assert hypervolume([], [ACC, SIZE], BASELINE) == 0.0


# --- table and files -------------------------------------------------------------------------


def test_table_has_baseline_first_and_trials_by_size():
    results = [result(12, 88.0, 600.0), result(3, 85.5, 200.0)]
    lines = table(results, BASELINE).splitlines()
    assert lines[0].split()[:5] == ["trial", "val", "%", "drop", "test"]  # provenance in the header
    assert set(lines[1]) == {"-"}
    assert lines[2].split()[0] == "baseline"
    assert "90.00" in lines[2] and "1.0" in lines[2]
    assert [line.split()[0] for line in lines[3:]] == ["3", "12"]  # smallest first
    trial3 = lines[3].split()
    assert trial3[1:5] == ["85.50", "4.50", "-", "-"] and trial3[5] == "0.2"  # no test figure yet
    assert trial3[-1] == "5.00x"  # 1000 / 200
    assert len({len(line) for line in lines}) == 1  # fixed width


def test_rows_follow_the_columns():
    row = rows([result(4, 88.0, 500.0, params=1234.0)])[0]
    assert list(row)[0] == "trial" and list(row)[-2:] == ["sha256", "status"]
    assert row["trial"] == 4 and row["params"] == 1234.0 and row["accuracy"] == 88.0
    metric_keys = [k for k in row if k not in ("trial", "sha256", "status")]
    assert metric_keys == [c for c in COLUMNS if c in metric_keys]


def test_write_front_files_parse_back(tmp_path):
    results = [result(1, 88.2, 250.0, latency=1.5), result(2, 86.4, 500.0, latency=0.5)]
    objectives = [ACC, SIZE, LAT]
    hv = hypervolume(results, objectives, BASELINE)
    csv_path, json_path = write_front(results, out_dir=tmp_path / "new" / "dir", baseline=BASELINE, hv=hv,
                                      objectives=objectives)
    assert csv_path == tmp_path / "new" / "dir" / "front.csv" and json_path.name == "front.json"

    with csv_path.open(newline="") as handle:
        table_rows = list(csv.DictReader(handle))
    assert [int(r["trial"]) for r in table_rows] == [1, 2]
    for parsed, original in zip(table_rows, results):
        assert parsed["sha256"] == original.sha256
        for key in ("accuracy", "size_bytes", "latency_ms", "speedup"):
            assert math.isclose(float(parsed[key]), original.metrics[key])

    payload = json.loads(json_path.read_text())
    assert payload["hypervolume"] == pytest.approx(hv) and hv > 0
    assert payload["baseline"] == BASELINE
    assert payload["objectives"] == [{"metric": "accuracy", "direction": "maximize"},
                                     {"metric": "size_bytes", "direction": "minimize"},
                                     {"metric": "latency_ms", "direction": "minimize"}]
    assert [m["trial"] for m in payload["front"]] == [1, 2]
    for member, original in zip(payload["front"], results):
        assert Plan.from_dict(member["plan"]) == original.plan
        assert member["metrics"] == dict(original.metrics)
        assert member["model_path"] == original.model_path and member["sha256"] == original.sha256
    # the hypervolume recomputed from the parsed members is the written one
    reparsed = [TrialResult(number=m["trial"], plan=Plan.from_dict(m["plan"]), metrics=m["metrics"], timings={},
                            model_path=m["model_path"], sha256=m["sha256"]) for m in payload["front"]]
    reparsed_objectives = [Objective(o["metric"], o["direction"]) for o in payload["objectives"]]
    assert hypervolume(reparsed, reparsed_objectives, payload["baseline"]) == pytest.approx(payload["hypervolume"])


def test_write_empty_front(tmp_path):
    csv_path, json_path = write_front([], out_dir=tmp_path, baseline=BASELINE, hv=0.0, objectives=[ACC, SIZE])
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert list(reader) == []
        assert reader.fieldnames == list(COLUMNS)
    assert json.loads(json_path.read_text())["front"] == []


def test_table_without_latency_or_compressed_size():
    baseline = {"accuracy": 90.0, "size_bytes": 1000.0}
    only = TrialResult(number=1, plan=Plan(), metrics={"accuracy": 88.0, "size_bytes": 500.0}, timings={},
                       model_path="m.onnx", sha256="0" * 64)
    lines = table([only], baseline).splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["baseline", "1"]
