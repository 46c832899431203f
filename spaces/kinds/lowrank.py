"""``lowrank``: a rank fraction per Linear or Conv2d layer, factorized by truncated SVD before fine-tuning.

A Linear (out × in) becomes ``in → r → out``; a k×k convolution becomes a k×k convolution to
``r`` channels followed by a 1×1 convolution to the original outputs (bias on the second), which
also covers 1×1 layers. The factorized module keeps the layer's name and holds the two factors
as ``<layer>.down`` and ``<layer>.up``, so a precision planned for the layer covers both ONNX nodes.

A fraction is offered on a layer only where its rank cuts the layer's multiply-accumulates:
``r·(in·k² + out) < out·in·k²``. It runs after pruning (rank 10 of the structure stage), on the
pruned widths; a fraction that no longer cuts MACs there leaves the layer whole.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

import torch
from torch import nn

from spaces.base import PlanError
from spaces.kinds.base import ApplyEnv, Choice, KindBase, ModelInfo, check_fraction, check_keys


@dataclass(frozen=True)
class LowRankSpec:
    """The rank fractions each layer may take (1.0 keeps it whole) and the layers never factorized."""

    fractions: tuple[float, ...] = (1.0, 0.5, 0.25)
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.fractions:
            raise PlanError("space.lowrank.fractions is empty; give fractions in (0, 1], 1.0 keeps a layer whole")
        object.__setattr__(self, "fractions", tuple(
            _fraction(f"space.lowrank.fractions[{i}]", f) for i, f in enumerate(self.fractions)))


class Factorized(nn.Module):
    """``up(down(x))``: a layer replaced by its two truncated-SVD factors."""

    def __init__(self, down: nn.Module, up: nn.Module) -> None:
        super().__init__()
        self.down, self.up = down, up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def _fraction(key: str, value: Any) -> float:
    number = check_fraction(key, value, low=0.0, high=1.0, what="rank fraction")
    if number == 0.0:
        raise PlanError(f"{key}: rank fraction 0 would remove the layer; allowed: (0, 1]")
    return number


def _shape(module: nn.Module) -> tuple[int, int, int] | None:
    """``(out, in·k², k²)`` of a layer this kind can factorize, else None."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features, 1
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        area = module.kernel_size[0] * module.kernel_size[1]
        return module.out_channels, module.in_channels * area, area
    return None


def rank_of(module: nn.Module, fraction: float) -> int | None:
    """The rank ``fraction`` gives ``module``, or None where it would not cut its MACs."""
    shape = _shape(module)
    if shape is None or fraction >= 1.0:
        return None
    out, fan_in, _ = shape
    rank = max(1, round(fraction * min(out, fan_in)))
    return rank if rank * (fan_in + out) < out * fan_in else None


@torch.no_grad()
def factorize(module: nn.Module, rank: int) -> Factorized:
    """The best rank-``rank`` approximation of ``module``'s weight, as two layers."""
    weight = module.weight.detach().reshape(module.weight.shape[0], -1).double()
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    root = s[:rank].sqrt()
    left, right = (u[:, :rank] * root).float(), (root[:, None] * vh[:rank]).float()
    bias = module.bias is not None
    if isinstance(module, nn.Linear):
        down, up = nn.Linear(module.in_features, rank, bias=False), nn.Linear(rank, module.out_features, bias=bias)
        down.weight.copy_(right)
        up.weight.copy_(left)
    else:
        down = nn.Conv2d(module.in_channels, rank, module.kernel_size, stride=module.stride, padding=module.padding,
                         dilation=module.dilation, bias=False, padding_mode=module.padding_mode)
        up = nn.Conv2d(rank, module.out_channels, 1, bias=bias)
        down.weight.copy_(right.reshape(rank, *module.weight.shape[1:]))
        up.weight.copy_(left[:, :, None, None])
    if bias:
        up.bias.copy_(module.bias)
    return Factorized(down, up).to(module.weight.device).train(module.training)


class LowRankKind(KindBase):
    name = "lowrank"
    stage = "structure"
    rank = 10  # after pruning: factors of pruned widths, never pruned factors
    neutral = 1.0
    finetune = True

    def spec(self, section: Mapping[str, Any]) -> LowRankSpec:
        s = dict(section)
        check_keys(self.name, s, [f.name for f in fields(LowRankSpec)])
        return LowRankSpec(fractions=tuple(s.get("fractions", LowRankSpec.fractions)),
                           exclude=tuple(s.get("exclude", ())))

    def check(self, key: str, value: Any) -> float:
        return _fraction(key, value)

    def knobs(self, info: ModelInfo, spec: LowRankSpec) -> tuple[Choice, ...]:
        from spaces.layers import check_names

        check_names("space.lowrank.exclude", spec.exclude, info.layers)
        modules = dict(info.model.named_modules())
        knobs = []
        for name in info.layers:
            offered = [f for f in spec.fractions if f == self.neutral or rank_of(modules[name], f) is not None]
            if name not in spec.exclude and any(f != self.neutral for f in offered):
                knobs.append(Choice(f"lowrank.{name}", tuple(dict.fromkeys([self.neutral, *offered]))))
        return tuple(knobs)

    def apply_model(self, model: nn.Module, values: Mapping[str, float], spec: LowRankSpec, env: ApplyEnv):
        for name, fraction in values.items():
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            layer = getattr(parent, child)
            rank = rank_of(layer, fraction)
            if rank is not None:
                setattr(parent, child, factorize(layer, rank))
        return model

    def describe(self, value: float) -> str:
        return "" if value == self.neutral else f"rank {value:g}"


KIND = LowRankKind()
