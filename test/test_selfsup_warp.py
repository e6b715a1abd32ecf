"""Warps and relative poses against known answers: a ray-cast room, exact pixel shifts, kilometre odometry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from selfsup_scene import SOURCE_POSE, pair, pose, rotation

from fsmde_core.selfsup.photometric import ssim_l1
from fsmde_core.selfsup.warp import invert_rigid, relative_camera_poses, warp_image


def _interior(valid: torch.Tensor, margin: int = 3) -> torch.Tensor:
    """Valid pixels at least ``margin`` away from the image border and from any invalid pixel (SSIM window)."""
    inner = valid & (F.max_pool2d((~valid).float(), 2 * margin - 1, 1, margin - 1) == 0)
    inner[..., :margin, :] = False
    inner[..., -margin:, :] = False
    inner[..., :margin] = False
    inner[..., -margin:] = False
    return inner


def _warp_error(scale: float) -> tuple[float, float]:
    """Mean SSIM+L1 error over the interior of the valid region with the true depth x ``scale``, valid fraction."""
    p = pair(SOURCE_POSE)
    warped, valid = warp_image(p["source"], p["depth"] * scale, p["K"], p["K"], p["T_src_tgt"])
    inner = _interior(valid)
    return float(ssim_l1(warped, p["target"])[inner].mean()), float(inner.float().mean())


def test_true_depth_and_pose_reproduce_the_target() -> None:
    err, covered = _warp_error(1.0)
    assert covered > 0.5  # the source sees most of the target
    assert err < 0.006  # bilinear interpolation of a smooth texture only


@pytest.mark.parametrize("scale", [1.2, 0.8])
def test_wrong_depth_gives_clearly_more_error(scale: float) -> None:
    right, _ = _warp_error(1.0)
    wrong, _ = _warp_error(scale)
    assert wrong > 3.0 * right


def test_identity_warp_is_exact() -> None:
    p = pair(SOURCE_POSE)
    warped, valid = warp_image(p["source"], p["depth"], p["K"], p["K"], torch.eye(4)[None])
    assert bool(valid.all())
    torch.testing.assert_close(warped, p["source"], atol=1e-5, rtol=0)


def test_sideways_translation_shifts_by_the_known_disparity() -> None:
    """Constant depth 8 m, f = 32 px, 0.5 m to the right: every pixel samples the source 2 px further right."""
    p = pair(SOURCE_POSE)
    depth = torch.full_like(p["depth"], 8.0)
    T = torch.eye(4)[None].clone()
    T[0, 0, 3] = 0.5  # target point X -> source X + 0.5
    warped, valid = warp_image(p["source"], depth, p["K"], p["K"], T)
    torch.testing.assert_close(warped[..., :-2], p["source"][..., 2:], atol=1e-5, rtol=0)
    assert bool(valid[..., :-2].all())
    assert not bool(valid[..., -2:].any())


def test_points_behind_the_source_are_invalid_and_harmless() -> None:
    p = pair(SOURCE_POSE)
    T = torch.eye(4)[None].clone()
    T[0, 2, 3] = -20.0  # the source camera stands 20 m ahead, looking the same way: the room is behind it
    depth = p["depth"].clone().requires_grad_(True)
    warped, valid = warp_image(p["source"], depth, p["K"], p["K"], T)
    assert not bool(valid.any())
    warped.sum().backward()
    assert torch.isfinite(depth.grad).all()


def test_warp_rejects_mismatched_shapes() -> None:
    p = pair(SOURCE_POSE)
    with pytest.raises(ValueError, match="T_src_tgt"):
        warp_image(p["source"], p["depth"], p["K"], p["K"], torch.eye(4)[None].repeat(2, 1, 1))


def _np_like_pose(yaw: float, t: tuple[float, float, float]) -> torch.Tensor:
    return pose(rotation(yaw), t)


def test_relative_camera_poses_is_exact_at_kilometre_odometry() -> None:
    """Odometry 12 km from the origin, a 0.8 m motion: the float64 composition keeps it to float32 rounding."""
    T_odom_tgt = _np_like_pose(0.7, (12345.678, -9876.54, 3.21))
    motion = _np_like_pose(0.03, (0.05, 0.01, -0.8))  # base(src) <- base(tgt)
    T_odom_src = T_odom_tgt @ torch.linalg.inv(motion)
    cam_src = _np_like_pose(math.radians(60.0), (1.2, 0.4, 1.6))
    cam_tgt = _np_like_pose(0.0, (1.5, 0.0, 1.5))
    expected = torch.linalg.inv(cam_src) @ motion @ cam_tgt
    got = relative_camera_poses(T_odom_src, cam_src, T_odom_tgt, cam_tgt)
    assert got.dtype == torch.float32
    assert float((got.double() - expected).abs().max()) < 1e-6
    # The case has teeth: the same product in float32 loses the motion to millimetres.
    naive = torch.linalg.inv(T_odom_src.float() @ cam_src.float()) @ (T_odom_tgt.float() @ cam_tgt.float())
    assert float((naive.double() - expected).abs().max()) > 1e-4


def test_relative_camera_poses_broadcasts_and_inverts() -> None:
    a = torch.stack([_np_like_pose(0.1 * i, (1000.0 * i, 2.0, 0.5)) for i in range(6)]).reshape(2, 3, 4, 4)
    cam = _np_like_pose(0.4, (1.0, -0.3, 1.4)).expand(2, 3, 4, 4)
    same = relative_camera_poses(a, cam, a, cam)
    torch.testing.assert_close(same, torch.eye(4).expand(2, 3, 4, 4), atol=1e-6, rtol=0)
    torch.testing.assert_close(invert_rigid(a) @ a, torch.eye(4, dtype=torch.float64).expand(2, 3, 4, 4))
