"""``sparse``: magnitude zeros in the exported graph, stored as sparse Constants where that is smaller."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import optuna
import pytest
import torch
from onnx import numpy_helper

from evaluators.size import Size
from search.trials.onnx_export import export_onnx
from spaces.base import Plan, PlanError
from spaces.kinds import kind_named, pipeline
from spaces.kinds.sparse import NEEDS, SparseSpec
from spaces.layers import onnx_layer_nodes
from spaces.space import Space
from tinynet import tiny_net

optuna.logging.set_verbosity(optuna.logging.WARNING)

LAYERS = ["stem.0", "layer1.conv1", "layer1.conv2", "down.0", "layer2.conv1", "layer2.conv2", "fc"]
X = torch.zeros(1, 1, 28, 28)
INT8 = {n: "int8" for n in LAYERS}


@pytest.fixture(scope="module")
def calib() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((16, 1, 28, 28)).astype(np.float32)


@pytest.fixture(scope="module")
def fp32_path(tmp_path_factory) -> Path:
    return export_onnx(tiny_net().eval(), X, tmp_path_factory.mktemp("sparse") / "fp32.onnx")


def build(*kinds: str, storage: str = "sparse") -> Space:
    return Space.build(tiny_net().eval(), X, kinds=kinds, specs={"sparse": SparseSpec(storage=storage)})


def ship(space: Space, plan: Plan, fp32_path: Path, calib: np.ndarray, folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    path = space.apply_graph(fp32_path, folder / "model.onnx", plan, calib)
    onnx.checker.check_model(str(path), full_check=True)  # valid ONNX, types and shapes inferred
    return path


def run(path: Path, inputs: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": inputs})[0]


class Weights:
    """Every layer's stored weight, read back dense whether it is an initializer or a sparse Constant."""

    def __init__(self, path: Path) -> None:
        self.model = onnx.load(str(path))
        self.graph = self.model.graph
        self.dense = {i.name: numpy_helper.to_array(i) for i in self.graph.initializer}
        self.sparse = {n.output[0]: n.attribute[0].sparse_tensor for n in self.graph.node
                       if n.op_type == "Constant" and n.attribute[0].name == "sparse_value"}

    def stored(self, layer: str) -> str:
        """The name of the tensor ``layer``'s weight is read from (through a DequantizeLinear)."""
        name = onnx_layer_nodes(self.model, [layer])[layer].input[1]
        dequantize = next((n for n in self.graph.node if name in n.output and n.op_type == "DequantizeLinear"), None)
        return dequantize.input[0] if dequantize is not None else name

    def values(self, layer: str) -> np.ndarray:
        name = self.stored(layer)
        if name in self.dense:
            return self.dense[name]
        sparse = self.sparse[name]
        flat = np.zeros(int(np.prod(sparse.dims)), numpy_helper.to_array(sparse.values).dtype)
        flat[numpy_helper.to_array(sparse.indices)] = numpy_helper.to_array(sparse.values)
        return flat.reshape(tuple(sparse.dims))

    def nnz_stored(self, layer: str) -> int | None:
        """How many values the sparse Constant holds; None when the weight is stored dense."""
        sparse = self.sparse.get(self.stored(layer))
        return None if sparse is None else int(np.prod(sparse.values.dims))


def test_sparse_runs_on_the_graph_after_quantization():
    kind = kind_named("sparse")
    assert (kind.stage, kind.neutral, kind.finetune) == ("graph", 0.0, False)
    assert [k.name for k in pipeline(["sparse", "quant", "prune"])] == ["prune", "quant", "sparse"]
    assert "sparse" in NEEDS.lower() and "Constant" in NEEDS
    space = build("quant", "sparse")
    assert [k.name for k in space.knobs_by_kind["sparse"]] == [f"sparse.{n}" for n in LAYERS]
    assert all(k.choices == SparseSpec().levels for k in space.knobs_by_kind["sparse"])


