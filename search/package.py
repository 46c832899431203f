"""A deployable package of one trial: a folder and a reproducible zip, every file hashed in the manifest.

Package layout (the folder, and the zip under one top folder ``<study>-trial<N>/``)::

    model.onnx         the trial's quantized model, byte-identical to the one the search scored
    model_fp32.onnx    the same pruned model before quantization (fallback; export.include_fp32)
    predict.py         runnable example: numpy + onnxruntime only (source: search/predict_template.py)
    requirements.txt   what predict.py needs
    manifest.json      plan, metrics, baseline, preprocessing, input shape, versions, sha256 of every other file

This module imports no torch at import time: ``search.verify`` reuses its helpers on
machines that only have numpy and onnxruntime.
"""
from __future__ import annotations

import hashlib
import json
import platform
import re
import shutil
import zipfile
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from evaluators.base import EvalData, Evaluator
    from search.trial import TrialResult
    from zoo.data import DataSplits

MANIFEST, MODEL, FP32, PREDICT, REQUIREMENTS = (
    "manifest.json", "model.onnx", "model_fp32.onnx", "predict.py", "requirements.txt")
PACKAGE_FILES = (MODEL, FP32, PREDICT, REQUIREMENTS, MANIFEST)
TEMPLATE = Path(__file__).with_name("predict_template.py")
VERSIONED = ("autosqueeze", "torch", "torch-pruning", "onnx", "onnxruntime", "optuna", "mlflow", "numpy")
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same package always zips to the same bytes
FORMAT = 1


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_fingerprint(data: EvalData) -> dict[str, Any]:
    """Count and sha256 of the eval inputs and labels: tells "other data" apart from "other model"."""
    digest = hashlib.sha256(np.ascontiguousarray(data.inputs, dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(data.labels, dtype=np.int64).tobytes())
    return {"samples": int(len(data.labels)), "sha256": digest.hexdigest()}


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def requirements_text(found: Mapping[str, str]) -> str:
    """ONNX Runtime pinned to the version the manifest's metrics were measured with; numpy loosely."""
    ort = f"onnxruntime=={found['onnxruntime']}" if "onnxruntime" in found else "onnxruntime"
    return (f"{ort}  # the version every metric in manifest.json was measured with\n"
            "numpy>=1.24\n")


def zip_path_for(out_dir: Path, study_name: str, trial: int) -> Path:
    """``<out>/../<study>-trial<N>.zip``: beside the deploy folder, named after what it holds."""
    return Path(out_dir).resolve().parent / f"{package_name(study_name, trial)}.zip"


def package_name(study_name: str, trial: int) -> str:
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', study_name)}-trial{trial}"


def prepare_folder(out_dir: Path) -> None:
    """An empty or package-only folder: stale package files go, anything else stops the export."""
    out_dir.mkdir(parents=True, exist_ok=True)
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in PACKAGE_FILES)
    if foreign:
        raise ValueError(f"export.out={out_dir} holds files that are not part of a package "
                         f"({', '.join(foreign[:5])}); choose an empty or new folder")
    for name in PACKAGE_FILES:
        (out_dir / name).unlink(missing_ok=True)


def copy_files(result: TrialResult, out_dir: Path, *, include_fp32: bool) -> list[str]:
    """Model (and fp32 fallback), predict.py and requirements.txt into ``out_dir``; returns the names."""
    shutil.copyfile(result.model_path, out_dir / MODEL)
    names = [MODEL]
    fp32 = Path(result.model_path).with_name(FP32)
    if include_fp32 and fp32.is_file():
        shutil.copyfile(fp32, out_dir / FP32)
        names.append(FP32)
    elif include_fp32:
        raise FileNotFoundError(f"trial {result.number}: {fp32} is missing; export.include_fp32=false ships "
                                "the package without the fp32 fallback")
    shutil.copyfile(TEMPLATE, out_dir / PREDICT)
    (out_dir / REQUIREMENTS).write_text(requirements_text(versions()), encoding="utf-8")
    return [*names, PREDICT, REQUIREMENTS]


def latency_setup(evaluators: Sequence[Evaluator]) -> dict[str, int] | None:
    """How ``latency_ms`` was timed, so ``autosqueeze verify`` times it the same way."""
    for evaluator in evaluators:
        if "latency_ms" in evaluator.metrics:
            return {name: int(getattr(evaluator, name)) for name in ("warmup", "runs", "threads")
                    if hasattr(evaluator, name)}
    return None


def write_package(result: TrialResult, *, out_dir: Path, data: DataSplits, evaluators: Sequence[Evaluator],
                  baseline: Mapping[str, float], study_name: str, include_fp32: bool = True,
                  tolerance: float = 1e-9) -> dict[str, Any]:
    """Fill ``out_dir`` with the package of ``result`` and return its manifest.

    The re-measured accuracy must equal the trial's logged one: same file, same data,
    same ONNX Runtime. A mismatch means the artifact or the data changed, so it fails.
    """
    from search.trial import measure  # torch-backed; imported here so verify can use this module without it

    out_dir = Path(out_dir)
    prepare_folder(out_dir)
    names = copy_files(result, out_dir, include_fp32=include_fp32)
    checked = measure(out_dir / MODEL, data, evaluators)
    if abs(checked["accuracy"] - result.metrics["accuracy"]) > tolerance:
        raise RuntimeError(f"exported model scores {checked['accuracy']:.4f}% but trial {result.number} logged "
                           f"{result.metrics['accuracy']:.4f}%: the data or the artifact differ from the search's")
    manifest = {
        "format": FORMAT,
        "study": study_name,
        "trial": result.number,
        "plan": result.plan.to_dict(),
        "metrics": dict(result.metrics),
        "measured_at_export": checked,
        "baseline_metrics": dict(baseline),
        "input": {"name": "input", "shape": [1, *data.input_shape], "dtype": "float32"},
        "num_classes": data.num_classes,
        "preprocessing": data.preprocessing,
        "eval_data": data_fingerprint(data.eval),
        "latency_setup": latency_setup(evaluators),
        "versions": versions(),
        "files": {name: file_sha256(out_dir / name) for name in names},
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def write_zip(out_dir: Path, zip_path: Path, root: str) -> Path:
    """Zip the package folder under one top folder ``root``; fixed timestamps, sorted entries."""
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    partial = zip_path.with_name(zip_path.name + ".partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(Path(out_dir).iterdir()):
            info = zipfile.ZipInfo(f"{root}/{path.name}", date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (0o755 if path.name == PREDICT else 0o644) << 16
            archive.writestr(info, path.read_bytes())
    partial.replace(zip_path)  # a reader never sees half a zip
    return zip_path
