"""Deploy package of a real 2-trial study: zip contents and hashes, predict.py without torch, registry."""
from __future__ import annotations

import hashlib
import json
import dataclasses
import logging
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from evaluators import Accuracy, Latency, Objective, Size
from search.deploy.export import ExportSettings, export_command
from search.trials.finetune import FinetuneSettings
from search.deploy.package import ISA_FLAGS, PACKAGE_FILES, cpu_info, write_zip
from search.deploy.predict_template import preprocess
from search.runner import Job, run_search
from search.study import SearchSettings, baseline_of, results
from search.inspect.tracking import TrackingSettings
from spaces.kinds.prune import PruneSpec
from spaces.kinds.quant import QuantSpec
from stores import baseline_cache, fresh_mlflow_store
from tinynet import tiny_net
from zoo.data import load_idx_arrays
from zoo.preprocess import Preprocess

STUDY, REGISTERED = "pkg", "tiny-registered"
# Runs a script as a deploy target would: isolated, torch unimportable; then reports what got imported.
NO_TORCH_WRAPPER = ("import runpy, sys\n"
                    "sys.modules['torch'] = None\n"
                    "sys.argv = sys.argv[1:]\n"
                    "try:\n"
                    "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
                    "finally:\n"
                    "    print('IMPORTED-TORCH', sys.modules.get('torch') is not None, file=sys.stderr)\n")


def make_job(tmp: Path, splits, *, cache: Path, tracking_uri: str) -> Job:
    """Two trials: the unchanged reference and the all-int8 one; neither fine-tunes."""
    return Job(make_model=tiny_net, data=splits, evaluators=[Accuracy(), Size(level=3), Latency(runs=20)],
               objectives=[Objective("accuracy", "maximize"), Objective("size_bytes", "minimize")], constraints=[],
               search=SearchSettings(study_name=STUDY, n_trials=2, sampler="random"),
               run_dir=tmp / "run", cache_dir=cache, model_key="tiny-60",
               baseline_training=FinetuneSettings(steps=60, log_every=20),
               prune=PruneSpec(ratios=(0.0, 0.25)), quant=QuantSpec(precisions=("fp32", "int8")),
               tracking=TrackingSettings(uri=tracking_uri, experiment=STUDY))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, small_splits):
    tmp = tmp_path_factory.mktemp("package")
    job = make_job(tmp, small_splits, cache=baseline_cache(tmp_path_factory),
                   tracking_uri=fresh_mlflow_store(tmp_path_factory, tmp, STUDY))
    run_search(job)
    settings = ExportSettings(trial=1, out=str(tmp / "run" / "deploy"), registered_name=REGISTERED)
    assert export_command(job, settings) == 0
    return job, tmp / "run" / "deploy", tmp / "run" / f"{STUDY}-trial1.zip"


