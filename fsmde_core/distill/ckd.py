"""Cross-interaction KD (CKD): probabilities from the teacher, centres from the LiDAR.

Why this shape: a relative-depth teacher has an unknown scale and shift per
image, so its values cannot be bins of metres. Its *ranking* of the pixels
can: bin k of K holds the image's k-th depth quantile under the teacher
(:func:`teacher_rank_bins`), which no scale, shift or monotone distortion of
the teacher changes, so the target needs no anchor. The student's logits
learn these probabilities (:func:`ckd_loss`), and the student's per-image bin
centres learn what each quantile is in metres from the LiDAR
(:func:`ckd_centre_loss`) — each bin meaning the same thing in both, the seed
paper's cross interaction. Targets are always detached.

The targets that came before (``kernel``, ``linear``) and their anchors live
in :mod:`fsmde_core.distill.ablations`; the measured comparison is in
``bench/results/ckd_targets.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 (the universal torch idiom)

from fsmde_core.distill.masked import EPS, region_mask, resize_nan_safe
from fsmde_core.distill.supervised import silog_loss
from fsmde_core.models.student import READOUTS

#: Probability floor of the two-bin targets (spread over K bins) so their log stays finite.
TARGET_FLOOR = 1e-4


def scale_invariant_normalise(
    x: torch.Tensor, mask: torch.Tensor | None = None, eps: float = EPS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image affine normalisation: u = (x - median) / MAD.

    Median and mean absolute deviation (around the median) are taken over pixels
    that are finite and in ``mask``. This is the MiDaS/Depth-Anything way of
    removing an unknown scale and shift, so ``u(a*x + b) == u(x)`` for any a > 0.
    The median is torch's lower median for even counts (an order statistic, so
    the invariance is exact). Note that ``x <= 0`` is *valid* here: it is meant
    for inverse depth, where 0 = sky.

    Args:
        x: (B, ...) values, NaN/Inf = unknown.
        mask: optional bool mask of x's shape.
        eps: lower clamp of the MAD (flat images).

    Returns:
        u: same shape as x, NaN where not valid.
        median: (B,) per-image median (0 for images without valid pixels).
        mad: (B,) per-image mean absolute deviation, clamped at ``eps``.
    """
    valid = torch.isfinite(x)
    if mask is not None:
        if mask.dtype != torch.bool or mask.shape != x.shape:
            raise ValueError(
                f"mask must be bool of shape {tuple(x.shape)}, got {mask.dtype} {tuple(mask.shape)}"
            )
        valid = valid & mask
    b = x.shape[0]
    view = (b,) + (1,) * (x.dim() - 1)
    nan = torch.full((), float("nan"), dtype=x.dtype, device=x.device)
    count = valid.flatten(1).sum(1)
    median = torch.nanmedian(torch.where(valid, x, nan).flatten(1), dim=1).values
    median = torch.where(count > 0, median, torch.zeros_like(median))
    safe_x = torch.where(valid, x, median.view(view))  # deviation 0 where invalid
    dev = (safe_x - median.view(view)).abs()
    mad = (dev.flatten(1).sum(1) / count.clamp_min(1).to(x.dtype)).clamp_min(eps)
    u = torch.where(valid, (safe_x - median.view(view)) / mad.view(view), nan)
    return u, median, mad


