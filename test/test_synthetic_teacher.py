"""Tests of the simulated relative-depth teacher (fsmde_core.models.teachers.synthetic)."""

from __future__ import annotations

import itertools

import pytest
import torch

from fsmde_core.models.teachers.base import Teacher
from fsmde_core.models.teachers.synthetic import Degradation, SyntheticTeacher

H, W = 96, 160
POLE_COLS = slice(100, 102)  # a 2 px wide pole in front of the sky
POLE_ROWS = slice(8, 36)
CAR = (slice(30, 70), slice(20, 60))


def _scene() -> torch.Tensor:
    """(1,1,H,W) metric depth: sky, flat road, a building, a car, a thin pole, an invalid patch."""
    v = torch.arange(H, dtype=torch.float32).view(H, 1).expand(H, W)
    horizon, fy, cam_h = 40.0, 100.0, 1.5
    road = cam_h * fy / (v - horizon).clamp_min(1e-3)
    depth = torch.where(v > horizon, road, torch.full_like(v, float("inf"))).clone()
    depth[5:41, 120:] = 40.0  # building
    depth[CAR] = torch.minimum(depth[CAR], torch.tensor(12.0))
    depth[POLE_ROWS, POLE_COLS] = 8.0
    depth[80:84, 140:146] = float("nan")  # no GT here
    return depth.view(1, 1, H, W)


def _gt_inverse(gt: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isposinf(gt), torch.zeros_like(gt), 1.0 / gt)  # NaN stays NaN