@pytest.mark.parametrize("kinds", [("quant", "sparse"), ("sparse",)])
def test_neutral_sparsity_ships_the_baselines_outputs_exactly(kinds, fp32_path, calib, tmp_path):
    space = build(*kinds)
    quant = INT8 if "quant" in kinds else {}
    baseline = run(ship(space, Plan(quant=quant), fp32_path, calib, tmp_path / "a"), calib)
    neutral = run(ship(space, Plan(quant=quant, sparse={n: 0.0 for n in LAYERS}), fp32_path, calib, tmp_path / "b"),
                  calib)
    assert np.array_equal(baseline, neutral)


def test_int8_codes_are_zeroed_by_dequantized_magnitude_and_stored_sparse_when_smaller(fp32_path, calib, tmp_path):
    space = build("quant", "sparse")
    levels = {"layer2.conv2": 0.9, "layer2.conv1": 0.75, "layer1.conv1": 0.5}
    dense = Weights(ship(space, Plan(quant=INT8), fp32_path, calib, tmp_path / "dense"))
    weights = Weights(ship(space, Plan(quant=INT8, sparse=levels), fp32_path, calib, tmp_path / "sparse"))
    for layer, level in levels.items():
        codes = weights.values(layer)
        assert codes.dtype == np.int8
        assert round(level * codes.size) <= (codes == 0).sum() < (level + 0.01) * codes.size, layer
        before = dense.values(layer)
        kept = codes != 0
        assert np.array_equal(codes[kept], before[kept])  # what is not zeroed is untouched
    # an int8 non-zero costs 9 bytes sparse (int64 index): only 90 % pays, 75 % and 50 % stay dense
    assert weights.nnz_stored("layer2.conv2") == np.count_nonzero(weights.values("layer2.conv2"))
    assert weights.nnz_stored("layer2.conv1") is None and weights.nnz_stored("layer1.conv1") is None
    assert weights.nnz_stored("down.0") is None  # not planned


def test_the_zeros_are_the_smallest_weights_of_the_layer(fp32_path, calib, tmp_path):
    space = build("sparse")
    before = Weights(fp32_path).values("down.0")
    after = Weights(ship(space, Plan(sparse={"down.0": 0.75}), fp32_path, calib, tmp_path)).values("down.0")
    zeroed = after == 0
    assert zeroed.mean() == pytest.approx(0.75, abs=1e-3)
    assert np.abs(before[zeroed]).max() <= np.abs(before[~zeroed]).min()
    assert np.array_equal(after[~zeroed], before[~zeroed])


def test_fp32_weights_go_sparse_from_75_percent_and_the_file_shrinks(fp32_path, calib, tmp_path):
    space = build("sparse")
    path = ship(space, Plan(sparse={n: 0.75 for n in LAYERS}), fp32_path, calib, tmp_path)
    weights = Weights(path)
    for layer in ("layer1.conv2", "layer2.conv2"):  # 12 bytes per non-zero against 4 per value
        assert weights.nnz_stored(layer) == np.count_nonzero(weights.values(layer)) == pytest.approx(
            0.25 * weights.values(layer).size, abs=1)
    assert Size().measure(path, None)["size_bytes"] < 0.85 * fp32_path.stat().st_size


def test_sparse_storage_loads_in_onnx_runtime_and_computes_what_dense_zeros_do(fp32_path, calib, tmp_path):
    plan = Plan(quant=INT8, sparse={n: 0.9 for n in LAYERS})
    sparse = ship(build("quant", "sparse"), plan, fp32_path, calib, tmp_path / "sparse")
    dense = ship(build("quant", "sparse", storage="dense"), plan, fp32_path, calib, tmp_path / "dense")
    assert Weights(sparse).sparse and not Weights(dense).sparse
    assert np.array_equal(run(sparse, calib), run(dense, calib))
    plain = Size().measure(ship(build("quant", "sparse"), Plan(quant=INT8), fp32_path, calib, tmp_path / "plain"),
                           None)
    sparse_size, dense_size = Size().measure(sparse, None), Size().measure(dense, None)
    assert sparse_size["size_bytes"] < dense_size["size_bytes"] == pytest.approx(plain["size_bytes"], abs=16)
    assert dense_size["compressed_bytes"] < 0.5 * plain["compressed_bytes"]  # the zeros compress either way
    assert sparse_size["compressed_bytes"] < 0.5 * plain["compressed_bytes"]


