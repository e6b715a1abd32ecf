"""The distilled student: ResNet encoder + U-Net decoder + metric bin head.

One network with shared weights serves every camera of the rig: a surround
frame is simply a batch of B = n_cameras images. Depth is predicted as a
probability-weighted sum over K per-image bin centres in metres (AdaBins
style). The centres carry the metric scale (supervised by LiDAR through the
bin-centre loss) while the per-pixel probabilities carry the structure that
cross-interaction KD transfers from the teacher.

The module normalises its input itself (ImageNet mean/std held as buffers) so
that PyTorch, ONNX Runtime and TensorRT backends all receive the same
``[0, 1]`` RGB tensor and cannot disagree on preprocessing. ``forward`` has no
data-dependent Python control flow, so it traces and exports to ONNX.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as nnf

from fsmde_core.models.resnet import RESNET_LAYERS, ResNetEncoder, build_encoder

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: The encoder downsamples by 32; inputs must divide evenly so skips line up.
STUDENT_STRIDE = 32


@dataclass(frozen=True)
class StudentConfig:
    """Hyper-parameters that define the student's architecture and output range.

    Attributes:
        encoder: ``"resnet18"`` or ``"resnet34"``.
        num_bins: K, the number of adaptive depth bins per image.
        min_depth, max_depth: metric range in metres covered by the bins; every
            prediction lies in ``[min_depth, max_depth]``.
        decoder_channels: output channels of the four decoder stages (stride 16,
            8, 4, 2).
        input_height, input_width: the resolution the network is trained and
            exported at (multiples of 32).
        readout: how depth is read out of the bins: ``"log"`` (geometric
            mean of the centres, the default) or ``"linear"`` (AdaBins'
            arithmetic mean); see :func:`bin_expectation`.
    """

    encoder: str = "resnet18"
    num_bins: int = 64
    min_depth: float = 0.5
    max_depth: float = 80.0
    decoder_channels: tuple[int, int, int, int] = (256, 128, 64, 32)
    input_height: int = 384
    input_width: int = 640
    readout: str = "log"

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists; normalise before validating.
        object.__setattr__(self, "decoder_channels", tuple(int(c) for c in self.decoder_channels))
        if self.encoder not in RESNET_LAYERS:
            raise ValueError(f"encoder must be one of {sorted(RESNET_LAYERS)}, got {self.encoder!r}")
        if self.readout not in ("log", "linear"):
            raise ValueError(f"readout must be 'log' or 'linear', got {self.readout!r}")
        if int(self.num_bins) != self.num_bins or self.num_bins < 2:
            raise ValueError(f"num_bins must be an integer >= 2, got {self.num_bins!r}")
        if not 0.0 < self.min_depth < self.max_depth:
            raise ValueError(
                f"need 0 < min_depth < max_depth, got min_depth={self.min_depth}, max_depth={self.max_depth}"
            )
        if len(self.decoder_channels) != 4 or min(self.decoder_channels) < 1:
            raise ValueError(f"decoder_channels must be 4 positive ints, got {self.decoder_channels!r}")
        for name in ("input_height", "input_width"):
            value = getattr(self, name)
            if int(value) != value or value <= 0 or value % STUDENT_STRIDE:
                raise ValueError(f"{name} must be a positive multiple of {STUDENT_STRIDE}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (tuples become lists)."""
        out = asdict(self)
        out["decoder_channels"] = list(self.decoder_channels)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudentConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (catches typos in YAML)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown StudentConfig keys {unknown}; known keys are {sorted(known)}")
        return cls(**dict(data))


class StudentOutput(NamedTuple):
    """Everything the losses need from one forward pass.

    Attributes:
        depth: (B, 1, H, W) metric depth in metres, in ``[min_depth, max_depth]``:
            the bin expectation (in log depth, :func:`bin_expectation`) at
            stride 2, bilinearly upsampled.
        logits: (B, K, H/2, W/2) per-pixel bin logits z at stride 2 (CKD uses
            ``softmax(z / tau)`` at this resolution).
        centres: (B, K) bin centres in metres, strictly increasing per image.
        features: (B, C, H/16, W/16) first decoder stage (bottleneck fused with
            layer3); the student side of view-relational KD.
    """

    depth: torch.Tensor
    logits: torch.Tensor
    centres: torch.Tensor
    features: torch.Tensor


#: Channels per GroupNorm group in the decoder (groups = channels // this, at least 1).
DECODER_GROUP_CHANNELS = 8


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
        groups = max(1, out_ch // DECODER_GROUP_CHANNELS)
        super().__init__(nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1),
                         nn.GroupNorm(groups, out_ch), nn.ELU(inplace=True))


