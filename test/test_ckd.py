"""Known-answer and property tests of cross-interaction KD (fsmde_core.distill.ckd): rank target and centres."""

from __future__ import annotations

import math

import pytest
import torch

from fsmde_core.distill.ckd import (
    ckd_centre_loss,
    ckd_kl,
    ckd_loss,
    rank_bin_log_probs,
    scale_invariant_normalise,
    teacher_rank_bins,
)
from fsmde_core.distill.supervised import silog_loss
from fsmde_core.models.student import bin_expectation

NAN = float("nan")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- normalisation


def test_scale_invariant_normalise_affine_invariance_and_stats() -> None:
    # float64: a*x + b with a=0.01, b=100 would lose ~1e-3 of the MAD to float32 rounding
    x = torch.rand(2, 1, 8, 9, generator=_gen(2), dtype=torch.float64) * 3
    x[0, 0, 0, :4] = NAN
    mask = torch.rand(x.shape, generator=_gen(3)) > 0.3
    u, med, mad = scale_invariant_normalise(x, mask)
    for a, b in ((2.5, -1.0), (0.01, 100.0), (40.0, 3.0)):
        u2, med2, mad2 = scale_invariant_normalise(a * x + b, mask)
        torch.testing.assert_close(u2, u, rtol=1e-4, atol=1e-4, equal_nan=True)
        torch.testing.assert_close(med2, a * med + b, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(mad2, a * mad, rtol=1e-4, atol=1e-6)
    valid = mask & torch.isfinite(x)
    assert torch.isnan(u[~valid]).all() and torch.isfinite(u[valid]).all()
    for b in range(2):
        ub = u[b][valid[b]]
        assert ub.median().item() == pytest.approx(0.0, abs=1e-6)
        assert ub.abs().mean().item() == pytest.approx(1.0, rel=1e-5)


def test_scale_invariant_normalise_known_values_and_empty() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 10.0, NAN]])
    u, med, mad = scale_invariant_normalise(x)
    assert med.item() == 2.0  # lower median of {1, 2, 3, 10}
    assert mad.item() == pytest.approx((1 + 0 + 1 + 8) / 4)
    torch.testing.assert_close(u[0, :4], torch.tensor([-0.4, 0.0, 0.4, 3.2]))
    empty = torch.full((1, 3), NAN, requires_grad=True)
    u_e, med_e, mad_e = scale_invariant_normalise(empty)
    assert med_e.item() == 0.0 and mad_e.item() > 0 and torch.isnan(u_e).all()


# --------------------------------------------------------------------------- rank target


def test_rank_bins_known_answer_ties_and_invalid_pixels():
    """Eight pixels, K = 4: bin k holds the k-th quarter of the pixels ordered near to far."""
    inv = torch.tensor([8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]).view(1, 1, 1, 8)
    valid = torch.ones_like(inv, dtype=torch.bool)
    lower, w_hi = teacher_rank_bins(inv, valid, 4)
    pos = (lower + w_hi).flatten()  # continuous bin coordinate: (rank + 0.5) / 8 * 4 - 0.5
    torch.testing.assert_close(pos, torch.tensor([0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0]))
    # tied pixels share their mid-rank; invalid pixels take no rank and get weight 0
    inv2 = torch.tensor([5.0, 0.0, 0.0, 0.0, 9.0, 1.0]).view(1, 1, 1, 6)
    valid2 = torch.tensor([True, True, True, True, False, True]).view(1, 1, 1, 6)
    lower2, w2 = teacher_rank_bins(inv2, valid2, 5)
    pos2 = (lower2 + w2).flatten()
    assert pos2[1] == pos2[2] == pos2[3] == pytest.approx(3.0)  # mid-rank 3 of 5: (3 + 0.5) / 5 * 5 - 0.5
    assert pos2[0] == pytest.approx(0.0) and pos2[5] == pytest.approx(1.0)
    assert w2.flatten()[4] == 0.0


def test_rank_target_is_invariant_to_any_increasing_map_of_the_teacher():
    g = _gen(3)
    inv = torch.rand(2, 1, 12, 16, generator=g) + 0.01
    valid = torch.ones_like(inv, dtype=torch.bool)
    depth = torch.full((2, 1, 12, 16), 10.0)
    log_p, ok = rank_bin_log_probs(8, inv, depth)
    warped = 3.0 * inv.pow(1.7) + 0.4  # unknown scale, shift and a monotone distortion
    log_p2, _ = rank_bin_log_probs(8, warped, depth * 5.0)
    assert ok.all()
    torch.testing.assert_close(log_p, log_p2)
    # each bin receives 1/K of the probability mass: equal-mass (quantile) bins
    torch.testing.assert_close(log_p.exp().mean(dim=(2, 3)), torch.full((2, 8), 1 / 8), atol=1e-3, rtol=0)
    assert torch.equal(teacher_rank_bins(inv, valid, 8)[0], teacher_rank_bins(warped, valid, 8)[0])


def test_ckd_loss_zero_when_student_logits_equal_tau_log_pt_and_positive_otherwise() -> None:
    g = _gen(4)
    teacher = torch.rand(2, 1, 6, 10, generator=g) + 0.1  # half the logits' resolution
    for tau in (1.0, 0.5, 2.0):
        log_p, valid = rank_bin_log_probs(16, teacher, torch.zeros(2, 16, 12, 20))
        assert valid.all()
        assert abs(ckd_loss(tau * log_p, teacher, tau=tau).item()) < 1e-5
        assert ckd_loss(tau * log_p.roll(1, dims=1), teacher, tau=tau).item() > 1e-2


