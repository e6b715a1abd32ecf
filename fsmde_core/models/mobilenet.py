"""MobileNetV3-Large encoder in plain torch, key-compatible with torchvision.

The mobile-class encoder of the ``lite`` and ``base`` students: at 384x640 it
costs ~2.2 GFLOPs where ResNet-18 costs 17.8 (see bench/results/student.md).
torchvision cannot be installed next to the CPU torch build this project pins,
so the network is written here with ``torchvision.models.mobilenet_v3_large``'s
module names (``features.N.block.M...``, ``fc1``/``fc2`` in squeeze-excitation,
BatchNorm eps 1e-3) so that a user's ImageNet state_dict loads by key with
:func:`fsmde_core.models.resnet.load_pretrained_encoder`. The classifier
(``classifier.*``) is absent: a dense-prediction encoder has no use for it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as nnf

#: torchvision's MobileNetV3 BatchNorm eps (ImageNet running stats were computed with it).
BN_EPS = 1e-3
#: PyTorch's default, not torchvision's 0.01: momentum is a training setting, not part of the weights, and
#: at 0.01 the running stats of a few-hundred-step distillation run still lag the batch statistics, so the
#: student scored in eval mode differs from the one trained (demo: held-out AbsRel 1.33 at 0.01).
BN_MOMENTUM = 0.1


class Bneck(NamedTuple):
    """One inverted-residual block of torchvision's ``_mobilenet_v3_conf("mobilenet_v3_large")``."""

    in_ch: int
    kernel: int
    expanded: int
    out_ch: int
    use_se: bool
    hardswish: bool
    stride: int


#: The 15 blocks (features.1..15) of MobileNetV3-Large, as in torchvision.
LARGE_BLOCKS: tuple[Bneck, ...] = (
    Bneck(16, 3, 16, 16, False, False, 1),
    Bneck(16, 3, 64, 24, False, False, 2),
    Bneck(24, 3, 72, 24, False, False, 1),
    Bneck(24, 5, 72, 40, True, False, 2),
    Bneck(40, 5, 120, 40, True, False, 1),
    Bneck(40, 5, 120, 40, True, False, 1),
    Bneck(40, 3, 240, 80, False, True, 2),
    Bneck(80, 3, 200, 80, False, True, 1),
    Bneck(80, 3, 184, 80, False, True, 1),
    Bneck(80, 3, 184, 80, False, True, 1),
    Bneck(80, 3, 480, 112, True, True, 1),
    Bneck(112, 3, 672, 112, True, True, 1),
    Bneck(112, 5, 672, 160, True, True, 2),
    Bneck(160, 5, 960, 160, True, True, 1),
    Bneck(160, 5, 960, 160, True, True, 1),
)

#: Index into ``features`` whose output is the feature map at stride 2, 4, 8, 16, 32.
TAPS: tuple[int, int, int, int, int] = (1, 3, 6, 12, 16)
LAST_CHANNELS = 960


def _make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's channel rounding (the SE squeeze width depends on it)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


class ConvBNAct(nn.Sequential):
    """torchvision's ``Conv2dNormActivation``: keys ``0`` (conv, no bias) and ``1`` (BN)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 activation: type[nn.Module] | None = nn.Hardswish) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch, eps=BN_EPS, momentum=BN_MOMENTUM),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """torchvision's ``SqueezeExcitation`` with a hard-sigmoid gate (keys ``fc1``, ``fc2``)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = nnf.adaptive_avg_pool2d(x, 1)
        scale = nnf.hardsigmoid(self.fc2(nnf.relu(self.fc1(scale))), inplace=True)
        return x * scale


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise (kxk), optional SE, project (1x1); residual when shapes allow."""

    def __init__(self, spec: Bneck) -> None:
        super().__init__()
        act = nn.Hardswish if spec.hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if spec.expanded != spec.in_ch:
            layers.append(ConvBNAct(spec.in_ch, spec.expanded, activation=act))
        layers.append(ConvBNAct(spec.expanded, spec.expanded, spec.kernel, spec.stride, groups=spec.expanded,
                                activation=act))
        if spec.use_se:
            layers.append(SqueezeExcitation(spec.expanded, _make_divisible(spec.expanded // 4)))
        layers.append(ConvBNAct(spec.expanded, spec.out_ch, activation=None))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = spec.stride == 1 and spec.in_ch == spec.out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


class MobileNetV3Encoder(nn.Module):
    """MobileNetV3-Large trunk returning five features at strides 2, 4, 8, 16, 32.

    The input is expected to be ImageNet-normalised already (the student does it).
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(3, 16, 3, stride=2)]
        layers += [InvertedResidual(spec) for spec in LARGE_BLOCKS]
        layers.append(ConvBNAct(LARGE_BLOCKS[-1].out_ch, LAST_CHANNELS))
        self.features = nn.Sequential(*layers)
        self.channels: tuple[int, ...] = (16, 24, 40, 112, LAST_CHANNELS)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's init for MobileNetV3, so training from scratch behaves the same.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps: list[torch.Tensor] = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                taps.append(x)
        return taps


def mobilenet_v3_large() -> MobileNetV3Encoder:
    """MobileNetV3-Large encoder (3.0 M parameters without the classifier)."""
    return MobileNetV3Encoder()
