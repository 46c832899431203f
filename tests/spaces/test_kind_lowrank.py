"""``lowrank``: truncated-SVD factorization per layer, before fine-tuning."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from roundtrip import through_mlflow, through_optuna
from search.trials.onnx_export import export_onnx
from spaces.base import Plan, PlanError
from spaces.kinds.lowrank import Factorized, factorize, rank_of
from spaces.space import Space
from tinynet import tiny_net

X = torch.zeros(1, 1, 28, 28)
KINDS = ["prune", "quant", "lowrank"]


def space_of(model: nn.Module) -> Space:
    return Space.build(model, X, kinds=KINDS)


def inputs() -> torch.Tensor:
    return torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def test_at_full_rank_the_model_is_unchanged():
    model = tiny_net().eval()
    space = space_of(model)
    plan = Plan(lowrank={k.name.partition(".")[2]: 1.0 for k in space.knobs_by_kind["lowrank"]})
    applied = space.apply(model, plan)
    assert not any(isinstance(m, Factorized) for m in applied.modules())
    assert not plan.needs_finetune
    with torch.no_grad():
        assert torch.equal(applied(inputs()), model(inputs()))


@pytest.mark.parametrize("layer", [nn.Linear(64, 48), nn.Conv2d(16, 24, 3, padding=1, stride=2),
                                   nn.Conv2d(16, 24, 1)], ids=["linear", "conv3x3", "conv1x1"])
def test_a_full_rank_factorization_reproduces_the_layer_and_a_lower_one_cuts_parameters(layer):
    torch.manual_seed(0)
    x = torch.randn(2, 64) if isinstance(layer, nn.Linear) else torch.randn(2, 16, 9, 9)
    full = min(layer.weight.shape[0], layer.weight[0].numel())
    with torch.no_grad():
        assert torch.allclose(factorize(layer, full)(x), layer(x), atol=1e-4)
    rank = rank_of(layer, 0.25)
    factors = factorize(layer, rank)
    fan_in = layer.weight[0].numel()
    out = layer.weight.shape[0]
    assert rank == round(0.25 * full)
    assert sum(p.numel() for p in factors.parameters()) == rank * (fan_in + out) + out
    assert sum(p.numel() for p in factors.parameters()) < sum(p.numel() for p in layer.parameters())


def test_a_fraction_that_would_not_cut_macs_is_not_offered():
    layer = nn.Linear(4, 4)  # rank r costs r*(4+4) MACs against 16: only r = 1 helps
    assert rank_of(layer, 0.5) is None and rank_of(layer, 0.25) == 1
    assert rank_of(nn.Conv2d(8, 8, 3, groups=8), 0.25) is None  # depthwise: nothing to factorize
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 4), nn.ReLU(), nn.Linear(4, 4))
    space = Space.build(model, X, kinds=["lowrank"])
    choices = {k.name: k.choices for k in space.knobs}
    assert choices["lowrank.2"] == (1.0, 0.5, 0.25)
    assert choices["lowrank.4"] == (1.0, 0.25)


def test_factorized_layers_export_quantize_and_run_in_onnx_runtime(tmp_path):
    model = tiny_net().eval()
    space = space_of(model)
    plan = Plan(prune={"layer2.conv1": 0.25}, lowrank={"layer2.conv1": 0.5, "fc": 0.5},
                quant={name.partition(".")[2]: "int8" for name in (k.name for k in space.quant_knobs)})
    assert plan.needs_finetune
    applied = space.finish(space.apply(model, plan), plan)
    assert isinstance(applied.layer2.conv1, Factorized) and isinstance(applied.fc, Factorized)
    fp32 = export_onnx(applied, X, tmp_path / "model_fp32.onnx")
    calib = np.random.default_rng(0).normal(size=(16, 1, 28, 28)).astype(np.float32)
    path = space.apply_graph(fp32, tmp_path / "model.onnx", plan, calib)
    graph = onnx.load(str(path))
    quantized_weights = {n.input[1] for n in graph.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")
                         and any(m.output[0] == n.input[1] and m.op_type == "DequantizeLinear"
                                 for m in graph.graph.node)}
    assert len(quantized_weights) >= 8  # both factors of each factorized layer read int8 weights
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: inputs().numpy()})[0]
    with torch.no_grad():
        reference = applied(inputs()).numpy()
    assert out.shape == (4, 10) and np.abs(out - reference).max() < 0.05 * np.abs(reference).max() + 1e-3


def test_a_planned_precision_covers_both_factors_and_fp32_keeps_both_float(tmp_path):
    model = tiny_net().eval()
    space = space_of(model)
    plan = Plan(lowrank={"fc": 0.5}, quant={"fc": "fp32", "stem.0": "int8"})
    fp32 = export_onnx(space.apply(model, plan), X, tmp_path / "f.onnx")
    calib = np.random.default_rng(0).normal(size=(8, 1, 28, 28)).astype(np.float32)
    graph = onnx.load(str(space.apply_graph(fp32, tmp_path / "q.onnx", plan, calib)))
    producers = {o: n for n in graph.graph.node for o in n.output}
    fc_nodes = [n for n in graph.graph.node if n.op_type in ("Gemm", "MatMul")]
    assert len(fc_nodes) == 2
    assert all(producers.get(n.input[1]) is None for n in fc_nodes)  # weights read straight from initializers


def test_plans_round_trip_through_optuna_and_mlflow_by_knob_name(tmp_path):
    space = space_of(tiny_net())
    plan = Plan(lowrank={"fc": 0.5, "layer2.conv1": 0.25})
    full = Plan.from_params({**{k.name: 1.0 for k in space.knobs_by_kind["lowrank"]}, **plan.params()})
    assert through_optuna(space, full).of("lowrank") == full.of("lowrank")
    assert through_mlflow(full, tmp_path) == full


@pytest.mark.parametrize("value", [0, -0.5, 1.5, "half"])
def test_a_bad_fraction_is_one_plan_error_naming_the_knob(value):
    with pytest.raises(PlanError, match=r"lowrank\.fc.*rank fraction"):
        Plan(lowrank={"fc": value})
