"""Supervised terms against sparse metric LiDAR: SILog and the bin-centre Chamfer.

Why a module of their own: these are the terms that make the student
*metric* (scale from LiDAR, docs/method.md), whatever the teacher says; the KD
terms (:mod:`fsmde_core.distill.ckd`, :mod:`fsmde_core.distill.vrkd`) only
transfer structure. Invalid GT is dropped on its own: NaN, +/-Inf (REP 117:
+Inf = beyond range / sky) and values ``<= 0``. An image without usable GT
contributes exactly zero and never a NaN, forward and backward.
"""

from __future__ import annotations

import torch

from fsmde_core.distill.masked import EPS, masked_mean, mean_over_images, region_mask


def valid_depth_mask(gt: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pixels with usable metric GT: finite, strictly positive, and allowed by ``mask``."""
    return region_mask(mask, gt) & torch.isfinite(gt) & (gt > 0)


def silog_loss(
    pred: torch.Tensor,
    gt: torch.Tensor,
    mask: torch.Tensor | None = None,
    variance_focus: float = 0.85,
) -> torch.Tensor:
    """Scale-invariant log loss (Eigen et al. 2014) against sparse metric GT.

    Per image, with g = log(pred) - log(gt) over valid pixels::

        L_i = sqrt( mean(g^2) - variance_focus * mean(g)^2 )

    and the result is the mean of L_i over images that have valid GT.

    Convention: this is the square-rooted form used by BTS/AdaBins, *without*
    their factor 10 — put that factor in the loss weight (``DistillLossConfig``
    defaults ``w_silog=10``, which reproduces ``10 * sqrt(D)``). ``variance_focus``
    (lambda) in [0, 1]: 1 is fully scale-invariant, 0 is plain log-RMSE; 0.85
    keeps a little penalty on a global scale error so the metric scale is learnt.
    The argument of the sqrt is clamped at 1e-12, so a perfect prediction gives
    1e-6 rather than 0 and the gradient stays finite.

    Args:
        pred: (B,1,H,W) predicted metric depth (positive; clamped at 1e-6).
        gt: (B,1,H,W) metric GT depth, invalid = NaN / Inf / <= 0.
        mask: optional (B,1,H,W) bool region mask.
        variance_focus: lambda in [0, 1].
    """
    if not 0.0 <= variance_focus <= 1.0:
        raise ValueError(f"variance_focus must be in [0, 1], got {variance_focus}")
    if pred.shape != gt.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} must have the same shape")
    valid = valid_depth_mask(gt, mask)
    one = torch.ones((), dtype=pred.dtype, device=pred.device)
    safe_pred = torch.where(valid, pred, one).clamp_min(EPS)
    safe_gt = torch.where(valid, gt.to(pred.dtype), one)
    g = torch.log(safe_pred) - torch.log(safe_gt)
    mean_g, count = masked_mean(g, valid)
    mean_g2, _ = masked_mean(g * g, valid)
    per_image = torch.sqrt((mean_g2 - variance_focus * mean_g * mean_g).clamp_min(1e-12))
    return mean_over_images(per_image, count > 0)


def _nearest_sq_dist(queries: torch.Tensor, sorted_ref: torch.Tensor, n_valid: torch.Tensor) -> torch.Tensor:
    """Squared distance from each query to its nearest value in a sorted 1-D set.

    In 1-D the nearest neighbour is one of the two entries around the insertion
    point, so ``searchsorted`` gives an exact, O((N+K) log) Chamfer without the
    (K x N) distance matrix (which is 1.5 GB for 6 x 256 bins x 384x640 pixels).

    Args:
        queries: (B, Q) finite values (gradients flow through them).
        sorted_ref: (B, M) ascending per row; only the first ``n_valid[b]`` entries
            are real (the rest may be +Inf padding). Gradients flow through the
            gathered entries.
        n_valid: (B,) number of real entries per row.
    """
    idx = torch.searchsorted(sorted_ref.detach().contiguous(), queries.detach().contiguous())
    last = (n_valid - 1).clamp_min(0).unsqueeze(1)
    lo = torch.minimum((idx - 1).clamp_min(0), last)
    hi = torch.minimum(idx, last)
    ref_lo = sorted_ref.gather(1, lo)
    ref_hi = sorted_ref.gather(1, hi)
    # Rows without any real entry gather the +Inf padding: replace it so neither the
    # forward value nor the backward pass can produce Inf/NaN (callers mask those rows).
    has = (n_valid > 0).unsqueeze(1)
    ref_lo = torch.where(has, ref_lo, queries.detach())
    ref_hi = torch.where(has, ref_hi, queries.detach())
    return torch.minimum((queries - ref_lo) ** 2, (queries - ref_hi) ** 2)


def bin_centre_chamfer(
    centres: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Bidirectional Chamfer distance between bin centres and valid GT depths (AdaBins).

    Per image, with C the K centres and G the multiset of valid GT depths::

        L_i = mean_{c in C} min_{g in G} (c - g)^2  +  mean_{g in G} min_{c in C} (g - c)^2

    i.e. pytorch3d's ``chamfer_distance`` on 1-D points with mean reduction, as in
    AdaBins; units are m^2. The first term pulls every centre towards depths that
    occur; the second makes every observed depth have a centre nearby (so the bins
    cover the scene's range — this is what makes the centres metric). Result: mean
    over images with at least one valid GT pixel.

    Exact and vectorised over the batch via sorting + ``searchsorted`` (no distance
    matrix, no loop). Gradients flow to ``centres`` only.

    Args:
        centres: (B, K) bin centres in metres.
        gt: (B, 1, H, W) metric GT (invalid = NaN / Inf / <= 0).
        mask: optional (B, 1, H, W) bool region mask.
    """
    if centres.dim() != 2 or centres.shape[0] != gt.shape[0]:
        raise ValueError(f"centres must be (B, K) with B={gt.shape[0]}, got {tuple(centres.shape)}")
    valid = valid_depth_mask(gt, mask).flatten(1)  # (B, N)
    n_valid = valid.sum(1)
    gt_flat = gt.flatten(1).to(centres.dtype)
    inf = torch.full((), float("inf"), dtype=centres.dtype, device=centres.device)
    gt_sorted, _ = torch.sort(torch.where(valid, gt_flat, inf), dim=1)  # valid values first

    centre_to_gt = _nearest_sq_dist(centres, gt_sorted, n_valid).mean(1)

    centres_sorted, _ = torch.sort(centres, dim=1)  # values stay differentiable
    k = torch.full_like(n_valid, centres.shape[1])
    gt_queries = torch.where(valid, gt_flat, torch.zeros((), dtype=centres.dtype, device=centres.device))
    gt_to_centre, _ = masked_mean(_nearest_sq_dist(gt_queries, centres_sorted, k), valid)

    return mean_over_images(centre_to_gt + gt_to_centre, n_valid > 0)
