"""``share``: k-means weight sharing after fine-tuning, checked down to the int8 codes that ship."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import optuna
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from evaluators.size import Size
from search.trials.onnx_export import export_onnx
from spaces.base import Plan, PlanError
from spaces.kinds import kind_named
from spaces.kinds.share import ShareSpec, shared
from spaces.layers import onnx_layer_nodes
from spaces.space import Space
from tinynet import tiny_net

optuna.logging.set_verbosity(optuna.logging.WARNING)

LAYERS = ["stem.0", "layer1.conv1", "layer1.conv2", "down.0", "layer2.conv1", "layer2.conv2", "fc"]
X = torch.zeros(1, 1, 28, 28)


@pytest.fixture(scope="module")
def space() -> Space:
    return Space.build(tiny_net().eval(), X, kinds=["prune", "quant", "share"])


@pytest.fixture(scope="module")
def calib() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((16, 1, 28, 28)).astype(np.float32)


def shipped(space: Space, plan: Plan, calib: np.ndarray, folder: Path) -> Path:
    """The trial's path from plan to ONNX file, fine-tuning left out."""
    model = space.finish(space.apply(tiny_net().eval(), plan), plan)
    fp32 = export_onnx(model, X, folder / "fp32.onnx")
    return space.apply_graph(fp32, folder / "model.onnx", plan, calib)


def run(path: Path, inputs: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": inputs})[0]


def most_values_per_channel(weight: np.ndarray) -> int:
    return max(len(np.unique(row)) for row in weight.reshape(len(weight), -1))


def int8_codes(path: Path, layer: str) -> np.ndarray:
    """The stored int8 weight behind ``layer``'s DequantizeLinear, output channels first."""
    model = onnx.load(str(path))
    node = onnx_layer_nodes(model, [layer])[layer]
    dequantize = next(n for n in model.graph.node if node.input[1] in n.output)
    assert dequantize.op_type == "DequantizeLinear"
    codes = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == dequantize.input[0]))
    assert codes.dtype == np.int8
    return codes


def test_share_knobs_cover_every_layer_and_come_after_fine_tuning(space):
    kind = kind_named("share")
    assert (kind.stage, kind.neutral, kind.finetune) == ("trained", 0, False)
    assert [k.name for k in space.knobs_by_kind["share"]] == [f"share.{n}" for n in LAYERS]
    assert all(k.choices == ShareSpec().bits for k in space.knobs_by_kind["share"])
    assert not Plan(share={"fc": 4}).needs_finetune  # it acts after fine-tuning, so it starts none


def test_neutral_sharing_leaves_the_model_exactly_as_it_was(space):
    model = tiny_net().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    finished = space.finish(model, Plan(share={n: 0 for n in LAYERS}))
    assert all(torch.equal(finished.state_dict()[k], v) for k, v in before.items())
    kind = kind_named("share")  # applied directly too: bits 0 touches nothing
    kind.apply_model(model, {n: 0 for n in LAYERS}, ShareSpec(), space._env())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


@pytest.mark.parametrize("codebook", ["layer", "channel"])
@pytest.mark.parametrize("bits", [2, 4])
def test_each_output_channel_holds_at_most_two_to_the_bits_values(codebook, bits):
    space = Space.build(tiny_net().eval(), X, kinds=["share"], specs={"share": ShareSpec(bits=(0, bits),
                                                                                         codebook=codebook)})
    model = space.finish(tiny_net().eval(), Plan(share={n: bits for n in LAYERS if n != "fc"}))
    for name in LAYERS[:-1]:
        weight = model.get_submodule(name).weight.detach().numpy()
        assert most_values_per_channel(weight) <= 2 ** bits, name
    assert most_values_per_channel(model.fc.weight.detach().numpy()) > 2 ** bits  # not planned, not shared


def test_a_layer_codebook_is_shared_by_the_channels_scaled_to_their_peak():
    weight = tiny_net().layer2.conv2.weight.detach().numpy()
    out = shared(weight, 16, codebook="layer")
    rows = out.reshape(len(out), -1)
    normalized = rows / np.abs(rows).max(axis=1, keepdims=True)
    # one codebook: the values of all channels, each divided by its peak, fall into few groups
    assert len(np.unique(normalized.round(5))) <= 2 * 16
    assert np.array_equal(shared(weight, 16, codebook="layer"), out)  # deterministic


