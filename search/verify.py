"""``autosqueeze verify PACKAGE``: does a deploy package still hold what its manifest promises?

Four checks, each printed as one PASS/FAIL line, all run even after a failure:

* files    - every file the manifest lists is there with its sha256, and nothing else is;
* accuracy - re-measured on the eval set, exactly the manifest's (same data gives the same number);
* latency  - batch 1, timed as at export (``latency_setup``, one thread by default), at most
  ``max_slowdown`` times the manifest's: machines differ, so only a big slowdown fails;
* predict  - ``predict.py`` runs in a fresh interpreter where torch cannot be imported, and
  prints the classes ONNX Runtime's arg-max gives.

Only numpy, onnxruntime and the standard library are used here; torch is never imported.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping

import numpy as np

from evaluators._session import make_session
from evaluators.accuracy import Accuracy
from evaluators.base import EvalData
from evaluators.latency import Latency, interleaved
from search.package import MANIFEST, MODEL, PREDICT, data_fingerprint, file_sha256
from search.predict_template import preprocess

# Runs predict.py as a deploy target would: isolated mode, and torch made unimportable.
NO_TORCH = ("import runpy, sys\n"
            "sys.modules.update(dict.fromkeys(('torch', 'torchvision'), None))\n"
            "sys.argv = sys.argv[1:]\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')\n")


@dataclass(frozen=True)
class VerifySettings:
    max_slowdown: float = 1.5     # latency fails only above this many times the manifest's
    predict_samples: int = 8      # eval samples predict.py is run on
    predict_timeout: float = 120.0

    def __post_init__(self) -> None:
        if self.max_slowdown < 1.0:
            raise ValueError(f"export.verify.max_slowdown={self.max_slowdown}; allowed: >= 1.0")
        if self.predict_samples < 1:
            raise ValueError(f"export.verify.predict_samples={self.predict_samples}; allowed: >= 1")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    skipped: bool = False

    def line(self) -> str:
        word = "SKIP" if self.skipped else ("PASS" if self.ok else "FAIL")
        return f"{word} {self.name}: {self.detail}"


def open_package(path: Path, workdir: Path) -> Path:
    """The folder holding ``manifest.json``: ``path`` itself, or the zip safely extracted into ``workdir``."""
    path = Path(path)
    if path.is_dir():
        return path
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is neither a package folder nor a zip file")
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            parts = PurePosixPath(name).parts
            if name.startswith("/") or ".." in parts:
                raise ValueError(f"{path}: refusing the unsafe entry {name!r}")
        archive.extractall(workdir)
    found = sorted(p.parent for p in workdir.rglob(MANIFEST))
    if not found:
        raise ValueError(f"{path} holds no {MANIFEST}")
    return found[0]


def check_files(folder: Path, manifest: Mapping[str, Any]) -> Check:
    """Every listed file present with its sha256, no unlisted file: the package is exactly what was exported."""
    listed: Mapping[str, str] = manifest.get("files", {})
    problems = [f"{name} missing" for name in listed if not (folder / name).is_file()]
    problems += [f"{name} sha256 {file_sha256(folder / name)[:12]} != manifest {digest[:12]}"
                 for name, digest in listed.items()
                 if (folder / name).is_file() and file_sha256(folder / name) != digest]
    extra = sorted(p.name for p in folder.iterdir() if p.name not in listed and p.name != MANIFEST)
    problems += [f"{name} not in the manifest" for name in extra]
    if MODEL not in listed:
        problems.append(f"the manifest lists no {MODEL}")
    if problems:
        return Check("files", False, "; ".join(problems))
    return Check("files", True, f"{len(listed)} files match their manifest sha256 ({', '.join(listed)})")


def check_accuracy(folder: Path, manifest: Mapping[str, Any], data: EvalData, accuracy: Accuracy) -> Check:
    """Exact equality: same file, same data and same ONNX Runtime give the same number."""
    expected = float(manifest["metrics"]["accuracy"])
    measured = accuracy.measure(folder / MODEL, data)["accuracy"]
    same_data = manifest.get("eval_data") in (None, data_fingerprint(data))
    detail = f"{measured:.4f}% measured on {len(data.labels)} eval samples, manifest {expected:.4f}%"
    if not same_data:
        detail += (f" (the eval data differ from the export's: {manifest['eval_data']['samples']} samples, "
                   "another sha256; pass the data overrides the search used)")
    return Check("accuracy", measured == expected and same_data, detail)


def check_latency(folder: Path, manifest: Mapping[str, Any], data: EvalData, settings: VerifySettings) -> Check:
    """Batch-1 median timed alone, as at export; only a slowdown beyond ``max_slowdown`` fails."""
    reference = {**manifest.get("metrics", {}), **manifest.get("measured_at_export", {})}.get("latency_ms")
    if reference is None:
        return Check("latency", True, "the manifest records no latency_ms", skipped=True)
    setup = {**{"warmup": Latency.warmup, "runs": Latency.runs, "threads": 1}, **(manifest.get("latency_setup") or {})}
    measured = interleaved([folder / MODEL], data, **setup)[0]["latency_ms"]
    ratio = measured / float(reference) if reference > 0 else float("inf")
    detail = (f"{measured:.4f} ms median (batch 1, {setup['threads']} thread(s), {setup['runs']} runs), "
              f"manifest {float(reference):.4f} ms: {ratio:.2f}x, limit {settings.max_slowdown:.2f}x")
    return Check("latency", ratio <= settings.max_slowdown, detail)


def raw_images(inputs: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray | None:
    """uint8 ``(N, H, W)`` images that preprocess back to ``inputs`` exactly, or None (resized data)."""
    if spec.get("resize") or "mean" not in spec or "std" not in spec or inputs.ndim != 4:
        return None
    mean, std = float(spec["mean"][0]), float(spec["std"][0])
    pixels = (inputs[:, 0].astype(np.float64) * std + mean) / float(spec.get("scale", 1 / 255))
    raw = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    try:
        same = np.array_equal(preprocess(raw, spec, inputs.shape[1:]), inputs)
    except ValueError:
        return None
    return raw if same else None


def run_predict(folder: Path, images: np.ndarray, timeout: float) -> subprocess.CompletedProcess[str]:
    """``predict.py images.npy`` in a fresh isolated interpreter with a bare environment and no torch."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "samples.npy"
        np.save(path, images)
        command = [sys.executable, "-I", "-c", NO_TORCH, str(folder / PREDICT), str(path)]
        return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=timeout,
                              env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


