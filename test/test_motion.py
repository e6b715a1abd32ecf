"""Ego-motion compensation of the fused cloud with known poses (constant speed + yaw rate)."""

from __future__ import annotations

import numpy as np
import pytest
from bagfactory import SWEEP_OFFSETS_MS

from fsmde_core.motion import compensate_clouds, compensate_points, relative_motion
from fsmde_core.rig import make_transform


def pose_at(t: float, speed: float = 12.0, yaw_rate: float = 0.3) -> np.ndarray:
    """T_odom_base of a vehicle on a circle: constant speed and yaw rate (exact, closed form)."""
    yaw = yaw_rate * t
    radius = speed / yaw_rate
    c, s = np.cos(yaw), np.sin(yaw)
    R = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return make_transform(R, np.array([radius * s, radius * (1 - c), 0.0]))


def to_base(T_odom_base: np.ndarray, p_odom: np.ndarray) -> np.ndarray:
    T = np.linalg.inv(T_odom_base)
    return p_odom @ T[:3, :3].T + T[:3, 3]


def test_static_point_seen_by_two_cameras_lands_on_one_spot() -> None:
    world = np.array([[25.0, 4.0, 1.2], [30.0, -6.0, 0.5], [12.0, 9.0, 2.0]])
    t_a, t_b, t_ref = 0.000, 0.0426, 0.0426  # sweep rig: the reference stamp = the latest camera
    seen_a, seen_b = to_base(pose_at(t_a), world), to_base(pose_at(t_b), world)
    assert np.linalg.norm(seen_a - seen_b, axis=1).min() > 0.4  # uncompensated seam: ~0.5 m at 12 m/s
    a_ref = compensate_points(seen_a, pose_at(t_a), pose_at(t_ref))
    b_ref = compensate_points(seen_b, pose_at(t_b), pose_at(t_ref))
    np.testing.assert_allclose(a_ref, b_ref, atol=1e-9)
    np.testing.assert_allclose(a_ref, to_base(pose_at(t_ref), world), atol=1e-9)


def test_six_cameras_at_six_instants_share_the_reference_frame() -> None:
    rng = np.random.default_rng(0)
    world = rng.uniform([-40, -40, 0], [40, 40, 5], size=(200, 3))
    stamps = np.array(SWEEP_OFFSETS_MS) * 1e-3
    t_ref = stamps.max()
    clouds = [to_base(pose_at(t), world).astype(np.float32) for t in stamps]
    out = compensate_clouds(clouds, [pose_at(t) for t in stamps], pose_at(t_ref))
    truth = to_base(pose_at(t_ref), world)
    for cloud in out:
        assert cloud.dtype == np.float32
        np.testing.assert_allclose(cloud, truth, atol=1e-4)  # float32 rounding of ~40 m coordinates


def test_relative_motion_is_identity_at_the_reference_and_rejects_bad_shapes() -> None:
    T = pose_at(1.3)
    np.testing.assert_allclose(relative_motion(T, T), np.eye(4), atol=1e-12)
    with pytest.raises(ValueError, match="4x4"):
        relative_motion(np.eye(3), T)
    with pytest.raises(ValueError, match=r"\(M, 3\)"):
        compensate_points(np.zeros((4, 2)), T, T)
    with pytest.raises(ValueError, match="2 clouds but 1 poses"):
        compensate_clouds([np.zeros((1, 3))] * 2, [T], T)
