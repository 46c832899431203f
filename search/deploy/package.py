"""A deployable package of one trial: a folder and a reproducible zip, every file hashed in the manifest.

Package layout (the folder, and the zip under one top folder ``<study>-trial<N>/``)::

    model.onnx         the trial's quantized model, byte-identical to the one the search scored
                       (target=openvino: model.xml + model.bin, the OpenVINO IR the search scored)
    model_fp32.onnx    the same pruned model before quantization (fallback; export.include_fp32; IR: .xml + .bin)
    predict.py         runnable example: numpy + the target's runtime only (search/deploy/predict_template.py
                       with the runtime block of search/deploy/targets/predict_<target>.py)
    requirements.txt   what predict.py needs
    manifest.json      plan, metrics, baseline, preprocessing, input shape, CPU, versions, sha256 of every other file,
                       and each file's raw size and its size in the zip

The zip is what ships: each entry is compressed with DEFLATE or LZMA, whichever stores it smaller
(:func:`packed`); both are in Python's ``zipfile``, so ``python -m zipfile -e <zip> .`` unpacks it anywhere.

The manifest keeps the two held-out splits apart: ``metrics.accuracy`` is the validation
accuracy the trial was selected on, ``metrics.test_accuracy`` (when the search measured it)
the test accuracy, reported only; ``splits`` fingerprints both. ``cpu`` records the
instruction-set flags ONNX Runtime picks its int8 kernels by, so ``verify`` knows when a
few samples may legitimately flip. ``rebuilt`` says whether the trial's files had to be
rebuilt from its plan, and ``logged`` what the study recorded when the rebuild differs.

This module imports no torch at import time: ``search.deploy.verify`` reuses its helpers on
machines that only have numpy and onnxruntime.
"""
from __future__ import annotations

import hashlib
import io
import json
import platform
import re
import shutil
import zipfile
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from search.deploy.targets.base import Source, predict_source, target_for

if TYPE_CHECKING:
    from evaluators.base import EvalData, Evaluator
    from search.deploy.targets.base import Target
    from search.trials.trial import TrialResult
    from zoo.data import DataSplits

MANIFEST, MODEL, FP32, PREDICT, REQUIREMENTS = (
    "manifest.json", "model.onnx", "model_fp32.onnx", "predict.py", "requirements.txt")
PACKAGE_FILES = (MODEL, FP32, PREDICT, REQUIREMENTS, MANIFEST)
TARGET_FILES = tuple(f"{stem}{suffix}" for stem in ("model", "model_fp32") for suffix in (".xml", ".bin"))
"""What other targets ship instead of the two .onnx files (an OpenVINO IR is .xml + .bin)."""
VERSIONED = ("autosqueeze", "torch", "torch-pruning", "onnx", "onnxruntime", "openvino", "optuna", "mlflow", "numpy")
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same package always zips to the same bytes
FORMAT = 2  # 1: one eval split (the test data) and no cpu entry
ZIP_METHODS = {"deflate": zipfile.ZIP_DEFLATED, "lzma": zipfile.ZIP_LZMA}
CPUINFO = Path("/proc/cpuinfo")
# Flags ONNX Runtime's kernel dispatch depends on (x86 and Arm): other int8/fp16 code paths round differently.
ISA_FLAGS = frozenset({
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx512_fp16", "avx_vnni", "avx_vnni_int8", "amx_tile", "amx_int8", "amx_bf16", "amx_fp16",
    "asimd", "asimddp", "asimdhp", "fphp", "i8mm", "bf16", "sve", "sve2", "sme",
})


