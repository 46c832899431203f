"""target=executorch on the tiny CNN: the .pte runs in the ExecuTorch runtime alone, agrees with torch (fp32)
and ONNX Runtime (int8), keeps an fp32 layer fp32, and its package verifies and predicts."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("executorch")

from evaluators import Accuracy, Latency, Objective, Size  # noqa: E402
from search.deploy.export import ExportSettings, export_command  # noqa: E402
from search.deploy.targets import Source, UnsupportedError, check_supported  # noqa: E402
from search.deploy.targets.executorch import ExecuTorch, _bn_folded, _quantized  # noqa: E402
from search.deploy.verify import VerifySettings, verify_package  # noqa: E402
from search.runner import Job, run_search  # noqa: E402
from search.study import SearchSettings  # noqa: E402
from search.trials.finetune import FinetuneSettings  # noqa: E402
from search.trials.onnx_export import export_onnx  # noqa: E402
from spaces.quantization import quantize  # noqa: E402
from spaces.kinds.prune import PruneSpec  # noqa: E402
from spaces.kinds.quant import QuantSpec  # noqa: E402
from stores import baseline_cache  # noqa: E402
from tinynet import tiny_net  # noqa: E402

INT8, KEPT = ("stem.0", "layer1.conv1", "layer1.conv2", "down.0", "layer2.conv1", "fc"), "layer2.conv2"
PLAN = {**dict.fromkeys(INT8, "int8"), KEPT: "fp32"}
# XNNPACK's int8 activations are symmetric-weight/int8-activation, ONNX Runtime's QDQ uint8: other rounding.
INT8_TOLERANCE = 1.5  # accuracy points on 500 samples
ALONE = ("import runpy, sys\n"
         "sys.modules.update(dict.fromkeys(('onnxruntime', 'openvino'), None))\n"
         "sys.argv = sys.argv[1:]\n"
         "runpy.run_path(sys.argv[0], run_name='__main__')\n")


@pytest.fixture(scope="module")
def built(tmp_path_factory, small_splits):
    tmp = tmp_path_factory.mktemp("executorch")
    model = tiny_net().eval()
    example = torch.from_numpy(small_splits.val.inputs[:1])
    fp32 = export_onnx(model, example, tmp / "model_fp32.onnx")
    qdq = quantize(fp32, tmp / "model.onnx", PLAN, small_splits.calib)
    target = ExecuTorch()
    pte = {"fp32": target.build(Source(onnx=fp32, model=model, example=example)),
           "int8": target.build(Source(onnx=qdq, model=model, precisions=PLAN, example=example,
                                       calib=small_splits.calib))}
    return model, {"fp32": fp32, "int8": qdq}, pte


def test_the_pte_runs_in_the_executorch_runtime_alone(built, tmp_path, small_splits):
    np.save(tmp_path / "x.npy", small_splits.val.inputs[:3])
    script = tmp_path / "run.py"
    script.write_text("import sys, numpy as np, torch\nfrom executorch.runtime import Runtime\n"
                      "m = Runtime.get().load_program(sys.argv[1]).load_method('forward')\n"
                      "x = np.load(sys.argv[2])\n"
                      "print([int(m.execute([torch.from_numpy(x[i:i + 1])])[0].argmax()) for i in range(3)])\n")
    done = subprocess.run([sys.executable, "-I", "-c", ALONE, str(script), str(built[2]["int8"]),
                           str(tmp_path / "x.npy")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-1500:]
    assert len(json.loads(done.stdout.strip().splitlines()[-1])) == 3


def test_fp32_pte_matches_torch_and_int8_pte_is_near_onnxruntime(built, small_splits):
    model, onnx, pte = built
    inputs = small_splits.val.inputs[:32]
    with torch.no_grad():
        expected = model(torch.from_numpy(inputs)).numpy()
    assert np.allclose(ExecuTorch().open(pte["fp32"], threads=1).run(inputs), expected, atol=1e-4)
    on_ort = Accuracy().measure(onnx["int8"], small_splits.val)["accuracy"]
    on_et = Accuracy().measure(pte["int8"], small_splits.val)["accuracy"]
    assert abs(on_et - on_ort) <= INT8_TOLERANCE, (on_et, on_ort)
    assert pte["int8"].stat().st_size < 0.75 * pte["fp32"].stat().st_size  # int8 weights really stored


def test_a_layer_marked_fp32_keeps_float_weights_and_the_int8_ones_do_not(small_splits):
    example = (torch.from_numpy(small_splits.val.inputs[:1]),)
    model = tiny_net().eval()
    graph = torch.export.export(_bn_folded(model, example), example).module()
    quantized = _quantized(graph, list(INT8), example, small_splits.calib[:8])
    weights = {}
    for node in quantized.graph.nodes:
        if node.op == "call_function" and str(node.target) in ("aten.conv2d.default", "aten.linear.default"):
            layer = list(node.meta["nn_module_stack"].values())[-1][0]
            weights[layer] = str(getattr(node.args[1], "target", ""))
    assert weights[KEPT] == f"{KEPT}.weight", weights  # the float parameter itself
    assert all("dequantize_per_channel" in weights[name] for name in INT8), weights


def test_bn_folding_keeps_the_outputs(small_splits):
    model = tiny_net().eval()
    example = (torch.from_numpy(small_splits.val.inputs[:4]),)
    folded = _bn_folded(model, (example[0][:1],))
    with torch.no_grad():
        assert torch.allclose(folded(example[0]), model(example[0]), atol=1e-5)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())


def test_only_fp32_and_int8_are_offered():
    with pytest.raises(UnsupportedError, match="executorch does not run 'int4'.*allowed with target=executorch: "
                                                "fp32, int8"):
        check_supported(ExecuTorch(), precisions=("fp32", "int4"), activation_type="uint8", metrics=())


@pytest.fixture(scope="module")
def package(tmp_path_factory, small_splits):
    tmp = tmp_path_factory.mktemp("et-package")
    job = Job(make_model=tiny_net, data=small_splits, evaluators=[Accuracy(), Size(level=3), Latency(runs=20)],
              objectives=[Objective("accuracy", "maximize"), Objective("size_bytes", "minimize")], constraints=[],
              search=SearchSettings(study_name="et", n_trials=2, sampler="random"), run_dir=tmp / "run",
              cache_dir=baseline_cache(tmp_path_factory), model_key="tiny-60",
              baseline_training=FinetuneSettings(steps=60, log_every=20), prune=PruneSpec(ratios=(0.0, 0.25)),
              quant=QuantSpec(precisions=("fp32", "int8")), tracking=None, target=ExecuTorch())
    run_search(job)
    out = tmp / "run" / "deploy"
    assert export_command(job, ExportSettings(trial=1, out=str(out), registered_name=None, include_fp32=False)) == 0
    return job, out


def test_the_package_ships_the_pte_and_verifies(package, small_splits, tmp_path):
    job, folder = package
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["target"] == "executorch" and set(manifest["files"]) == {"model.pte", "predict.py",
                                                                             "requirements.txt"}
    assert (job.run_dir / "baseline" / "model.pte").is_file()
    checks = verify_package(folder, val=small_splits.val, test=small_splits.test,
                            settings=VerifySettings(max_slowdown=1e3))
    assert [c.line().split(":")[0] for c in checks] == [
        "PASS files", "PASS accuracy", "PASS test_accuracy", "PASS latency", "PASS predict"], \
        "\n".join(c.line() for c in checks)
    copy = shutil.copytree(folder, tmp_path / "pkg")
    raw = bytearray((copy / "model.pte").read_bytes())
    raw[-100] ^= 0xFF
    (copy / "model.pte").write_bytes(bytes(raw))
    tampered = {c.name: c for c in verify_package(copy, val=small_splits.val,
                                                  settings=VerifySettings(max_slowdown=1e3))}
    assert not tampered["files"].ok and "model.pte sha256" in tampered["files"].detail


def test_predict_needs_only_executorch_numpy_and_the_torch_its_runtime_links(package, small_splits, tmp_path):
    _, folder = package
    np.save(tmp_path / "x.npy", small_splits.val.inputs[:4])
    done = subprocess.run([sys.executable, "-I", "-c", ALONE, str(folder / "predict.py"), str(tmp_path / "x.npy")],
                          cwd=folder, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-1500:]
    expected = ExecuTorch().open(folder / "model.pte", threads=1).run(small_splits.val.inputs[:4]).argmax(1)
    assert [int(line.split()[1]) for line in done.stdout.strip().splitlines()] == expected.tolist()
