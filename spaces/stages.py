"""Resolution stages: the layers that run at one spatial size, so a search can move them together.

A CNN spends its parameters and its compute in different places: the early, high-resolution
layers hold few weights and most of the MACs, the late ones the reverse. A good plan therefore
treats a stage alike (the best MobileNetV2 plan known prunes every group of the two last stages
by one ratio), and per-knob mutation over dozens of knobs almost never makes such a move.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from spaces.layers import layer_outputs


def output_resolutions(model: nn.Module, example_input: torch.Tensor) -> dict[str, str]:
    """``{layer name: "HxW" of its output}`` for every Conv/Linear that runs; ``"1"`` for a vector."""
    seen: dict[str, str] = {}
    for name, output in layer_outputs(model, example_input):
        spatial = tuple(output.shape[2:]) if output.dim() > 2 else ()
        seen.setdefault(name, "x".join(map(str, spatial)) or "1")
    return seen


def stage_blocks(knob_layers: Mapping[str, str], resolutions: Mapping[str, str]) -> tuple[tuple[str, ...], ...]:
    """Knob names grouped by kind and by the resolution of their layer, in knob order.

    ``knob_layers`` maps a knob name (``prune.features.11.conv.0.0``) to the layer it acts on.
    A block holds knobs of one kind only: a move sets a block to one value, and a ratio and a
    precision are not one value. Blocks of a single knob are left out: ordinary mutation covers them.
    """
    blocks: dict[tuple[str, str], list[str]] = {}
    for knob, layer in knob_layers.items():
        if layer in resolutions:
            blocks.setdefault((knob.partition(".")[0], resolutions[layer]), []).append(knob)
    return tuple(tuple(names) for names in blocks.values() if len(names) > 1)