def members(zip_path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(zip_path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def extract(zip_path: Path, into: Path) -> Path:
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(into)
    return into / f"{STUDY}-trial1"


def test_zip_holds_every_file_under_one_folder_and_the_manifest_hashes_them_all(exported):
    job, folder, zip_path = exported
    files = members(zip_path)
    assert set(files) == {f"{STUDY}-trial1/{name}" for name in PACKAGE_FILES}
    manifest = json.loads(files[f"{STUDY}-trial1/manifest.json"])
    assert set(manifest["files"]) == set(PACKAGE_FILES) - {"manifest.json"}
    for name, digest in manifest["files"].items():
        assert hashlib.sha256(files[f"{STUDY}-trial1/{name}"]).hexdigest() == digest, name
        assert (folder / name).read_bytes() == files[f"{STUDY}-trial1/{name}"]
    trial = results(job_study(job))[1]
    assert manifest["files"]["model.onnx"] == trial.sha256  # the very file the search scored
    assert files[f"{STUDY}-trial1/model_fp32.onnx"] == Path(trial.model_path).with_name("model_fp32.onnx").read_bytes()
    assert write_zip(folder, zip_path.with_name("again.zip"), f"{STUDY}-trial1").read_bytes() == zip_path.read_bytes()


def job_study(job: Job):
    import optuna

    return optuna.load_study(study_name=STUDY, storage=job.storage_url)


def test_manifest_records_plan_metrics_baseline_preprocessing_and_versions(exported, small_splits):
    job, folder, _ = exported
    manifest = json.loads((folder / "manifest.json").read_text())
    study = job_study(job)
    trial = results(study)[1]
    assert manifest["trial"] == 1 and manifest["study"] == STUDY and manifest["rebuilt"] is False
    assert "logged" not in manifest
    assert manifest["plan"] == trial.plan.to_dict() and set(trial.plan.quant.values()) == {"int8"}
    assert manifest["metrics"] == dict(trial.metrics)
    assert manifest["measured_at_export"]["accuracy"] == trial.metrics["accuracy"]
    assert manifest["baseline_metrics"] == baseline_of(study)
    assert manifest["preprocessing"] == small_splits.preprocessing
    assert manifest["input"]["shape"] == [1, 1, 28, 28]
    assert manifest["latency_setup"] == {"warmup": 10, "runs": 20, "threads": 1}
    assert manifest["versions"]["onnxruntime"] == ort.__version__
    requirements = (folder / "requirements.txt").read_text()
    assert f"onnxruntime=={ort.__version__}" in requirements and "numpy" in requirements
    assert "torch" not in requirements


def test_manifest_keeps_the_val_accuracy_it_was_selected_on_apart_from_the_test_accuracy(exported, small_splits):
    job, folder, _ = exported
    manifest = json.loads((folder / "manifest.json").read_text())
    trial, baseline = results(job_study(job))[1], baseline_of(job_study(job))
    assert trial.metrics["test_accuracy"] != trial.metrics["accuracy"]  # else the test could not tell them apart
    assert manifest["metrics"]["accuracy"] == manifest["measured_at_export"]["accuracy"]
    assert manifest["metrics"]["test_accuracy"] == manifest["measured_at_export"]["test_accuracy"]
    assert manifest["measured_at_export"]["test_accuracy_drop"] == baseline["test_accuracy"] - trial.metrics[
        "test_accuracy"]
    assert manifest["splits"]["val"]["samples"] == len(small_splits.val.labels) == 500
    assert manifest["splits"]["test"]["samples"] == len(small_splits.test.labels) == 500
    assert manifest["splits"]["val"]["sha256"] != manifest["splits"]["test"]["sha256"]


def test_manifest_records_the_cpu_flags_the_kernels_depend_on(exported, tmp_path):
    manifest = json.loads((exported[1] / "manifest.json").read_text())
    assert manifest["cpu"] == cpu_info() and set(manifest["cpu"]["isa"]) <= ISA_FLAGS
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 fma avx512_vnni amx_int8\n"
                       "processor\t: 1\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 fma avx512_vnni amx_int8\n")
    found = cpu_info(cpuinfo)
    assert found["model"] == "Some CPU" and found["isa"] == ["amx_int8", "avx2", "avx512_vnni", "fma"]
    assert cpu_info(tmp_path / "absent")["isa"] is None and cpu_info(tmp_path / "absent")["model"]


def raw_test_images(count: int) -> np.ndarray:
    return np.array(load_idx_arrays()["test_images"][:count])  # a writable copy


def run_predict(package: Path, images: np.ndarray, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    np.save(tmp_path / "images.npy", images)
    command = [sys.executable, "-I", "-c", NO_TORCH_WRAPPER, str(package / "predict.py"),
               str(tmp_path / "images.npy"), *extra]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


def ort_classes(model: Path, batch: np.ndarray) -> list[int]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: batch})[0]).argmax(axis=1).tolist()


@pytest.mark.parametrize("model", ["model.onnx", "model_fp32.onnx"])
def test_predict_runs_from_the_unzipped_package_without_torch(exported, tmp_path, model):
    package = extract(exported[2], tmp_path / "unzipped")
    assert "import torch" not in (package / "predict.py").read_text()
    raw = raw_test_images(12)
    # what the search's own (torch) preprocessing feeds the model
    expected = ort_classes(package / model, Preprocess.build(image_size=None, channels=1, mean=None, std=None)(
        torch.from_numpy(raw)).numpy())
    done = run_predict(package, raw, tmp_path, "--model", str(package / model))
    assert done.returncode == 0, done.stderr
    assert "IMPORTED-TORCH False" in done.stderr
    lines = done.stdout.strip().splitlines()
    assert [int(line.split()[0]) for line in lines] == list(range(12))
    assert [int(line.split()[1]) for line in lines] == expected


def test_predict_rejects_images_of_another_size_with_exit_2(exported, tmp_path):
    package = extract(exported[2], tmp_path / "unzipped")
    done = run_predict(package, np.zeros((2, 5, 5), dtype=np.uint8), tmp_path)
    assert done.returncode == 2 and "(1, 5, 5)" in done.stderr and "(1, 28, 28)" in done.stderr


@pytest.mark.parametrize("size, channels", [(20, 1), (32, 3), (14, 3)])
def test_numpy_preprocessing_matches_the_search_pipeline_with_resize(size, channels):
    raw = raw_test_images(6)
    recipe = Preprocess.build(image_size=size, channels=channels, mean=None, std=None)
    reference = recipe(torch.from_numpy(raw)).numpy()
    ours = preprocess(raw, recipe.describe(), reference.shape[1:])
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    floats = preprocess(raw.astype(np.float32) / 255.0, recipe.describe(), reference.shape[1:])
    np.testing.assert_allclose(floats, reference, atol=1e-5)


