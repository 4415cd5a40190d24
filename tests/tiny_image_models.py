"""Tiny image classifiers for the image task's tests, named as ``tiny_image_models:NAME``."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn


def tiny_cnn(num_classes: int, width: int = 4, in_channels: int = 3) -> nn.Sequential:
    """A 2-block CNN as a named chain: stem, block, pool, head (its stages by default)."""
    return nn.Sequential(
        OrderedDict(
            stem=nn.Sequential(
                nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()
            ),
            block=nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU()),
            pool=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
            head=nn.Linear(width, num_classes),
        )
    )


class TwoPath(nn.Module):
    """Not a chain: its output adds a skip path, so no stage list describes it."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(3, 3)

    def forward(self, x):  # type: ignore[no-untyped-def]
        pooled = self.pool(x)
        return self.head(pooled) + pooled


def two_path() -> TwoPath:
    """Three classes, fixed (no num_classes argument)."""
    return TwoPath()
