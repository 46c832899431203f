"""A tiny residual CNN: enough for coupled pruning groups, fast enough for tests."""
from __future__ import annotations

import torch
from torch import nn


class TinyBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class TinyNet(nn.Module):
    """Two stages with residual adds."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = TinyBlock(16)
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.layer2 = TinyBlock(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.down(self.layer1(self.stem(x))))
        return self.fc(x.mean((2, 3)))


def tiny_net(num_classes: int = 10) -> TinyNet:
    torch.manual_seed(0)
    return TinyNet(num_classes)


def tiny_net_from(path: str, num_classes: int = 10) -> TinyNet:
    """A factory that returns a trained model: it loads its own weights (for ``model.trained=true``)."""
    model = TinyNet(num_classes)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


class SpectralNet(nn.Module):
    """Uses an FFT, which the ONNX exporter cannot express."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.fft.fft2(self.conv(x)).abs().mean((2, 3)))
