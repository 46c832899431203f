"""target=openvino on the tiny CNN: the IR runs in OpenVINO alone, agrees with ONNX Runtime and torch,
keeps an fp32 layer in f32, and its package verifies and predicts without torch or ONNX Runtime."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("openvino")

from evaluators import Accuracy, Latency, Objective, Size  # noqa: E402
from search.deploy.export import ExportSettings, export_command  # noqa: E402
from search.deploy.targets import Source, UnsupportedError, check_supported, target_for  # noqa: E402
from search.deploy.targets.openvino import OpenVINO  # noqa: E402
from search.deploy.verify import VerifySettings, verify_package  # noqa: E402
from search.runner import Job, run_search  # noqa: E402
from search.study import SearchSettings, results  # noqa: E402
from search.trials.finetune import FinetuneSettings  # noqa: E402
from search.trials.onnx_export import export_onnx  # noqa: E402
from spaces.quantization import quantize  # noqa: E402
from spaces.kinds.prune import PruneSpec  # noqa: E402
from spaces.kinds.quant import QuantSpec  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from search.inspect.tracking import TrackingSettings  # noqa: E402
from stores import baseline_cache, fresh_mlflow_store  # noqa: E402
from tinynet import tiny_net  # noqa: E402

INT8, KEPT = ("stem.0", "layer1.conv1", "layer1.conv2", "down.0", "layer2.conv1", "fc"), "layer2.conv2"
INT8_TOLERANCE = 0.4  # accuracy points between OpenVINO's and ONNX Runtime's int8 kernels on 500 samples
# Runs Python as a deploy machine with only OpenVINO would: isolated, torch and ONNX Runtime unimportable.
ALONE = ("import runpy, sys\n"
         "sys.modules.update(dict.fromkeys(('torch', 'onnxruntime'), None))\n"
         "sys.argv = sys.argv[1:]\n"
         "runpy.run_path(sys.argv[0], run_name='__main__')\n")


@pytest.fixture(scope="module")
def built(tmp_path_factory, small_splits):
    """fp32 and QDQ ONNX files of the tiny net (all int8 but ``KEPT``), each with its OpenVINO IR."""
    tmp = tmp_path_factory.mktemp("openvino")
    model = tiny_net().eval()
    fp32 = export_onnx(model, torch.from_numpy(small_splits.val.inputs[:1]), tmp / "model_fp32.onnx")
    qdq = quantize(fp32, tmp / "model.onnx", {**dict.fromkeys(INT8, "int8"), KEPT: "fp32"}, small_splits.calib)
    target = OpenVINO()
    onnx = {"fp32": fp32, "qdq": qdq}
    return model, onnx, {kind: target.build(Source(onnx=path)) for kind, path in onnx.items()}


def test_the_ir_is_an_xml_and_a_bin_that_openvino_runs_without_torch_or_onnxruntime(built, tmp_path, small_splits):
    _, _, ir = built
    assert [p.name for p in OpenVINO().files(ir["qdq"])] == ["model.xml", "model.bin"]
    assert target_for(ir["qdq"]).name == "openvino"
    np.save(tmp_path / "x.npy", small_splits.val.inputs[:4])
    script = tmp_path / "run.py"
    script.write_text("import sys, numpy as np, openvino as ov\n"
                      "c = ov.Core().compile_model(sys.argv[1], 'CPU', {'INFERENCE_PRECISION_HINT': 'f32'})\n"
                      "print(c(np.load(sys.argv[2]))[0].argmax(1).tolist())\n")
    done = subprocess.run([sys.executable, "-I", "-c", ALONE, str(script), str(ir["qdq"]), str(tmp_path / "x.npy")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-1500:]
    assert len(json.loads(done.stdout)) == 4


def test_fp32_ir_matches_torch_and_int8_ir_matches_onnxruntime(built, small_splits):
    model, onnx, ir = built
    session = OpenVINO().open(ir["fp32"], threads=1)
    inputs = small_splits.val.inputs[:64]
    with torch.no_grad():
        expected = model(torch.from_numpy(inputs)).numpy()
    assert np.allclose(session.run(inputs), expected, atol=1e-4)
    on_ort = Accuracy().measure(onnx["qdq"], small_splits.val)["accuracy"]
    on_ov = Accuracy().measure(ir["qdq"], small_splits.val)["accuracy"]
    assert abs(on_ov - on_ort) <= INT8_TOLERANCE, (on_ov, on_ort)


def runtime_precisions(xml: Path) -> dict[str, str]:
    """Compiled Convolution/FullyConnected node name -> the precision OpenVINO runs it in."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    found = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in ("Convolution", "FullyConnected"):
            found[op.get_friendly_name()] = info["runtimePrecision"].astype(str)
    return found


