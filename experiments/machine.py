"""The machine and package versions a benchmark ran on, for its committed results."""
from __future__ import annotations

import os
import platform
from importlib import metadata

PACKAGES = ("torch", "torch-pruning", "onnx", "onnxruntime", "openvino", "executorch", "optuna", "mlflow", "hydra-core", "numpy")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def int8_dot() -> str:
    """Whether ONNX Runtime's int8 kernels here saturate, which decides int8 accuracy (spaces/quantization.py)."""
    from spaces.quantization import int8_saturates
    return ("none (AVX2 path, saturating: space.quant.reduce_range=auto uses 7-bit weights)" if int8_saturates()
            else "VNNI/AMX or not x86 (8-bit weights)")


def describe() -> dict[str, str]:
    info = {"cpu": cpu_model(), "cores": str(os.cpu_count()), "int8 dot product": int8_dot(),
            "python": platform.python_version(), "os": platform.platform()}
    for name in PACKAGES:
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = "not installed"
    return info


def markdown() -> str:
    return "\n".join(f"- {key}: {value}" for key, value in describe().items())
