"""CKD targets and anchors kept only as ablations (``loss.ckd_target: kernel | linear``).

Why they stay: ``bench/bench_distill.py`` compares them with the kept target
(``rank``, :mod:`fsmde_core.distill.ckd`) so a change to CKD can be measured
against the road already taken. Their numbers, and the commands that
produced them, are in ``bench/results/ckd_targets.md``.

Both targets put the teacher and the student's bins in one scale-invariant
space, the teacher normalised per image as u^T = (x - median) / MAD and the
bin centres as û_k = (1/c_k - m) / s, with m, s the metric inverse depth's
median / MAD taken from an *anchor* (``loss.ckd_anchor``):

* ``gt_fit``: a robust per-image line teacher -> LiDAR inverse depth at the
  LiDAR pixels (:func:`lidar_affine_fit`), so m + s u^T = a x + b.
* ``gt``: the median / MAD of the teacher matched to those of the LiDAR
  inverse depth ("moments": a poor estimate of a pointwise map).
* ``student``: the student's own inverse-depth statistics (docs/method.md's
  reading, and the fallback of the two above for an image with fewer than
  ``min_anchor_points`` LiDAR pixels or a failed fit): blind to metric scale.

Targets (``loss.ckd_target``):

* ``kernel``: p^T_k = softmax_k(-|u^T - û_k| / (sigma * tau)), docs/method.md.
  ``sigma`` (``loss.ckd_sigma``, MAD units) is kept apart from tau because at
  the optimum of tau^2 KL the student's logits are -|u^T - û_k| / sigma
  whatever tau is. Its expectation is biased deep (Jensen).
* ``linear``: the teacher mapped back to metric depth D* = 1 / (m + s u^T)
  (clamped to the centres; sky -> the last) and split between the two
  centres around it so that the student's readout of the target is D*
  exactly. Its bin index means "the student's current k-th centre", which
  moves with the student and does not carry over to unseen scenes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 (the universal torch idiom)

from fsmde_core.distill.anchored import lidar_affine_fit
from fsmde_core.distill.ckd import (
    check_readout,
    ckd_kl,
    scale_invariant_normalise,
    teacher_at,
    two_bin_log_probs,
)
from fsmde_core.distill.masked import EPS

#: ``loss.ckd_target`` values implemented here.
ABLATION_TARGETS = ("kernel", "linear")
#: ``loss.ckd_anchor`` values (read by the ablation targets only).
ANCHORS = ("gt_fit", "gt", "student")


@dataclass(frozen=True)
class AblationTarget:
    """Which ablation target, with its settings: ``loss.ckd_target`` / ``ckd_anchor`` / ``ckd_sigma`` /
    ``tau_ckd`` and the student's ``readout`` (the target is read out as the student reads depth)."""

    target: str = "kernel"
    anchor: str = "gt_fit"
    sigma: float = 0.05
    tau: float = 1.0
    readout: str = "log"
    min_anchor_points: int = 32

    def __post_init__(self) -> None:
        if self.target not in ABLATION_TARGETS:
            raise ValueError(f"target must be one of {ABLATION_TARGETS}, got {self.target!r}")
        if self.anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {ANCHORS}, got {self.anchor!r}")
        if self.tau <= 0 or self.sigma <= 0:
            raise ValueError(f"tau and sigma must be > 0, got tau={self.tau}, sigma={self.sigma}")
        check_readout(self.readout)


