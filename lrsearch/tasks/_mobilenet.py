"""MobileNetV2 (Sandler et al. 2018), laid out so that its ``state_dict`` keys match the ImageNet
weights file ``mobilenet_v2-b0353104.pth``.

The layout, by parameter name:

- ``features.0``: the stem, a 3x3 stride-2 convolution (3 -> 32 channels), BatchNorm, ReLU6
  (``features.0.0`` conv, ``features.0.1`` norm).
- ``features.1`` .. ``features.17``: inverted residual blocks. Each has ``conv``, a ``Sequential``
  of an optional 1x1 expansion (``ConvNormAct``), a 3x3 depthwise ``ConvNormAct``, a 1x1 linear
  projection convolution and its BatchNorm; so ``features.1.conv.{0.0,0.1,1,2}`` (no expansion)
  and ``features.i.conv.{0.0,0.1,1.0,1.1,2,3}`` for the others. A block adds its input back when
  it keeps both the resolution and the width.
- ``features.18``: the last 1x1 convolution (320 -> 1280 channels), BatchNorm, ReLU6.
- ``classifier``: dropout, then ``classifier.1``, a linear layer over the average-pooled features.

Blocks by output stride (a 32 px input ends at a 1x1 map):

====================  ========  ========
blocks                channels  stride
====================  ========  ========
``features.0-1``      32, 16    2
``features.2-3``      24        4
``features.4-6``      32        8
``features.7-13``     64, 96    16
``features.14-17``    160, 320  32
``features.18``       1280      32
====================  ========  ========
"""

from __future__ import annotations

import torch
from torch import nn

# (expansion t, output channels c, blocks n, first block's stride s): the paper's table 2.
INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
DROPOUT = 0.2


def init_linear(linear: nn.Linear) -> None:
    """Small weights, zero bias: a fresh head's first logits do not swamp pretrained features."""
    nn.init.normal_(linear.weight, 0.0, 0.01)
    nn.init.zeros_(linear.bias)


class ConvNormAct(nn.Sequential):
    """Convolution without bias, BatchNorm, ReLU6: children ``0``, ``1``, ``2``."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__(
            nn.Conv2d(
                in_ch, out_ch, kernel, stride, padding=(kernel - 1) // 2, groups=groups, bias=False
            ),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """Expand (1x1), filter (3x3 depthwise), project (1x1, linear); a skip when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.use_skip = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvNormAct(in_ch, hidden, kernel=1))
        layers += [
            ConvNormAct(hidden, hidden, kernel=3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            # No activation after the projection: the paper's linear bottleneck.
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_skip else out


class MobileNetV2(nn.Module):
    """MobileNetV2, width 1.0: ImageNet-normalised ``(N, 3, H, W)`` in, ``n_classes`` logits out.

    Args:
        n_classes: Width of the classifier (1000 for the ImageNet weights).
    """

    def __init__(self, n_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvNormAct(3, STEM_CHANNELS, kernel=3, stride=2)]
        in_ch = STEM_CHANNELS
        for expansion, out_ch, n, stride in INVERTED_RESIDUAL_SETTING:
            for i in range(n):
                layers.append(InvertedResidual(in_ch, out_ch, stride if i == 0 else 1, expansion))
                in_ch = out_ch
        layers.append(ConvNormAct(in_ch, LAST_CHANNELS, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(DROPOUT), nn.Linear(LAST_CHANNELS, n_classes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The usual MobileNetV2 initialisation (pretrained weights replace all but the head)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                init_linear(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x)
