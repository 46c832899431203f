"""Finding the layers a space can act on, and where they end up in the ONNX graph."""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import onnx
import torch
import torch_pruning as tp
from torch import nn

from spaces.base import PlanError

LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
ONNX_LAYER_OPS = ("Conv", "Gemm", "MatMul")


def layer_names(model: nn.Module) -> list[str]:
    """Dotted names of the Conv/Linear modules, in definition order."""
    return [name for name, module in model.named_modules() if isinstance(module, LAYER_TYPES)]


def layer_outputs(model: nn.Module, example_input: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """``(layer name, output)`` of every Conv/Linear call in one eval-mode forward pass, in call order."""
    called: list[tuple[str, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: called.append((n, out)))
             for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)]
    try:
        with torch.no_grad():
            model.eval()(example_input)
    finally:
        for hook in hooks:
            hook.remove()
    return called


def head_name(model: nn.Module, example_input: torch.Tensor) -> str:
    """The last Conv/Linear that runs in a forward pass: the classifier head."""
    called = [name for name, _ in layer_outputs(model, example_input)]
    if not called:
        raise PlanError("model has no Conv or Linear layer to compress")
    return called[-1]


def check_names(kind: str, names: Sequence[str], known: Sequence[str]) -> None:
    """Fail with the list of valid names when a config names a layer the model lacks."""
    missing = [n for n in names if n not in known]
    if missing:
        shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
        raise PlanError(f"{kind}: no layer named {', '.join(map(repr, missing))} in the model; layers are: {shown}")


def dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    return tp.DependencyGraph().build_dependency(model, example_inputs=example_input)


def prunable_groups(model: nn.Module, example_input: torch.Tensor, *,
                    ignored: Sequence[str] = ()) -> dict[str, list[str]]:
    """``{root layer: [coupled layers]}`` for every channel group torch-pruning can cut.

    The root is the layer torch-pruning keys the group's ratio on, so it is the knob name;
    members are listed so an exclusion of any coupled layer can be resolved to its group.
    """
    names = {module: name for name, module in model.named_modules()}
    modules = dict(model.named_modules())
    graph = dependency_graph(model, example_input)
    groups: dict[str, list[str]] = {}
    for group in graph.get_all_groups(ignored_layers=[modules[n] for n in ignored],
                                      root_module_types=list(LAYER_TYPES)):
        root = names[group[0].dep.target.module]
        members = {names[item.dep.target.module] for item in group
                   if isinstance(item.dep.target.module, LAYER_TYPES)}
        groups[root] = sorted(members)
    return groups


def _unqualified(dotted: str) -> str:
    """The exporter's scope for a module: its dotted name from the last non-numeric atom on
    (torch's ``_unqualified_variable_name``): ``layer1.0.downsample.0`` → ``downsample.0``."""
    atoms = dotted.split(".")
    for i in range(len(atoms) - 1, -1, -1):
        if not atoms[i].isnumeric():
            return ".".join(atoms[i:])
    return dotted


def _dotted_from_scope(node_name: str) -> str:
    """Legacy exporter node names look like ``/layer1/layer1.0/downsample/downsample.0/Conv``.

    Each scope is the module's :func:`_unqualified` name: a container's child repeats its
    parent's scope plus the index, any other child is its attribute name, so the dotted
    module name is rebuilt level by level.
    """
    dotted = ""
    for scope in node_name.strip("/").split("/")[:-1]:
        parent = _unqualified(dotted) if dotted else ""
        if parent and scope.startswith(parent + "."):
            dotted += scope[len(parent):]
        else:
            dotted = f"{dotted}.{scope}" if dotted else scope
    return dotted


def onnx_layer_nodes(model: onnx.ModelProto, layers: Sequence[str]) -> dict[str, onnx.NodeProto]:
    """``{layer name: its Conv/Gemm/MatMul node}`` for the named torch layers, each one node."""
    return {name: nodes[0] for name, nodes in onnx_layer_node_lists(model, layers).items()}


def onnx_layer_node_lists(model: onnx.ModelProto, layers: Sequence[str]) -> dict[str, list[onnx.NodeProto]]:
    """``{layer name: its Conv/Gemm/MatMul nodes}``: the layer's own node, or, where a knob kind replaced
    the layer by a module of several (``lowrank``: ``<layer>.down``, ``<layer>.up``), those of its children."""
    found = _layer_nodes_by_name(model)
    out = {}
    for name in layers:
        out[name] = found.get(name) or [n for scope, nodes in found.items()
                                        if scope.startswith(name + ".") for n in nodes]
    missing = [n for n in layers if not out[n]]
    if missing:
        raise PlanError(f"could not find ONNX nodes for layers {missing}; the graph names: {sorted(found)[:12]}")
    return out


def onnx_layer_names(model: onnx.ModelProto) -> list[str]:
    """The torch layer names of the graph's Conv/Gemm/MatMul nodes, sorted, for the exporter's node names."""
    return sorted(_layer_nodes_by_name(model))


def _layer_nodes_by_name(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if node.op_type in ONNX_LAYER_OPS:
            found.setdefault(_dotted_from_scope(node.name), []).append(node)
    return found


def onnx_node_layers(model: onnx.ModelProto) -> dict[str, frozenset[str]]:
    """``{node name: the Conv/Gemm/MatMul node names it belongs to}`` for every other node.

    An op belongs to the layer nodes nearest upstream of it, counted in ops (all of them on a
    tie): a layer owns its activation, the residual Add its output feeds and the pooling after
    it, but not a skip connection that arrives from an earlier layer. Ops ahead of the first
    layer (input preprocessing) belong to the nearest layers they feed.
    """
    nodes = list(model.graph.node)
    upstream = _nearest_layers(nodes, lambda n: n.input, lambda n: n.output)
    downstream = _nearest_layers(nodes[::-1], lambda n: n.output, lambda n: n.input)
    return {node.name: upstream.get(node.name) or downstream.get(node.name, frozenset())
            for node in nodes if node.op_type not in ONNX_LAYER_OPS}


def _nearest_layers(nodes: Sequence[onnx.NodeProto], sources: Callable[[onnx.NodeProto], Sequence[str]],
                    sinks: Callable[[onnx.NodeProto], Sequence[str]]) -> dict[str, frozenset[str]]:
    """Walk ``nodes`` in order along the tensors ``sources`` → ``sinks``: each node gets the layers
    fewest ops away on its ``sources`` side. In topological order this is upstream, reversed downstream."""
    reach: dict[str, tuple[int, frozenset[str]]] = {}  # tensor: (ops away, nearest layer nodes)
    found: dict[str, frozenset[str]] = {}
    for node in nodes:
        hops, layers = _closest(reach.get(t) for t in sources(node))
        found[node.name] = layers
        mark = (0, frozenset({node.name})) if node.op_type in ONNX_LAYER_OPS else (hops + 1, layers)
        if mark[1]:
            for tensor in sinks(node):
                reach[tensor] = _closest((reach.get(tensor), mark))
    return found


def _closest(candidates: Iterable[tuple[int, frozenset[str]] | None]) -> tuple[int, frozenset[str]]:
    """The fewest hops among ``candidates`` and the union of the layers at that distance."""
    present = [c for c in candidates if c is not None]
    if not present:
        return 0, frozenset()
    hops = min(h for h, _ in present)
    return hops, frozenset().union(*(layers for h, layers in present if h == hops))


def resolve_members(groups: Mapping[str, Sequence[str]], names: Sequence[str]) -> set[str]:
    """Group roots whose group contains any of ``names``."""
    wanted = set(names)
    return {root for root, members in groups.items() if wanted & set(members)}