class RebuildMismatchError(ValueError):
    """A trial rebuilt from its plan is not the model the study logged, and the user did not accept that."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_fingerprint(data: EvalData) -> dict[str, Any]:
    """Count and sha256 of a split's inputs and labels: tells "other data" apart from "other model"."""
    digest = hashlib.sha256(np.ascontiguousarray(data.inputs, dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(data.labels, dtype=np.int64).tobytes())
    return {"samples": int(len(data.labels)), "sha256": digest.hexdigest()}


def cpu_info(source: Path = CPUINFO) -> dict[str, Any]:
    """This CPU's model name, architecture and sorted :data:`ISA_FLAGS`; ``isa`` is None where they cannot be read."""
    try:
        text = Path(source).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    model, flags = None, None
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key.lower() in ("model name", "cpu model") and model is None:
            model = value
        elif key.lower() in ("flags", "features") and flags is None:
            flags = set(value.split())
    return {"model": model or platform.processor() or platform.machine() or "unknown",
            "arch": platform.machine(),
            "isa": sorted(flags & ISA_FLAGS) if flags is not None else None}


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def requirements_text(found: Mapping[str, str], runtimes: Sequence[str] = ("onnxruntime",)) -> str:
    """The target's runtime pinned to the version the manifest's metrics were measured with; numpy loosely."""
    pinned = [f"{name}=={found[name]}" if name in found else name for name in runtimes]
    return "".join(f"{line}  # the version every metric in manifest.json was measured with\n" for line in pinned) + \
        "numpy>=1.24\n"


def zip_path_for(out_dir: Path, study_name: str, trial: int) -> Path:
    """``<out>/../<study>-trial<N>.zip``: beside the deploy folder, named after what it holds."""
    return Path(out_dir).resolve().parent / f"{package_name(study_name, trial)}.zip"


def package_name(study_name: str, trial: int) -> str:
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', study_name)}-trial{trial}"


def prepare_folder(out_dir: Path) -> None:
    """An empty or package-only folder: stale package files go, anything else stops the export."""
    out_dir.mkdir(parents=True, exist_ok=True)
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in (*PACKAGE_FILES, *TARGET_FILES))
    if foreign:
        raise ValueError(f"export.out={out_dir} holds files that are not part of a package "
                         f"({', '.join(foreign[:5])}); choose an empty or new folder")
    for name in (*PACKAGE_FILES, *TARGET_FILES):
        (out_dir / name).unlink(missing_ok=True)


def copy_files(result: TrialResult, out_dir: Path, *, include_fp32: bool, target: Target) -> list[str]:
    """Model (and fp32 fallback), predict.py and requirements.txt into ``out_dir``; returns the names.

    The artifact's files become ``model.<suffix>``, the first one being the model; the fp32
    fallback is the trial's pruned ONNX file, built for the target.
    """
    names = _copy_artifact(target.files(Path(result.model_path)), out_dir, "model")
    fp32 = Path(result.model_path).with_name(FP32)
    if include_fp32 and fp32.is_file():
        names += _copy_artifact(target.files(target.build(Source(onnx=fp32))), out_dir, "model_fp32")
    elif include_fp32:
        raise FileNotFoundError(f"trial {result.number}: {fp32} is missing; export.include_fp32=false ships "
                                "the package without the fp32 fallback")
    (out_dir / PREDICT).write_text(predict_source(target), encoding="utf-8")
    (out_dir / REQUIREMENTS).write_text(requirements_text(versions(), target.requirements), encoding="utf-8")
    return [*names, PREDICT, REQUIREMENTS]


def _copy_artifact(files: Sequence[Path], out_dir: Path, stem: str) -> list[str]:
    names = [f"{stem}{path.suffix}" for path in files]
    for path, name in zip(files, names):
        shutil.copyfile(path, out_dir / name)
    return names


def latency_setup(evaluators: Sequence[Evaluator]) -> dict[str, int] | None:
    """How ``latency_ms`` was timed, so ``autosqueeze verify`` times it the same way."""
    for evaluator in evaluators:
        if "latency_ms" in evaluator.metrics:
            return {name: int(getattr(evaluator, name)) for name in ("warmup", "runs", "threads")
                    if hasattr(evaluator, name)}
    return None


