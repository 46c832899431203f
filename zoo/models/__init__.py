"""Built-in models: a small ResNet for Fashion-MNIST, and torchvision-compatible MobileNets."""
from __future__ import annotations

from zoo.models.mobilenet import mobilenet_v2, mobilenet_v3_small
from zoo.models.resnet import resnet_small

__all__ = ["mobilenet_v2", "mobilenet_v3_small", "resnet_small"]
