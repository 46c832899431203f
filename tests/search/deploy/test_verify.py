"""``autosqueeze verify``: passes on a fresh export, names the failing check on a tampered package."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from evaluators.base import EvalData
from search.cli import data_splits, load_config, main
from search.deploy.package import cpu_info
from search.deploy.verify import Check, VerifySettings, verify_package
from stores import fresh_mlflow_store

STUDY = "vfy"
TINY = ["model=custom", "model.factory._target_=tinynet.tiny_net", "model.train.steps=30",
        "data.train_limit=300", "data.eval_limit=200", "data.calib_size=16",
        "evaluator.evaluators.latency.runs=20", "search.n_trials=2", f"search.study_name={STUDY}",
        "space.prune.ratios=[0,0.25]", "space.quant.precisions=[fp32,int8]", "quiet=true"]
ROOT = f"{STUDY}-trial1"
RELAXED = VerifySettings(max_slowdown=1000.0)  # a busy machine may be far slower; latency has its own test


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> tuple[Path, list[str]]:
    """A 2-trial study searched and exported through the CLI; returns the zip and the overrides."""
    tmp = tmp_path_factory.mktemp("verify")
    store = fresh_mlflow_store(tmp_path_factory, tmp, STUDY)
    overrides = [*TINY, f"paths.root={tmp}/outputs", f"tracking.uri={store}"]
    assert main(["search", *overrides]) == 0
    assert main(["export", *overrides, "export.trial=1"]) == 0
    zip_path = tmp / "outputs" / STUDY / f"{ROOT}.zip"
    assert zip_path.is_file()
    return zip_path, overrides


@pytest.fixture(scope="module")
def splits(package) -> dict[str, EvalData]:
    """The val and test splits the search used, as ``verify_package`` keywords."""
    found = data_splits(load_config(package[1]))
    return {"val": found.val, "test": found.test}


def rezip(source: Path, target: Path, edit: Callable[[dict[str, bytes]], None]) -> Path:
    """A copy of the zip whose members ``edit`` changed (keys are file names inside the package folder)."""
    with zipfile.ZipFile(source) as archive:
        files = {Path(n).name: archive.read(n) for n in archive.namelist()}
    edit(files)
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in files.items():
            archive.writestr(f"{ROOT}/{name}", data)
    return target


def edit_manifest(change: Callable[[dict], None]) -> Callable[[dict[str, bytes]], None]:
    def edit(files: dict[str, bytes]) -> None:
        manifest = json.loads(files["manifest.json"])
        change(manifest)
        files["manifest.json"] = json.dumps(manifest).encode()
    return edit


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def test_cli_verify_passes_on_the_exported_zip(package, capsys):
    zip_path, overrides = package
    capsys.readouterr()
    assert main(["verify", str(zip_path), *overrides, "export.verify.max_slowdown=1000"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:5]] == ["PASS files", "PASS accuracy", "PASS test_accuracy",
                                                          "PASS latency", "PASS predict"]
    assert "on 200 val samples" in lines[1] and "on 200 test samples" in lines[2]
    assert "exact match required (same CPU flags as at export)" in lines[1]
    assert "8 raw uint8 images: 8/8 classes match" in lines[4]
    assert lines[-1].startswith("verify: all checks passed")


def test_cli_verify_exits_1_and_names_the_failing_check(package, tmp_path, capsys):
    zip_path, overrides = package
    bad = rezip(zip_path, tmp_path / "bad.zip", edit_manifest(lambda m: m["metrics"].update(accuracy=99.9)))
    capsys.readouterr()
    assert main(["verify", str(bad), *overrides, "export.verify.max_slowdown=1000"]) == 1
    out = capsys.readouterr().out
    assert "FAIL accuracy" in out and "manifest 99.9000%" in out and "PASS files" in out
    assert "verify: FAILED (accuracy)" in out


def test_verify_passes_on_the_deploy_folder_too(package, splits):
    folder = package[0].parent / "deploy"
    checks = verify_package(folder, **splits, settings=RELAXED)
    assert all(c.ok for c in checks), [c.line() for c in checks]


def test_tampered_model_fails_the_files_check(package, splits, tmp_path):
    def swap(files: dict[str, bytes]) -> None:
        files["model.onnx"] = files["model_fp32.onnx"]  # a valid model, just not the listed one

    checks = by_name(verify_package(rezip(package[0], tmp_path / "t.zip", swap), **splits, settings=RELAXED))
    assert not checks["files"].ok and "model.onnx sha256" in checks["files"].detail


def test_missing_file_fails_files_and_predict(package, splits, tmp_path):
    checks = by_name(verify_package(rezip(package[0], tmp_path / "m.zip", lambda f: f.pop("predict.py")),
                                    **splits, settings=RELAXED))
    assert not checks["files"].ok and "predict.py missing" in checks["files"].detail
    assert not checks["predict"].ok
    assert checks["accuracy"].ok


def test_unlisted_file_fails_the_files_check(package, splits, tmp_path):
    checks = by_name(verify_package(rezip(package[0], tmp_path / "x.zip", lambda f: f.update({"extra.py": b"1"})),
                                    **splits, settings=RELAXED))
    assert not checks["files"].ok and "extra.py not in the manifest" in checks["files"].detail


def test_latency_far_above_the_manifest_fails(package, splits, tmp_path):
    def instant(manifest: dict) -> None:
        manifest["metrics"]["latency_ms"] = manifest["measured_at_export"]["latency_ms"] = 1e-9

    checks = by_name(verify_package(rezip(package[0], tmp_path / "l.zip", edit_manifest(instant)),
                                    **splits))
    assert not checks["latency"].ok and "limit 1.50x" in checks["latency"].detail
    assert checks["files"].ok and checks["accuracy"].ok


def test_other_data_fails_both_accuracy_checks_and_says_why(package):
    other = data_splits(load_config([*package[1], "data.eval_limit=150"]))
    checks = by_name(verify_package(package[0], val=other.val, test=other.test, settings=RELAXED))
    assert not checks["accuracy"].ok and "val data differ" in checks["accuracy"].detail
    assert not checks["test_accuracy"].ok and "test data differ" in checks["test_accuracy"].detail


def shifted(points: float, cpu: dict | None = None) -> Callable[[dict[str, bytes]], None]:
    """A manifest whose val and test accuracies are ``points`` off, exported on ``cpu`` (this one if None)."""
    def change(manifest: dict) -> None:
        for section in ("metrics", "measured_at_export"):  # a trial the search did not test has it only at export
            for name in set(manifest[section]) & {"accuracy", "test_accuracy"}:
                manifest[section][name] += points
        if cpu is not None:
            manifest["cpu"] = cpu
    return edit_manifest(change)


def test_on_the_same_cpu_flags_the_accuracies_must_match_exactly(package, splits, tmp_path):
    checks = by_name(verify_package(rezip(package[0], tmp_path / "s.zip", shifted(0.1)), **splits, settings=RELAXED))
    for name in ("accuracy", "test_accuracy"):
        assert not checks[name].ok and "exact match required" in checks[name].detail, checks[name].line()
    assert checks["files"].ok  # manifest.json is not among the hashed files


def other_cpu() -> dict:
    here = cpu_info()
    flags = set(here["isa"] or [])
    return {**here, "model": "Other CPU", "isa": sorted(flags ^ {"avx512_vnni", "amx_int8"})}


def test_on_other_cpu_flags_a_stated_tolerance_applies_and_the_line_says_why(package, splits, tmp_path):
    near = rezip(package[0], tmp_path / "near.zip", shifted(0.1, other_cpu()))
    checks = by_name(verify_package(near, **splits, settings=RELAXED))
    for name in ("accuracy", "test_accuracy"):
        line = checks[name].line()
        assert checks[name].ok and "allowed 0.20 points because this CPU" in line, line
        assert "against the export's (Other CPU)" in line and "other int8 kernels" in line
        assert "avx512_vnni" in line and "amx_int8" in line
    far = rezip(package[0], tmp_path / "far.zip", shifted(0.5, other_cpu()))
    checks = by_name(verify_package(far, **splits, settings=RELAXED))
    assert not checks["accuracy"].ok and not checks["test_accuracy"].ok
    wider = by_name(verify_package(far, **splits, settings=VerifySettings(max_slowdown=1000.0,
                                                                          accuracy_tolerance=0.6)))
    assert wider["accuracy"].ok and "allowed 0.60 points" in wider["accuracy"].detail


def test_a_manifest_without_cpu_flags_gets_the_tolerance(package, splits, tmp_path):
    unknown = rezip(package[0], tmp_path / "u.zip", shifted(0.1, {"model": "unknown", "isa": None}))
    checks = by_name(verify_package(unknown, **splits, settings=RELAXED))
    assert checks["accuracy"].ok and "the manifest records no CPU instruction-set flags" in checks["accuracy"].detail


def test_a_format_1_package_is_checked_on_the_test_split_it_was_measured_on(package, splits, tmp_path):
    def older(manifest: dict) -> None:  # one "eval" split, which was the test data, and no cpu entry
        manifest["eval_data"] = manifest.pop("splits")["test"]
        manifest["metrics"]["accuracy"] = manifest["measured_at_export"]["test_accuracy"]
        for name in ("cpu", "rebuilt"):
            manifest.pop(name)
        manifest["format"] = 1

    checks = by_name(verify_package(rezip(package[0], tmp_path / "f1.zip", edit_manifest(older)), **splits,
                                    settings=RELAXED))
    assert checks["accuracy"].ok and "200 test samples" in checks["accuracy"].detail
    assert checks["test_accuracy"].skipped


@pytest.mark.parametrize("args, expected", [([], "needs a package path"),
                                            (["/nonexistent/pkg.zip"], "no package at /nonexistent/pkg.zip")])
def test_bad_verify_arguments_exit_2(args, expected, capsys):
    assert main(["verify", *args]) == 2
    assert expected in capsys.readouterr().err


NO_TORCH_VERIFY = """
import sys
sys.modules["torch"] = None  # any import of torch now fails
import numpy as np
from evaluators.base import EvalData
from search.deploy.verify import VerifySettings, verify_package
arrays = np.load(sys.argv[2])
val, test = EvalData(arrays["vx"], arrays["vy"]), EvalData(arrays["tx"], arrays["ty"])
checks = verify_package(sys.argv[1], val=val, test=test, settings=VerifySettings(max_slowdown=1e3))
print("\\n".join(c.line() for c in checks))
"""


def test_the_package_checks_run_where_torch_cannot_be_imported(package, splits, tmp_path):
    np.savez(tmp_path / "eval.npz", vx=splits["val"].inputs, vy=splits["val"].labels,
             tx=splits["test"].inputs, ty=splits["test"].labels)
    done = subprocess.run([sys.executable, "-c", NO_TORCH_VERIFY, str(package[0]), str(tmp_path / "eval.npz")],
                          cwd=Path(__file__).parents[3], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [line.split(":")[0] for line in done.stdout.strip().splitlines()] == [
        "PASS files", "PASS accuracy", "PASS test_accuracy", "PASS latency", "PASS predict"]
