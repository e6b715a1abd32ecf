"""Masked reductions and NaN-safe resampling shared by every loss module.

Why one module: each loss (supervised, CKD, the CKD ablations) must treat
"no usable pixel" the same way — zero loss, finite gradient, empty images
left out of the batch mean — so the helpers that make that true live once.

Conventions: masks are boolean ``(B, 1, H, W)``, ``True`` = the pixel may
enter the loss, ``None`` = every pixel. A value that is masked out is replaced
by a harmless finite number *before* any ``log``/``sqrt``/division, because
``torch.where`` only zeroes the gradient of the unselected branch: a NaN or
Inf local derivative behind it still turns ``0 * inf`` into NaN.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 (the universal torch idiom)

#: Lower clamp before divisions and logs (metres, MAD units, interpolation weight).
EPS = 1e-6


def region_mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Return a boolean (B,1,H,W) mask for ``like`` (B,*,H,W); ``None`` -> all True."""
    shape = (like.shape[0], 1, *like.shape[-2:])
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=like.device)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    if tuple(mask.shape) != shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match expected {shape}")
    return mask


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean of ``x`` over ``valid`` -> ((B,), count (B,)); 0 for empty images.

    ``x`` must already be finite where ``valid`` is False (see the module docstring).
    """
    count = valid.flatten(1).sum(1)
    total = torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device)).flatten(1).sum(1)
    return total / count.clamp_min(1).to(x.dtype), count


def mean_over_images(per_image: torch.Tensor, has_pixels: torch.Tensor) -> torch.Tensor:
    """Average a (B,) loss over images that had at least one valid pixel (0 if none).

    Empty images are left out of the denominator rather than counted as zero so a
    batch with a camera without LiDAR returns does not silently shrink the loss.
    """
    zero = torch.zeros((), dtype=per_image.dtype, device=per_image.device)
    n = has_pixels.sum().clamp_min(1).to(per_image.dtype)
    return torch.where(has_pixels, per_image, zero).sum() / n


def resize_nan_safe(x: torch.Tensor, size: tuple[int, int], min_weight: float = 0.5) -> torch.Tensor:
    """Bilinear resize of (B,C,h,w) that ignores NaN/Inf inputs (normalised interpolation).

    Each output is the bilinear average of its *valid* neighbours; it is NaN when
    less than ``min_weight`` of the bilinear weight fell on valid inputs. A plain
    ``F.interpolate`` would spread one NaN over its whole neighbourhood.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    valid = torch.isfinite(x)
    shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    kw: dict[str, Any] = {
        "size": tuple(size), "mode": "bilinear", "align_corners": False, "antialias": shrinking,
    }
    num = F.interpolate(torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device)), **kw)
    den = F.interpolate(valid.to(x.dtype), **kw)
    out = num / den.clamp_min(EPS)
    return torch.where(den >= min_weight, out, torch.full((), float("nan"), dtype=x.dtype, device=x.device))
