"""The reference model: strict, tensors-only checkpoint loading, and the trained-once cache."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from search.baseline import (CheckpointError, baseline_key, cache_key, load_checkpoint, trained_baseline,
                             training_data)
from search.cli import load_config, plain
from search.trials.finetune import FinetuneSettings
from tinynet import TinyNet, tiny_net


class NotATensor:
    """Something a state_dict never holds; ``weights_only`` must refuse to unpickle it."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


def other_net() -> torch.nn.Module:
    torch.manual_seed(123)
    return TinyNet()


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.fixture
def saved(tmp_path) -> tuple[torch.nn.Module, Path]:
    model = tiny_net()
    with torch.no_grad():  # non-default BN statistics, so buffers are checked too
        model.layer1.bn1.running_mean.uniform_(-1, 1)
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    return model, path


def test_good_checkpoint_loads_every_tensor(saved):
    model, path = saved
    fresh = other_net().train()
    assert not torch.equal(fresh.stem[0].weight, model.stem[0].weight)
    loaded = load_checkpoint(fresh, path)
    assert loaded is fresh
    assert not loaded.training
    assert_same_weights(loaded, model)


def test_checkpoint_wrapped_in_a_state_dict_key_loads(saved, tmp_path):
    model, _ = saved
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": model.state_dict(), "epoch": 7}, path)
    assert_same_weights(load_checkpoint(other_net(), str(path)), model)


@pytest.mark.parametrize("where", ["missing.pt", "."])
def test_missing_file_or_a_folder(tmp_path, where):
    path = tmp_path / where
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tiny_net(), path)
    assert str(path) in str(info.value) and "no such file" in str(info.value)


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(os.urandom(4096))
    model = tiny_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, path)
    message = str(info.value)
    assert str(path) in message and "not a readable torch checkpoint" in message
    assert "\n" not in message
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_missing_and_unexpected_keys_are_named(saved, tmp_path):
    model, _ = saved
    state = dict(model.state_dict())
    del state["fc.bias"]
    state["fc.extra"] = torch.zeros(3)
    path = tmp_path / "keys.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tiny_net(), path)
    message = str(info.value)
    assert "does not match the model" in message
    assert "missing keys ['fc.bias']" in message
    assert "unexpected keys ['fc.extra']" in message


def test_wrong_shapes_are_named_and_nothing_is_loaded(saved, tmp_path):
    model, _ = saved
    state = dict(model.state_dict())
    state["fc.weight"] = torch.zeros(5, 32)
    state["stem.0.weight"] = torch.zeros(16, 3, 3, 3)
    path = tmp_path / "shapes.pt"
    torch.save(state, path)
    target = other_net()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"wrong shapes \['fc.weight', 'stem.0.weight'\]"):
        load_checkpoint(target, path)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in before.items())


def test_a_non_state_dict_object_is_refused(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="holds a list, not a state_dict"):
        load_checkpoint(tiny_net(), path)


def test_a_pickled_non_tensor_object_is_refused_by_weights_only(saved, tmp_path):
    model, _ = saved
    path = tmp_path / "object.pt"
    torch.save({**model.state_dict(), "extra": NotATensor()}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tiny_net(), path)
    message = str(info.value)
    assert message.startswith(f"model.checkpoint={str(path)!r} is not a readable torch checkpoint")
    assert "only tensors are loaded (weights_only=True)" in message
    assert "\n" not in message
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)


def test_a_whole_pickled_model_is_refused(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(tiny_net(), path)  # the classic mistake: the module, not its state_dict
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_checkpoint(tiny_net(), path)


def test_weights_only_refusal_names_the_refused_object(tmp_path):
    path = tmp_path / "object.pt"
    torch.save({"extra": NotATensor()}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tiny_net(), path)
    assert "NotATensor" in str(info.value)
    assert "\x1b[" not in str(info.value)


def test_empty_file_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError):
        load_checkpoint(tiny_net(), path)


def test_truncated_file_is_a_checkpoint_error(saved, tmp_path):
    _, good = saved
    path = tmp_path / "truncated.pt"
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(tiny_net(), path)


