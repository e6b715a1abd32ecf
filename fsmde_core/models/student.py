"""The distilled student family: an encoder + U-Net decoder + metric bin head.

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

from fsmde_core.models.decoder import DECODER_BLOCKS, UpBlock
from fsmde_core.models.encoders import ENCODERS, build_student_encoder
from fsmde_core.models.retinex import RetinexInput

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: How depth is read out of the bins (:func:`bin_expectation`): log depth, or AdaBins' arithmetic mean.
READOUTS: tuple[str, ...] = ("log", "linear")

#: The encoder downsamples by 32; inputs must divide evenly so skips line up.
STUDENT_STRIDE = 32


#: The student family (``student.preset``): architecture fields a preset fills in where the
#: config leaves them unset (None); an explicit key always wins. Which to choose for which
#: hardware, and what each costs, is in README "Student" and bench/results/student.md.
#: ``legacy`` is the student before the family existed (issue 14): a run directory whose
#: student.json has no preset was trained with it.
PRESETS: dict[str, dict[str, Any]] = {
    "lite": {"encoder": "mobilenetv3_large", "num_bins": 32, "decoder_channels": (64, 32, 24),
             "decoder_block": "conv"},
    "base": {"encoder": "mobilenetv3_large", "num_bins": 64, "decoder_channels": (128, 64, 48, 24),
             "decoder_block": "dwsep"},
    "large": {"encoder": "resnet34", "num_bins": 64, "decoder_channels": (256, 128, 64, 32),
              "decoder_block": "dwsep"},
    "legacy": {"encoder": "resnet18", "num_bins": 64, "decoder_channels": (256, 128, 64, 32),
               "decoder_block": "conv"},
}

#: AdamW peak learning rate per preset, used where ``optim.lr`` is null (the shipped tiny config).
#: Measured on the distillation benchmark (300 steps from random weights, held-out AbsRel, seed 0;
#: bench/results/student.md): MobileNetV3 wants a far higher rate than ResNet (base: 0.333 at 3e-4,
#: 0.239 at 1e-3, 0.222 at 2e-3, 0.202 at 4e-3), ResNet-18 the opposite (0.212 at 3e-4, 0.253 at 1e-3).
PRESET_LEARNING_RATES: dict[str, float] = {"lite": 4e-3, "base": 4e-3, "large": 3e-4, "legacy": 3e-4}

#: The preset of a StudentConfig built without one.
DEFAULT_PRESET = "base"

#: The preset of a checkpoint written before presets existed.
PRESETLESS_CHECKPOINT_PRESET = "legacy"

#: Decoder stages at stride 16, 8, 4, 2: 3 widths resolve the bins at stride 4, 4 widths at stride 2.
DECODER_STAGE_STRIDES = (16, 8, 4, 2)


@dataclass(frozen=True)
class StudentConfig:
    """Hyper-parameters that define the student's architecture and output range.

    Attributes:
        preset: ``lite`` | ``base`` | ``large`` | ``legacy`` (:data:`PRESETS`): fills
            every architecture field left None; explicit values win. After
            construction every field holds its resolved value.
        encoder: ``"mobilenetv3_large"``, ``"resnet18"`` or ``"resnet34"``
            (:data:`fsmde_core.models.encoders.ENCODERS`).
        num_bins: K, the number of adaptive depth bins per image.
        min_depth, max_depth: metric range in metres covered by the bins; every
            prediction lies in ``[min_depth, max_depth]``.
        decoder_channels: output channels of the decoder stages at stride 16, 8,
            4 and (if given) 2. The bin logits live at the last stage's stride
            (4 with three widths, 2 with four); only depth is upsampled to the input.
        decoder_block: ``"dwsep"`` (depthwise-separable) or ``"conv"`` (3x3).
        input_height, input_width: the resolution the network is trained and
            exported at (multiples of 32).
        readout: how depth is read out of the bins: ``"log"`` (geometric
            mean of the centres, the default) or ``"linear"`` (AdaBins'
            arithmetic mean); see :func:`bin_expectation`.
        focal_canonical: camera-aware centres (None = off): the network
            predicts depth for a camera whose ``fx / width`` is this value, and
            each image's centres are multiplied by ``(fx / width) / focal_canonical``
            (:func:`focal_factors`). Why: the centres come from pooled image
            features, which cannot tell a 60 deg lens from a 90 deg one, so a
            rig with mixed optics got one compromise scale (front/back read
            near, sides far; bench/results/distill.md, issue 13). The factor
            scales depth exactly under both readouts, so the exported model
            stays canonical and the runtime applies it per camera.
        retinex: illumination-invariant input (issue 11): a fixed, parameter-free
            Retinex layer (:class:`fsmde_core.models.retinex.RetinexInput`)
            replaces the RGB by reflectance RGB before the ImageNet
            normalisation. It adds no weights, so pretrained encoders still load
            and a student with it exports like one without.
    """

    preset: str = DEFAULT_PRESET
    encoder: str | None = None
    num_bins: int | None = None
    min_depth: float = 0.5
    max_depth: float = 80.0
    decoder_channels: tuple[int, ...] | None = None
    decoder_block: str | None = None
    input_height: int = 384
    input_width: int = 640
    readout: str = "log"
    focal_canonical: float | None = None
    retinex: bool = False

    def __post_init__(self) -> None:
        self._fill_from_preset()
        # JSON round trips turn tuples into lists; normalise before validating.
        object.__setattr__(self, "decoder_channels", tuple(int(c) for c in self.decoder_channels))
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {sorted(ENCODERS)}, got {self.encoder!r}")
        if self.decoder_block not in DECODER_BLOCKS:
            raise ValueError(f"decoder_block must be one of {list(DECODER_BLOCKS)}, got {self.decoder_block!r}")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be 'log' or 'linear', got {self.readout!r}")
        if int(self.num_bins) != self.num_bins or self.num_bins < 2:
            raise ValueError(f"num_bins must be an integer >= 2, got {self.num_bins!r}")
        if not 0.0 < self.min_depth < self.max_depth:
            raise ValueError(
                f"need 0 < min_depth < max_depth, got min_depth={self.min_depth}, max_depth={self.max_depth}"
            )
        if len(self.decoder_channels) not in (3, 4) or min(self.decoder_channels) < 1:
            raise ValueError(f"decoder_channels must be 3 or 4 positive ints (stages at stride 16, 8, 4[, 2]), "
                             f"got {self.decoder_channels!r}")
        if self.focal_canonical is not None and not (
                isinstance(self.focal_canonical, (int, float)) and 0.05 <= float(self.focal_canonical) <= 20.0):
            raise ValueError("focal_canonical must be null (off) or fx / width of the canonical camera, "
                             f"a number in [0.05, 20] (0.55 ~ an 85 deg lens), got {self.focal_canonical!r}")
        if not isinstance(self.retinex, bool):
            raise ValueError(f"retinex must be true or false, got {self.retinex!r}")
        for name in ("input_height", "input_width"):
            value = getattr(self, name)
            if int(value) != value or value <= 0 or value % STUDENT_STRIDE:
                raise ValueError(f"{name} must be a positive multiple of {STUDENT_STRIDE}, got {value!r}")

    def _fill_from_preset(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        for key, value in PRESETS[self.preset].items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)

    @property
    def logit_stride(self) -> int:
        """The stride of the bin logits (and of the depth before its upsampling)."""
        return DECODER_STAGE_STRIDES[len(self.decoder_channels) - 1]

    @classmethod
    def section_defaults(cls) -> dict[str, Any]:
        """The config section's defaults: the preset, and None for what the preset fills in."""
        return {f.name: f.default for f in fields(cls)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict: the preset and every resolved field (tuples become lists)."""
        out = asdict(self)
        out["decoder_channels"] = list(self.decoder_channels)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudentConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (catches typos in YAML).

        A dict without ``preset`` comes from a checkpoint written before the
        family existed: it describes the ``legacy`` architecture.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown StudentConfig keys {unknown}; known keys are {sorted(known)}")
        return cls(**{"preset": PRESETLESS_CHECKPOINT_PRESET, **dict(data)})


class StudentOutput(NamedTuple):
    """Everything the losses need from one forward pass.

    Attributes:
        depth: (B, 1, H, W) metric depth in metres, in ``[min_depth, max_depth]``:
            the bin expectation (in log depth, :func:`bin_expectation`) at
            the logit stride s (``StudentConfig.logit_stride``, 2 or 4), bilinearly upsampled.
        logits: (B, K, H/s, W/s) per-pixel bin logits z (CKD uses
            ``softmax(z / tau)`` at this resolution).
        centres: (B, K) bin centres in metres, strictly increasing per image.
        features: (B, C, H/16, W/16) first decoder stage (bottleneck fused with
            the stride-16 skip); the student side of view-relational KD.
    """

    depth: torch.Tensor
    logits: torch.Tensor
    centres: torch.Tensor
    features: torch.Tensor


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
        self.retinex = RetinexInput(cfg.input_height) if cfg.retinex else None
        self.encoder = build_student_encoder(cfg.encoder)
        enc = self.encoder.channels  # widths at strides 2, 4, 8, 16, 32
        d, kind = cfg.decoder_channels, cfg.decoder_block
        self.up16 = UpBlock(enc[4], enc[3], d[0], kind)
        self.up8 = UpBlock(d[0], enc[2], d[1], kind)
        self.up4 = UpBlock(d[1], enc[1], d[2], kind)
        # Three widths stop at stride 4: on CPU the stride-2 stage (and the softmax
        # on 4x the pixels) is half of base's time (0.16 -> 0.08 s per 384x640 image
        # on one thread without it; README "Student").
        self.up2 = UpBlock(d[2], enc[0], d[3], kind) if len(d) == 4 else None
        self.logit_head = nn.Conv2d(d[-1], cfg.num_bins, kernel_size=3, padding=1)
        self.bin_head = BinHead(enc[4], cfg.num_bins, cfg.min_depth, cfg.max_depth)
        self.feature_channels: int = d[0]
        self.feature_stride: int = 16

    def forward(self, images: torch.Tensor, focal_width: torch.Tensor | None = None) -> StudentOutput:
        """Depth of (B, 3, H, W) images.

        ``focal_width``: (B,) ``fx / width`` per image, read only with
        ``config.focal_canonical`` set; None = the canonical camera (what the
        export traces: the runtime applies :func:`focal_factors` to the depth).
        """
        x = self.retinex(images) if self.retinex is not None else images
        x = (x - self.mean) / self.std
        f0, f1, f2, f3, f4 = self.encoder(x)
        centres = self.bin_head(f4)
        if self.config.focal_canonical is not None and focal_width is not None:
            centres = centres * focal_factors(self.config.focal_canonical, focal_width).to(centres.dtype).view(-1, 1)
        d16 = self.up16(f4, f3)
        d_last = self.up4(self.up8(d16, f2), f1)
        if self.up2 is not None:
            d_last = self.up2(d_last, f0)
        # The bins are resolved at the logit stride (2 or 4) and only the 1-channel
        # depth is upsampled. Upsampling the K-channel logits first (as AdaBins does)
        # would run the softmax and the expectation on 4x the pixels and resize
        # K channels instead of one: 2.63 -> 2.22 s per 6x384x640 set on 2 CPU
        # cores for K = 64 (-16 %), and CKD runs at the logit stride too. Bilinear
        # upsampling is a convex combination, so depth stays in [min_depth, max_depth].
        logits = self.logit_head(d_last)
        probs = torch.softmax(logits, dim=1)
        depth_low = bin_expectation(probs, centres, log_space=self.config.readout == "log")
        depth = nnf.interpolate(depth_low, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return StudentOutput(depth=depth, logits=logits, centres=centres, features=d16)


def focal_factors(focal_canonical: float | None, focal_width: Any) -> Any:
    """Per-image depth factor of camera-aware centres: ``(fx / width) / focal_canonical`` (1 when off).

    Works on a torch tensor or a numpy array of ``fx / width`` values (a ratio,
    so it is the same at any resize of the image). A longer lens (larger fx)
    sees the same object larger, which the network reads as nearer; the factor
    puts it back at its true distance.
    """
    if focal_canonical is None:
        return focal_width * 0 + 1
    return focal_width / float(focal_canonical)


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


def count_gflops(module: nn.Module, *inputs: Any, **kw_inputs: Any) -> float:
    """GFLOPs of one forward pass (``torch.utils.flop_counter``: a multiply-add counts 2).

    Deterministic and machine-independent, unlike a timing: the number the
    student family's targets (x fewer than Depth Anything V2-Small) are stated in.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs, **kw_inputs)
    return counter.get_total_flops() / 1e9
