"""The target registry and the config-time checks every target goes through."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from search.cli import main
from search.deploy.targets import TARGETS, UnsupportedError, check_supported, target_for, target_named
from search.deploy.targets.base import Source, predict_source
from search.deploy.targets.onnxruntime import OnnxRuntime
from spaces.base import PRECISIONS


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_target_declares_known_precisions_and_renders_a_predict_py(name):
    pytest.importorskip(name)
    target = target_named(name)
    assert target.name == name and set(target.precisions) <= set(PRECISIONS)
    source = predict_source(target)
    tree = ast.parse(source)  # a whole, valid script
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert set(target.requirements) <= imported and (target.torch_free == ("torch" not in imported))
    assert source.count("# <runtime>") == 1 and "NotImplementedError" not in source


def test_onnxruntime_ships_the_qdq_file_itself(tmp_path):
    path = tmp_path / "model.onnx"
    assert OnnxRuntime().build(Source(onnx=path)) == path and OnnxRuntime().files(path) == (path,)
    assert target_for(path).name == "onnxruntime"


def test_unknown_names_and_suffixes_are_refused_naming_the_allowed():
    with pytest.raises(UnsupportedError, match="target 'tensorrt' is unknown; allowed: onnxruntime, openvino"):
        target_named("tensorrt")
    with pytest.raises(UnsupportedError, match=r"no target runs \.engine files"):
        target_for(Path("model.engine"))


def test_a_precision_or_metric_a_target_lacks_is_refused_in_one_line():
    narrow = OnnxRuntime(precisions=("fp32", "int8"), metrics=("accuracy",))
    with pytest.raises(UnsupportedError, match="does not run 'int4'.*allowed with target=onnxruntime: fp32, int8"):
        check_supported(narrow, precisions=("int8", "int4"), activation_type="uint8", metrics=())
    with pytest.raises(UnsupportedError, match="metric 'macs' cannot be measured with target=onnxruntime"):
        check_supported(narrow, precisions=("int8",), activation_type="uint8", metrics=("accuracy", "macs"))


def test_an_unknown_target_group_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["search", "target=tensorrt", "tracking=none"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "target/tensorrt" in err and "onnxruntime" in err, err


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_each_config_group_builds_its_target(name):
    from hydra.utils import instantiate

    from search.cli import load_config

    assert instantiate(load_config([f"target={name}"]).target) == target_named(name)