def test_sharing_keeps_to_the_layers_a_structure_kind_put_in_place_of_one(space):
    model = tiny_net().eval()
    model.fc = nn.Sequential(nn.Linear(32, 8), nn.Linear(8, 10))  # a factorized head, as lowrank makes it
    kind_named("share").apply_model(model, {"fc": 2}, ShareSpec(), space._env())
    assert all(most_values_per_channel(m.weight.detach().numpy()) <= 4 for m in model.fc)


def test_the_shipped_int8_codes_hold_at_most_two_to_the_bits_values_per_channel(space, calib, tmp_path):
    plan = Plan(quant={n: "int8" for n in LAYERS}, share={n: 4 for n in LAYERS})
    path = shipped(space, plan, calib, tmp_path)
    for name in LAYERS:  # BatchNorm folding and per-channel scales add no values to a channel
        assert most_values_per_channel(int8_codes(path, name)) <= 16, name
    assert np.isfinite(run(path, calib)).all()


def test_sharing_shrinks_the_compressed_file_not_the_raw_one(space, calib, tmp_path):
    int8 = {n: "int8" for n in LAYERS}
    (tmp_path / "plain").mkdir()
    (tmp_path / "shared").mkdir()
    plain = Size().measure(shipped(space, Plan(quant=int8), calib, tmp_path / "plain"), None)
    path = shipped(space, Plan(quant=int8, share={n: 4 for n in LAYERS}), calib, tmp_path / "shared")
    after = Size().measure(path, None)
    assert abs(after["size_bytes"] - plain["size_bytes"]) < 16  # the same tensors, the same bytes
    assert after["compressed_bytes"] < 0.8 * plain["compressed_bytes"]


def test_the_neutral_plan_ships_the_baselines_onnx_outputs_exactly(space, calib, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    baseline = run(shipped(space, Plan(quant={"fc": "int8"}), calib, tmp_path / "a"), calib)
    neutral = run(shipped(space, Plan(quant={"fc": "int8"}, share={n: 0 for n in LAYERS}), calib, tmp_path / "b"),
                  calib)
    assert np.array_equal(baseline, neutral)


def test_the_plan_round_trips_through_optuna_and_mlflow_params(space):
    plan = Plan(prune={"layer1.conv1": 0.25}, quant={"fc": "int8"}, share={"fc": 4, "stem.0": 6})
    assert Plan.from_params(plan.params()) == plan
    assert Plan.from_params({k: str(v) for k, v in plan.params().items()}) == plan  # MLflow keeps strings
    assert Plan.from_json(plan.to_json()) == plan
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(3):
        trial = study.ask()
        suggested = space.suggest(trial)
        assert Plan.from_params(trial.params) == suggested
        assert {k: v for k, v in trial.params.items() if k.startswith("share.")} == {
            f"share.{n}": v for n, v in suggested.of("share").items()}


@pytest.mark.parametrize("value", [3.5, 9, -1, "four", True, None])
def test_a_bad_bit_count_is_one_plan_error_naming_the_knob_and_the_allowed_values(value):
    with pytest.raises(PlanError) as info:
        Plan(share={"layer1.conv1": value})
    message = str(info.value)
    assert message.startswith("share.layer1.conv1:") and repr(value) in message
    assert "allowed: 0 (not shared) or a whole number of bits 1-8" in message


def test_bad_settings_fail_at_config_load():
    kind = kind_named("share")
    with pytest.raises(PlanError, match=r"space\.share\.bits: sharing bits 12 is not allowed"):
        kind.spec({"bits": [0, 12]})
    with pytest.raises(PlanError, match=r"space\.share\.codebook='cluster' is unknown; allowed: layer, channel"):
        kind.spec({"codebook": "cluster"})
    with pytest.raises(PlanError, match=r"space\.share\.levels is not a setting.*allowed: bits, codebook, exclude"):
        kind.spec({"levels": [4]})
    with pytest.raises(PlanError, match=r"space\.share\.exclude: no layer named 'layer9'"):
        Space.build(tiny_net(), X, kinds=["share"], specs={"share": kind.spec({"exclude": ["layer9"]})})
    spec = kind.spec({"bits": ["0", 4], "exclude": ["fc"]})
    assert spec.bits == (0, 4)
    space = Space.build(tiny_net(), X, kinds=["share"], specs={"share": spec})
    assert "share.fc" not in [k.name for k in space.knobs]
    with pytest.raises(PlanError, match=r"share\.stem\.0=2 is outside the space"):
        space.check(Plan(share={"stem.0": 2}))
