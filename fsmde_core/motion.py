"""Ego-motion compensation of a fused cloud (ROS-free).

A sweep-triggered rig exposes its cameras at different instants (a
nuScenes-style rig spreads one set over ~43 ms); at 12 m/s the vehicle moves
~0.5 m in that time. Each camera's depth is correct in the vehicle frame *at
that camera's stamp*, so fusing the six clouds as if they shared one vehicle
frame leaves seams between cameras. Re-expressing every point in the vehicle
frame at the set's reference stamp removes them::

    p_ref = T_fixed_base(t_ref)^-1 @ T_fixed_base(t_cam) @ p

where ``T_fixed_base(t)`` is the vehicle pose in a fixed frame (``odom``) at
time ``t`` (from TF in the node, from the world in the benchmark). Only the
*relative* motion between the two instants matters, so odometry drift over
seconds does not: the two poses are tens of milliseconds apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["compensate_clouds", "compensate_points", "relative_motion"]


def _check_pose(name: str, T: np.ndarray) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"{name} must be a 4x4 homogeneous transform, got shape {T.shape}")
    return T


def relative_motion(T_fixed_base_cam: np.ndarray, T_fixed_base_ref: np.ndarray) -> np.ndarray:
    """``T_ref_cam`` = ``T_fixed_base(t_ref)^-1 @ T_fixed_base(t_cam)``: vehicle frame at the camera's
    stamp -> vehicle frame at the reference stamp (rigid inverse: no general matrix inversion)."""
    T_cam = _check_pose("T_fixed_base_cam", T_fixed_base_cam)
    T_ref = _check_pose("T_fixed_base_ref", T_fixed_base_ref)
    R_t = T_ref[:3, :3].T
    inv_ref = np.eye(4)
    inv_ref[:3, :3] = R_t
    inv_ref[:3, 3] = -R_t @ T_ref[:3, 3]
    return inv_ref @ T_cam


def compensate_points(points: np.ndarray, T_fixed_base_cam: np.ndarray, T_fixed_base_ref: np.ndarray) -> np.ndarray:
    """(M, 3) points in the vehicle frame at the camera's stamp -> the vehicle frame at the reference stamp.

    The dtype is kept (float32 clouds stay float32); the motion is applied in float64
    and rounded once, so a float32 cloud gains no error beyond its own precision.
    """
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must have shape (M, 3), got {pts.shape}")
    T = relative_motion(T_fixed_base_cam, T_fixed_base_ref)
    out = pts.astype(np.float64) @ T[:3, :3].T + T[:3, 3]
    return out.astype(pts.dtype if np.issubdtype(pts.dtype, np.floating) else np.float64, copy=False)


def compensate_clouds(
    clouds: Sequence[np.ndarray], poses_at_stamps: Sequence[np.ndarray], T_fixed_base_ref: np.ndarray
) -> list[np.ndarray]:
    """Per-camera clouds with their vehicle pose at each camera's stamp -> all at the reference stamp."""
    if len(clouds) != len(poses_at_stamps):
        raise ValueError(f"{len(clouds)} clouds but {len(poses_at_stamps)} poses")
    return [compensate_points(c, T, T_fixed_base_ref) for c, T in zip(clouds, poses_at_stamps, strict=True)]