def check_predict(folder: Path, manifest: Mapping[str, Any], data: EvalData, settings: VerifySettings) -> Check:
    """predict.py's printed classes equal ONNX Runtime's arg-max on the same eval samples."""
    inputs = np.ascontiguousarray(data.inputs[:settings.predict_samples], dtype=np.float32)
    session = make_session(folder / MODEL, threads=1)
    expected = [int(np.asarray(session.run(None, {session.get_inputs()[0].name: inputs[i:i + 1]})[0]).argmax())
                for i in range(len(inputs))]
    raw = raw_images(inputs, manifest.get("preprocessing") or {})
    kind = f"{len(inputs)} raw uint8 images" if raw is not None else f"{len(inputs)} preprocessed samples"
    done = run_predict(folder, raw if raw is not None else inputs, settings.predict_timeout)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Check("predict", False, f"predict.py exited {done.returncode} on {kind}: {last}")
    try:
        printed = [int(line.split()[1]) for line in done.stdout.strip().splitlines()]
    except (IndexError, ValueError):
        return Check("predict", False, f"predict.py printed unreadable lines: {done.stdout[:200]!r}")
    matches = sum(p == e for p, e in zip(printed, expected))
    ok = len(printed) == len(expected) and matches == len(expected)
    return Check("predict", ok, f"predict.py (no torch) on {kind}: {matches}/{len(expected)} classes match "
                                f"ONNX Runtime's arg-max {expected}; printed {printed}")


def guarded_check(name: str, run: Callable[[], Check]) -> Check:
    """A check that crashes (missing file, unreadable model) is a FAIL line, not a traceback."""
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - every failure is reported the same way
        text = str(exc).strip().splitlines()
        return Check(name, False, f"{type(exc).__name__}: {text[0] if text else 'no details'}")


def verify_package(package: Path, *, data: EvalData, accuracy: Accuracy | None = None,
                   settings: VerifySettings = VerifySettings()) -> list[Check]:
    """Run every check on ``package`` (a folder or a zip) against ``data``, the search's eval split."""
    with tempfile.TemporaryDirectory(prefix="autosqueeze-verify-") as tmp:
        folder = open_package(Path(package), Path(tmp))
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return [Check("manifest", False, f"{MANIFEST} is unreadable: {exc}")]
        return [
            guarded_check("files", lambda: check_files(folder, manifest)),
            guarded_check("accuracy", lambda: check_accuracy(folder, manifest, data, accuracy or Accuracy())),
            guarded_check("latency", lambda: check_latency(folder, manifest, data, settings)),
            guarded_check("predict", lambda: check_predict(folder, manifest, data, settings)),
        ]
