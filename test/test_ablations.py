"""Tests of the CKD targets and anchors kept as ablations (fsmde_core.distill.ablations)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from fsmde_core.distill.ablations import AblationTarget, ablation_bin_log_probs, ablation_ckd_loss
from fsmde_core.models.student import bin_expectation

NAN = float("nan")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ckd_inputs(seed: int = 4, b: int = 2, k: int = 16, h: int = 12, w: int = 20):
    g = _gen(seed)
    true_depth = 2.0 + 60.0 * torch.rand(b, 1, h, w, generator=g)
    centres = torch.sort(1.0 + 70.0 * torch.rand(b, k, generator=g), dim=1).values
    student_depth = true_depth * (1 + 0.05 * torch.randn(b, 1, h, w, generator=g))
    teacher = 7.0 / true_depth + 0.3  # relative inverse depth in its own affine frame
    teacher_low = F.interpolate(teacher, scale_factor=0.5, mode="bilinear", align_corners=False)
    logits = torch.randn(b, k, h, w, generator=g)
    return logits, centres, student_depth, teacher_low


# --------------------------------------------------------------------------- kernel target


def test_kernel_zero_when_student_logits_equal_tau_log_pt() -> None:
    _, centres, depth, teacher = _ckd_inputs()
    for tau, sigma in ((1.0, 1.0), (0.5, 1.0), (2.0, 0.2)):
        spec = AblationTarget("kernel", "student", sigma, tau)
        log_p, valid = ablation_bin_log_probs(centres, depth, teacher, spec=spec)
        assert valid.all()
        assert abs(ablation_ckd_loss(tau * log_p, centres, depth, teacher, spec=spec).item()) < 1e-5
        assert ablation_ckd_loss(tau * log_p.roll(1, dims=1), centres, depth, teacher, spec=spec).item() > 1e-2


def test_kernel_invariant_to_teacher_affine() -> None:
    logits, centres, depth, teacher = _ckd_inputs(5)
    spec = AblationTarget("kernel", "student", sigma=1.0, tau=0.7)
    base = ablation_ckd_loss(logits, centres, depth, teacher, spec=spec)
    for a, b in ((3.0, 10.0), (0.02, -5.0)):
        assert ablation_ckd_loss(logits, centres, depth, a * teacher + b, spec=spec).item() == pytest.approx(
            base.item(), rel=1e-4)


def test_kernel_target_peaks_at_bin_nearest_in_inverse_depth() -> None:
    # If the student's map equals the true depth, the teacher target must peak on the
    # bin whose inverse centre is nearest the true inverse depth, whatever the teacher's scale.
    g = _gen(6)
    true_depth = 2.0 + 60.0 * torch.rand(1, 1, 10, 10, generator=g)
    centres = torch.linspace(1.0, 80.0, 32).unsqueeze(0)
    log_p, _ = ablation_bin_log_probs(centres, true_depth, 5.0 / true_depth + 2.0,
                                      spec=AblationTarget(anchor="student", sigma=0.1))
    nearest = (1.0 / true_depth - 1.0 / centres[0].view(1, -1, 1, 1)).abs().argmin(dim=1)
    assert torch.equal(log_p.argmax(dim=1), nearest)


@pytest.mark.parametrize("target", ["kernel", "linear"])
def test_ablation_gradient_only_to_logits_and_mask_nan_teacher_empty(target: str) -> None:
    logits, centres, depth, teacher = _ckd_inputs(7)
    logits.requires_grad_()
    centres.requires_grad_()
    depth.requires_grad_()
    teacher = teacher.clone()
    teacher[0] = NAN  # teacher has no opinion on image 0
    mask = torch.ones_like(depth, dtype=torch.bool)
    mask[1, :, :, :5] = False
    loss = ablation_ckd_loss(logits, centres, depth, teacher, mask, spec=AblationTarget(target, "student"))
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert centres.grad is None and depth.grad is None
    assert logits.grad[0].abs().sum() == 0 and logits.grad[1, :, :, :5].abs().sum() == 0
    assert logits.grad[1, :, :, 5:].abs().sum() > 0
    logits.grad = None
    empty = ablation_ckd_loss(logits, centres, depth, teacher, torch.zeros_like(mask), spec=AblationTarget(target))
    empty.backward()
    assert empty.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_ablation_argument_validation() -> None:
    logits, centres, depth, teacher = _ckd_inputs(9)
    with pytest.raises(ValueError, match="target"):
        AblationTarget(target="rank")
    with pytest.raises(ValueError, match="anchor"):
        AblationTarget(anchor="median")
    with pytest.raises(ValueError, match="sigma"):
        AblationTarget(sigma=0.0)
    with pytest.raises(ValueError, match="readout"):
        AblationTarget(readout="median")
    with pytest.raises(ValueError, match="centres"):
        ablation_ckd_loss(logits, centres[:, :3], depth, teacher)
    with pytest.raises(ValueError, match="depth"):
        ablation_ckd_loss(logits, centres, depth[..., :4], teacher)


# --------------------------------------------------------------------------- anchors


def test_gt_anchor_gives_metric_target_independent_of_student_scale() -> None:
    """With a LiDAR anchor, the target's expected depth follows the GT scale, not the student's."""
    gt = torch.linspace(2.0, 40.0, 64 * 48).reshape(1, 1, 48, 64)
    teacher = 3.0 / gt + 0.7  # unknown affine of the true inverse depth
    sparse = torch.full_like(gt, NAN)
    sparse[..., ::4, ::4] = gt[..., ::4, ::4]
    centres = torch.quantile(gt.flatten(), torch.linspace(0.01, 0.99, 48))[None]
    error = {}
    for scale in (0.5, 1.0, 3.0):  # the student's current (wrong) scale
        for anchor in ("gt_fit", "student"):
            log_p, _ = ablation_bin_log_probs(centres, gt * scale, teacher, None, sparse, AblationTarget(anchor=anchor))
            d = bin_expectation(log_p.exp(), centres)
            error[(scale, anchor)] = float(((d - gt).abs() / gt).mean())
    for scale in (0.5, 1.0, 3.0):
        assert error[(scale, "gt_fit")] < 0.05  # metric target whatever the student's scale
    assert error[(3.0, "student")] > 0.3  # the student anchor keeps the student's wrong scale


def test_gt_anchor_falls_back_to_student_stats_without_lidar() -> None:
    gt = torch.linspace(2.0, 40.0, 32 * 16).reshape(1, 1, 16, 32)
    teacher = 1.0 / gt
    centres = torch.linspace(1.0, 50.0, 16)[None]
    empty = torch.full_like(gt, NAN)
    for anchor in ("gt_fit", "gt"):
        a, _ = ablation_bin_log_probs(centres, gt, teacher, None, empty, AblationTarget(anchor=anchor, sigma=0.1))
        b, _ = ablation_bin_log_probs(centres, gt, teacher, None, empty, AblationTarget(anchor="student", sigma=0.1))
        assert torch.allclose(a, b)


def test_gt_fit_anchor_recovers_the_teacher_affine_despite_outliers() -> None:
    """The teacher is an exact affine of the true inverse depth except on 10 % of
    the LiDAR pixels (parallax at edges, lost structures). The least-squares
    anchor with its trimmed refit maps the teacher back to metric depth
    exactly; matching medians/MADs of the two distributions does not."""
    g = _gen(21)
    gt = 2.0 + 50.0 * torch.rand(1, 1, 48, 64, generator=g)
    teacher = 3.0 / gt + 0.7
    sparse = torch.full_like(gt, NAN)
    sparse[..., ::3, ::2] = gt[..., ::3, ::2]
    lidar = torch.isfinite(sparse)
    outliers = lidar & (torch.rand(gt.shape, generator=g) < 0.1)
    corrupted = torch.where(outliers, teacher + 2.0, teacher)  # the teacher sees something much nearer there
    centres = torch.linspace(1.0, 60.0, 200)[None]
    errors = {}
    for anchor in ("gt_fit", "gt"):
        log_p, _ = ablation_bin_log_probs(centres, gt, corrupted, None, sparse, AblationTarget("linear", anchor))
        d = bin_expectation(log_p.exp(), centres)
        errors[anchor] = float(((d - gt).abs() / gt)[~outliers].mean())
    assert errors["gt_fit"] < 0.005
    assert errors["gt"] > 0.05


# --------------------------------------------------------------------------- linear target


@pytest.mark.parametrize("readout", ["log", "linear"])
def test_linear_target_readout_is_exactly_the_anchored_teacher_depth(readout: str) -> None:
    """The 'linear' target splits each pixel between the two centres around the
    teacher's metric depth so that the student's readout of it is that depth
    (clamped to the centres' range) up to the 1e-4 floor; the 'kernel' target is biased far."""
    gt = torch.linspace(2.0, 40.0, 64 * 48).reshape(1, 1, 48, 64)
    teacher = 3.0 / gt + 0.7
    sparse = torch.full_like(gt, NAN)
    sparse[..., ::4, ::4] = gt[..., ::4, ::4]
    centres = torch.linspace(4.0, 30.0, 12)[None]  # coarse bins, range narrower than the scene
    log_p, valid = ablation_bin_log_probs(centres, gt * 2.0, teacher, None, sparse,
                                          AblationTarget("linear", readout=readout))
    assert valid.all()
    p = log_p.exp()
    torch.testing.assert_close(p.sum(1), torch.ones(1, 48, 64))
    assert int((p > 1e-3).sum(1).max()) <= 2  # two bins per pixel
    d = bin_expectation(p, centres, log_space=readout == "log")
    torch.testing.assert_close(d, gt.clamp(4.0, 30.0), rtol=2e-3, atol=0.0)
    log_k, _ = ablation_bin_log_probs(centres, gt * 2.0, teacher, None, sparse, AblationTarget("kernel", sigma=0.05))
    d_k = bin_expectation(log_k.exp(), centres)
    inside = (gt > 4.0) & (gt < 30.0)
    assert float(((d_k - gt) / gt)[inside].mean()) > 0.01  # the kernel target's far bias


def test_linear_target_sends_sky_to_the_last_bin() -> None:
    centres = torch.linspace(1.0, 50.0, 8)[None]
    depth = torch.linspace(5.0, 20.0, 16).reshape(1, 1, 4, 4)
    teacher = 1.0 / depth
    teacher[..., 1, 1] = -1.0  # beyond infinity once mapped with the student's statistics
    log_p, _ = ablation_bin_log_probs(centres, depth, teacher, spec=AblationTarget("linear", "student"))
    assert log_p[0, :, 1, 1].argmax().item() == 7
