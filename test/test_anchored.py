"""Tests of dense metric KD: the teacher anchored to each image's LiDAR (fsmde_core.distill.anchored)."""

from __future__ import annotations

import pytest
import torch

from fsmde_core.distill.anchored import anchored_teacher_depth, dense_kd_loss, lidar_affine_fit
from fsmde_core.distill.objective import DistillLossConfig, compute_losses
from fsmde_core.models.teachers.base import TeacherOutput

NAN = float("nan")


def _scene(b: int = 2, h: int = 24, w: int = 32, lidar_fraction: float = 0.1, seed: int = 0):
    """Dense GT, a teacher that is an affine map of its inverse depth (per image), and sparse LiDAR."""
    g = torch.Generator().manual_seed(seed)
    gt = 2.0 + 40.0 * torch.rand(b, 1, h, w, generator=g)
    scale = torch.tensor([3.0, 0.5])[:b].view(b, 1, 1, 1)
    shift = torch.tensor([0.2, -0.01])[:b].view(b, 1, 1, 1)
    teacher = scale / gt + shift
    lidar = torch.where(torch.rand(gt.shape, generator=g) < lidar_fraction, gt, torch.full_like(gt, NAN))
    return gt, teacher, lidar


def test_an_affine_teacher_is_mapped_back_to_the_true_depth_at_every_pixel() -> None:
    gt, teacher, lidar = _scene()
    target = anchored_teacher_depth(teacher, lidar)
    assert torch.isfinite(target).all()
    torch.testing.assert_close(target, gt, rtol=1e-4, atol=1e-4)


def test_the_line_ignores_a_minority_of_gross_lidar_outliers() -> None:
    gt, teacher, lidar = _scene(lidar_fraction=0.3)
    valid = torch.isfinite(lidar)
    g = torch.Generator().manual_seed(1)
    outliers = valid & (torch.rand(lidar.shape, generator=g) < 0.1)
    lidar = torch.where(outliers, lidar * 3.0, lidar)  # see-through returns, parallax
    target = anchored_teacher_depth(teacher, lidar)
    assert ((target - gt).abs() / gt).median() < 1e-3


def test_no_target_where_the_line_cannot_place_the_pixel() -> None:
    gt, teacher, lidar = _scene()
    teacher[0, 0, :4] = -1.0  # sky: beyond infinity once mapped
    lidar[1] = NAN            # an image without LiDAR: no line
    target = anchored_teacher_depth(teacher, lidar, max_depth=30.0)
    assert torch.isnan(target[0, 0, :4]).all() and torch.isnan(target[1]).all()
    assert torch.isnan(target[0][gt[0] > 30.0 + 1e-3]).all()  # farther than max_depth: left out
    assert torch.isfinite(target[0, 0, 4:][gt[0, 0, 4:] < 29.0]).all()


def test_the_fit_refuses_a_teacher_that_orders_depth_backwards() -> None:
    _, teacher, lidar = _scene()
    valid = torch.isfinite(lidar)
    _, _, ok = lidar_affine_fit(-teacher, 1.0 / torch.where(valid, lidar, torch.ones_like(lidar)), valid, 32)
    assert not ok.any()


def test_dense_kd_is_zero_for_the_true_depth_and_grows_with_a_scale_error() -> None:
    gt, teacher, lidar = _scene()
    assert dense_kd_loss(gt, teacher, lidar, variance_focus=0.0).item() < 1e-3
    small = dense_kd_loss(gt * 1.1, teacher, lidar, variance_focus=0.0).item()
    large = dense_kd_loss(gt * 1.5, teacher, lidar, variance_focus=0.0).item()
    assert 0.05 < small < large
    assert small == pytest.approx(torch.log(torch.tensor(1.1)).item(), rel=1e-3)


def test_dense_kd_trains_the_student_only_and_is_zero_without_lidar() -> None:
    gt, teacher, lidar = _scene()
    depth = (gt * 1.2).requires_grad_()
    teacher = teacher.requires_grad_()
    dense_kd_loss(depth, teacher, lidar).backward()
    assert depth.grad is not None and depth.grad.abs().sum() > 0 and teacher.grad is None
    empty = dense_kd_loss(depth, teacher, torch.full_like(lidar, NAN))
    assert empty.item() == 0.0


def test_objective_adds_the_weighted_term_and_needs_a_teacher() -> None:
    gt, teacher_inv, lidar = _scene(b=2)
    depth = (gt * 1.3).requires_grad_()
    out = type("Out", (), {"depth": depth, "logits": None, "centres": None, "features": None})()
    cfg = DistillLossConfig(use_silog=False, use_bins=False, use_ckd=False, use_vrkd=False, use_dense_kd=True,
                            w_dense_kd=2.0)
    teacher = TeacherOutput(inv_depth=teacher_inv, features=torch.zeros(2, 4, 3, 4))
    losses = compute_losses(out, lidar, teacher=teacher, cfg=cfg, readout="log")
    assert set(losses) == {"dense_kd", "total"}
    torch.testing.assert_close(losses["total"], 2.0 * losses["dense_kd"])
    with pytest.raises(ValueError, match="dense_kd"):
        compute_losses(out, lidar, cfg=cfg, readout="log")
    for bad in ({"w_dense_kd": -1.0}, {"dense_kd_max_depth": 0.0}, {"dense_kd_variance_focus": 1.5}):
        with pytest.raises(ValueError, match="dense_kd"):
            DistillLossConfig(**bad)
