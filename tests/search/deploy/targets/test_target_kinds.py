"""Every knob kind a target lists ships in its artifact as the search measured it; the others are refused."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from evaluators import Accuracy
from search.deploy.targets import Source, UnsupportedError, check_supported, target_named
from search.trials.onnx_export import export_onnx
from spaces.base import Plan
from spaces.kinds import registry
from spaces.space import Space
from tinynet import tiny_net

KINDS = ["prune", "quant", "lowrank", "share", "sparse"]
PLAN = dict(prune={"layer2.conv1": 0.25}, lowrank={"fc": 0.5, "layer2.conv1": 0.5}, share={"layer1.conv2": 6},
            sparse={"down.0": 0.5})
TOLERANCE = {"openvino": 0.5, "executorch": 2.0}  # accuracy points on 500 samples against ONNX Runtime's QDQ file


def shipped(target: str, kinds: list[str], small_splits, tmp: Path) -> tuple[Path, Path]:
    """The trial's path for one plan using every kind in ``kinds``: its QDQ ONNX file and ``target``'s artifact."""
    x = torch.from_numpy(small_splits.val.inputs[:1])
    space = Space.build(tiny_net(), x, kinds=kinds)
    plan = space.complete(Plan(quant={k.name.partition(".")[2]: "int8" for k in space.quant_knobs},
                               **{k: v for k, v in PLAN.items() if k in kinds}))
    model = space.finish(space.apply(tiny_net().eval(), plan), plan)
    onnx = space.apply_graph(export_onnx(model, x, tmp / "model_fp32.onnx"), tmp / "model.onnx", plan,
                             small_splits.calib)
    artifact = target_named(target).build(Source(onnx=onnx, model=model, precisions=space.precisions(plan),
                                                 example=x, calib=small_splits.calib))
    return onnx, artifact


@pytest.mark.parametrize("target", ["openvino", "executorch"])
def test_the_kinds_a_target_lists_run_there_as_onnx_runtime_measured_them(target, small_splits, tmp_path):
    pytest.importorskip(target)
    kinds = [k for k in KINDS if k in target_named(target).kinds]
    assert {"prune", "quant", "lowrank", "share"} <= set(kinds)
    onnx, artifact = shipped(target, kinds, small_splits, tmp_path)
    on_ort = Accuracy().measure(onnx, small_splits.val)["accuracy"]
    there = Accuracy().measure(artifact, small_splits.val)["accuracy"]
    assert abs(there - on_ort) <= TOLERANCE[target], (there, on_ort)


def test_every_target_names_only_known_kinds_and_onnxruntime_ships_them_all():
    for name in ("onnxruntime", "openvino", "executorch"):
        assert set(target_named(name).kinds) <= set(registry())
    assert set(target_named("onnxruntime").kinds) == set(registry())


def test_a_kind_the_target_cannot_ship_is_refused_naming_the_allowed_ones():
    with pytest.raises(UnsupportedError, match=r"space\.kinds: target=executorch does not ship what 'sparse' "
                                               r"makes; allowed with target=executorch: prune, quant"):
        check_supported(target_named("executorch"), precisions=("int8",), activation_type="uint8", metrics=(),
                        kinds=KINDS)
