"""Every config group composes, and every object it names can be built."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

import conf
from search.cli import build_job, kind_specs, load_config, objectives_of, plain, search_settings

CONF = Path(conf.__file__).parent
SMALL = ["data.train_limit=200", "data.eval_limit=100", "data.calib_size=16"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_default_config_builds_a_complete_job():
    job = build_job(load_config(SMALL))
    assert [o.metric for o in job.objectives] == ["accuracy", "size_bytes", "latency_ms"]
    assert [o.direction for o in job.objectives] == ["maximize", "minimize", "minimize"]
    assert [(c.metric, c.max) for c in job.constraints] == [("accuracy_drop", 1.0)]
    assert {m for e in job.evaluators for m in e.metrics} >= {"accuracy", "size_bytes", "latency_ms", "params"}
    assert job.search.sampler == "nsga2" and job.search.n_trials >= 20
    assert job.tracking.uri == "sqlite:///mlflow.db"
    assert job.storage_url.endswith("outputs/autosqueeze/study.db")
    model = job.make_model()
    assert 100_000 < sum(p.numel() for p in model.parameters()) < 1_000_000
    assert job.data.input_shape == (1, 28, 28) and len(job.data.test.labels) == 100


@pytest.mark.parametrize("name", options("model"))
def test_every_model_option_composes(name):
    overrides = [f"model={name}"] + (["model.factory._target_=tinynet.tiny_net"] if name == "custom" else [])
    cfg = load_config(overrides)
    assert {"factory", "checkpoint", "train"} <= set(cfg.model)
    if name in ("resnet_small", "custom"):
        assert instantiate(cfg.model.factory) is not None


@pytest.mark.parametrize("name", options("data"))
def test_every_data_option_composes(name):
    extra = ["data._target_=zoo.data.idx_splits", "+data.train_limit=50", "+data.eval_limit=20",
             "+data.calib_size=8"] if name == "custom" else ["data.train_limit=50", "data.eval_limit=20",
                                                              "data.calib_size=8"]
    cfg = load_config([f"data={name}", *extra])
    from search.cli import data_splits

    splits = data_splits(cfg)
    assert len(splits.test.labels) == 20 and splits.calib.shape[0] == 8


@pytest.mark.parametrize("group", ["space", "search", "evaluator", "tracking", "export"])
def test_every_option_of_the_other_groups_builds(group):
    for name in options(group):
        cfg = load_config([f"{group}={name}", *SMALL])
        kind_specs(cfg), search_settings(cfg), objectives_of(cfg)
        for node in cfg.evaluator.evaluators.values():
            assert hasattr(instantiate(node), "measure")
        assert isinstance(plain(cfg.tracking), dict)


@pytest.mark.parametrize("name", options("experiment"))
def test_every_experiment_composes(name):
    cfg = load_config([f"experiment={name}", *SMALL])
    base = load_config(SMALL)
    assert plain(cfg) != plain(base), "an experiment must change something"
    search_settings(cfg), kind_specs(cfg)


def test_custom_groups_demand_a_target():
    from search.cli import UsageError

    with pytest.raises(UsageError, match="_target_"):
        load_config(["model=custom"]).model.factory._target_
