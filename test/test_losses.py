"""Known-answer and property tests of the distillation losses (fsmde_core.distill.losses)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from fsmde_core.distill.losses import (
    DistillLossConfig,
    bin_centre_chamfer,
    ckd_centre_loss,
    ckd_loss,
    compute_losses,
    relation_matrix,
    resize_nan_safe,
    scale_invariant_normalise,
    silog_loss,
    teacher_bin_log_probs,
    teacher_rank_bins,
    vrkd_loss,
)
from fsmde_core.models.student import bin_expectation
from fsmde_core.models.teachers.base import TeacherOutput

NAN = float("nan")
INF = float("inf")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- SILog


def test_silog_two_pixel_known_answer() -> None:
    pred = torch.tensor([2.0, 4.0, 7.0]).view(1, 1, 1, 3)
    gt = torch.tensor([1.0, 1.0, NAN]).view(1, 1, 1, 3)  # third pixel invalid
    g = [math.log(2.0), math.log(4.0)]
    mean_g = sum(g) / 2
    mean_g2 = sum(v * v for v in g) / 2
    expected = math.sqrt(mean_g2 - 0.85 * mean_g**2)
    assert silog_loss(pred, gt).item() == pytest.approx(expected, rel=1e-6)
    # lambda = 0 is plain log-RMSE
    assert silog_loss(pred, gt, variance_focus=0.0).item() == pytest.approx(math.sqrt(mean_g2), rel=1e-6)


def test_silog_scale_invariant_at_lambda_one_and_zero_when_exact() -> None:
    gt = torch.rand(2, 1, 5, 6, generator=_gen()) * 50 + 1
    assert silog_loss(gt * 3.0, gt, variance_focus=1.0).item() < 1e-5
    assert silog_loss(gt.clone(), gt).item() < 1e-5
    assert silog_loss(gt * 3.0, gt).item() == pytest.approx(math.sqrt(0.15) * math.log(3.0), rel=1e-4)


def test_silog_mask_and_invalid_gt_excluded_and_mean_over_images() -> None:
    pred = torch.tensor([[2.0, 100.0], [1.0, 1.0]]).view(2, 1, 1, 2)
    gt = torch.tensor([[1.0, 1.0], [0.0, INF]]).view(2, 1, 1, 2)  # image 1: no valid GT
    mask = torch.tensor([[True, False], [True, True]]).view(2, 1, 1, 2)
    # image 0 keeps one pixel: g = log 2 -> sqrt((1 - 0.85) * log(2)^2); image 1 is left out of the mean
    expected = math.sqrt(0.15) * math.log(2.0)
    assert silog_loss(pred, gt, mask).item() == pytest.approx(expected, rel=1e-5)


def test_silog_empty_mask_zero_with_finite_gradient() -> None:
    pred = torch.full((2, 1, 3, 3), 5.0, requires_grad=True)
    gt = torch.full((2, 1, 3, 3), NAN)
    loss = silog_loss(pred, gt)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(pred.grad).all()


def test_silog_nonpositive_pred_at_invalid_pixels_gives_finite_grad() -> None:
    pred = torch.tensor([0.0, -1.0, 2.0]).view(1, 1, 1, 3).requires_grad_()
    gt = torch.tensor([NAN, 0.0, 1.0]).view(1, 1, 1, 3)
    silog_loss(pred, gt).backward()
    assert torch.isfinite(pred.grad).all()
    assert pred.grad[0, 0, 0, :2].abs().sum() == 0


# --------------------------------------------------------------------------- Chamfer


def test_chamfer_zero_when_centres_equal_gt_values() -> None:
    gt = torch.tensor([3.0, 1.0, 2.0, 2.0, NAN, INF]).view(1, 1, 2, 3)
    centres = torch.tensor([[1.0, 2.0, 3.0]])
    assert bin_centre_chamfer(centres, gt).item() == pytest.approx(0.0, abs=1e-12)


def test_chamfer_shifted_known_answer() -> None:
    gt = torch.tensor([2.0, 4.0]).view(1, 1, 1, 2)
    centres = torch.tensor([[1.0, 3.0]])
    # centre->gt: 1->2 (1), 3->2|4 (1): mean 1; gt->centre: 2->1|3 (1), 4->3 (1): mean 1
    assert bin_centre_chamfer(centres, gt).item() == pytest.approx(2.0)
    centres2 = torch.tensor([[2.5, 10.0]])
    # centre->gt: (0.25 + 36) / 2; gt->centre: (0.25 + 2.25) / 2
    assert bin_centre_chamfer(centres2, gt).item() == pytest.approx(18.125 + 1.25)


def _chamfer_brute(centres: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    per = []
    for b in range(centres.shape[0]):
        g = gt[b][mask[b] & torch.isfinite(gt[b]) & (gt[b] > 0)]
        if g.numel() == 0:
            continue
        d = (centres[b][:, None] - g[None, :]) ** 2
        per.append(d.min(1).values.mean() + d.min(0).values.mean())
    return torch.stack(per).mean()


def test_chamfer_matches_brute_force_with_padding_and_gradients() -> None:
    g = _gen(1)
    gt = torch.rand(3, 1, 6, 7, generator=g) * 80 + 0.5
    gt[torch.rand(gt.shape, generator=g) < 0.6] = NAN  # sparse, LiDAR-like
    gt[2] = NAN  # an image without any GT
    mask = torch.rand(gt.shape, generator=g) > 0.2
    centres = (torch.rand(3, 9, generator=g) * 90).requires_grad_()  # unsorted on purpose
    ours = bin_centre_chamfer(centres, gt, mask)
    ref_c = centres.detach().clone().requires_grad_()
    ref = _chamfer_brute(ref_c, gt, mask)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(centres.grad, ref_c.grad, rtol=1e-4, atol=1e-6)
    assert centres.grad[2].abs().sum() == 0


def test_chamfer_empty_is_zero_with_finite_grad() -> None:
    centres = torch.tensor([[1.0, 5.0]], requires_grad=True)
    gt = torch.tensor([NAN, -1.0, 0.0, INF]).view(1, 1, 2, 2)
    loss = bin_centre_chamfer(centres, gt)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(centres.grad).all()


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


def test_resize_nan_safe_ignores_invalid_neighbours() -> None:
    x = torch.tensor([[1.0, NAN], [1.0, 1.0]]).view(1, 1, 2, 2)
    y = resize_nan_safe(x, (4, 4))
    assert torch.isfinite(y).sum() >= 12
    torch.testing.assert_close(y[torch.isfinite(y)], torch.ones(int(torch.isfinite(y).sum())))


# --------------------------------------------------------------------------- CKD


def _ckd_inputs(seed: int = 4, b: int = 2, k: int = 16, h: int = 12, w: int = 20):
    g = _gen(seed)
    true_depth = 2.0 + 60.0 * torch.rand(b, 1, h, w, generator=g)
    centres = torch.sort(1.0 + 70.0 * torch.rand(b, k, generator=g), dim=1).values
    student_depth = true_depth * (1 + 0.05 * torch.randn(b, 1, h, w, generator=g))
    teacher = 7.0 / true_depth + 0.3  # relative inverse depth in its own affine frame
    teacher_low = F.interpolate(teacher, scale_factor=0.5, mode="bilinear", align_corners=False)
    logits = torch.randn(b, k, h, w, generator=g)
    return logits, centres, student_depth, teacher_low


def test_ckd_zero_when_student_logits_equal_tau_log_pt() -> None:
    _, centres, depth, teacher = _ckd_inputs()
    for tau, sigma in ((1.0, 1.0), (0.5, 1.0), (2.0, 0.2)):
        log_p, valid = teacher_bin_log_probs(centres, depth, teacher, tau=tau, sigma=sigma)
        assert valid.all()
        loss = ckd_loss(tau * log_p, centres, depth, teacher, tau=tau, sigma=sigma)
        assert abs(loss.item()) < 1e-5
        other = ckd_loss(tau * log_p.roll(1, dims=1), centres, depth, teacher, tau=tau, sigma=sigma)
        assert other.item() > 1e-2


def test_ckd_invariant_to_teacher_affine() -> None:
    logits, centres, depth, teacher = _ckd_inputs(5)
    base = ckd_loss(logits, centres, depth, teacher, tau=0.7)
    for a, b in ((3.0, 10.0), (0.02, -5.0)):
        assert ckd_loss(logits, centres, depth, a * teacher + b, tau=0.7).item() == pytest.approx(
            base.item(), rel=1e-4
        )


def test_ckd_target_peaks_at_bin_nearest_in_inverse_depth() -> None:
    # If the student's map equals the true depth, the teacher target must peak on the
    # bin whose inverse centre is nearest the true inverse depth, whatever the teacher's scale.
    g = _gen(6)
    true_depth = 2.0 + 60.0 * torch.rand(1, 1, 10, 10, generator=g)
    centres = torch.linspace(1.0, 80.0, 32).unsqueeze(0)
    log_p, _ = teacher_bin_log_probs(centres, true_depth, 5.0 / true_depth + 2.0, sigma=0.1)
    nearest = (1.0 / true_depth - 1.0 / centres[0].view(1, -1, 1, 1)).abs().argmin(dim=1)
    assert torch.equal(log_p.argmax(dim=1), nearest)


def test_ckd_gradient_only_to_logits() -> None:
    logits, centres, depth, teacher = _ckd_inputs(7)
    logits.requires_grad_()
    centres.requires_grad_()
    depth.requires_grad_()
    ckd_loss(logits, centres, depth, teacher).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert centres.grad is None and depth.grad is None


def test_ckd_mask_nan_teacher_and_empty() -> None:
    logits, centres, depth, teacher = _ckd_inputs(8)
    logits.requires_grad_()
    teacher = teacher.clone()
    teacher[0] = NAN  # teacher has no opinion on image 0
    mask = torch.ones_like(depth, dtype=torch.bool)
    mask[1, :, :, :5] = False
    loss = ckd_loss(logits, centres, depth, teacher, mask)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert logits.grad[0].abs().sum() == 0 and logits.grad[1, :, :, :5].abs().sum() == 0
    logits.grad = None
    empty = ckd_loss(logits, centres, depth, teacher, torch.zeros_like(mask))
    empty.backward()
    assert empty.item() == 0.0 and torch.isfinite(logits.grad).all()


# --------------------------------------------------------------------------- VRKD


def test_relation_matrix_shape_and_norm() -> None:
    f = torch.randn(3, 7, 13, 17, generator=_gen(9))
    r = relation_matrix(f, (2, 4))
    assert r.shape == (3, 8, 7)
    torch.testing.assert_close(r.norm(dim=-1), torch.ones(3, 8))


def test_vrkd_zero_for_orthogonal_embedding_of_channels_and_positive_otherwise() -> None:
    g = _gen(10)
    student = torch.randn(6, 8, 12, 20, generator=g, requires_grad=True)
    q, _ = torch.linalg.qr(torch.randn(24, 8, generator=g))  # 24x8, orthonormal columns
    teacher = torch.einsum("tc,bchw->bthw", q, student.detach())  # other width, same geometry
    teacher = F.interpolate(teacher, size=(24, 40), mode="nearest")  # and another resolution
    pairs = [(i, (i + 1) % 6) for i in range(6)]
    assert vrkd_loss(student, teacher, pairs, grid=(3, 5), tau=0.2).item() < 1e-6
    perm = teacher[:, torch.randperm(24, generator=g)]  # channel permutation: also invariant
    assert vrkd_loss(student, perm, torch.tensor(pairs), grid=(3, 5), tau=0.2).item() < 1e-6
    other = torch.randn(6, 24, 24, 40, generator=g)
    loss = vrkd_loss(student, other, pairs, grid=(3, 5), tau=0.2)
    assert loss.item() > 1e-3
    loss.backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


def test_vrkd_pairs_validation_and_empty() -> None:
    s = torch.randn(4, 3, 8, 8, requires_grad=True)
    t = torch.randn(4, 5, 8, 8)
    assert vrkd_loss(s, t, [], grid=(2, 2)).item() == 0.0
    with pytest.raises(ValueError, match="pair indices"):
        vrkd_loss(s, t, [(0, 4)], grid=(2, 2))
    with pytest.raises(ValueError, match="batch sizes"):
        vrkd_loss(s, t[:3], [(0, 1)], grid=(2, 2))


def test_vrkd_bands_whole_image_equals_unbanded_and_ignores_columns_outside() -> None:
    g = _gen(12)
    s = torch.randn(4, 6, 8, 20, generator=g)
    t = torch.randn(4, 9, 8, 20, generator=g)
    pairs = [(0, 1), (1, 2), (2, 3), (3, 0)]
    whole = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]] * 4, dtype=torch.float64)
    torch.testing.assert_close(vrkd_loss(s, t, pairs, (2, 4), 0.2, whole), vrkd_loss(s, t, pairs, (2, 4), 0.2))
    # view i keeps its left 30 %, view j its right 30 % (columns [0, 6) and [14, 20) of 20)
    bands = torch.tensor([[[0.0, 0.3], [0.7, 1.0]]] * 4, dtype=torch.float64)
    base = vrkd_loss(s, t, pairs, (2, 2), 0.2, bands)
    outside = s.clone()
    outside[..., 6:14] = torch.randn(4, 6, 8, 8, generator=g)  # no view's band covers these columns
    assert vrkd_loss(outside, t, pairs, (2, 2), 0.2, bands).item() == pytest.approx(base.item(), abs=1e-6)
    inside = s.clone()
    inside[..., :6] = torch.randn(4, 6, 8, 6, generator=g)
    assert abs(vrkd_loss(inside, t, pairs, (2, 2), 0.2, bands).item() - base.item()) > 1e-4
    # the band's own features: identical student and teacher relations -> 0
    assert vrkd_loss(t, t, pairs, (2, 2), 0.2, bands).item() < 1e-6


def test_vrkd_bands_validation() -> None:
    s, t = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8)
    with pytest.raises(ValueError, match="bands must be"):
        vrkd_loss(s, t, [(0, 1)], (2, 2), 0.2, torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match="0 <= u0 < u1 <= 1"):
        vrkd_loss(s, t, [(0, 1)], (2, 2), 0.2, torch.tensor([[[0.5, 0.2], [0.0, 1.0]]]))
    with pytest.raises(ValueError, match="vrkd_region"):
        DistillLossConfig(vrkd_region="band")


# --------------------------------------------------------------------------- compute_losses


def _student_like(b: int = 4, k: int = 8, h: int = 16, w: int = 24, seed: int = 11) -> SimpleNamespace:
    g = _gen(seed)
    logits = torch.randn(b, k, h, w, generator=g, requires_grad=True)
    centres = torch.sort(1 + 50 * torch.rand(b, k, generator=g), dim=1).values.requires_grad_()
    depth = bin_expectation(torch.softmax(logits, 1), centres)
    feats = torch.randn(b, 6, h // 4, w // 4, generator=g, requires_grad=True)
    return SimpleNamespace(depth=depth, logits=logits, centres=centres, features=feats)


def _batch(b: int = 4, h: int = 16, w: int = 24, seed: int = 12):
    g = _gen(seed)
    gt = 1 + 40 * torch.rand(b, 1, h, w, generator=g)
    gt[torch.rand(gt.shape, generator=g) < 0.7] = NAN
    teacher = TeacherOutput(inv_depth=torch.rand(b, 1, h // 2, w // 2, generator=g),
                            features=torch.randn(b, 10, 3, 5, generator=g))
    pairs = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0]])
    return gt, teacher, pairs


def test_compute_losses_all_terms_and_total() -> None:
    out = _student_like()
    gt, teacher, pairs = _batch()
    cfg = DistillLossConfig(w_silog=2.0, w_bins=0.5, w_ckd=3.0, w_vrkd=4.0, vrkd_grid=(2, 3), ckd_target="linear")
    losses = compute_losses(out, gt, None, teacher, pairs, cfg)
    assert set(losses) == {"silog", "bins", "ckd", "vrkd", "total"}  # the rank target adds ckd_centres
    expected = 2 * losses["silog"] + 0.5 * losses["bins"] + 3 * losses["ckd"] + 4 * losses["vrkd"]
    torch.testing.assert_close(losses["total"], expected)
    assert losses["silog"].item() == pytest.approx(silog_loss(out.depth, gt).item())
    losses["total"].backward()
    for t in (out.logits, out.centres, out.features):
        assert t.grad is not None and torch.isfinite(t.grad).all()


def test_compute_losses_switches_skip_terms(monkeypatch: pytest.MonkeyPatch) -> None:
    import fsmde_core.distill.losses as mod

    def boom(*_a: object, **_k: object) -> torch.Tensor:
        raise AssertionError("a switched-off term was computed")

    monkeypatch.setattr(mod, "ckd_loss", boom)
    monkeypatch.setattr(mod, "vrkd_loss", boom)
    out = _student_like()
    gt, _, _ = _batch()
    losses = compute_losses(out, gt, cfg=DistillLossConfig(use_ckd=False, use_vrkd=False))
    assert set(losses) == {"silog", "bins", "total"}
    only_bins = compute_losses(out, gt, cfg=DistillLossConfig(use_silog=False, use_ckd=False, use_vrkd=False))
    torch.testing.assert_close(only_bins["total"], 0.1 * only_bins["bins"])


def test_compute_losses_requires_teacher_and_pairs() -> None:
    out = _student_like()
    gt, teacher, _ = _batch()
    with pytest.raises(ValueError, match="teacher"):
        compute_losses(out, gt, cfg=DistillLossConfig(use_vrkd=False))
    with pytest.raises(ValueError, match="pairs"):
        compute_losses(out, gt, teacher=teacher, cfg=DistillLossConfig(use_ckd=False))


def test_compute_losses_upsamples_low_res_depth_for_silog() -> None:
    out = _student_like(h=8, w=12)
    gt, teacher, pairs = _batch(h=16, w=24)
    mask = torch.ones_like(gt, dtype=torch.bool)
    losses = compute_losses(out, gt, mask, teacher, pairs, DistillLossConfig())
    assert all(torch.isfinite(v) for v in losses.values())


def test_config_validation_and_from_mapping() -> None:
    with pytest.raises(ValueError, match="switched off"):
        DistillLossConfig(use_silog=False, use_bins=False, use_ckd=False, use_vrkd=False)
    with pytest.raises(ValueError, match="tau_ckd"):
        DistillLossConfig(tau_ckd=0.0)
    with pytest.raises(ValueError, match="unknown"):
        DistillLossConfig.from_mapping({"w_silgo": 1.0})
    cfg = DistillLossConfig.from_mapping({"vrkd_grid": [3, 6], "use_vrkd": False})
    assert cfg.vrkd_grid == (3, 6) and cfg.needs_teacher


def test_ckd_gt_anchor_gives_metric_target_independent_of_student_scale():
    """With the GT anchor, the target's expected depth follows the GT scale, not the student's."""
    from fsmde_core.distill.losses import teacher_bin_log_probs

    torch.manual_seed(0)
    gt = torch.linspace(2.0, 40.0, 64 * 48).reshape(1, 1, 48, 64)
    teacher = 3.0 / gt + 0.7  # unknown affine of the true inverse depth
    sparse = torch.full_like(gt, float("nan"))
    sparse[..., ::4, ::4] = gt[..., ::4, ::4]
    centres = torch.quantile(gt.flatten(), torch.linspace(0.01, 0.99, 48))[None]
    expected = {}
    for scale in (0.5, 1.0, 3.0):  # the student's current (wrong) scale
        student = gt * scale
        for anchor in ("gt", "student"):
            log_p, _ = teacher_bin_log_probs(centres, student, teacher, None, 1.0, 0.05,
                                             sparse if anchor == "gt" else None)
            d = bin_expectation(log_p.exp(), centres)
            expected[(scale, anchor)] = float(((d - gt).abs() / gt).mean())
    for scale in (0.5, 1.0, 3.0):
        assert expected[(scale, "gt")] < 0.05  # metric target whatever the student's scale
    assert expected[(3.0, "student")] > 0.3  # the student anchor keeps the student's wrong scale


def test_ckd_gt_anchor_falls_back_to_student_stats_without_lidar():
    from fsmde_core.distill.losses import teacher_bin_log_probs

    gt = torch.linspace(2.0, 40.0, 32 * 16).reshape(1, 1, 16, 32)
    teacher = 1.0 / gt
    centres = torch.linspace(1.0, 50.0, 16)[None]
    empty = torch.full_like(gt, float("nan"))
    a, _ = teacher_bin_log_probs(centres, gt, teacher, None, 1.0, 0.1, empty)
    b, _ = teacher_bin_log_probs(centres, gt, teacher, None, 1.0, 0.1, None)
    assert torch.allclose(a, b)


def test_ckd_linear_target_expectation_is_exactly_the_anchored_teacher_depth():
    """The 'linear' target splits each pixel between the two centres around the
    teacher's metric depth, so its expected depth is that depth (clamped to the
    centres' range) up to the 1e-4 floor; the 'kernel' target is biased far."""
    gt = torch.linspace(2.0, 40.0, 64 * 48).reshape(1, 1, 48, 64)
    teacher = 3.0 / gt + 0.7
    sparse = torch.full_like(gt, float("nan"))
    sparse[..., ::4, ::4] = gt[..., ::4, ::4]
    centres = torch.linspace(4.0, 30.0, 12)[None]  # coarse bins, range narrower than the scene
    log_p, valid = teacher_bin_log_probs(centres, gt * 2.0, teacher, None, 1.0, 0.05, sparse, target="linear")
    assert valid.all()
    p = log_p.exp()
    torch.testing.assert_close(p.sum(1), torch.ones(1, 48, 64))
    assert int((p > 1e-3).sum(1).max()) <= 2  # two bins per pixel
    d = bin_expectation(p, centres)
    torch.testing.assert_close(d, gt.clamp(4.0, 30.0), rtol=2e-3, atol=0.0)
    log_k, _ = teacher_bin_log_probs(centres, gt * 2.0, teacher, None, 1.0, 0.05, sparse)
    d_k = bin_expectation(log_k.exp(), centres)
    inside = (gt > 4.0) & (gt < 30.0)
    assert float(((d_k - gt) / gt)[inside].mean()) > 0.01  # the kernel target's far bias


