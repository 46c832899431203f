"""Per-trial overheads outside fine-tuning, measured on the benchmark's own files.

Run after run.py, from the repository root:  .venv/bin/python experiments/mobilenet_v2/overhead.py

Times (median of 3, interleaved so a busy spell hits every variant alike) each non-training
step of a trial on three files the benchmark wrote: the fp32 baseline, the grid's int8 model and
its prune-0.25 int8 model. Writes overhead.md beside this file.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]

from evaluators.accuracy import Accuracy  # noqa: E402
from evaluators.base import EvalData  # noqa: E402
from evaluators.complexity import Complexity  # noqa: E402
from evaluators.latency import Latency  # noqa: E402
from evaluators.size import Size  # noqa: E402
from search.deploy.targets.onnxruntime import make_session  # noqa: E402
from search.trials.trial import sha256_of  # noqa: E402

HERE = Path(__file__).resolve().parent
RUN = ROOT / "outputs" / "mobilenet_v2"
FILES = {"fp32 baseline": RUN / "baseline" / "model.onnx",
         "int8 (grid 0/int8)": RUN / "mobilenet_v2-grid" / "trials" / "0001" / "model.onnx",
         "prune 0.25 + int8 (grid)": RUN / "mobilenet_v2-grid" / "trials" / "0003" / "model.onnx"}


def steps(data: EvalData) -> dict[str, Callable[[Path], object]]:
    return {"size, zstd level 19 (before)": lambda p: Size(level=19).measure(p, data),
            "size, zstd level 3 (after)": lambda p: Size(level=3).measure(p, data),
            "accuracy, 1000 images, 1 thread": lambda p: Accuracy(threads=1).measure(p, data),
            "latency, 10 + 100 runs": lambda p: Latency().measure(p, data),
            "complexity": lambda p: Complexity().measure(p, data),
            "ORT session creation": lambda p: make_session(p, threads=1),
            "sha256": sha256_of}


def main() -> None:
    rng = np.random.default_rng(0)
    data = EvalData(inputs=rng.standard_normal((1000, 3, 64, 64), dtype=np.float32),
                    labels=np.zeros(1000, dtype=np.int64))
    table = steps(data)
    seconds: dict[tuple[str, str], list[float]] = {}
    for _ in range(3):
        for step, fn in table.items():
            for label, path in FILES.items():
                start = time.perf_counter()
                fn(path)
                seconds.setdefault((step, label), []).append(time.perf_counter() - start)
    sizes = {label: {level: Size(level=level).measure(path, data)["compressed_bytes"] for level in (3, 19)}
             for label, path in FILES.items()}
    head = "| step | " + " | ".join(FILES) + " |\n|---|" + "---|" * len(FILES)
    rows = "\n".join(f"| {step} | " + " | ".join(f"{np.median(seconds[(step, label)]):.2f} s" for label in FILES)
                     + " |" for step in table)
    size_rows = "\n".join(f"| {label} | {Path(FILES[label]).stat().st_size:,} | {s[19]:,.0f} | {s[3]:,.0f} |"
                          for label, s in sizes.items())
    (HERE / "overhead.md").write_text(
        f"# Per-trial overheads outside fine-tuning (median of 3, seconds)\n\n"
        f"Command: `.venv/bin/python experiments/mobilenet_v2/overhead.py` (after run.py; same machine, "
        f"other jobs running)\n\n{head}\n{rows}\n\n"
        f"| file | .onnx bytes | zstd-19 bytes | zstd-3 bytes |\n|---|---|---|---|\n{size_rows}\n")
    print((HERE / "overhead.md").read_text())


if __name__ == "__main__":
    main()
