"""Known-answer and property tests of the supervised terms (fsmde_core.distill.supervised)."""

from __future__ import annotations

import math

import pytest
import torch

from fsmde_core.distill.supervised import bin_centre_chamfer, silog_loss, valid_depth_mask

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


def test_valid_depth_mask_drops_nan_inf_nonpositive_and_masked_pixels() -> None:
    gt = torch.tensor([1.0, NAN, INF, -INF, 0.0, -2.0, 3.0]).view(1, 1, 1, 7)
    region = torch.tensor([True] * 6 + [False]).view(1, 1, 1, 7)
    assert valid_depth_mask(gt).flatten().tolist() == [True, False, False, False, False, False, True]
    assert valid_depth_mask(gt, region).flatten().tolist() == [True] + [False] * 6
    with pytest.raises(TypeError, match="bool"):
        valid_depth_mask(gt, region.float())
    with pytest.raises(ValueError, match="does not match"):
        valid_depth_mask(gt, region.view(1, 1, 7, 1))