def test_ckd_loss_mask_nan_teacher_and_empty() -> None:
    g = _gen(8)
    logits = torch.randn(2, 16, 12, 20, generator=g, requires_grad=True)
    teacher = torch.rand(2, 1, 6, 10, generator=g) + 0.1
    teacher[0] = NAN  # teacher has no opinion on image 0
    mask = torch.ones(2, 1, 12, 20, dtype=torch.bool)
    mask[1, :, :, :5] = False
    loss = ckd_loss(logits, teacher, mask)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert logits.grad[0].abs().sum() == 0 and logits.grad[1, :, :, :5].abs().sum() == 0
    assert logits.grad[1, :, :, 5:].abs().sum() > 0
    logits.grad = None
    empty = ckd_loss(logits, teacher, torch.zeros_like(mask))
    empty.backward()
    assert empty.item() == 0.0 and torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="tau"):
        ckd_kl(logits, torch.zeros_like(logits), mask, 0.0)


# --------------------------------------------------------------------------- metric centres


def test_ckd_centre_loss_zero_for_the_depth_quantiles_and_gradient_only_to_centres():
    """64 pixels with depths geometric in their rank, K = 8: pixel r sits at bin coordinate
    (r + 0.5) / 8 - 0.5, and the cross depth interpolates the centres in log depth, so
    centres equal to the depth at each bin's middle reproduce every GT depth (except
    the clamped ends): loss ~0. Centres 1.5x too deep give a positive loss whose
    gradient moves them, whatever affine frame the teacher has."""
    n = 64
    depth = 2.0 * 20.0 ** (torch.arange(n) / (n - 1))  # 2 m .. 40 m
    mid = 8 * torch.arange(8) + 3  # bin k's middle lies between pixels 8k + 3 and 8k + 4
    centres = (depth[mid] * depth[mid + 1]).sqrt().view(1, 8)
    gt = depth.clone()
    gt[:4] = NAN  # below the first centre and above the last, the cross depth is clamped
    gt[-4:] = NAN
    inv = (1.0 / depth).view(1, 1, 8, 8)
    assert ckd_centre_loss(centres.clone().requires_grad_(True), inv, gt.view(1, 1, 8, 8),
                           variance_focus=0.0).item() < 1e-4
    wrong = (centres * 1.5).requires_grad_(True)
    loss = ckd_centre_loss(wrong, inv * 4.0 + 1.0, gt.view(1, 1, 8, 8), variance_focus=0.0)
    assert loss.item() == pytest.approx(math.log(1.5), rel=1e-3)
    loss.backward()
    assert wrong.grad is not None and bool((wrong.grad > 0).all())


def _arithmetic_scene() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """64 pixels with depths *arithmetic* in their rank, K = 8, centres = each bin's middle depth.

    Read out linearly (AdaBins), these centres reproduce every GT depth between the first
    and the last centre; read out in log depth they fall short between centres (a
    geometric mean is below the arithmetic one), by up to 7 % near the camera.
    """
    n = 64
    depth = 2.0 + 38.0 * torch.arange(n) / (n - 1)
    mid = 8 * torch.arange(8) + 3
    centres = (0.5 * (depth[mid] + depth[mid + 1])).view(1, 8)
    gt = depth.clone()
    gt[:4] = NAN
    gt[-4:] = NAN
    return centres, (1.0 / depth).view(1, 1, 8, 8), gt.view(1, 1, 8, 8)


def test_ckd_centre_loss_reads_depth_out_like_the_student() -> None:
    """A student with ``readout: linear`` must get centres that are right for a linear readout."""
    centres, inv, gt = _arithmetic_scene()
    linear = ckd_centre_loss(centres, inv, gt, readout="linear").item()
    log = ckd_centre_loss(centres, inv, gt, readout="log").item()
    assert linear < 1e-4
    assert log > 0.01
    with pytest.raises(ValueError, match="readout"):
        ckd_centre_loss(centres, inv, gt, readout="median")


@pytest.mark.parametrize("readout", ["log", "linear"])
def test_ckd_centre_loss_equals_silog_of_the_students_own_bin_expectation(readout: str) -> None:
    """The cross depth is models.student.bin_expectation of the teacher's two-bin split, for either readout."""
    g = _gen(14)
    gt = 1.0 + 40.0 * torch.rand(2, 1, 10, 12, generator=g)
    gt[torch.rand(gt.shape, generator=g) < 0.5] = NAN
    inv = torch.rand(2, 1, 10, 12, generator=g) + 0.05
    centres = torch.sort(1.0 + 50.0 * torch.rand(2, 6, generator=g), dim=1).values
    valid = torch.isfinite(inv)
    lower, w_hi = teacher_rank_bins(inv, valid, 6)
    probs = torch.zeros(2, 6, 10, 12).scatter_add_(1, lower, 1.0 - w_hi).scatter_add_(1, lower + 1, w_hi)
    expected = silog_loss(bin_expectation(probs, centres, log_space=readout == "log"), gt, valid, 0.3)
    got = ckd_centre_loss(centres, inv, gt, variance_focus=0.3, readout=readout)
    torch.testing.assert_close(got, expected)
