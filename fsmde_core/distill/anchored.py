"""Dense metric KD: the teacher's relative depth, anchored to the LiDAR per image, supervises every pixel.

Why this term (issue 13, bench/results/distill.md 2026-11-30 19:xx): the rank
CKD target gives each pixel the metres of its *quantile* in its image, which
only the per-image bin centres know, and those come from a global pool; the
supervised SILog gives metres only at the LiDAR pixels (3-8 % of an image).
A relative-depth teacher fitted to the same LiDAR by one robust line per image
in inverse depth (Depth Anything's output is affine-invariant disparity, so the
line is the right model) is metric *everywhere* the teacher sees structure: on
the synthetic benchmark that fit has AbsRel 0.094 against dense GT, where a
supervised student has 0.14 (bench/results/ckd_targets.md). Matching the
student's depth to it (SILog) gives each pixel its own metric target, anchored
by the LiDAR of its own image, while CKD keeps transferring the ranking.

Pixels the line cannot place are left out: inverse depth at or below
1 / ``max_depth`` (sky, the far field where a small shift error is a large
depth error), images where the fit has fewer than ``min_points`` LiDAR pixels
or a non-positive slope. Targets are computed without gradient.
"""

from __future__ import annotations

import torch

from fsmde_core.distill.ckd import teacher_at
from fsmde_core.distill.masked import EPS
from fsmde_core.distill.supervised import silog_loss, valid_depth_mask


def masked_median(v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Per-image median of ``v`` over ``m`` (0 for an image without pixels)."""
    nan = torch.full((), float("nan"), dtype=v.dtype, device=v.device)
    return torch.nan_to_num(torch.nanmedian(torch.where(m, v, nan).flatten(1), dim=1).values, nan=0.0)


def lidar_affine_fit(
    x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, min_points: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image robust line ``y ~ a * x + b`` over ``mask`` -> (a, b, ok), each (B,).

    Start from the median line (slope = ratio of median absolute deviations,
    through the medians), which a minority of gross outliers cannot move; then
    twice: keep the points whose residual is within 3x the median absolute
    residual (LiDAR/camera parallax at edges, structures the teacher lost)
    and refit them by least squares. ``ok`` is False where fewer than
    ``min_points`` points remain or the slope is not positive (the teacher's
    inverse depth must grow with the true one).
    """
    zero = torch.zeros((), dtype=x.dtype, device=x.device)

    def view(t: torch.Tensor) -> torch.Tensor:
        return t.view(-1, 1, 1, 1)

    mx, my = masked_median(x, mask), masked_median(y, mask)
    a = masked_median((y - view(my)).abs(), mask) / masked_median((x - view(mx)).abs(), mask).clamp_min(EPS)
    b = my - a * mx
    n = mask.flatten(1).sum(1).to(x.dtype)
    for _ in range(2):
        resid = (y - (view(a) * x + view(b))).abs()
        keep = mask & (resid <= 3.0 * view(masked_median(resid, mask)) + EPS)
        n = keep.flatten(1).sum(1).to(x.dtype)
        xs, ys = torch.where(keep, x, zero).flatten(1), torch.where(keep, y, zero).flatten(1)
        sx, sy = xs.sum(1), ys.sum(1)
        den = n * (xs * xs).sum(1) - sx * sx
        a = (n * (xs * ys).sum(1) - sx * sy) / torch.where(den.abs() > 0, den, torch.ones_like(den))
        b = (sy - a * sx) / n.clamp_min(1)
    ok = (n >= min_points) & (a > 0) & torch.isfinite(a) & torch.isfinite(b)
    return a, b, ok


def anchored_teacher_depth(
    teacher_inv_depth: torch.Tensor, gt_depth: torch.Tensor, mask: torch.Tensor | None = None,
    min_points: int = 32, max_depth: float = 80.0,
) -> torch.Tensor:
    """The teacher mapped to metric depth by a robust per-image line onto the LiDAR's inverse depth.

    Args:
        teacher_inv_depth: (B, 1, h, w) relative inverse depth, any affine frame (resized NaN-safe to the GT).
        gt_depth: (B, 1, H, W) sparse metric GT (NaN / Inf / <= 0 invalid): the anchor.
        mask: optional (B, 1, H, W) bool region mask.
        min_points: fewest LiDAR pixels an image needs for its line.
        max_depth: farthest target kept (m); beyond, and where the line gives inverse depth <= 0, NaN.

    Returns:
        (B, 1, H, W) metric depth target, NaN where there is none (whole images where the fit failed).
    """
    if max_depth <= 0:
        raise ValueError(f"max_depth must be > 0, got {max_depth}")
    with torch.no_grad():
        teacher, usable = teacher_at(teacher_inv_depth.to(torch.float32), gt_depth, mask)
        gt = gt_depth.detach().to(teacher.dtype)
        lidar = usable & valid_depth_mask(gt)
        inv_gt = 1.0 / torch.where(lidar, gt, torch.ones((), dtype=gt.dtype, device=gt.device)).clamp_min(EPS)
        a, b, ok = lidar_affine_fit(torch.nan_to_num(teacher), inv_gt, lidar, min_points)
        inv = a.view(-1, 1, 1, 1) * teacher + b.view(-1, 1, 1, 1)
        keep = usable & ok.view(-1, 1, 1, 1) & (inv > 1.0 / max_depth)
        nan = torch.full((), float("nan"), dtype=inv.dtype, device=inv.device)
        return torch.where(keep, 1.0 / inv.clamp_min(EPS), nan)


def dense_kd_loss(
    depth: torch.Tensor, teacher_inv_depth: torch.Tensor, gt_depth: torch.Tensor, mask: torch.Tensor | None = None,
    variance_focus: float = 0.85, min_points: int = 32, max_depth: float = 80.0,
) -> torch.Tensor:
    """SILog of the student's depth against :func:`anchored_teacher_depth` at every pixel it defines.

    Args:
        depth: (B, 1, H, W) the student's metric depth at the GT's size.
        teacher_inv_depth, gt_depth, mask, min_points, max_depth: as :func:`anchored_teacher_depth`.
        variance_focus: SILog's lambda (:func:`fsmde_core.distill.supervised.silog_loss`).
    """
    target = anchored_teacher_depth(teacher_inv_depth, gt_depth, mask, min_points, max_depth)
    return silog_loss(depth, target.to(depth.dtype), mask, variance_focus)
