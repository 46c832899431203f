"""Plots of a real 5-trial study on the tiny CNN: files, trial numbers, heatmap rows, hypervolume history."""
from __future__ import annotations

import re
import struct
from pathlib import Path

import optuna
import pytest

from evaluators import Accuracy, Complexity, Constraint, Latency, Objective, Size
from search.inspect import pareto
from search.trials.finetune import FinetuneSettings
from search.inspect.plots import PlotData, hypervolume_history, layer_matrix, layers_png, plan_label, write_plots
from search.runner import Job, run_search
from search.study import SearchSettings
from search.trials.trial import TrialResult
from spaces.base import Plan
from spaces.kinds.prune import PruneSpec
from spaces.kinds.quant import QuantSpec
from tinynet import tiny_net

OBJECTIVES = [Objective("accuracy", "maximize"), Objective("size_bytes", "minimize"),
              Objective("latency_ms", "minimize")]
STUDY = "report"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_BUILT: dict[str, Path] = {}


def built_study(tmp_path_factory: pytest.TempPathFactory, splits) -> Path:
    """The run folder of one real search, built once per session and shared with test_report.py.

    Three reference plans plus two random ones, a 100-step baseline and 20-step fine-tunes; the
    loose accuracy constraint leaves a front of a few members and usually some infeasible trials.
    """
    if "run" not in _BUILT:
        tmp = tmp_path_factory.mktemp("report-study")
        job = Job(make_model=tiny_net, data=splits, evaluators=[Accuracy(), Size(level=3), Latency(runs=20, warmup=3),
                                                                Complexity()],
                  objectives=OBJECTIVES, constraints=[Constraint("accuracy_drop", 15.0)],
                  search=SearchSettings(study_name=STUDY, n_trials=5, sampler="random"),
                  run_dir=tmp / "run", cache_dir=tmp / "cache", model_key="tiny-report",
                  baseline_training=FinetuneSettings(steps=100, log_every=50),
                  finetune=FinetuneSettings(steps=20, log_every=10),
                  prune=PruneSpec(ratios=(0.0, 0.25, 0.5)), quant=QuantSpec(precisions=("fp32", "int8", "int4")),
                  tracking=None)  # MLflow plays no part in plots or the report
        run_search(job)
        _BUILT["run"] = job.run_dir
    return _BUILT["run"]


def open_study(run_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{run_dir / 'study.db'}")


@pytest.fixture(scope="module")
def study(tmp_path_factory, small_splits) -> optuna.Study:
    return open_study(built_study(tmp_path_factory, small_splits))


@pytest.fixture(scope="module")
def plotted(study, tmp_path_factory) -> tuple[PlotData, list[Path]]:
    return PlotData.from_study(study, OBJECTIVES), write_plots(study, OBJECTIVES, tmp_path_factory.mktemp("plots"))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_every_plot_is_a_png_and_an_offline_html_file(plotted):
    _, paths = plotted
    expected = [f"{stem}.{ext}" for stem in ("front", "hypervolume", "layers") for ext in ("png", "html")]
    assert sorted(p.name for p in paths) == sorted([*expected, "plotly.min.js"])
    for path in paths:
        if path.suffix == ".png":
            width, height = png_size(path)
            assert width > 400 and height > 250
        elif path.suffix == ".html":
            text = path.read_text()
            # plotly.js is loaded from the file beside the plot, never from the network
            assert "Plotly.newPlot" in text
            assert re.findall(r'<script[^>]* src="([^"]*)"', text) == ["plotly.min.js"]
    assert (paths[0].parent / "plotly.min.js").stat().st_size > 1_000_000


def test_front_html_names_every_completed_trial(plotted):
    data, paths = plotted
    text = next(p for p in paths if p.name == "front.html").read_text()
    assert len(data.results) == 5
    for result in data.results:
        assert re.search(rf"trial {result.number}\b", text), f"trial {result.number} missing from the front plot"
    assert "baseline" in text and "reference plan" in text


def test_heatmap_has_one_row_per_front_member_and_one_column_per_layer(plotted):
    data, paths = plotted
    ratios, texts = layer_matrix(data.front, data.layers)
    assert ratios.shape == (len(data.front), len(data.layers)) and len(texts) == len(data.front)
    text = next(p for p in paths if p.name == "layers.html").read_text()
    members = {r.number for r in data.front}
    for result in data.results:
        assert (f'"trial {result.number}"' in text) == (result.number in members)


def test_layers_follow_model_order_and_references_are_named(plotted):
    data, _ = plotted
    assert data.layers[0] == "stem.0" and data.layers[-1] == "fc"
    assert data.references == {0, 1, 2}
    assert [plan_label(r.plan) for r in data.results[:3]] == ["no compression", "int8 only", "prune 0.25 + int8"]


def test_hypervolume_history_never_decreases_and_ends_at_the_fronts(plotted):
    data, _ = plotted
    numbers, values = zip(*data.hv_history)
    assert list(numbers) == [r.number for r in data.results]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert values[-1] == pytest.approx(pareto.hypervolume(data.front, OBJECTIVES, data.baseline))


def test_hypervolume_history_counts_only_feasible_trials():
    baseline = {"accuracy": 90.0, "size_bytes": 100.0, "latency_ms": 1.0}
    good = TrialResult(0, Plan(), {"accuracy": 89.0, "size_bytes": 50.0, "latency_ms": 0.5}, {}, "", "")
    better = TrialResult(1, Plan(), {"accuracy": 90.0, "size_bytes": 40.0, "latency_ms": 0.4}, {}, "", "")
    history = hypervolume_history([good, better], frozenset({0}), OBJECTIVES, baseline)
    assert history[0][1] > 0 and history[1][1] == history[0][1]


def test_heatmap_widens_with_the_number_of_layers(tmp_path):
    def width(n_layers: int) -> int:
        layers = [f"stage{i // 4}.block{i % 4}.conv" for i in range(n_layers)]
        member = TrialResult(0, Plan(prune={n: 0.25 for n in layers[::2]}, quant={n: "int8" for n in layers}),
                             {"accuracy": 1.0}, {}, "", "")
        data = PlotData([member], frozenset({0}), [member], {}, OBJECTIVES, frozenset(), [], layers)
        return png_size(layers_png(data, tmp_path / f"layers{n_layers}.png"))[0]

    assert width(36) > 1.8 * width(8)


def test_a_study_without_results_has_no_plots(tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    assert write_plots(study, OBJECTIVES, tmp_path / "plots") == []