def test_ckd_linear_target_sends_sky_to_the_last_bin_and_rejects_unknown_targets():
    centres = torch.linspace(1.0, 50.0, 8)[None]
    depth = torch.linspace(5.0, 20.0, 16).reshape(1, 1, 4, 4)
    teacher = 1.0 / depth
    teacher[..., 1, 1] = -1.0  # beyond infinity once mapped with the student's statistics
    log_p, _ = teacher_bin_log_probs(centres, depth, teacher, target="linear")
    assert log_p[0, :, 1, 1].argmax().item() == 7
    with pytest.raises(ValueError, match="target"):
        teacher_bin_log_probs(centres, depth, teacher, target="hat")
    with pytest.raises(ValueError, match="ckd_target"):
        DistillLossConfig(ckd_target="hat")


def test_ckd_gt_fit_anchor_recovers_the_teacher_affine_despite_outliers():
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
    for anchor in ("fit", "moments"):
        log_p, _ = teacher_bin_log_probs(centres, gt, corrupted, None, 1.0, 0.05, sparse, target="linear",
                                         gt_anchor=anchor)
        d = bin_expectation(log_p.exp(), centres)
        errors[anchor] = float(((d - gt).abs() / gt)[~outliers].mean())
    assert errors["fit"] < 0.005
    assert errors["moments"] > 0.05
    with pytest.raises(ValueError, match="gt_anchor"):
        teacher_bin_log_probs(centres, gt, teacher, gt_depth=sparse, gt_anchor="median")


