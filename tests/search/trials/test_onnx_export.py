"""Torch → single-file ONNX with a dynamic batch, and a readable error for what cannot be exported."""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx.external_data_helper import uses_external_data
from torch import nn

from search.trials.onnx_export import INPUT_NAME, OPSET, OUTPUT_NAME, ExportError, export_onnx
from spaces.pruning import prune
from tinynet import tiny_net


def trained_like(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so that folding them into the convs really matters."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
    return model


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return trained_like(tiny_net()).eval()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    path = export_onnx(model, torch.randn(1, 1, 28, 28), folder / "model.onnx")
    return folder, path


def session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_export_writes_one_self_contained_file(exported):
    folder, path = exported
    assert path == folder / "model.onnx"
    assert [p.name for p in folder.iterdir()] == ["model.onnx"]
    graph = onnx.load(str(path), load_external_data=False)
    assert graph.graph.initializer
    assert not any(uses_external_data(init) for init in graph.graph.initializer)
    onnx.checker.check_model(graph)


def test_names_opset_and_folded_batchnorm(exported):
    graph = onnx.load(str(exported[1]))
    assert [i.name for i in graph.graph.input] == [INPUT_NAME]
    assert [o.name for o in graph.graph.output] == [OUTPUT_NAME]
    assert next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) == OPSET
    ops = Counter(node.op_type for node in graph.graph.node)
    assert "BatchNormalization" not in ops  # folded into the convolutions
    assert ops["Conv"] == 6 and ops["Gemm"] == 1


def test_batch_axis_is_dynamic(exported):
    graph = onnx.load(str(exported[1]))
    for value in (graph.graph.input[0], graph.graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch" and not dims[0].HasField("dim_value")
    assert [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim[1:]] == [1, 28, 28]


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_runtime_matches_torch(model, exported, batch):
    inputs = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        expected = model(inputs).numpy()
    (got,) = session(exported[1]).run([OUTPUT_NAME], {INPUT_NAME: inputs.numpy()})
    assert got.shape == (batch, 10)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_export_puts_the_model_in_eval_mode(tmp_path):
    model = trained_like(tiny_net()).train()
    inputs = torch.randn(4, 1, 28, 28)
    path = export_onnx(model, inputs[:1], tmp_path / "m.onnx")
    assert not model.training
    with torch.no_grad():
        expected = model(inputs).numpy()
    np.testing.assert_allclose(session(path).run(None, {INPUT_NAME: inputs.numpy()})[0], expected, atol=1e-4,
                               rtol=1e-4)


def test_pruned_model_exports_with_its_smaller_shapes(model, tmp_path):
    x = torch.randn(1, 1, 28, 28)
    pruned = prune(model, {"layer1.conv2": 0.5, "layer2.conv1": 0.25}, x, ignored=["fc"])
    path = export_onnx(pruned, x, tmp_path / "pruned.onnx")
    graph = onnx.load(str(path))
    inits = {i.name: i for i in graph.graph.initializer}
    conv_out = sorted(inits[n.input[1]].dims[0] for n in graph.graph.node if n.op_type == "Conv")
    assert conv_out == sorted([8, 16, 8, 32, 24, 32])
    inputs = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        np.testing.assert_allclose(session(path).run(None, {INPUT_NAME: inputs.numpy()})[0], pruned(inputs).numpy(),
                                   atol=1e-4, rtol=1e-4)


class FFTNet(nn.Module):
    """``aten::fft_fft2`` has no symbolic in the legacy (TorchScript) exporter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.fft2(self.conv(x)).abs().mean((2, 3))


def test_unsupported_operator_is_a_one_line_export_error(tmp_path):
    with pytest.raises(ExportError) as info:
        export_onnx(FFTNet(), torch.randn(1, 1, 8, 8), tmp_path / "fft.onnx")
    message = str(info.value)
    assert message.startswith("ONNX export of FFTNet failed: ")
    assert "fft_fft2" in message and f"opset version {OPSET}" in message
    assert "\n" not in message
    assert info.value.__cause__ is not None  # the exporter's own exception stays attached
    assert isinstance(info.value, RuntimeError)


def test_export_error_for_a_model_that_fails_to_run(tmp_path):
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("first line\nsecond line")

    with pytest.raises(ExportError) as info:
        export_onnx(Broken(), torch.randn(1, 1, 8, 8), tmp_path / "broken.onnx")
    assert str(info.value) == "ONNX export of Broken failed: first line"


def test_a_failed_export_prints_nothing(tmp_path, capfd):
    with pytest.raises(ExportError):
        export_onnx(FFTNet(), torch.randn(1, 1, 8, 8), tmp_path / "fft.onnx")
    out, err = capfd.readouterr()
    assert "Torch IR graph" not in out + err
