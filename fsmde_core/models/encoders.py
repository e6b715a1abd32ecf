"""The student's encoders by name: one place that maps ``StudentConfig.encoder`` to a network.

Every encoder returns five feature maps at strides 2, 4, 8, 16, 32 and says
their widths in ``.channels``, so the decoder does not care which one it got.
All use torchvision's module names, so ImageNet weights load by key
(:func:`fsmde_core.models.resnet.load_pretrained_encoder`).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from fsmde_core.models.mobilenet import mobilenet_v3_large
from fsmde_core.models.resnet import resnet18, resnet34

#: Encoder name -> builder (random, torchvision-style init).
ENCODERS: dict[str, Callable[[], nn.Module]] = {
    "mobilenetv3_large": mobilenet_v3_large,
    "resnet18": resnet18,
    "resnet34": resnet34,
}


def build_student_encoder(name: str) -> nn.Module:
    """The encoder called ``name``; an unknown name is a ValueError listing the valid ones."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; expected one of {sorted(ENCODERS)}")
    return ENCODERS[name]()