def test_a_layer_marked_fp32_stays_f32_while_int8_layers_run_integer_kernels(built):
    precisions = runtime_precisions(built[2]["qdq"])
    kept = [p for name, p in precisions.items() if "/layer2/conv2/" in name]
    assert kept == ["f32"], precisions
    integer = [p for name, p in precisions.items() if "/layer2/conv2/" not in name]
    assert len(integer) == len(INT8) and set(integer) <= {"u8", "i8"}, precisions


def test_the_ir_keeps_fp32_weights_uncompressed(built):
    sizes = {kind: sum(p.stat().st_size for p in OpenVINO().files(path) if p.suffix == ".bin")
             for kind, path in built[2].items()}
    assert sizes["fp32"] > 0.9 * built[1]["fp32"].stat().st_size  # fp16 compression would halve it


def test_8_bit_activations_only_refused_in_one_line():
    with pytest.raises(UnsupportedError, match="activation_type='int16'.*allowed: uint8, int8"):
        check_supported(OpenVINO(), precisions=("int8",), activation_type="int16", metrics=("accuracy",))


@pytest.fixture(scope="module")
def package(tmp_path_factory, small_splits):
    """A 2-trial study searched, exported and zipped with target=openvino."""
    tmp = tmp_path_factory.mktemp("ov-package")
    job = Job(make_model=tiny_net, data=small_splits, evaluators=[Accuracy(), Size(level=3), Latency(runs=20)],
              objectives=[Objective("accuracy", "maximize"), Objective("size_bytes", "minimize")], constraints=[],
              search=SearchSettings(study_name="ov", n_trials=2, sampler="random"), run_dir=tmp / "run",
              cache_dir=baseline_cache(tmp_path_factory), model_key="tiny-60",
              baseline_training=FinetuneSettings(steps=60, log_every=20), prune=PruneSpec(ratios=(0.0, 0.25)),
              quant=QuantSpec(precisions=("fp32", "int8")), target=OpenVINO(),
              tracking=TrackingSettings(uri=fresh_mlflow_store(tmp_path_factory, tmp, "ov"), experiment="ov"))
    run_search(job)
    assert export_command(job, ExportSettings(trial=1, out=str(tmp / "run" / "deploy"), registered_name="ov-reg")) == 0
    return job, tmp / "run" / "deploy"


def test_the_registered_version_holds_the_ir(package):
    job, _ = package
    client = MlflowClient(job.tracking.uri)
    version = client.get_model_version("ov-reg", "1")
    assert version.tags["trial"] == "1"
    listed = {Path(f.path).name for f in client.list_artifacts(version.run_id, "model")}
    assert listed == {"model.xml", "model.bin"}


def test_trials_and_baseline_are_measured_on_irs(package):
    job, _ = package
    import optuna

    study = optuna.load_study(study_name="ov", storage=job.storage_url)
    assert all(r.model_path.endswith("model.xml") for r in results(study))
    assert (job.run_dir / "baseline" / "model.xml").is_file() and (job.run_dir / "baseline" / "model.onnx").is_file()


def test_the_package_ships_the_ir_and_verifies(package, small_splits):
    _, folder = package
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["target"] == "openvino" and manifest["model"] == "model.xml"
    assert set(manifest["files"]) == {"model.xml", "model.bin", "model_fp32.xml", "model_fp32.bin", "predict.py",
                                      "requirements.txt"}
    assert (folder / "requirements.txt").read_text().startswith("openvino==")
    checks = verify_package(folder, val=small_splits.val, test=small_splits.test,
                            settings=VerifySettings(max_slowdown=1e3))
    assert [c.line().split(":")[0] for c in checks] == [
        "PASS files", "PASS accuracy", "PASS test_accuracy", "PASS latency", "PASS predict"], \
        "\n".join(c.line() for c in checks)


def test_predict_runs_with_only_openvino_and_numpy(package, small_splits, tmp_path):
    _, folder = package
    np.save(tmp_path / "x.npy", small_splits.val.inputs[:5])
    done = subprocess.run([sys.executable, "-I", "-c", ALONE, str(folder / "predict.py"), str(tmp_path / "x.npy")],
                          cwd=folder, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-1500:]
    session = OpenVINO().open(folder / "model.xml", threads=1)
    expected = session.run(small_splits.val.inputs[:5]).argmax(1).tolist()
    assert [int(line.split()[1]) for line in done.stdout.splitlines()] == expected


def test_verify_fails_a_tampered_bin(package, small_splits, tmp_path):
    _, folder = package
    copy = shutil.copytree(folder, tmp_path / "pkg")
    raw = bytearray((copy / "model.bin").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (copy / "model.bin").write_bytes(bytes(raw))
    checks = {c.name: c for c in verify_package(copy, val=small_splits.val, settings=VerifySettings(max_slowdown=1e3))}
    assert not checks["files"].ok and "model.bin sha256" in checks["files"].detail
