"""A simulated relative-depth foundation model, for synthetic bags only.

Why it exists: the distillation method (docs/method.md) needs a teacher that is
*good at structure but blind to metric scale*. On the procedural surround world
we have dense ground truth, so we can manufacture such a teacher with known,
controllable quality and run the whole pipeline (cache, CKD, VRKD, ablations)
in seconds on a CPU — and measure how the student's gain depends on teacher
quality, which a fixed real teacher cannot tell us.

What it does to the dense metric GT (``extras["gt_depth"]``; +Inf = sky,
NaN / <= 0 = invalid), per image:

1. inverse depth, sky -> 0 (what Depth Anything predicts: disparity-like);
2. low-frequency distortion: ``x * exp(a * F1) + b * mean(x) * F2`` with F1, F2
   random fields on a coarse grid upsampled bicubically — the smooth, large-scale
   warps relative-depth models show (a planar road that bends, a far region that
   is slightly too close), then clamped at 0 as a ReLU head would;
3. loss of thin structures: a morphological opening (min then max filter,
   k x k) erases near (bright in inverse depth) structures narrower than k px —
   poles and sign posts that foundation models at patch size 14 smear away;
4. gaussian blur (sigma px): soft depth edges from patch-wise decoding;
5. multiplicative white noise ``x * exp(n)``, n ~ N(0, noise_std);
6. an unknown per-image affine ``a * x + b`` with a > 0 log-uniform and b >= 0:
   the output is only defined up to scale and shift, like the real thing.

Step 3 runs before step 4 (the brief listed blur first): a model that never saw
the pole does not blur it either; blurring first would widen the pole and let
it partly survive the opening.

``quality`` in [0, 1] scales every degradation linearly by ``s = 1 - quality``
(1 = exact up to the affine, 0 = poor); each can be overridden explicitly. The
random draws are made in a fixed order from one generator per image, seeded from
``(teacher seed, sample seed)``, so outputs are deterministic, independent of an
image's position in the batch, and changing one degradation's strength does not
reshuffle the others' random fields.

Features for VRKD: a real ViT teacher gives its last hidden tokens. Here a fixed
random two-layer conv bank (seeded by the teacher seed) runs over
[normalised inverse depth, d/dx, d/dy] at 1/``feature_stride`` resolution. These
are deterministic nonlinear functions of the teacher's own (degraded,
affine-normalised) geometry, so cross-view similarities between them encode
scene structure — what matters in a depth model's tokens for VRKD — and they
inherit the teacher's errors; like a foundation model's tokens they do not see
the arbitrary output affine. They carry no appearance/semantics, which a real
teacher's tokens do: that is the one way this stand-in is kinder than reality.
The RGB images are ignored entirely (only their batch size is checked).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the universal torch idiom)

from fsmde_core.models.teachers.base import Teacher, TeacherOutput

__all__ = ["Degradation", "SyntheticTeacher"]

_EPS = 1e-6
_VERSION = 1  # bump when the algorithm changes: it is part of the cache identity


@dataclass(frozen=True)
class Degradation:
    """Resolved strengths of each degradation (all >= 0; 0 = off).

    Attributes:
        lowfreq_mult: std of the log-multiplicative low-frequency field.
        lowfreq_add: std of the additive low-frequency field, in units of the
            image's mean inverse depth.
        blur_sigma: gaussian blur sigma in pixels of the GT resolution.
        thin_px: opening window k: near structures narrower than k px vanish
            (k <= 1 = off; even k is rounded up to the next odd size).
        noise_std: std of the multiplicative (log-space) white noise.
    """

    lowfreq_mult: float
    lowfreq_add: float
    blur_sigma: float
    thin_px: int
    noise_std: float

    # Strengths at quality 0 (severity 1). Measured on the road/car/pole scene of
    # test_synthetic_teacher.py (AbsRel after least-squares alignment in inverse
    # depth, GT < 80 m): quality 0.9 -> 0.07, 0.7 (default) -> 0.13 (0.06 of it is
    # the erased pole), 0.5 -> 0.18, 0 -> 0.28. Depth Anything V2 is reported at
    # about 0.08 zero-shot on KITTI, so the default is a somewhat weaker teacher.
    MAX_MULT = 0.35
    MAX_ADD = 0.15
    MAX_BLUR = 4.0
    MAX_THIN = 9
    MAX_NOISE = 0.08

    @classmethod
    def from_quality(cls, quality: float) -> Degradation:
        """Every strength scaled linearly by the severity ``1 - quality``."""
        if not 0.0 <= quality <= 1.0:
            raise ValueError(f"quality must be in [0, 1], got {quality}")
        s = 1.0 - quality
        return cls(
            lowfreq_mult=cls.MAX_MULT * s,
            lowfreq_add=cls.MAX_ADD * s,
            blur_sigma=cls.MAX_BLUR * s,
            thin_px=round(1 + (cls.MAX_THIN - 1) * s),
            noise_std=cls.MAX_NOISE * s,
        )

    def __post_init__(self) -> None:
        for name in ("lowfreq_mult", "lowfreq_add", "blur_sigma", "thin_px", "noise_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"Degradation.{name} must be >= 0, got {getattr(self, name)}")


# --------------------------------------------------------------------------- image operations


def _per_image_stat(x: torch.Tensor, valid: torch.Tensor, fn: str) -> torch.Tensor:
    """Per-image 'mean' or 'median' of x over valid -> (B,1,1,1); 0 for empty images."""
    nan = torch.full((), float("nan"), dtype=x.dtype, device=x.device)
    flat = torch.where(valid, x, nan).flatten(1)
    stat = flat.nanmean(1) if fn == "mean" else flat.nanmedian(1).values
    return torch.nan_to_num(stat, nan=0.0).view(-1, 1, 1, 1)


def _opening(x: torch.Tensor, k: int) -> torch.Tensor:
    """Morphological opening (erode = min filter, then dilate = max filter), k x k window."""
    if k <= 1:
        return x
    k = k if k % 2 else k + 1
    eroded = -F.max_pool2d(-x, k, stride=1, padding=k // 2)
    return F.max_pool2d(eroded, k, stride=1, padding=k // 2)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable gaussian blur with replicate padding (no dark/bright borders)."""
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))