def rebuild_differences(rebuilt: TrialResult, logged: TrialResult) -> dict[str, tuple[Any, Any]]:
    """``{figure: (logged, rebuilt)}`` for the sha256 and val accuracy where a rebuild is not the logged trial."""
    pairs = {"sha256": (logged.sha256, rebuilt.sha256),
             "accuracy": (logged.metrics.get("accuracy"), rebuilt.metrics.get("accuracy"))}
    return {name: pair for name, pair in pairs.items() if pair[0] != pair[1]}


def mismatch_message(number: int, differs: Mapping[str, tuple[Any, Any]]) -> str:
    shown = {"accuracy": lambda v: f"{v:.4f}%", "sha256": lambda v: str(v)[:12]}
    figures = "; ".join(f"{'val accuracy' if name == 'accuracy' else name} {shown[name](new)} "
                        f"(logged {shown[name](old)})" for name, (old, new) in differs.items())
    return (f"trial {number} was rebuilt from its plan because its files are gone, and the rebuild is not the "
            f"model the search scored: {figures}. Nothing was exported. Restore the trial's files, or pass "
            "export.accept_rebuilt=true to ship the rebuilt model with its own measured metrics")


def accuracy_evaluator(evaluators: Sequence[Evaluator]) -> Evaluator | None:
    return next((e for e in evaluators if "accuracy" in e.metrics), None)


def measure_splits(model: Path, data: DataSplits, evaluators: Sequence[Evaluator],
                   baseline: Mapping[str, float]) -> dict[str, float]:
    """Every evaluator on val (the split the search scored), and accuracy on test, with its drop when known."""
    from search.trials.trial import measure  # torch-backed; imported here so verify can use this module without it

    checked = measure(model, data.val, evaluators)
    scorer = accuracy_evaluator(evaluators)
    if scorer is not None:
        checked["test_accuracy"] = float(scorer.measure(model, data.test)["accuracy"])
        if "test_accuracy" in baseline:
            checked["test_accuracy_drop"] = float(baseline["test_accuracy"]) - checked["test_accuracy"]
    return checked


def check_measured(checked: Mapping[str, float], expected: Mapping[str, float], number: int,
                   tolerance: float) -> None:
    """Same file, same data, same ONNX Runtime: the re-measured accuracies are the expected ones."""
    for metric, split in (("accuracy", "val"), ("test_accuracy", "test")):
        if metric in expected and metric in checked and abs(checked[metric] - expected[metric]) > tolerance:
            raise RuntimeError(f"exported model scores {checked[metric]:.4f}% on the {split} split but trial "
                               f"{number} logged {expected[metric]:.4f}%: the data or the artifact differ from "
                               "the search's")


