"""The student's U-Net decoder stages: upsample, concatenate the skip, two conv blocks.

Two kinds of block, chosen per student (``StudentConfig.decoder_block``):
``conv`` (3x3 conv, the pre-family student) and ``dwsep`` (depthwise 3x3 +
pointwise 1x1, ~8x fewer FLOPs at the same widths: what lets a mobile encoder
keep a decoder that does not cost more than itself; measured in
bench/results/student.md).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as nnf

#: Channels per GroupNorm group in the decoder (groups = channels // this, at least 1).
DECODER_GROUP_CHANNELS = 8

#: The kinds of decoder block a student may use.
DECODER_BLOCKS = ("conv", "dwsep")


def _norm_elu(channels: int) -> list[nn.Module]:
    """GroupNorm + ELU (see :class:`ConvELU` for why a normalisation)."""
    return [nn.GroupNorm(max(1, channels // DECODER_GROUP_CHANNELS), channels), nn.ELU(inplace=True)]


class ConvELU(nn.Sequential):
    """3x3 conv + GroupNorm + ELU.

    Why a normalisation: without one, 2 of the last 4 supervised-only
    students trained on synthetic data collapsed (every pixel's softmax
    saturated on one bin by step 80, depth flat, held-out AbsRel 0.9-1.0; see
    bench/results/distill.md); with it none of 3 did, and even lr 1.0 trains
    on. Nothing kept the decoder's activations, and so
    the logits, at a scale where the softmax still passes gradient. AdaBins
    normalises its decoder with BatchNorm; GroupNorm does the same job without
    depending on the batch (6 cameras in training, 6 or fewer at inference).
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1), *_norm_elu(out_ch))


class SeparableConvELU(nn.Sequential):
    """Depthwise 3x3 + pointwise 1x1 + GroupNorm + ELU: :class:`ConvELU` at ~1/8 of its FLOPs."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(nn.Conv2d(in_ch, in_ch, kernel_size=3, padding=1, groups=in_ch, bias=False),
                         nn.Conv2d(in_ch, out_ch, kernel_size=1), *_norm_elu(out_ch))


def conv_block(kind: str, in_ch: int, out_ch: int) -> nn.Module:
    """One decoder conv block of ``kind`` (``conv`` or ``dwsep``)."""
    if kind == "dwsep":
        return SeparableConvELU(in_ch, out_ch)
    if kind == "conv":
        return ConvELU(in_ch, out_ch)
    raise ValueError(f"decoder block must be one of {DECODER_BLOCKS}, got {kind!r}")


class UpBlock(nn.Module):
    """Upsample to the skip's resolution, concatenate the skip, two conv blocks."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, kind: str = "conv") -> None:
        super().__init__()
        self.conv1 = conv_block(kind, in_ch + skip_ch, out_ch)
        self.conv2 = conv_block(kind, out_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = nnf.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv2(self.conv1(torch.cat([x, skip], dim=1)))
