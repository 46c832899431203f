"""resnet_small: size, shape, residual coupling as torch-pruning sees it, and a short training run."""
from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from torch import nn

from zoo.data import DataSplits
from zoo.models import resnet_small
from search.trials.finetune import FinetuneSettings, finetune


def out_pruned_convs(model: nn.Module) -> list[set[str]]:
    """For every dependency group, the convs whose *output* channels it prunes together."""
    names = {module: name for name, module in model.named_modules()}
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 1, 28, 28))
    groups = []
    for group in graph.get_all_groups(ignored_layers=[model.fc], root_module_types=[nn.Conv2d]):
        groups.append({names[dep.target.module] for dep, _ in group
                       if isinstance(dep.target.module, nn.Conv2d) and graph.is_out_channel_pruning_fn(dep.handler)})
    return groups


def test_size_and_forward() -> None:
    model = resnet_small()
    params = sum(p.numel() for p in model.parameters())
    assert 200_000 <= params <= 400_000
    macs, _ = tp.utils.count_ops_and_params(model, torch.randn(1, 1, 28, 28))
    assert macs < 8e6
    assert model.eval()(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    rgb = resnet_small(num_classes=5, in_channels=3, widths=(8, 16), blocks=(1, 1))
    assert rgb.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert isinstance(model.fc, nn.Linear)
    with pytest.raises(ValueError, match="blocks"):
        resnet_small(widths=(8, 16), blocks=(1,))


def test_residual_adds_couple_convs() -> None:
    groups = out_pruned_convs(resnet_small())
    assert any(len(g) > 1 for g in groups)
    # The stem and both identity blocks of layer1 add into one tensor: one group.
    assert {"conv1", "layer1.0.conv2", "layer1.1.conv2"} in groups
    assert {"layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2"} in groups


def test_pruning_keeps_a_working_model() -> None:
    model = resnet_small().eval()
    example = torch.randn(1, 1, 28, 28)
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=0.5, ignored_layers=[model.fc])
    pruner.step()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert sum(p.numel() for p in model.parameters()) < 0.4 * 331_770


def _accuracy(model: torch.nn.Module, inputs, labels) -> float:
    with torch.no_grad():
        return float((model.eval()(torch.as_tensor(inputs)).argmax(1) == torch.as_tensor(labels)).float().mean())


def test_short_training_lowers_the_loss(fashion_root: str) -> None:
    from zoo.data import idx_splits

    splits: DataSplits = idx_splits(root=fashion_root, train_limit=2000, eval_limit=500, calib_size=8)
    model = resnet_small()
    before = _accuracy(model, splits.test.inputs, splits.test.labels)
    curve = finetune(model, splits.train, FinetuneSettings(steps=50, batch_size=64, lr=4e-3, log_every=10))
    losses = [loss for _, loss, _ in curve]
    assert len(losses) == 5
    assert losses[-1] < 0.7 * losses[0]
    assert not model.training
    after = _accuracy(model, splits.test.inputs, splits.test.labels)
    assert after > max(0.5, before + 0.2)


def test_an_mlp_head_holds_the_fully_connected_layers_and_the_classifier_stays_last():
    from spaces.layers import head_name

    model = resnet_small(hidden=(64, 32)).eval()
    x = torch.zeros(2, 1, 28, 28)
    assert model(x).shape == (2, 10)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert linears == ["fc.0", "fc.2", "fc.4"] and head_name(model, x[:1]) == "fc.4"
    with pytest.raises(ValueError, match="hidden"):
        resnet_small(hidden=(0,))