# --------------------------------------------------------------------------- CKD, rank target


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
    centres = torch.sort(torch.rand(2, 8, generator=g) * 50 + 1, dim=1).values
    depth = torch.full((2, 1, 12, 16), 10.0)
    log_p, ok = teacher_bin_log_probs(centres, depth, inv, target="rank")
    warped = 3.0 * inv.pow(1.7) + 0.4  # unknown scale, shift and a monotone distortion
    log_p2, _ = teacher_bin_log_probs(centres * 2.0, depth * 5.0, warped, target="rank")
    assert ok.all()
    torch.testing.assert_close(log_p, log_p2)
    # each bin receives 1/K of the probability mass: equal-mass (quantile) bins
    torch.testing.assert_close(log_p.exp().mean(dim=(2, 3)), torch.full((2, 8), 1 / 8), atol=1e-3, rtol=0)
    assert torch.equal(teacher_rank_bins(inv, valid, 8)[0], teacher_rank_bins(warped, valid, 8)[0])


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


def test_compute_losses_rank_target_adds_the_centre_term():
    out = _student_like()
    gt, teacher, pairs = _batch()
    cfg = DistillLossConfig(w_ckd=2.0, w_ckd_centres=3.0, ckd_target="rank", vrkd_grid=(2, 3))
    losses = compute_losses(out, gt, None, teacher, pairs, cfg)
    assert set(losses) == {"silog", "bins", "ckd", "ckd_centres", "vrkd", "total"}
    expected = (10 * losses["silog"] + 0.1 * losses["bins"] + 2 * losses["ckd"] + 6 * losses["ckd_centres"]
                + losses["vrkd"])
    torch.testing.assert_close(losses["total"], expected)
    with pytest.raises(ValueError, match="w_ckd_centres"):
        DistillLossConfig(w_ckd_centres=-1.0)