class UpBlock(nn.Module):
    """Upsample to the skip's resolution, concatenate the skip, two ConvELU."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = ConvELU(in_ch + skip_ch, out_ch)
        self.conv2 = ConvELU(out_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = nnf.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv2(self.conv1(torch.cat([x, skip], dim=1)))


class BinHead(nn.Module):
    """Per-image adaptive bin centres from the globally pooled bottleneck.

    widths = softplus(MLP(pool(f))) + eps, normalised to sum to
    ``max_depth - min_depth``; centres = ``min_depth + cumsum(w) - w / 2``.
    Positive widths make the centres strictly increasing and keep them inside
    ``(min_depth, max_depth)``, so they are metric by construction.
    """

    def __init__(self, in_ch: int, num_bins: int, min_depth: float, max_depth: float) -> None:
        super().__init__()
        self.min_depth = float(min_depth)
        self.span = float(max_depth - min_depth)
        hidden = max(num_bins * 2, 128)
        self.mlp = nn.Sequential(nn.Linear(in_ch, hidden), nn.GELU(), nn.Linear(hidden, num_bins))

    def forward(self, bottleneck: torch.Tensor) -> torch.Tensor:
        pooled = bottleneck.mean(dim=(2, 3))
        raw = nnf.softplus(self.mlp(pooled)) + 1e-3
        widths = self.span * raw / raw.sum(dim=1, keepdim=True)
        return self.min_depth + torch.cumsum(widths, dim=1) - 0.5 * widths


class SurroundDepthStudent(nn.Module):
    """Shared-weight metric depth network for a surround rig (batch = cameras).

    Input: (B, 3, H, W) RGB float in ``[0, 1]``. Output: :class:`StudentOutput`.
    """

    def __init__(self, config: StudentConfig | None = None) -> None:
        super().__init__()
        self.config = config or StudentConfig()
        cfg = self.config
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.encoder: ResNetEncoder = build_encoder(cfg.encoder)
        enc = self.encoder.channels  # (64, 64, 128, 256, 512) at strides 2..32
        d = cfg.decoder_channels
        self.up16 = UpBlock(enc[4], enc[3], d[0])
        self.up8 = UpBlock(d[0], enc[2], d[1])
        self.up4 = UpBlock(d[1], enc[1], d[2])
        self.up2 = UpBlock(d[2], enc[0], d[3])
        self.logit_head = nn.Conv2d(d[3], cfg.num_bins, kernel_size=3, padding=1)
        self.bin_head = BinHead(enc[4], cfg.num_bins, cfg.min_depth, cfg.max_depth)
        self.feature_channels: int = d[0]
        self.feature_stride: int = 16

    def forward(self, images: torch.Tensor) -> StudentOutput:
        x = (images - self.mean) / self.std
        f0, f1, f2, f3, f4 = self.encoder(x)
        centres = self.bin_head(f4)
        d16 = self.up16(f4, f3)
        d2 = self.up2(self.up4(self.up8(d16, f2), f1), f0)
        # The bins are resolved at stride 2 and only the 1-channel depth is
        # upsampled. Upsampling the K-channel logits first (as AdaBins does)
        # would run the softmax and the expectation on 4x the pixels and resize
        # K channels instead of one: 2.63 -> 2.22 s per 6x384x640 set on 2 CPU
        # cores for K = 64 (-16 %), and CKD runs at stride 2 too. Bilinear
        # upsampling is a convex combination, so depth stays in [min_depth, max_depth].
        logits = self.logit_head(d2)
        probs = torch.softmax(logits, dim=1)
        depth_half = bin_expectation(probs, centres, log_space=self.config.readout == "log")
        depth = nnf.interpolate(depth_half, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return StudentOutput(depth=depth, logits=logits, centres=centres, features=d16)


def bin_expectation(probs: torch.Tensor, centres: torch.Tensor, log_space: bool = True) -> torch.Tensor:
    """Depth read out of bin probabilities (B,K,h,w) and centres (B,K): exp(sum_k p_k log c_k).

    ``log_space=False`` gives AdaBins' sum_k p_k c_k (``StudentConfig.readout = "linear"``,
    kept as an ablation: a supervised-only student scored better with it — see
    bench/results/distill.md — while distilled ones scored better in log depth).

    The expectation is taken in log depth, not in depth (AdaBins' sum_k p_k c_k).
    Why: the centres of a driving scene grow roughly geometrically with k (a
    few near metres, many far ones), so an arithmetic mean over an uncertain
    distribution is pulled towards the far bins (Jensen) — and a student is
    most uncertain exactly on scenes it has not seen. Measured on held-out
    synthetic scenes (24 training scenes, seed 0, CKD + VRKD): median
    predicted/GT depth per image 1.15 with the arithmetic mean, 1.12 with
    this one; AbsRel 0.235 -> 0.227. The result still lies in
    [c_0, c_K-1] (a weighted geometric mean).
    Broadcast-multiply-sum rather than einsum: plainer ONNX for TensorRT.
    """
    if not log_space:
        return (probs * centres[:, :, None, None]).sum(dim=1, keepdim=True)
    return torch.exp((probs * torch.log(centres)[:, :, None, None]).sum(dim=1, keepdim=True))


class DepthOnly(nn.Module):
    """Wraps the student so the exported graph has one input and one output: depth."""

    def __init__(self, student: SurroundDepthStudent) -> None:
        super().__init__()
        self.student = student

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.student(images).depth


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