def _gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences d/dx, d/dy of (B,1,h,w) with replicate borders."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = 0.5 * (p[..., 1:-1, 2:] - p[..., 1:-1, :-2])
    gy = 0.5 * (p[..., 2:, 1:-1] - p[..., :-2, 1:-1])
    return gx, gy


@dataclass(frozen=True)
class _Draws:
    """Per-image random quantities, stacked over the batch (all on CPU, float32)."""

    field_mult: torch.Tensor  # (B,1,gh,gw) N(0,1)
    field_add: torch.Tensor  # (B,1,gh,gw) N(0,1)
    noise: torch.Tensor  # (B,1,H,W) N(0,1)
    scale: torch.Tensor  # (B,1,1,1) > 0
    shift: torch.Tensor  # (B,1,1,1) >= 0, in units of a * mean(x)


class SyntheticTeacher(Teacher):
    """Relative inverse depth + structure features made from dense synthetic GT.

    Refuses to run without ``extras["gt_depth"]``: it is not a model of images,
    it only exists for synthetic bags where ground truth is known.
    """

    name = "synthetic"

    def __init__(
        self,
        quality: float = 0.7,
        seed: int = 0,
        feature_dim: int = 32,
        feature_stride: int = 8,
        *,
        lowfreq_mult: float | None = None,
        lowfreq_add: float | None = None,
        blur_sigma: float | None = None,
        thin_px: int | None = None,
        noise_std: float | None = None,
        lowfreq_grid: tuple[int, int] = (3, 5),
        scale_range: tuple[float, float] = (0.5, 50.0),
        shift_range: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        """Args:
        quality: 1 = exact up to the unknown affine, 0 = poor; scales every degradation.
        seed: teacher seed (combined with each sample's seed; also seeds the feature bank).
        feature_dim: channels of the VRKD feature map.
        feature_stride: feature map is 1/stride of the GT resolution.
        lowfreq_mult, lowfreq_add, blur_sigma, thin_px, noise_std: explicit
            per-degradation strengths overriding the quality-derived ones
            (see :class:`Degradation`).
        lowfreq_grid: coarse grid (rows, cols) of the low-frequency fields.
        scale_range: log-uniform range of the output scale a.
        shift_range: uniform range of the output shift, in units of a * mean(x).
        """
        deg = Degradation.from_quality(quality)
        overrides = {
            "lowfreq_mult": lowfreq_mult, "lowfreq_add": lowfreq_add, "blur_sigma": blur_sigma,
            "thin_px": None if thin_px is None else int(thin_px), "noise_std": noise_std,
        }
        self.degradation = replace(deg, **{k: v for k, v in overrides.items() if v is not None})
        if feature_dim < 1 or feature_stride < 1:
            raise ValueError(
                f"feature_dim and feature_stride must be >= 1, got {feature_dim}, {feature_stride}"
            )
        if min(lowfreq_grid) < 2:
            raise ValueError(f"lowfreq_grid needs >= 2 cells per axis (bicubic), got {lowfreq_grid}")
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be 0 < lo <= hi, got {scale_range}")
        if not 0 <= shift_range[0] <= shift_range[1]:
            raise ValueError(f"shift_range must be 0 <= lo <= hi, got {shift_range}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.quality = float(quality)
        self.seed = int(seed)
        self.feature_dim = int(feature_dim)
        self.feature_stride = int(feature_stride)
        self.lowfreq_grid = (int(lowfreq_grid[0]), int(lowfreq_grid[1]))
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.shift_range = (float(shift_range[0]), float(shift_range[1]))
        self._bank = self._make_feature_bank()

    # ----------------------------------------------------------------- interface

    @property
    def identity(self) -> str:
        """Every setting that can change the outputs, plus the algorithm version."""
        d = self.degradation
        return (
            f"synthetic-teacher/v{_VERSION}(quality={self.quality!r},seed={self.seed},"
            f"mult={d.lowfreq_mult!r},add={d.lowfreq_add!r},blur={d.blur_sigma!r},thin={d.thin_px},"
            f"noise={d.noise_std!r},grid={self.lowfreq_grid[0]}x{self.lowfreq_grid[1]},"
            f"scale={self.scale_range[0]!r}-{self.scale_range[1]!r},"
            f"shift={self.shift_range[0]!r}-{self.shift_range[1]!r},"
            f"fdim={self.feature_dim},fstride={self.feature_stride})"
        )

    @torch.no_grad()
    def predict(self, images: torch.Tensor, extras: dict[str, torch.Tensor] | None = None) -> TeacherOutput:
        """Simulate the teacher on a batch (see the module docstring for the steps).

        Args:
            images: (B, 3, H, W); only B is used.
            extras: ``"gt_depth"`` (B, 1, H', W') dense metric depth (required);
                ``"seed"`` (B,) non-negative ints, one per sample (optional; without
                it every image uses seed 0, so outputs still do not depend on batch
                position).

        Returns:
            inv_depth (B, 1, H', W') at the GT resolution, NaN where the GT was
            invalid; features (B, feature_dim, H'//stride, W'//stride).
        """
        gt = self._require_gt(images, extras)
        seeds = self._sample_seeds(extras, gt.shape[0])
        inv, valid = self._inverse_depth(gt)
        draws = self._draw(seeds, gt.shape[-2:])
        rel = self._degrade(inv, valid, draws)
        out = self._random_affine(rel, valid, draws)
        return TeacherOutput(inv_depth=out, features=self._features(out, valid))

    # ----------------------------------------------------------------- steps

    def _require_gt(self, images: torch.Tensor, extras: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """Dense GT from extras, or a clear refusal."""
        if extras is None or "gt_depth" not in extras:
            raise ValueError(
                "SyntheticTeacher only works on synthetic bags with dense ground truth: pass "
                "extras['gt_depth'] (B, 1, H, W) metric depth. For real recordings use a real "
                "teacher (e.g. Depth Anything V2)."
            )
        gt = extras["gt_depth"]
        if gt.dim() != 4 or gt.shape[1] != 1:
            raise ValueError(f"extras['gt_depth'] must be (B, 1, H, W), got {tuple(gt.shape)}")
        if images.dim() != 4 or images.shape[0] != gt.shape[0]:
            raise ValueError(f"images {tuple(images.shape)} and gt_depth {tuple(gt.shape)}: batch differs")
        return gt.float()

    def _sample_seeds(self, extras: dict[str, torch.Tensor] | None, batch: int) -> list[int]:
        """One seed per sample: extras['seed'] if given, else 0 for every image."""
        if extras is None or "seed" not in extras:
            return [0] * batch
        seeds = torch.as_tensor(extras["seed"]).reshape(-1)
        if seeds.numel() != batch or seeds.dtype.is_floating_point:
            raise ValueError(
                f"extras['seed'] must be ({batch},) integers, got {seeds.dtype} {tuple(seeds.shape)}"
            )
        if bool((seeds < 0).any()):
            raise ValueError("extras['seed'] must be non-negative")
        return [int(s) for s in seeds.tolist()]

    @staticmethod
    def _inverse_depth(gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """GT depth -> inverse depth (sky +Inf -> 0) and validity (NaN, -Inf, <= 0 invalid)."""
        sky = torch.isposinf(gt)
        valid = sky | (torch.isfinite(gt) & (gt > 0))
        safe = torch.where(valid & ~sky, gt, torch.ones_like(gt))
        inv = torch.where(sky, torch.zeros_like(gt), 1.0 / safe)
        return inv, valid

    def _generator(self, sample_seed: int) -> torch.Generator:
        """Independent stream per (teacher seed, sample seed) via numpy's SeedSequence mixing."""
        state = np.random.SeedSequence([self.seed, sample_seed]).generate_state(2, dtype=np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def _draw(self, seeds: list[int], size: torch.Size) -> _Draws:
        """All random quantities, always drawn in the same order (settings never reshuffle them).

        A loop over the batch is needed only because each image has its own generator.
        """
        gh, gw = self.lowfreq_grid
        lo, hi = math.log(self.scale_range[0]), math.log(self.scale_range[1])
        parts: list[tuple[torch.Tensor, ...]] = []
        for s in seeds:
            g = self._generator(s)
            f_mult = torch.randn(1, 1, gh, gw, generator=g)
            f_add = torch.randn(1, 1, gh, gw, generator=g)
            noise = torch.randn(1, 1, size[0], size[1], generator=g)
            u = torch.rand(2, generator=g)
            scale = torch.exp(lo + (hi - lo) * u[0]).view(1, 1, 1, 1)
            s_lo, s_hi = self.shift_range
            shift = (s_lo + (s_hi - s_lo) * u[1]).view(1, 1, 1, 1)
            parts.append((f_mult, f_add, noise, scale, shift))
        cols = [torch.cat(c, dim=0) for c in zip(*parts, strict=True)]
        return _Draws(*cols)

    def _degrade(self, inv: torch.Tensor, valid: torch.Tensor, draws: _Draws) -> torch.Tensor:
        """Steps 2-5 on the inverse depth (invalid pixels filled with the median meanwhile)."""
        d = self.degradation
        dev, size = inv.device, inv.shape[-2:]
        x = torch.where(valid, inv, _per_image_stat(inv, valid, "median"))
        mean = _per_image_stat(inv, valid, "mean").clamp_min(_EPS)
        up = {"size": tuple(size), "mode": "bicubic", "align_corners": True}
        if d.lowfreq_mult > 0:
            x = x * torch.exp(d.lowfreq_mult * F.interpolate(draws.field_mult.to(dev), **up))
        if d.lowfreq_add > 0:
            x = x + d.lowfreq_add * mean * F.interpolate(draws.field_add.to(dev), **up)
        x = _gaussian_blur(_opening(x.clamp_min(0.0), d.thin_px), d.blur_sigma)
        if d.noise_std > 0:
            x = x * torch.exp(d.noise_std * draws.noise.to(dev))
        return x

    @staticmethod
    def _random_affine(rel: torch.Tensor, valid: torch.Tensor, draws: _Draws) -> torch.Tensor:
        """Step 6: out = a * (x + shift * mean(x)), NaN where the GT was invalid."""
        a = draws.scale.to(rel.device)
        b = draws.shift.to(rel.device) * _per_image_stat(rel, valid, "mean")
        return torch.where(valid, a * (rel + b), torch.full_like(rel, float("nan")))

    def _make_feature_bank(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fixed random conv weights (3 -> C, 5x5; C -> C, 3x3 dilated), seeded by the teacher seed."""
        g = torch.Generator().manual_seed(self.seed)
        c = self.feature_dim
        w1 = torch.randn(c, 3, 5, 5, generator=g) * math.sqrt(2.0 / (3 * 25))
        b1 = 0.1 * torch.randn(c, generator=g)
        w2 = torch.randn(c, c, 3, 3, generator=g) * math.sqrt(2.0 / (c * 9))
        b2 = 0.1 * torch.randn(c, generator=g)
        return w1, b1, w2, b2

    def _features(self, out: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Structure-only features of the teacher's own prediction (see module docstring)."""
        # Affine-normalise first so the features cannot see the random output scale/shift.
        nan = torch.full((), float("nan"), dtype=out.dtype, device=out.device)
        med = _per_image_stat(out, valid, "median")
        dev = (torch.where(valid, out, nan) - med).abs()
        mad = torch.nan_to_num(dev.flatten(1).nanmean(1), nan=1.0).clamp_min(_EPS).view(-1, 1, 1, 1)
        u = torch.where(valid, (out - med) / mad, torch.zeros((), dtype=out.dtype, device=out.device))
        h, w = out.shape[-2:]
        grid = (max(1, h // self.feature_stride), max(1, w // self.feature_stride))
        pooled = F.adaptive_avg_pool2d(u, grid)
        gx, gy = _gradients(pooled)
        w1, b1, w2, b2 = (t.to(out.device, out.dtype) for t in self._bank)
        x = torch.tanh(F.conv2d(torch.cat([pooled, gx, gy], dim=1), w1, b1, padding=2))
        return torch.tanh(F.conv2d(x, w2, b2, padding=2, dilation=2))
