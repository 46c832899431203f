"""``model.trained=true``: a factory that loads its own weights gives the baseline as it is, with no training."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import optuna
import pytest
import torch

from evaluators import Accuracy, Constraint, Objective, Size
from search.cli import load_config, main, study_config
from search.records.fingerprint import model_digest
from search.trials.finetune import FinetuneSettings
from search.runner import NO_BASELINE, Job, prepare
from search.study import SearchSettings
from tinynet import TinyNet, tiny_net_from

STUDY = "own-weights"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[TinyNet, Path]:
    """Weights no seeded initialisation gives: another seed, and BatchNorm statistics moved off their defaults."""
    torch.manual_seed(7)
    model = TinyNet()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return model, path


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def job(tmp: Path, splits, path: Path, **baseline) -> Job:
    return Job(make_model=partial(tiny_net_from, str(path)), data=splits, evaluators=[Accuracy(), Size()],
               objectives=[Objective("accuracy", "maximize"), Objective("size_bytes", "minimize")],
               constraints=[Constraint("accuracy_drop", 1.0)], search=SearchSettings(study_name=STUDY, n_trials=1),
               run_dir=tmp / "run", cache_dir=tmp / "cache", model_key="own", tracking=None, **baseline)


def test_the_factory_weights_are_the_baseline_and_nothing_trains(weights, small_splits, tmp_path):
    saved, path = weights
    # a recipe is there, so only model.trained keeps it from running
    model, _ = prepare(job(tmp_path, small_splits, path, trained=True,
                           baseline_training=FinetuneSettings(steps=50, batch_size=32)))
    assert_same_weights(model, saved)
    assert not model.training
    assert not (tmp_path / "cache").exists()  # no baseline was trained, so none was cached


def test_without_checkpoint_trained_or_recipe_the_error_names_all_three(weights, small_splits, tmp_path):
    with pytest.raises(ValueError) as info:
        job(tmp_path, small_splits, weights[1], baseline_training=None).check()
    assert str(info.value) == NO_BASELINE
    for key in ("model.checkpoint", "model.trained=true", "model.train"):
        assert key in NO_BASELINE


@pytest.fixture(scope="module")
def searched(weights, tmp_path_factory) -> tuple[list[str], Path]:
    """A 1-trial search from the command line whose factory loads its weights; returns the locating overrides."""
    root = tmp_path_factory.mktemp("trained") / "outputs"
    where = [f"paths.root={root}", f"search.study_name={STUDY}"]
    assert main(["search", "model=custom", "model.factory._target_=tinynet.tiny_net_from",
                 f"+model.factory.path={weights[1]}", "model.trained=true", "data.train_limit=300",
                 "data.eval_limit=200", "data.calib_size=16", "evaluator.evaluators.latency.runs=20",
                 "search.n_trials=1", "space.prune.ratios=[0,0.25]", "space.quant.precisions=[fp32,int8]",
                 "tracking=none", "quiet=true", *where]) == 0
    return where, root


def test_a_search_records_the_factory_weights_as_its_baseline(searched, weights):
    where, root = searched
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{root / STUDY / 'study.db'}")
    assert study.user_attrs["fingerprint"]["baseline"] == model_digest(weights[0])
    assert study.user_attrs["config"]["model"]["trained"] is True
    assert (root / STUDY / "baseline" / "model.onnx").is_file() and "accuracy" in study.user_attrs["baseline"]
    assert not list(root.glob("cache/*.pt"))  # nothing was trained


def test_later_commands_read_model_trained_back_and_refuse_a_change(searched, capsys):
    where, _ = searched
    assert study_config(load_config(where), where).model.trained is True  # export, report, resume
    capsys.readouterr()
    assert main(["search", *where, "model.trained=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.trained recorded true, given false" in err
