"""A tiny CNN exported to ONNX (fp32, QDQ int8, fixed batch 1) shared by the evaluator tests.

Layers and their counts after BN folding (input 1x16x16, all convs keep or halve 16x16):
  stem   conv 1->8 3x3 (+BN)          params 8*9+8=80      macs 8*16*16*9=18432
  block  conv 8->8 3x3 (+BN), +skip   params 8*8*9+8=584   macs 8*16*16*72=147456
  dw     conv 8->8 3x3 s2 g8 (+BN)    params 8*9+8=80      macs 8*8*8*9=4608
  pw     conv 8->16 1x1 (bias)        params 8*16+16=144   macs 16*8*8*8=8192
  fc     linear 16->10                params 160+10=170    macs 160
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from torch import nn

from evaluators.base import EvalData

class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False),
                                nn.BatchNorm2d(8), nn.ReLU())
        self.pw = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        x = torch.relu(self.pw(self.dw(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class _Reader(CalibrationDataReader):
    def __init__(self, inputs: np.ndarray) -> None:
        self._it = iter([{"input": inputs[i:i + 1]} for i in range(len(inputs))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def export(model: nn.Module, path: Path, *, batch: int | None = None) -> Path:
    """Export with a dynamic batch axis, or with the batch fixed to ``batch``."""
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if batch is None else None
    with warnings.catch_warnings():  # the legacy exporter is deprecated, and ~10x faster here
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, torch.zeros(batch or 1, 1, 16, 16), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"], dynamic_axes=axes)
    return path


@pytest.fixture(scope="session")
def torch_model() -> TinyCNN:
    torch.manual_seed(0)
    model = TinyCNN()
    for module in model.modules():  # non-trivial BN statistics so folding really changes weights
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture(scope="session")
def inputs() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((300, 1, 16, 16)).astype(np.float32)


@pytest.fixture(scope="session")
def models(torch_model: TinyCNN, inputs: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``fp32``, ``qdq`` (int8 QDQ, per channel), ``fixed1`` and ``fixed4`` (batch fixed) ONNX files."""
    root = tmp_path_factory.mktemp("tiny")
    fp32 = export(torch_model, root / "fp32.onnx")
    qdq = root / "qdq.onnx"
    quantize_static(fp32, qdq, _Reader(inputs[:32]), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    return {"fp32": fp32, "qdq": qdq, "fixed1": export(torch_model, root / "fixed1.onnx", batch=1),
            "fixed4": export(torch_model, root / "fixed4.onnx", batch=4)}


@pytest.fixture(scope="session")
def data(inputs: np.ndarray) -> EvalData:
    return EvalData(inputs, np.zeros(len(inputs), dtype=np.int64))