def teacher_at(
    teacher_inv_depth: torch.Tensor, like: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher resampled (NaN-safe, detached) to ``like``'s (B,*,H,W) grid, and its usable pixels.

    Usable = in the region ``mask`` and a finite teacher value there. Every
    CKD target starts here, so they all see the same teacher at the same pixels.
    """
    size = (like.shape[-2], like.shape[-1])
    teacher = resize_nan_safe(teacher_inv_depth.detach().to(like.dtype), size)
    if teacher.shape[:2] != (like.shape[0], 1):
        raise ValueError(f"teacher_inv_depth must be (B,1,h,w) with B={like.shape[0]}, "
                         f"got {tuple(teacher_inv_depth.shape)}")
    return teacher, region_mask(mask, like) & torch.isfinite(teacher)


def teacher_rank_bins(teacher_inv_depth: torch.Tensor, valid: torch.Tensor, num_bins: int) -> tuple[
        torch.Tensor, torch.Tensor]:
    """Scale-invariant bins of the teacher: each pixel's depth *rank* in its image, as a two-bin split.

    Bin k of K holds the k-th K-quantile of the image's pixels ordered near to
    far by the teacher (descending relative inverse depth). A pixel whose
    mid-rank (ties share one) is the fraction q of the valid pixels sits at
    the continuous bin coordinate ``q * K - 0.5`` and is split linearly
    between the two bins around it.

    Args:
        teacher_inv_depth: (B, 1, H, W) relative inverse depth (any affine frame).
        valid: (B, 1, H, W) bool, pixels that take part (finite teacher, region mask).
        num_bins: K.

    Returns:
        lower: (B, 1, H, W) long, the lower of the two bins (in [0, K-2]).
        w_hi: (B, 1, H, W) weight of bin ``lower + 1`` (0 where not valid).
    """
    b = teacher_inv_depth.shape[0]
    inf = torch.full((), float("inf"), dtype=teacher_inv_depth.dtype, device=teacher_inv_depth.device)
    key = torch.where(valid, -teacher_inv_depth, inf).flatten(1)  # near (large inverse depth) first
    ordered, _ = torch.sort(key, dim=1)
    first = torch.searchsorted(ordered, key.contiguous(), right=False)
    past = torch.searchsorted(ordered, key.contiguous(), right=True)
    n = valid.flatten(1).sum(1, keepdim=True).clamp_min(1).to(key.dtype)
    quantile = (0.5 * (first + past).to(key.dtype)) / n  # mid-rank + 1/2, over n: in (0, 1]
    pos = (quantile * num_bins - 0.5).clamp(0.0, num_bins - 1.0)
    lower = pos.floor().clamp(max=num_bins - 2)
    w_hi = torch.where(valid.flatten(1), pos - lower, torch.zeros((), dtype=key.dtype, device=key.device))
    shape = (b, 1, *teacher_inv_depth.shape[-2:])
    return lower.long().view(shape), w_hi.view(shape)


def two_bin_log_probs(lower: torch.Tensor, w_hi: torch.Tensor, num_bins: int) -> torch.Tensor:
    """(B,1,H,W) two-bin split -> (B,K,H,W) log-probabilities, with a ``TARGET_FLOOR / K`` floor (finite log)."""
    b, _, h, w = lower.shape
    p = torch.zeros(b, num_bins, h, w, dtype=w_hi.dtype, device=w_hi.device)
    p.scatter_add_(1, lower, 1.0 - w_hi)
    p.scatter_add_(1, lower + 1, w_hi)
    return ((1.0 - TARGET_FLOOR) * p + TARGET_FLOOR / num_bins).log()


def rank_bin_log_probs(
    num_bins: int, teacher_inv_depth: torch.Tensor, like: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CKD target: log p^T over K quantile bins at ``like``'s resolution, and where it is defined.

    Needs nothing of the student but the number of bins and the resolution:
    the target cannot move with the student's centres or depth.

    Returns:
        log_p: (B, K, H, W) log-probabilities (finite everywhere; meaningless where not valid).
        valid: (B, 1, H, W) pixels in ``mask`` with a finite teacher value.
    """
    with torch.no_grad():
        teacher, valid = teacher_at(teacher_inv_depth, like, mask)
        return two_bin_log_probs(*teacher_rank_bins(teacher, valid, num_bins), num_bins), valid


def ckd_kl(student_logits: torch.Tensor, target_log_p: torch.Tensor, valid: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 * KL(p^T || softmax(z / tau)), mean over the valid pixels of the batch (0 if none).

    The tau^2 factor (Hinton et al.) keeps gradient magnitudes comparable
    across temperatures. Shared by the kept target and the ablations.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    log_q = F.log_softmax(student_logits / tau if tau != 1.0 else student_logits, dim=1)
    kl = F.kl_div(log_q, target_log_p, reduction="none", log_target=True).sum(dim=1, keepdim=True)  # (B,1,H,W)
    zero = torch.zeros((), dtype=kl.dtype, device=kl.device)
    n = valid.sum().clamp_min(1).to(kl.dtype)
    return tau**2 * torch.where(valid, kl, zero).sum() / n


def ckd_loss(
    student_logits: torch.Tensor,
    teacher_inv_depth: torch.Tensor,
    mask: torch.Tensor | None = None,
    tau: float = 1.0,
) -> torch.Tensor:
    """Cross-interaction KD on the logits: KL from the teacher's quantile bins (:func:`rank_bin_log_probs`).

    ``mask`` is a region mask only: CKD is dense and does not need LiDAR, so
    sparse GT must not be passed as the mask.

    Args:
        student_logits: (B, K, H, W) logits z.
        teacher_inv_depth: (B, 1, h, w) relative inverse depth, any affine frame.
        mask: optional (B, 1, H, W) bool region mask.
        tau: KD temperature.
    """
    log_p, valid = rank_bin_log_probs(student_logits.shape[1], teacher_inv_depth, student_logits, mask)
    return ckd_kl(student_logits, log_p, valid, tau)


def check_readout(readout: str) -> None:
    """Refuse a readout that :func:`fsmde_core.models.student.bin_expectation` does not implement."""
    if readout not in READOUTS:
        raise ValueError(f"readout must be one of {READOUTS} (StudentConfig.readout), got {readout!r}")


def ckd_centre_loss(
    student_centres: torch.Tensor,
    teacher_inv_depth: torch.Tensor,
    gt_depth: torch.Tensor,
    mask: torch.Tensor | None = None,
    variance_focus: float = 0.0,
    readout: str = "log",
) -> torch.Tensor:
    """The other half of cross-interaction KD: metric centres from GT.

    The teacher's rank bins (:func:`teacher_rank_bins`, detached) read out with
    the student's centres give a cross depth D^x, SILog-matched to the LiDAR.
    Only the centres receive gradient: they learn to be the metres of the
    teacher's quantile bins, so that the student's own probabilities, trained
    towards the same bins, read out metric depth through them. D^x is read out
    the way the student reads its own depth (``readout``, as
    :func:`fsmde_core.models.student.bin_expectation`): otherwise the centres
    would learn values that are right for a readout the student does not use.

    Args:
        student_centres: (B, K) centres in metres.
        teacher_inv_depth: (B, 1, h, w) relative inverse depth (resized NaN-safe to the GT).
        gt_depth: (B, 1, H, W) sparse metric GT (NaN / Inf / <= 0 invalid).
        mask: optional (B, 1, H, W) bool region mask.
        variance_focus: SILog's lambda (see :func:`fsmde_core.distill.supervised.silog_loss`);
            0 (plain log-RMSE) by default: the structure of D^x is the teacher's, only scale is left.
        readout: ``"log"`` (exp of the weighted mean log centre) or ``"linear"`` (weighted mean centre).
    """
    cross, valid = cross_depth(student_centres, teacher_inv_depth, gt_depth, mask, readout)
    return silog_loss(cross, gt_depth, valid, variance_focus)


def cross_depth(
    student_centres: torch.Tensor,
    teacher_inv_depth: torch.Tensor,
    like: torch.Tensor,
    mask: torch.Tensor | None = None,
    readout: str = "log",
) -> tuple[torch.Tensor, torch.Tensor]:
    """CKD's cross depth D^x at ``like``'s (B,*,H,W) grid: the teacher's rank bins read out with the student's centres.

    Only the centres carry gradient. The LiDAR term (:func:`ckd_centre_loss`) and the
    photometric term of LiDAR-free training (:mod:`fsmde_core.selfsup.objective`) both
    give the centres their metres through it. Returns D^x (B,1,H,W) and its usable pixels.
    """
    check_readout(readout)
    with torch.no_grad():
        teacher, valid = teacher_at(teacher_inv_depth.to(student_centres.dtype), like, mask)
        lower, w_hi = teacher_rank_bins(teacher, valid, student_centres.shape[1])
    b, size = student_centres.shape[0], tuple(like.shape[-2:])
    values = torch.log(student_centres) if readout == "log" else student_centres
    lo = values.gather(1, lower.flatten(1)).view(b, 1, *size)
    hi = values.gather(1, lower.flatten(1) + 1).view(b, 1, *size)
    mixed = (1.0 - w_hi) * lo + w_hi * hi
    return (torch.exp(mixed) if readout == "log" else mixed), valid
