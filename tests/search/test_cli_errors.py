"""Bad input: one clear line on stderr, exit code 2, and nothing written."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from search.cli import main
from tinynet import TinyNet

SMALL = ["data.train_limit=300", "data.eval_limit=100", "data.calib_size=16", "tracking=none",
         "search.n_trials=1", "search.study_name=bad", "model.train.steps=1"]
TINY = ["model=custom", "model.factory._target_=tinynet.tiny_net"]


def run(tmp_path: Path, monkeypatch, capsys, *overrides: str) -> tuple[int, str]:
    monkeypatch.chdir(tmp_path)
    code = main(["search", *SMALL, *overrides])
    err = capsys.readouterr().err.strip()
    return code, err


def assert_nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "outputs" / "bad" / "study.db").exists()
    assert not list((tmp_path / "outputs").glob("cache/*.pt"))


@pytest.mark.parametrize("overrides, expected", [
    (["search.bogus=1"], ["bogus"]),
    (["space.prune.ratios=[0,1.5]"], ["space.prune.ratios", "1.5", "[0, 1)"]),
    (["space.quant.precisions=[fp32,int3]"], ["int3", "allowed: fp32, fp16, int8, int16, int4"]),
    (["search.sampler=grid"], ["search.sampler", "nsga2, tpe, gp, random"]),
    ([*TINY, "space.quant.exclude=[layer9.conv]"], ["layer9.conv", "layers are", "fc"]),
    ([*TINY, "space.prune.exclude=[nope]"], ["nope", "stem.0"]),
    (["data.root=/nonexistent/idx"], ["/nonexistent/idx", "dataset-fashion-mnist", "data.root"]),
    (["model=custom", "model.factory._target_=tinynet.SpectralNet"], ["fft"]),
    ([*TINY, "storage=postgresql://nobody:hunter2@127.0.0.1:1/nodb"], ["cannot be opened", "nobody:***@"]),
    ([*TINY, "model.train=null"], ["model.checkpoint=", "model.trained=true", "model.train recipe"]),
], ids=["unknown-key", "ratio", "precision", "sampler", "quant-layer", "prune-layer", "data", "export-op", "storage",
        "no-baseline"])
def test_bad_input_exits_2_with_one_clear_line(tmp_path, monkeypatch, capsys, overrides, expected):
    code, err = run(tmp_path, monkeypatch, capsys, *overrides)
    assert code == 2
    assert len(err.splitlines()) == 1, err
    for fragment in expected:
        assert fragment in err
    assert "hunter2" not in err
    assert_nothing_written(tmp_path)


def test_checkpoint_with_other_keys(tmp_path, monkeypatch, capsys):
    path = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 3).state_dict(), path)
    code, err = run(tmp_path, monkeypatch, capsys, *TINY, f"model.checkpoint={path}")
    assert code == 2 and "does not match the model" in err and "missing keys" in err
    assert_nothing_written(tmp_path)


def test_checkpoint_with_wrong_shapes(tmp_path, monkeypatch, capsys):
    path = tmp_path / "wide.pt"
    torch.save(TinyNet(num_classes=7).state_dict(), path)
    code, err = run(tmp_path, monkeypatch, capsys, *TINY, f"model.checkpoint={path}")
    assert code == 2 and "wrong shapes ['fc.bias', 'fc.weight']" in err


def test_corrupt_checkpoint(tmp_path, monkeypatch, capsys):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"\x80\x02not really a checkpoint" * 10)
    code, err = run(tmp_path, monkeypatch, capsys, *TINY, f"model.checkpoint={path}")
    assert code == 2 and "not a readable torch checkpoint" in err
    assert_nothing_written(tmp_path)


def test_unknown_command(capsys):
    assert main(["shrink"]) == 2
    assert "unknown command 'shrink'" in capsys.readouterr().err


def test_export_of_a_missing_study(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["export", *SMALL, "search.study_name=never-ran"])
    err = capsys.readouterr().err
    assert code == 2 and "never-ran" in err and "no such study" in err
