"""``autosqueeze verify PACKAGE``: does a deploy package still hold what its manifest promises?

Five checks, each printed as one PASS/FAIL/SKIP line, all run even after a failure:

* files         - every file the manifest lists is there with its sha256, and nothing else is;
* accuracy      - re-measured on the val split, the manifest's ``metrics.accuracy`` (what the search selected on);
* test_accuracy - re-measured on the test split, the manifest's ``test_accuracy`` (reported only);
* latency       - batch 1, timed as at export (``latency_setup``, one thread by default), at most
  ``max_slowdown`` times the manifest's: machines differ, so only a big slowdown fails;
* predict       - ``predict.py`` runs in a fresh interpreter where torch cannot be imported, and
  prints the classes the target runtime's arg-max gives.

Both accuracies must equal the manifest's exactly on a CPU with the instruction-set flags
the manifest records: same file, same data, same kernels give the same number. A CPU with
other flags runs other int8 kernels (VNNI, AMX, AVX2's saturating multiply-add), which can
flip a few samples, so there ``accuracy_tolerance`` points are allowed and the line says why.

Only numpy, the package's runtime (its manifest's ``target``, opened through the evaluators) and
the standard library are used here; torch is imported only for a target whose runtime needs it
(ExecuTorch's Python runtime links libtorch).
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

from evaluators._session import open_session
from evaluators.accuracy import Accuracy
from evaluators.base import EvalData
from evaluators.latency import Latency, interleaved
from search.deploy.package import MANIFEST, MODEL, PREDICT, cpu_info, data_fingerprint, file_sha256
from search.deploy.predict_template import preprocess
from search.deploy.targets.base import target_named

# Runs predict.py as a deploy target would: isolated mode, and torch made unimportable.
WITH_TORCH = "import runpy, sys\nsys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name='__main__')\n"
NO_TORCH = ("import runpy, sys\n"
            "sys.modules.update(dict.fromkeys(('torch', 'torchvision'), None))\n"
            "sys.argv = sys.argv[1:]\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')\n")


@dataclass(frozen=True)
class VerifySettings:
    max_slowdown: float = 1.5     # latency fails only above this many times the manifest's
    accuracy_tolerance: float = 0.2  # points allowed on a CPU with other instruction-set flags than the export's
    predict_samples: int = 8      # val samples predict.py is run on
    predict_timeout: float = 120.0

    def __post_init__(self) -> None:
        if self.max_slowdown < 1.0:
            raise ValueError(f"export.verify.max_slowdown={self.max_slowdown}; allowed: >= 1.0")
        if not 0.0 <= self.accuracy_tolerance <= 100.0:
            raise ValueError(f"export.verify.accuracy_tolerance={self.accuracy_tolerance}; allowed: 0 to 100 points")
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
    if model_name(manifest) not in listed:
        problems.append(f"the manifest lists no {model_name(manifest)}")
    if problems:
        return Check("files", False, "; ".join(problems))
    return Check("files", True, f"{len(listed)} files match their manifest sha256 ({', '.join(listed)})")


@dataclass(frozen=True)
class Expected:
    """One accuracy the manifest promises: on which split, which number, and the data it was measured on."""

    check: str
    split: str
    accuracy: float | None
    fingerprint: Mapping[str, Any] | None


def expectations(manifest: Mapping[str, Any]) -> list[Expected]:
    """The val and test accuracies of the manifest; a format-1 package measured one split, the test data."""
    metrics, at_export = manifest.get("metrics", {}), manifest.get("measured_at_export", {})
    splits = manifest.get("splits")
    if splits is None:
        return [Expected("accuracy", "test", metrics.get("accuracy"), manifest.get("eval_data")),
                Expected("test_accuracy", "test", None, None)]
    test = metrics.get("test_accuracy", at_export.get("test_accuracy"))
    return [Expected("accuracy", "val", metrics.get("accuracy"), splits.get("val")),
            Expected("test_accuracy", "test", test, splits.get("test"))]


def allowed_difference(manifest: Mapping[str, Any], tolerance: float) -> tuple[float, str]:
    """0 on a CPU with the export machine's flags; elsewhere ``tolerance`` points, with the reason."""
    recorded = manifest.get("cpu") if isinstance(manifest.get("cpu"), Mapping) else {}
    here = cpu_info()
    then, now = recorded.get("isa"), here["isa"]
    if then is None or now is None:
        unknown = "the manifest records" if then is None else "this machine shows"
        return tolerance, f"{unknown} no CPU instruction-set flags"
    if recorded.get("arch") not in (None, here["arch"]):
        return tolerance, f"this CPU is {here['arch']}, the export's was {recorded['arch']}"
    lacks, adds = sorted(set(then) - set(now)), sorted(set(now) - set(then))
    if not lacks and not adds:
        return 0.0, ""
    changes = [f"lacks {', '.join(lacks)}" if lacks else "", f"adds {', '.join(adds)}" if adds else ""]
    return tolerance, (f"this CPU ({here['model']}) {' and '.join(c for c in changes if c)} against the export's "
                       f"({recorded.get('model', 'unknown')}): ONNX Runtime runs other int8 kernels")


def model_name(manifest: Mapping[str, Any]) -> str:
    """The shipped model's file: ``model.onnx`` in packages from before targets."""
    return str(manifest.get("model", MODEL))