def test_the_whole_trial_path_exports_and_runs(calib, tmp_path):
    space = Space.build(tiny_net().eval(), X, kinds=["prune", "quant", "share", "sparse"])
    plan = Plan(prune={"layer1.conv1": 0.25}, quant=INT8, share={"fc": 4}, sparse={"layer2.conv2": 0.9})
    model = space.finish(space.apply(tiny_net().eval(), plan), plan)
    fp32 = export_onnx(model, X, tmp_path / "fp32.onnx")
    path = ship(space, plan, fp32, calib, tmp_path)
    assert run(path, calib).shape == (16, 10) and np.isfinite(run(path, calib)).all()
    assert Weights(path).nnz_stored("layer2.conv2") is not None


def test_the_plan_round_trips_through_optuna_and_mlflow_params():
    space = build("prune", "quant", "sparse")
    plan = Plan(quant={"fc": "int8"}, sparse={"fc": 0.5, "layer2.conv2": 0.9})
    assert Plan.from_params(plan.params()) == plan
    assert Plan.from_params({k: str(v) for k, v in plan.params().items()}) == plan  # MLflow keeps strings
    assert Plan.from_json(plan.to_json()) == plan
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    for _ in range(3):
        trial = study.ask()
        suggested = space.suggest(trial)
        assert Plan.from_params(trial.params) == suggested
        assert {k: v for k, v in trial.params.items() if k.startswith("sparse.")} == {
            f"sparse.{n}": v for n, v in suggested.of("sparse").items()}


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5, "half", True, None, float("nan")])
def test_a_bad_level_is_one_plan_error_naming_the_knob_and_the_allowed_values(value):
    with pytest.raises(PlanError) as info:
        Plan(sparse={"layer2.conv2": value})
    message = str(info.value)
    assert message.startswith("sparse.layer2.conv2:") and repr(value) in message
    assert "allowed: a fraction of the weights set to zero in [0, 1)" in message


def test_bad_settings_fail_at_config_load():
    kind = kind_named("sparse")
    with pytest.raises(PlanError, match=r"space\.sparse\.levels: sparsity 1 is not allowed"):
        kind.spec({"levels": [0, 1]})
    with pytest.raises(PlanError, match=r"space\.sparse\.storage='csr' is unknown; allowed: sparse, dense"):
        kind.spec({"storage": "csr"})
    with pytest.raises(PlanError, match=r"space\.sparse\.bits is not a setting.*allowed: exclude, levels, storage"):
        kind.spec({"bits": [4]})
    with pytest.raises(PlanError, match=r"space\.sparse\.exclude: no layer named 'layer9'"):
        Space.build(tiny_net(), X, kinds=["sparse"], specs={"sparse": kind.spec({"exclude": ["layer9"]})})
    space = Space.build(tiny_net(), X, kinds=["sparse"], specs={"sparse": kind.spec({"levels": [0, 0.5]})})
    with pytest.raises(PlanError, match=r"sparse\.fc=0\.9 is outside the space"):
        space.check(Plan(sparse={"fc": 0.9}))


@pytest.mark.parametrize("kinds, quant", [(("sparse",), {}), (("quant", "sparse"), INT8)], ids=["fp32", "int8"])
def test_sparse_weights_count_at_their_dense_shape_in_params_and_macs(kinds, quant, fp32_path, calib, tmp_path):
    from evaluators.complexity import Complexity

    space = build(*kinds)
    plan = Plan(sparse={n: 0.9 for n in LAYERS}, quant=quant) if quant else Plan(sparse={n: 0.9 for n in LAYERS})
    sparse = ship(space, plan, fp32_path, calib, tmp_path / "sparse")
    dense = ship(space, Plan(quant=quant) if quant else Plan(), fp32_path, calib, tmp_path / "dense")
    data = None  # complexity reads the graph only
    assert any(n.op_type == "Constant" for n in onnx.load(str(sparse)).graph.node)  # stored sparse indeed
    assert Complexity().measure(sparse, data) == Complexity().measure(dense, data)