def write_package(result: TrialResult, *, out_dir: Path, data: DataSplits, evaluators: Sequence[Evaluator],
                  baseline: Mapping[str, float], study_name: str, include_fp32: bool = True,
                  logged: TrialResult | None = None, accept_rebuilt: bool = False,
                  config: Mapping[str, Any] | None = None, tolerance: float = 1e-9,
                  target: Target | None = None) -> dict[str, Any]:
    """Fill ``out_dir`` with the package of ``result`` and return its manifest.

    ``logged`` is the study's record of the trial when ``result`` was rebuilt from its plan.
    A rebuild whose sha256 or val accuracy differs from the record stops the export before
    anything is written, unless ``accept_rebuilt``; then the rebuild ships with its own
    metrics and the manifest keeps the logged figures. ``config`` (the data settings the study
    was searched with) lets ``autosqueeze verify`` rebuild the same splits without being told.

    The re-measured accuracies must equal the expected ones (the logged trial's, or an
    accepted rebuild's own): same file, same data, same ONNX Runtime. A mismatch means the
    artifact or the data changed, so it fails.
    """
    differs = rebuild_differences(result, logged) if logged is not None else {}
    if differs and not accept_rebuilt:
        raise RebuildMismatchError(mismatch_message(result.number, differs))
    record = result if differs else (logged or result)
    target = target or target_for(Path(result.model_path))
    out_dir = Path(out_dir)
    prepare_folder(out_dir)
    names = copy_files(result, out_dir, include_fp32=include_fp32, target=target)
    checked = measure_splits(out_dir / names[0], data, evaluators, baseline)
    check_measured(checked, record.metrics, result.number, tolerance)
    metrics = dict(record.metrics)
    if differs:  # the rebuild was never scored on test: its own number is the one just measured
        metrics.update({k: checked[k] for k in ("test_accuracy", "test_accuracy_drop") if k in checked})
    manifest = {
        "format": FORMAT,
        "study": study_name,
        "trial": result.number,
        "target": target.name,
        "model": names[0],
        "rebuilt": logged is not None,
        **({"logged": logged_figures(logged, differs)} if differs else {}),
        "plan": result.plan.to_dict(),
        "metrics": metrics,
        "measured_at_export": checked,
        "baseline_metrics": dict(baseline),
        "splits": {"val": data_fingerprint(data.val), "test": data_fingerprint(data.test)},
        "input": {"name": "input", "shape": [1, *data.input_shape], "dtype": "float32"},
        "num_classes": data.num_classes,
        "preprocessing": data.preprocessing,
        "cpu": cpu_info(),
        **({"config": dict(config)} if config else {}),
        "latency_setup": latency_setup(evaluators),
        "versions": versions(),
        "files": {name: file_sha256(out_dir / name) for name in names},
        # what each file costs on disk and in the zip that ships (entropy-coded, see packed())
        "sizes": shipped_sizes(out_dir, names),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def logged_figures(logged: TrialResult, differs: Mapping[str, Any]) -> dict[str, Any]:
    """What the study recorded for the trial an accepted rebuild replaced, and which of it differs."""
    kept = {k: logged.metrics[k] for k in ("accuracy", "test_accuracy") if k in logged.metrics}
    return {**kept, "sha256": logged.sha256, "differs": sorted(differs)}


def _entry(name: str, method: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
    info.compress_type = ZIP_METHODS[method]
    info.external_attr = (0o755 if name.endswith(PREDICT) else 0o644) << 16
    return info


def packed(data: bytes) -> tuple[str, int]:
    """The zip method that stores ``data`` smallest, and the bytes it takes: entropy coding where it pays.

    Both methods are in every Python's ``zipfile`` (``python -m zipfile -e`` unpacks them), so the package
    needs nothing beyond its requirements. On this project's models LZMA wins (the demo ResNet's 6-bit
    shared int8 model: 117.4 kB, against 116.8 kB for zstd level 19, the search's ``compressed_bytes``);
    on small text DEFLATE does.
    """
    sizes = {}
    for method in ZIP_METHODS:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr(_entry("x", method), data)
        sizes[method] = archive.getinfo("x").compress_size
    best = min(sizes, key=lambda m: (sizes[m], m))
    return best, sizes[best]


def shipped_sizes(out_dir: Path, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per file: its raw bytes, and the method and bytes it ships with in the zip."""
    out = {}
    for name in names:
        data = (Path(out_dir) / name).read_bytes()
        method, size = packed(data)
        out[name] = {"raw_bytes": len(data), "zip_method": method, "zip_bytes": size}
    return out


def write_zip(out_dir: Path, zip_path: Path, root: str) -> Path:
    """Zip the package folder under one top folder ``root``, each entry with the method that stores it
    smallest; fixed timestamps, sorted entries."""
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    partial = zip_path.with_name(zip_path.name + ".partial")
    with zipfile.ZipFile(partial, "w") as archive:
        for path in sorted(Path(out_dir).iterdir()):
            data = path.read_bytes()
            archive.writestr(_entry(f"{root}/{path.name}", packed(data)[0]), data)
    partial.replace(zip_path)  # a reader never sees half a zip
    return zip_path