def check_accuracy(folder: Path, expected: Expected, data: EvalData | None, accuracy: Accuracy,
                   rule: tuple[float, str], manifest: Mapping[str, Any]) -> Check:
    """The manifest's number on the same split: exactly on the same CPU flags, within the tolerance elsewhere."""
    if expected.accuracy is None:
        return Check(expected.check, True, f"the manifest records no {expected.split} accuracy", skipped=True)
    if data is None:
        return Check(expected.check, True, f"no {expected.split} split given to re-measure it on", skipped=True)
    allowed, reason = rule
    wanted = float(expected.accuracy)
    measured = accuracy.measure(folder / model_name(manifest), data)["accuracy"]
    same_data = expected.fingerprint in (None, data_fingerprint(data))
    within = measured == wanted if allowed == 0 else abs(measured - wanted) <= allowed + 1e-9
    detail = (f"{measured:.4f}% measured on {len(data.labels)} {expected.split} samples, manifest {wanted:.4f}%; "
              f"{tolerance_text(allowed, reason)}")
    if not same_data:
        detail += (f" (the {expected.split} data differ from the export's: {expected.fingerprint['samples']} "
                   "samples, another sha256; pass the data overrides the search used)")
    return Check(expected.check, within and same_data, detail)


def tolerance_text(allowed: float, reason: str) -> str:
    if not reason:
        return "exact match required (same CPU flags as at export)"
    if not allowed:
        return f"exact match required by export.verify.accuracy_tolerance=0, although {reason}"
    return f"allowed {allowed:.2f} points because {reason}"


def check_latency(folder: Path, manifest: Mapping[str, Any], data: EvalData, settings: VerifySettings) -> Check:
    """Batch-1 median timed alone, as at export; only a slowdown beyond ``max_slowdown`` fails."""
    reference = {**manifest.get("metrics", {}), **manifest.get("measured_at_export", {})}.get("latency_ms")
    if reference is None:
        return Check("latency", True, "the manifest records no latency_ms", skipped=True)
    setup = {**{"warmup": Latency.warmup, "runs": Latency.runs, "threads": 1}, **(manifest.get("latency_setup") or {})}
    measured = interleaved([folder / model_name(manifest)], data, **setup)[0]["latency_ms"]
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


def run_predict(folder: Path, images: np.ndarray, timeout: float, *,
                torch_free: bool = True) -> subprocess.CompletedProcess[str]:
    """``predict.py images.npy`` in a fresh isolated interpreter with a bare environment and, unless the
    target's runtime needs it (ExecuTorch's Python runtime links libtorch), no torch."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "samples.npy"
        np.save(path, images)
        wrapper = NO_TORCH if torch_free else WITH_TORCH
        command = [sys.executable, "-I", "-c", wrapper, str(folder / PREDICT), str(path)]
        return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=timeout,
                              env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


def check_predict(folder: Path, manifest: Mapping[str, Any], data: EvalData, settings: VerifySettings) -> Check:
    """predict.py's printed classes equal ONNX Runtime's arg-max on the same val samples."""
    inputs = np.ascontiguousarray(data.inputs[:settings.predict_samples], dtype=np.float32)
    session = open_session(folder / model_name(manifest), threads=1)
    expected = [int(np.asarray(session.run(inputs[i:i + 1])).argmax()) for i in range(len(inputs))]
    raw = raw_images(inputs, manifest.get("preprocessing") or {})
    kind = f"{len(inputs)} raw uint8 images" if raw is not None else f"{len(inputs)} preprocessed samples"
    runtime = manifest.get("target", "onnxruntime")
    torch_free = target_named(runtime).torch_free
    done = run_predict(folder, raw if raw is not None else inputs, settings.predict_timeout, torch_free=torch_free)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Check("predict", False, f"predict.py exited {done.returncode} on {kind}: {last}")
    try:
        printed = [int(line.split()[1]) for line in done.stdout.strip().splitlines()]
    except (IndexError, ValueError):
        return Check("predict", False, f"predict.py printed unreadable lines: {done.stdout[:200]!r}")
    matches = sum(p == e for p, e in zip(printed, expected))
    ok = len(printed) == len(expected) and matches == len(expected)
    where = "no torch" if torch_free else "torch allowed: the runtime links it"
    return Check("predict", ok, f"predict.py ({where}) on {kind}: {matches}/{len(expected)} classes match "
                                f"{runtime}'s arg-max {expected}; printed {printed}")


def guarded_check(name: str, run: Callable[[], Check]) -> Check:
    """A check that crashes (missing file, unreadable model) is a FAIL line, not a traceback."""
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - every failure is reported the same way
        text = str(exc).strip().splitlines()
        return Check(name, False, f"{type(exc).__name__}: {text[0] if text else 'no details'}")


def verify_package(package: Path, *, val: EvalData, test: EvalData | None = None, accuracy: Accuracy | None = None,
                   settings: VerifySettings = VerifySettings()) -> list[Check]:
    """Run every check on ``package`` (a folder or a zip) against the search's ``val`` and ``test`` splits."""
    with tempfile.TemporaryDirectory(prefix="autosqueeze-verify-") as tmp:
        folder = open_package(Path(package), Path(tmp))
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return [Check("manifest", False, f"{MANIFEST} is unreadable: {exc}")]
        rule = allowed_difference(manifest, settings.accuracy_tolerance)
        splits = {"val": val, "test": test}
        scorer = accuracy or Accuracy()
        return [
            guarded_check("files", lambda: check_files(folder, manifest)),
            *(guarded_check(e.check, lambda e=e: check_accuracy(folder, e, splits[e.split], scorer, rule,
                                                                           manifest))
              for e in expectations(manifest)),
            guarded_check("latency", lambda: check_latency(folder, manifest, val, settings)),
            guarded_check("predict", lambda: check_predict(folder, manifest, val, settings)),
        ]