def test_non_tensor_value_under_a_model_key_is_a_checkpoint_error(saved, tmp_path):
    model, _ = saved
    path = tmp_path / "int.pt"
    torch.save({**model.state_dict(), "fc.bias": 3}, path)
    with pytest.raises(CheckpointError, match="fc.bias"):
        load_checkpoint(tiny_net(), path)


# --- trained_baseline ------------------------------------------------------------------------


class Untouchable(Dataset):
    """Training data that must not be read: a cached baseline needs no training."""

    def __len__(self) -> int:
        return 1000

    def __getitem__(self, index: int):
        raise AssertionError("the cached baseline was trained again")


def test_cache_key_is_stable_and_sensitive():
    assert cache_key("tiny", {"steps": 5, "lr": 1e-3}) == cache_key("tiny", {"lr": 1e-3, "steps": 5})
    assert cache_key("tiny", 5) != cache_key("tiny", 6)
    assert len(cache_key("x")) == 16


def test_cache_key_ignores_what_only_shapes_the_held_out_splits():
    data = {"root": "/d", "train_limit": 500, "eval_limit": None, "calib_size": 256, "val_fraction": 0.1}
    key = cache_key("m", training_data(data))
    assert cache_key("m", training_data({**data, "eval_limit": 100, "calib_size": 32})) == key
    assert cache_key("m", training_data({**data, "val_fraction": 0.2})) != key     # changes the training set
    assert cache_key("m", training_data({**data, "train_limit": 600})) != key


def test_the_searched_baseline_key_reads_only_what_training_reads():
    """The key ``search`` caches under: another eval_limit, calib_size or model.trained reuses the baseline."""
    def key(*overrides: str) -> str:
        cfg = plain(load_config(list(overrides)))
        return baseline_key(cfg["model"], cfg["data"])

    default = key()
    assert key("data.eval_limit=100", "data.calib_size=32") == default
    assert key("model.trained=true") == default
    assert key("data.train_limit=600") != default and key("model.train.steps=10") != default
    cfg = plain(load_config([]))
    before = {k: v for k, v in cfg["model"].items() if k != "trained"}  # a config from before model.trained
    assert cache_key(before, training_data(cfg["data"])) == default  # baselines cached then are reused


def test_trained_baseline_trains_once_and_then_reuses_the_checkpoint(small_splits, tmp_path):
    settings = FinetuneSettings(steps=6, batch_size=32, log_every=3)
    cache = tmp_path / "cache"
    logged = []
    first = trained_baseline(tiny_net, small_splits.train, settings=settings, cache_dir=cache, key="k1",
                             log_curve=lambda *p: logged.append(p))
    path = cache / "baseline-k1.pt"
    assert path.is_file()
    assert [p[0] for p in logged] == [3, 6]
    assert not first.training
    assert sorted(p.name for p in cache.iterdir()) == ["baseline-k1.pt"]  # no temporary file left
    # it did train: the weights moved away from the initialisation
    assert not torch.equal(first.stem[0].weight, tiny_net().stem[0].weight)
    stamp = path.stat().st_mtime_ns

    second = trained_baseline(tiny_net, Untouchable(), settings=settings, cache_dir=cache, key="k1",
                              log_curve=lambda *p: logged.append(p))
    assert path.stat().st_mtime_ns == stamp
    assert len(logged) == 2  # no new curve points
    assert second is not first and not second.training
    assert_same_weights(second, first)

    # another key is another baseline
    third = trained_baseline(tiny_net, small_splits.train, settings=FinetuneSettings(steps=2, batch_size=32),
                             cache_dir=cache, key="k2")
    assert (cache / "baseline-k2.pt").is_file()
    assert not torch.equal(third.stem[0].weight, first.stem[0].weight)


def test_trained_baseline_refuses_a_cached_checkpoint_that_does_not_fit(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    torch.save({"something": torch.zeros(1)}, cache / "baseline-bad.pt")
    with pytest.raises(CheckpointError, match="does not match the model"):
        trained_baseline(tiny_net, Untouchable(), settings=FinetuneSettings(steps=2), cache_dir=cache, key="bad")
