"""Finding layers, their pruning groups, and their nodes in the exported ONNX graph."""
from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from search.trials.onnx_export import export_onnx
from spaces.base import PlanError
from spaces.layers import (_dotted_from_scope, check_names, head_name, layer_names, onnx_layer_names, onnx_layer_nodes,
                           prunable_groups, resolve_members)
from tinynet import tiny_net

TINY_LAYERS = ["stem.0", "layer1.conv1", "layer1.conv2", "down.0", "layer2.conv1", "layer2.conv2", "fc"]


class Block(nn.Module):
    """A module attribute holding Sequentials nested two deep, like ResNet's ``downsample``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)
        self.inner = nn.Sequential(nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()),
                                   nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.conv(x)) + x


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()),
            nn.Sequential(Block(4), nn.Sequential(nn.Conv2d(4, 6, 1))),
        )
        self.blocks = nn.ModuleList([Block(6), Block(6)])
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(6, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        for block in self.blocks:
            x = block(x)
        return self.classifier(x.mean((2, 3), keepdim=True))


NESTED_LAYERS = ["features.0.0", "features.1.0.conv", "features.1.0.inner.0.0", "features.1.0.inner.1",
                 "features.1.1.0", "blocks.0.conv", "blocks.0.inner.0.0", "blocks.0.inner.1", "blocks.1.conv",
                 "blocks.1.inner.0.0", "blocks.1.inner.1", "classifier.1"]


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return tiny_net().eval()


def test_layer_names_in_definition_order(model):
    assert layer_names(model) == TINY_LAYERS
    assert layer_names(Nested()) == NESTED_LAYERS
    assert layer_names(nn.Sequential(nn.ReLU(), nn.Conv1d(1, 2, 3), nn.Conv3d(2, 2, 1))) == ["1", "2"]


def test_head_is_the_last_layer_run(model, example_input):
    assert head_name(model, example_input) == "fc"
    assert head_name(Nested(), torch.randn(1, 1, 8, 8)) == "classifier.1"


def test_head_follows_the_forward_not_the_definition_order():
    class Reordered(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(4, 3)
            self.body = nn.Conv2d(1, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x).mean((2, 3)))

    reordered = Reordered()
    assert layer_names(reordered) == ["head", "body"]
    assert head_name(reordered, torch.randn(1, 1, 8, 8)) == "head"
    # the hooks are gone afterwards
    assert all(not m._forward_hooks for m in reordered.modules())


def test_head_of_a_model_without_layers_is_a_plan_error():
    with pytest.raises(PlanError, match="no Conv or Linear"):
        head_name(nn.Sequential(nn.Flatten()), torch.randn(1, 4))


def test_prunable_groups_couple_the_residual_convs(model, example_input):
    groups = prunable_groups(model, example_input, ignored=["fc"])
    assert groups == {
        # the stem, layer1.conv2 and the residual add share channels; conv1/down.0 read them
        "layer1.conv2": ["down.0", "layer1.conv1", "layer1.conv2", "stem.0"],
        "layer1.conv1": ["layer1.conv1", "layer1.conv2"],
        "layer2.conv2": ["down.0", "fc", "layer2.conv1", "layer2.conv2"],
        "layer2.conv1": ["layer2.conv1", "layer2.conv2"],
    }
    assert "fc" in prunable_groups(model, example_input)  # only ignoring the head keeps it out


def test_prunable_groups_drop_groups_with_an_ignored_output(model, example_input):
    groups = prunable_groups(model, example_input, ignored=["fc", "stem.0"])
    assert "layer1.conv2" not in groups
    assert set(groups) == {"layer1.conv1", "layer2.conv1", "layer2.conv2"}


def test_resolve_members(model, example_input):
    groups = prunable_groups(model, example_input, ignored=["fc"])
    assert resolve_members(groups, ["stem.0"]) == {"layer1.conv2"}
    assert resolve_members(groups, ["layer1.conv1"]) == {"layer1.conv1", "layer1.conv2"}
    assert resolve_members(groups, ["fc"]) == {"layer2.conv2"}
    assert resolve_members(groups, []) == set()


def test_check_names_accepts_known_names():
    check_names("space.prune.exclude", ["fc", "stem.0"], TINY_LAYERS)
    check_names("space.prune.exclude", [], TINY_LAYERS)


def test_check_names_error_lists_missing_and_valid_names():
    with pytest.raises(PlanError) as info:
        check_names("space.quant.exclude", ["fc", "layer3.conv1", "head"], TINY_LAYERS)
    message = str(info.value)
    assert message.startswith("space.quant.exclude")
    assert "'layer3.conv1'" in message and "'head'" in message
    assert "'fc'" not in message.split("layers are:")[0]
    for name in TINY_LAYERS:
        assert name in message.split("layers are:")[1]
    assert "..." not in message


def test_check_names_shortens_a_long_list():
    known = [f"block{i}.conv" for i in range(20)]
    with pytest.raises(PlanError) as info:
        check_names("k", ["nope"], known)
    listed = str(info.value).split("layers are:")[1]
    assert "block11.conv" in listed and "block12.conv" not in listed and listed.endswith(", ...")


@pytest.mark.parametrize("node_name, dotted", [
    ("/stem/stem.0/Conv", "stem.0"),
    ("/layer1/conv1/Conv", "layer1.conv1"),
    ("/fc/Gemm", "fc"),
    ("/layer1/layer1.0/conv1/Conv_1", "layer1.0.conv1"),
    ("/layer1/layer1.0/downsample/downsample.0/Conv", "layer1.0.downsample.0"),
    ("/features/features.1/features.1.0/inner/inner.0/inner.0.0/Conv", "features.1.0.inner.0.0"),
    ("/blocks.0/inner/inner.1/Conv", "blocks.0.inner.1"),
    ("/0/0.0/Conv", "0.0"),
    ("/1/conv/Conv", "1.conv"),
    ("/a/a/a.0/Conv", "a.a.0"),
    ("/ReduceMean", ""),
])
def test_dotted_from_scope(node_name, dotted):
    assert _dotted_from_scope(node_name) == dotted


def _layer_nodes(model: nn.Module, example: torch.Tensor, path) -> tuple[onnx.ModelProto, dict]:
    graph = onnx.load(str(export_onnx(model, example, path)))
    return graph, onnx_layer_nodes(graph, layer_names(model))


def _weight_of(graph: onnx.ModelProto, node: onnx.NodeProto):
    inits = {init.name: init for init in graph.graph.initializer}
    return onnx.numpy_helper.to_array(inits[node.input[1]])


def test_onnx_layer_nodes_maps_every_tiny_net_layer(model, example_input, tmp_path):
    graph, nodes = _layer_nodes(model, example_input, tmp_path / "tiny.onnx")
    assert list(nodes) == TINY_LAYERS
    assert {name: node.op_type for name, node in nodes.items()} == {
        **{name: "Conv" for name in TINY_LAYERS[:-1]}, "fc": "Gemm"}
    assert len({node.name for node in nodes.values()}) == len(TINY_LAYERS)
    # each node really is its layer: the output channel count matches the module
    modules = dict(model.named_modules())
    for name, node in nodes.items():
        assert _weight_of(graph, node).shape[0] == modules[name].weight.shape[0], name


def test_onnx_layer_nodes_maps_nested_sequentials(tmp_path):
    torch.manual_seed(0)
    nested = Nested().eval()
    graph, nodes = _layer_nodes(nested, torch.randn(1, 1, 8, 8), tmp_path / "nested.onnx")
    assert list(nodes) == NESTED_LAYERS
    modules = dict(nested.named_modules())
    for name, node in nodes.items():
        # no BatchNorm here, so the exported weight is the module's weight itself
        torch.testing.assert_close(torch.from_numpy(_weight_of(graph, node).copy()),
                                   modules[name].weight.detach(), msg=name)


def test_onnx_layer_names_are_the_torch_layer_names(model, example_input, tmp_path):
    graph = onnx.load(str(export_onnx(model, example_input, tmp_path / "tiny.onnx")))
    assert onnx_layer_names(graph) == sorted(TINY_LAYERS)
    nested = Nested().eval()
    graph = onnx.load(str(export_onnx(nested, torch.randn(1, 1, 8, 8), tmp_path / "nested.onnx")))
    assert onnx_layer_names(graph) == sorted(NESTED_LAYERS)


def test_onnx_layer_nodes_subset_and_missing_layer(model, example_input, tmp_path):
    graph = onnx.load(str(export_onnx(model, example_input, tmp_path / "tiny.onnx")))
    assert list(onnx_layer_nodes(graph, ["fc", "stem.0"])) == ["fc", "stem.0"]
    assert onnx_layer_nodes(graph, []) == {}
    with pytest.raises(PlanError) as info:
        onnx_layer_nodes(graph, ["fc", "layer3.conv1"])
    assert "layer3.conv1" in str(info.value)
    assert "stem.0" in str(info.value)  # the names the graph does have