def _anchored_space(
    teacher: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor, gt_depth: torch.Tensor | None,
    anchor: str, min_anchor_points: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(u^T, m, s): the teacher normalised per image, and the metric inverse depth's median / MAD.

    Starts from the student anchor and replaces it per image where the LiDAR
    anchor (``gt_fit`` / ``gt``) has enough points (and, for the fit, succeeds).
    """
    u_t, _, _ = scale_invariant_normalise(teacher, valid)
    _, m, s = scale_invariant_normalise(1.0 / depth.clamp_min(EPS), valid)
    if anchor == "student" or gt_depth is None:
        return u_t, m, s
    gt = gt_depth.detach().to(depth.dtype)
    if tuple(gt.shape[-2:]) != tuple(depth.shape[-2:]):
        raise ValueError(f"gt_depth {tuple(gt.shape)} must match the student's depth size {tuple(depth.shape[-2:])}")
    lidar = valid & torch.isfinite(gt) & (gt > 0)
    use_gt = lidar.flatten(1).sum(1) >= min_anchor_points  # (B,)
    _, m_t, s_t = scale_invariant_normalise(teacher, lidar)
    inv_gt = 1.0 / gt.clamp_min(EPS)
    if anchor == "gt_fit":  # m + s * u_t == a * teacher + b: the teacher mapped onto the LiDAR pointwise
        a, b, fit_ok = lidar_affine_fit(teacher, inv_gt, lidar, min_anchor_points)
        use_gt = use_gt & fit_ok
        m_g, s_g = a * m_t + b, a * s_t
    else:  # "gt": match medians and MADs of the two distributions
        _, m_g, s_g = scale_invariant_normalise(inv_gt, lidar)
    u_gt = (teacher - m_t.view(-1, 1, 1, 1)) / s_t.view(-1, 1, 1, 1)
    return (torch.where(use_gt.view(-1, 1, 1, 1), u_gt, u_t), torch.where(use_gt, m_g, m),
            torch.where(use_gt, s_g, s))


def _linear_bin_log_probs(
    centres: torch.Tensor, m: torch.Tensor, s: torch.Tensor, u_t: torch.Tensor, readout: str
) -> torch.Tensor:
    """log p over K ascending centres, two bins per pixel, whose ``readout`` is D* = 1 / (m + s u) (clamped)."""
    b, k = centres.shape
    inv = m.view(b, 1, 1, 1) + s.view(b, 1, 1, 1) * u_t  # metric inverse depth of the teacher's value
    far = centres[:, -1].view(b, 1, 1, 1)
    d_star = torch.where(inv > 0, 1.0 / inv.clamp_min(EPS), far)  # <= 0: at or beyond infinity (sky)
    d_star = torch.minimum(torch.maximum(d_star, centres[:, :1].view(b, 1, 1, 1)), far).flatten(1)  # (B, HW)
    upper = torch.searchsorted(centres.contiguous(), d_star.contiguous()).clamp(1, k - 1)
    lower = upper - 1
    values, d_read = (centres.log(), d_star.log()) if readout == "log" else (centres, d_star)
    c_lo, c_hi = values.gather(1, lower), values.gather(1, upper)
    w_hi = ((d_read - c_lo) / (c_hi - c_lo).clamp_min(EPS)).clamp(0.0, 1.0)
    shape = (b, 1, *u_t.shape[-2:])
    return two_bin_log_probs(lower.view(shape), w_hi.view(shape), k)


def ablation_bin_log_probs(
    student_centres: torch.Tensor,
    student_depth: torch.Tensor,
    teacher_inv_depth: torch.Tensor,
    mask: torch.Tensor | None = None,
    gt_depth: torch.Tensor | None = None,
    spec: AblationTarget = AblationTarget(),  # frozen: a shared default is safe
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``kernel`` / ``linear`` CKD target over the student's bins, and where it is defined.

    Computed without gradient: if the target could move the centres or the
    depth, the KD term could shrink itself by pulling them towards the
    teacher's arbitrary affine frame, against the metric supervision.

    Returns:
        log_p: (B, K, H, W) log-probabilities (finite everywhere).
        valid: (B, 1, H, W) region mask, finite teacher, finite positive student depth.
    """
    with torch.no_grad():
        depth = student_depth.detach()
        teacher, valid = teacher_at(teacher_inv_depth, depth, mask)
        valid = valid & torch.isfinite(depth) & (depth > 0)
        u_t, m, s = _anchored_space(teacher, depth, valid, gt_depth, spec.anchor, spec.min_anchor_points)
        centres = student_centres.detach().to(depth.dtype)
        u_t = torch.where(valid, u_t, torch.zeros((), dtype=depth.dtype, device=depth.device))
        if spec.target == "linear":
            return _linear_bin_log_probs(centres, m, s, u_t, spec.readout), valid
        u_hat = (1.0 / centres.clamp_min(EPS) - m[:, None]) / s[:, None]  # (B, K)
        # (B, K, H, W) teacher logits -|u^T - û_k| / (sigma * tau), built in place: this
        # tensor is as large as the student's logits, temporaries cost real memory.
        logits_t = torch.sub(u_t, u_hat[:, :, None, None]).abs_().mul_(-1.0 / (spec.sigma * spec.tau))
        return F.log_softmax(logits_t, dim=1), valid


def ablation_ckd_loss(
    student_logits: torch.Tensor,
    student_centres: torch.Tensor,
    student_depth: torch.Tensor,
    teacher_inv_depth: torch.Tensor,
    mask: torch.Tensor | None = None,
    gt_depth: torch.Tensor | None = None,
    spec: AblationTarget = AblationTarget(),  # frozen: a shared default is safe
) -> torch.Tensor:
    """tau^2 KL from an ablation target (:func:`ablation_bin_log_probs`) to softmax(z / tau).

    Args:
        student_logits: (B, K, H, W) logits z.
        student_centres: (B, K) centres in metres.
        student_depth: (B, 1, H, W) the student's metric depth (same H, W as z).
        teacher_inv_depth: (B, 1, h, w) relative inverse depth, any affine frame.
        mask: optional (B, 1, H, W) bool region mask (not the sparse GT).
        gt_depth: (B, 1, H, W) sparse GT at the logits' size, for the ``gt_fit`` / ``gt`` anchors.
        spec: the target and its settings.
    """
    b, k, h, w = student_logits.shape
    if student_centres.shape != (b, k):
        raise ValueError(f"centres {tuple(student_centres.shape)} do not match logits (B={b}, K={k})")
    if student_depth.shape != (b, 1, h, w):
        raise ValueError(f"depth {tuple(student_depth.shape)} must be {(b, 1, h, w)} like the logits")
    log_p, valid = ablation_bin_log_probs(student_centres, student_depth, teacher_inv_depth, mask, gt_depth, spec)
    return ckd_kl(student_logits, log_p, valid, spec.tau)
