"""The scale-and-shift-invariant (SSI) loss on relative inverse depth against sparse LiDAR (MiDaS).

A relative depth model (Depth Anything, the bridged teacher) predicts inverse
depth up to an unknown scale and shift per image, so it must be scored after
the best affine fit to the target: per image, the least-squares scale ``s``
and shift ``t`` that map the prediction onto the LiDAR's inverse depth over
the valid LiDAR pixels (closed form, differentiable), then the residual of the
aligned prediction.

**L1** of that residual, not L2 (MiDaS' "ssimse"): LiDAR targets carry
outliers exactly where the bridged teacher is meant to improve things - points
seen by the LiDAR but hidden from the camera (parallax at object boundaries),
points on thin structures a pixel off - and a squared residual lets a few of
them dominate the gradient. The least-squares alignment keeps the fit in
closed form; the L1 on top of it is the robust part (MiDaS' trimmed variant
also ends in an L1). The residual is divided by the image's mean target
inverse depth, so a far scene (small inverse depths) weighs as much as a near
one.

Exactly invariant: ``a * pred + b`` (a != 0) aligns to the same values as
``pred``, so the loss does not change; the alignment is solved in float64
after centring, so that holds to rounding. An image with fewer than
:data:`MIN_POINTS` valid LiDAR pixels, or a constant prediction over them,
contributes zero (never NaN) and is not counted in the mean.
"""

from __future__ import annotations

import torch

#: Fewest valid LiDAR pixels for an image to count (two fix s and t; a few more make it meaningful).
MIN_POINTS = 8
_EPS = 1e-12


def lidar_inverse_depth(sparse_depth: torch.Tensor, ego_mask: torch.Tensor | None = None) -> tuple[torch.Tensor,
                                                                                                     torch.Tensor]:
    """(B, 1, H, W) sparse depth in metres (NaN = no point) -> (inverse depth with 0 where invalid, valid mask).

    Valid = a finite, positive depth outside the ego mask (``ego_mask`` True = the vehicle itself).
    """
    valid = torch.isfinite(sparse_depth) & (sparse_depth > 0)
    if ego_mask is not None:
        valid &= ~ego_mask.bool()
    inv = torch.where(valid, 1.0 / sparse_depth.clamp_min(1e-6), torch.zeros_like(sparse_depth))
    return inv, valid


def align_scale_shift(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor,
                                                                                             torch.Tensor,
                                                                                             torch.Tensor]:
    """Per image least-squares ``(s, t)`` with ``s * pred + t ~ target`` over ``valid``; float64.

    Returns (s, t, ok) each of shape (B,); ``ok`` is False where the fit is
    undefined (too few points or a constant prediction), and there s = t = 0.
    """
    p, y, m = pred.flatten(1).double(), target.flatten(1).double(), valid.flatten(1).double()
    n = m.sum(1)
    ok = n >= MIN_POINTS
    n_safe = n.clamp_min(1.0)
    p_mean = (p * m).sum(1) / n_safe
    y_mean = (y * m).sum(1) / n_safe
    pc, yc = (p - p_mean[:, None]) * m, (y - y_mean[:, None]) * m
    var = (pc * pc).sum(1)
    ok &= var > _EPS * n_safe * p_mean.abs().clamp_min(1.0) ** 2
    s = torch.where(ok, (pc * yc).sum(1) / var.clamp_min(_EPS), torch.zeros_like(var))
    t = torch.where(ok, y_mean - s * p_mean, torch.zeros_like(var))
    return s, t, ok


def ssi_loss(pred: torch.Tensor, sparse_depth: torch.Tensor, ego_mask: torch.Tensor | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean SSI L1 over the images that have LiDAR; (loss (float32 scalar), per-image loss (B,)).

    Args:
        pred: (B, 1, H, W) or (B, H, W) predicted relative inverse depth, at the LiDAR's resolution.
        sparse_depth: (B, 1, H, W) LiDAR depth in metres, NaN where there is no point.
        ego_mask: (B, 1, H, W) True on the vehicle's own pixels (excluded), or None.

    Images without usable LiDAR contribute 0 to the per-image vector and are
    left out of the mean; with none at all the loss is 0 (and still part of
    the graph, so ``backward`` works and yields zero gradients).
    """
    pred = pred.reshape(sparse_depth.shape)
    target, valid = lidar_inverse_depth(sparse_depth, ego_mask)
    s, t, ok = align_scale_shift(pred, target, valid)
    p, y, m = pred.flatten(1).double(), target.flatten(1).double(), valid.flatten(1)
    n = m.sum(1).clamp_min(1)
    scale = ((y * m).sum(1) / n).clamp_min(_EPS)  # mean target inverse depth: far scenes weigh as much
    residual = ((s[:, None] * p + t[:, None] - y).abs() * m).sum(1) / n / scale
    per_image = torch.where(ok, residual, torch.zeros_like(residual))
    count = ok.sum()
    loss = per_image.sum() / count.clamp_min(1)
    return loss.float(), per_image.float()
