"""A small ResNet for 28x28 greyscale images (Fashion-MNIST), the default model to compress.

It is built to exercise structured pruning: the residual adds tie the output
channels of every block in a stage (and its projection shortcut) together, so
torch-pruning's dependency graph must prune them as one group. Module names
follow torchvision's ResNet (``conv1``, ``layer1.0.conv2``, ``layer2.0.downsample.0``,
``fc``) so per-layer knobs read the same as on a torchvision model.

A stride-2 stem takes 28x28 to 14x14 at once and each later stage halves it again,
so most parameters sit at 4x4 and 2x2 where they cost few MACs: that keeps the
baseline trainable in about 90 seconds on two CPU cores.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut (identity, or 1x1 conv-BN when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetSmall(nn.Module):
    """Stride-2 stem conv, one stage per entry of ``widths`` (each after the first halves
    the resolution), global average pool, and a classifier ``fc``: one linear layer, or an MLP
    with ``hidden`` widths."""

    def __init__(self, *, num_classes: int, in_channels: int, widths: Sequence[int],
                 blocks: Sequence[int], stem_channels: int, hidden: Sequence[int] = ()) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, stem_channels, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)
        channels = stem_channels
        for index, (width, count) in enumerate(zip(widths, blocks), start=1):
            stage = []
            for block in range(count):
                stride = 2 if block == 0 and index > 1 else 1
                stage.append(BasicBlock(channels, width, stride=stride))
                channels = width
            self.add_module(f"layer{index}", nn.Sequential(*stage))
        self.num_stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes) if not hidden else mlp_head(channels, hidden, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # Start each residual branch near zero so the untrained net is close to its shortcuts.
        for module in self.modules():
            if isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for index in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{index}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def mlp_head(channels: int, hidden: Sequence[int], num_classes: int) -> nn.Sequential:
    """Linear + ReLU per ``hidden`` width, then the classifier: ``fc.0``, ``fc.2``, ... ``fc.<2·len(hidden)>``."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(channels, width), nn.ReLU(inplace=True)]
        channels = width
    return nn.Sequential(*layers, nn.Linear(channels, num_classes))


def resnet_small(*, num_classes: int = 10, in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 64, 128),
                 blocks: tuple[int, ...] | None = None, stem_channels: int | None = None,
                 hidden: tuple[int, ...] = ()) -> ResNetSmall:
    """The built-in Fashion-MNIST ResNet: about 0.33 M parameters and 5.4 M MACs at 1x28x28.

    ``widths`` gives the channels of each stage. The stem is a stride-2 3x3 conv with
    ``stem_channels`` (default ``widths[0]``, so the stem joins layer1's residual
    group); every stage after the first halves the resolution (28 -> 14, 14, 7, 4, 2).
    ``blocks`` is the number of residual blocks per stage (default: 2 in the first
    two stages, 1 after). ``hidden`` makes the classifier an MLP with those widths: the
    fully connected layers where low-rank factorization and weight sharing pay most.
    """
    widths = tuple(int(w) for w in widths)
    if blocks is None:
        blocks = tuple(2 if i < 2 else 1 for i in range(len(widths)))
    blocks = tuple(int(b) for b in blocks)
    if not widths or any(w < 1 for w in widths):
        raise ValueError(f"resnet_small: widths={widths!r}; give one positive channel count per stage")
    if len(blocks) != len(widths) or any(b < 1 for b in blocks):
        raise ValueError(f"resnet_small: blocks={blocks!r}; give one positive block count per stage "
                         f"({len(widths)} stages)")
    stem = widths[0] if stem_channels is None else int(stem_channels)
    if num_classes < 1 or in_channels < 1 or stem < 1:
        raise ValueError("resnet_small: num_classes, in_channels and stem_channels must be positive")
    hidden = tuple(int(h) for h in hidden)
    if any(h < 1 for h in hidden):
        raise ValueError(f"resnet_small: hidden={hidden!r}; give positive widths for the MLP head, or none")
    return ResNetSmall(num_classes=num_classes, in_channels=in_channels, widths=widths,
                       blocks=blocks, stem_channels=stem, hidden=hidden)