def _affine_align(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Least-squares a*pred + b ~ target over pixels where both are finite."""
    ok = torch.isfinite(pred) & torch.isfinite(target)
    p, t = pred[ok].double(), target[ok].double()
    a_mat = torch.stack([p, torch.ones_like(p)], dim=1)
    coef = torch.linalg.lstsq(a_mat, t.unsqueeze(1)).solution.squeeze(1)
    return (coef[0] * pred.double() + coef[1]).float()


def _aligned_rel_rmse(pred: torch.Tensor, gt: torch.Tensor) -> float:
    target = _gt_inverse(gt)
    aligned = _affine_align(pred, target)
    ok = torch.isfinite(aligned) & torch.isfinite(target)
    return ((aligned[ok] - target[ok]).pow(2).mean().sqrt() / target[ok].std()).item()


def _predict(teacher: SyntheticTeacher, gt: torch.Tensor, seeds: list[int] | None = None):
    images = torch.zeros(gt.shape[0], 3, H, W)
    extras = {"gt_depth": gt}
    if seeds is not None:
        extras["seed"] = torch.tensor(seeds)
    return teacher.predict(images, extras)


def test_is_a_teacher_and_refuses_without_ground_truth() -> None:
    teacher = SyntheticTeacher()
    assert isinstance(teacher, Teacher)
    images = torch.zeros(1, 3, H, W)
    for extras in (None, {"seed": torch.tensor([1])}):
        with pytest.raises(ValueError, match="only works on synthetic bags"):
            teacher.predict(images, extras)
    with pytest.raises(ValueError, match="batch"):
        teacher.predict(torch.zeros(2, 3, H, W), {"gt_depth": _scene()})


def test_quality_one_is_exact_up_to_affine_and_scale_is_unknown() -> None:
    gt = _scene().expand(2, -1, -1, -1).contiguous()
    out = _predict(SyntheticTeacher(quality=1.0), gt, seeds=[1, 2]).inv_depth
    assert out.shape == gt.shape
    assert _aligned_rel_rmse(out[:1], gt[:1]) < 1e-4
    assert _aligned_rel_rmse(out[1:], gt[1:]) < 1e-4
    inv = _gt_inverse(gt)
    ok = torch.isfinite(inv)
    # Unknown scale/shift: the raw output is not the GT inverse depth, and differs per sample.
    assert (out[ok] - inv[ok]).abs().max() > 0.1
    assert not torch.allclose(out[0], out[1], equal_nan=True)
    # Invalid GT -> NaN ("no opinion"); sky is valid (finite).
    assert torch.isnan(out[:, :, 80:84, 140:146]).all()
    assert torch.isfinite(out[:, :, :5, :100]).all()


def test_aligned_error_grows_as_quality_drops() -> None:
    gt = _scene().expand(3, -1, -1, -1).contiguous()
    errors = []
    for q in (1.0, 0.7, 0.4, 0.0):
        out = _predict(SyntheticTeacher(quality=q, seed=5), gt, seeds=[0, 1, 2]).inv_depth
        errors.append(sum(_aligned_rel_rmse(out[i : i + 1], gt[i : i + 1]) for i in range(3)) / 3)
    assert errors[0] < 1e-4
    assert all(a < b for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] > 0.1, errors  # quality 0 is clearly poor


def test_thin_structures_vanish_but_wide_ones_survive() -> None:
    gt = _scene()
    inv = _gt_inverse(gt)
    exact = _affine_align(_predict(SyntheticTeacher(quality=1.0), gt).inv_depth, inv)
    assert exact[0, 0, POLE_ROWS, POLE_COLS].mean().item() == pytest.approx(1 / 8, rel=1e-3)
    opened = _predict(SyntheticTeacher(quality=1.0, thin_px=5), gt).inv_depth
    opened = _affine_align(opened, inv)
    assert opened[0, 0, POLE_ROWS, POLE_COLS].abs().max().item() < 0.02  # the pole became sky
    # The car's upper part (rows < 52, where the road behind it is farther than 12 m) survives.
    assert opened[0, 0, 34:50, 25:55].mean().item() == pytest.approx(1 / 12, rel=0.05)


def test_deterministic_and_independent_of_batch_position() -> None:
    gt = _scene()
    a = _predict(SyntheticTeacher(quality=0.5, seed=3), gt.expand(2, -1, -1, -1), seeds=[4, 9])
    b = _predict(SyntheticTeacher(quality=0.5, seed=3), gt, seeds=[9])
    torch.testing.assert_close(a.inv_depth[1:], b.inv_depth, equal_nan=True)
    torch.testing.assert_close(a.features[1:], b.features)
    c = _predict(SyntheticTeacher(quality=0.5, seed=4), gt, seeds=[9])  # other teacher seed
    assert not torch.allclose(c.inv_depth, b.inv_depth, equal_nan=True)
    no_seed = _predict(SyntheticTeacher(quality=0.5, seed=3), gt.expand(2, -1, -1, -1))
    torch.testing.assert_close(no_seed.inv_depth[0], no_seed.inv_depth[1], equal_nan=True)


def test_features_shape_structure_only_and_affine_blind() -> None:
    gt = _scene().expand(2, -1, -1, -1).contiguous()
    teacher = SyntheticTeacher(quality=1.0, feature_dim=16, feature_stride=8)
    out = _predict(teacher, gt, seeds=[1, 2])
    assert out.features.shape == (2, 16, H // 8, W // 8)
    assert torch.isfinite(out.features).all()
    # Same geometry, different random output affine -> the same features.
    torch.testing.assert_close(out.features[0], out.features[1], atol=1e-4, rtol=1e-4)
    # Different geometry -> different features.
    flat = torch.full_like(gt[:1], 20.0)
    other = _predict(teacher, flat, seeds=[1]).features
    assert (other[0] - out.features[0]).abs().mean() > 1e-2


def test_identity_tracks_every_setting() -> None:
    base = SyntheticTeacher()
    assert base.identity == SyntheticTeacher().identity
    variants = [
        SyntheticTeacher(quality=0.5), SyntheticTeacher(seed=1), SyntheticTeacher(feature_dim=16),
        SyntheticTeacher(feature_stride=14), SyntheticTeacher(lowfreq_mult=0.0),
        SyntheticTeacher(lowfreq_add=0.0), SyntheticTeacher(blur_sigma=0.0), SyntheticTeacher(thin_px=7),
        SyntheticTeacher(noise_std=0.0), SyntheticTeacher(lowfreq_grid=(4, 6)),
        SyntheticTeacher(scale_range=(1.0, 2.0)), SyntheticTeacher(shift_range=(0.0, 0.5)),
    ]
    ids = {v.identity for v in variants}
    assert base.identity not in ids and len(ids) == len(variants)


def test_quality_knob_and_overrides_are_validated() -> None:
    assert Degradation.from_quality(1.0) == Degradation(0.0, 0.0, 0.0, 1, 0.0)
    mid, low = Degradation.from_quality(0.7), Degradation.from_quality(0.0)
    for name in ("lowfreq_mult", "lowfreq_add", "blur_sigma", "thin_px", "noise_std"):
        assert 0 < getattr(mid, name) < getattr(low, name)
    assert SyntheticTeacher(quality=0.7, blur_sigma=0.0).degradation.blur_sigma == 0.0
    with pytest.raises(ValueError, match="quality"):
        SyntheticTeacher(quality=1.5)
    with pytest.raises(ValueError, match="noise_std"):
        SyntheticTeacher(noise_std=-0.1)