def test_registry_holds_a_version_tagged_with_the_trial_metrics(exported, tmp_path):
    job, folder, _ = exported
    manifest = json.loads((folder / "manifest.json").read_text())
    client = MlflowClient(job.tracking.uri)
    versions = client.search_model_versions(f"name='{REGISTERED}'")
    assert len(versions) == 1
    tags = versions[0].tags
    for metric, value in manifest["metrics"].items():
        assert float(tags[metric]) == value, metric
    assert tags["trial"] == "1" and tags["sha256"] == manifest["files"]["model.onnx"]
    run = client.get_run(versions[0].run_id)
    assert run.data.tags["kind"] == "export" and run.data.tags["registered_model"] == f"{REGISTERED}/1"
    local = client.download_artifacts(versions[0].run_id, "model/model.onnx", str(tmp_path))
    assert Path(local).read_bytes() == (folder / "model.onnx").read_bytes()
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"deploy", f"{STUDY}-trial1.zip"}


def test_a_registry_failure_warns_and_the_export_still_succeeds(exported, tmp_path, monkeypatch, caplog, capsys):
    job, _, _ = exported

    def refuse(*args, **kwargs):
        raise MlflowException("model registry is down")

    monkeypatch.setattr(MlflowClient, "create_model_version", refuse)
    out = tmp_path / "deploy"
    with caplog.at_level(logging.WARNING, logger="search.inspect.tracking"):
        assert export_command(job, ExportSettings(trial=1, out=str(out), registered_name="never")) == 0
    assert "model registry is down" in caplog.text
    assert "registered in MLflow" not in capsys.readouterr().out
    assert (tmp_path / f"{STUDY}-trial1.zip").is_file()
    assert MlflowClient(job.tracking.uri).search_model_versions("name='never'") == []


def test_an_mlflow_outage_warns_and_the_export_still_succeeds(exported, tmp_path, monkeypatch, caplog):
    job, _, _ = exported
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    offline = dataclasses.replace(job, tracking=TrackingSettings(uri=dead, experiment=STUDY))
    with caplog.at_level(logging.WARNING, logger="search.inspect.tracking"):
        assert export_command(offline, ExportSettings(trial=1, out=str(tmp_path / "deploy"))) == 0
    assert f"MLflow at {dead} is unreachable" in caplog.text
    assert zipfile.is_zipfile(tmp_path / f"{STUDY}-trial1.zip")


def test_without_fp32_and_into_a_foreign_folder(exported, tmp_path):
    job, _, _ = exported
    settings = ExportSettings(trial=0, out=str(tmp_path / "lean"), include_fp32=False, registered_name=None)
    assert export_command(job, settings) == 0
    names = set(members(tmp_path / f"{STUDY}-trial0.zip"))
    assert names == {f"{STUDY}-trial0/{n}" for n in PACKAGE_FILES if n != "model_fp32.onnx"}
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        export_command(job, ExportSettings(trial=0, out=str(tmp_path / "busy")))
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_the_zip_entropy_codes_each_file_with_its_smallest_method_and_the_manifest_records_both_sizes(
        exported, tmp_path):
    _, folder, zip_path = exported
    manifest = json.loads((folder / "manifest.json").read_text())
    with zipfile.ZipFile(zip_path) as archive:
        entries = {info.filename.split("/", 1)[1]: info for info in archive.infolist()}
    for name, size in manifest["sizes"].items():
        entry = entries[name]
        assert size["raw_bytes"] == entry.file_size == (folder / name).stat().st_size
        assert size["zip_bytes"] == entry.compress_size
        assert entry.compress_type == {"deflate": zipfile.ZIP_DEFLATED, "lzma": zipfile.ZIP_LZMA}[size["zip_method"]]
        for other in (zipfile.ZIP_DEFLATED, zipfile.ZIP_LZMA):  # no method stores it smaller
            probe = tmp_path / f"{other}.zip"
            with zipfile.ZipFile(probe, "w", compression=other) as archive:
                archive.writestr(name, (folder / name).read_bytes())
            assert zipfile.ZipFile(probe).getinfo(name).compress_size >= entry.compress_size
    assert manifest["sizes"]["model.onnx"]["zip_method"] == "lzma"  # weights: LZMA's larger window pays
    assert manifest["sizes"]["model.onnx"]["zip_bytes"] < manifest["sizes"]["model.onnx"]["raw_bytes"]
    unpacked = tmp_path / "stdlib"
    done = subprocess.run([sys.executable, "-I", "-m", "zipfile", "-e", str(zip_path), str(unpacked)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (unpacked / f"{STUDY}-trial1" / "model.onnx").read_bytes() == (folder / "model.onnx").read_bytes()
