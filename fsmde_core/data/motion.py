"""Ego-motion compensation of LiDAR ground truth: each point at its own time, each image at its stamp.

A spinning LiDAR sweeps for 50-100 ms and a triggered rig exposes its cameras
at different moments within it; at 10 m/s the vehicle moves 0.3-0.4 m
between a point's firing and an image's exposure. Projecting the sweep as if
everything happened at once puts points whole pixels off. With the ego pose
``T_fixed_base(t)`` from ``/tf`` (odom or map -> base) a point ``p`` fired at
``t_pt`` lands in camera k, exposed at ``t_k``, as::

    p_cam = T_cam_base * T_base(t_k)^-1 * T_base(t_pt) * T_base_lidar * p

Poses are interpolated once per distinct firing time (a column of an
organised sweep), not per point, and all transforms are vectorised.

Per-point time fields, as drivers write them (:func:`decode_point_times`):

* ``FLOAT32`` (Velodyne ``time``, this project's ``t``): seconds after ``header.stamp``;
* ``UINT32`` / ``INT32`` (Ouster ``t``): nanoseconds after ``header.stamp``;
* ``FLOAT64`` (Hesai/Livox ``timestamp``): absolute epoch seconds if the values
  exceed 1e6, absolute epoch nanoseconds if they exceed 1e15 (Livox), else
  seconds after the stamp. Simulated clocks near 0 cannot be told apart from
  relative times; such sweeps then fall outside /tf and are counted as not
  compensated.

A cloud already deskewed to its stamp whose driver kept the firing times must
be read with ``DataConfig.motion_compensation = "stamp"``: its ``t`` no
longer describes the geometry, and nothing in the message says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fsmde_core.data.tf import DEFAULT_TOLERANCE_NS, TfTree, TransformBuffer
from fsmde_core.geometry import points_to_sparse_depth
from fsmde_core.messages import UnsupportedEncodingError, cloud_field
from fsmde_core.rig import Rig

POINT_TIME_FIELDS = ("t", "time", "timestamp", "time_stamp")  # Ouster/ours, Velodyne, Hesai/Livox, Autoware
_ABSOLUTE_S = 1e6  # float64 times above this are epoch seconds (11 days after 1970), not offsets
_ABSOLUTE_NS = 1e15  # ... and above this, epoch nanoseconds
# PointField datatypes a time field may have -> numpy kind (INT32, UINT32, FLOAT32, FLOAT64)
_TIME_DTYPES = {5: "i4", 6: "u4", 7: "f4", 8: "f8"}


def point_time_field(msg) -> object | None:
    """The cloud's per-point time field (first of :data:`POINT_TIME_FIELDS` present), or None."""
    by_name = {f.name: f for f in msg.fields}
    return next((by_name[n] for n in POINT_TIME_FIELDS if n in by_name), None)


def decode_point_times(msg, stamp_ns: int) -> np.ndarray | None:
    """(M,) int64 absolute firing time (ns) of every point of a PointCloud2, in the order of
    :func:`~fsmde_core.messages.cloud_xyz`; None when the cloud has no time field.

    See the module docstring for the units of each datatype. NaN times stay
    unusable (returned as the int64 minimum, which lies outside any /tf span).
    """
    f = point_time_field(msg)
    if f is None:
        return None
    if f.datatype not in _TIME_DTYPES or f.count not in (0, 1):
        raise UnsupportedEncodingError(
            f"PointCloud2 time field {f.name!r} has datatype {f.datatype} (need INT32, UINT32, FLOAT32 or FLOAT64)")
    kind = _TIME_DTYPES[f.datatype]
    return _absolute_ns(cloud_field(msg, f.name), kind, f.name, int(stamp_ns))


def _absolute_ns(raw: np.ndarray, kind: str, name: str, stamp_ns: int) -> np.ndarray:
    bad = np.iinfo(np.int64).min
    if kind[0] in "iu":  # integer nanoseconds after the stamp
        return stamp_ns + raw.astype(np.int64)
    v = raw.astype(np.float64)
    finite = np.isfinite(v)
    out = np.full(v.size, bad, dtype=np.int64)
    if not finite.any():
        return out
    typical = float(np.median(np.abs(v[finite])))
    if kind == "f4" and typical > _ABSOLUTE_S:
        raise UnsupportedEncodingError(
            f"PointCloud2 time field {name!r} is FLOAT32 with values ~{typical:.3g}: too coarse for absolute "
            "time, too large for an offset in seconds")
    if typical > _ABSOLUTE_NS:  # absolute epoch nanoseconds (float64)
        out[finite] = np.round(v[finite]).astype(np.int64)
    elif typical > _ABSOLUTE_S:  # absolute epoch seconds: split to keep nanosecond precision
        sec = np.floor(v[finite])
        out[finite] = sec.astype(np.int64) * 1_000_000_000 + np.round((v[finite] - sec) * 1e9).astype(np.int64)
    else:  # seconds after the stamp
        out[finite] = stamp_ns + np.round(v[finite] * 1e9).astype(np.int64)
    return out


@dataclass
class EgoTrajectory:
    """The ego trajectory of one bag: /tf chain from a fixed frame to the base, with /tf_static for hops."""

    buffer: TransformBuffer
    chain: list[tuple[str, str, bool]]
    static: TfTree | None = None
    tolerance_ns: int = DEFAULT_TOLERANCE_NS

    @property
    def fixed_frame(self) -> str:
        return self.chain[0][0]

    def poses(self, stamps_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4, 4) ``T_fixed_base`` and (N,) usable at each stamp."""
        return self.buffer.lookup_chain(self.chain, stamps_ns, self.static, self.tolerance_ns)


def compensated_sparse_depth(
    points_lidar: np.ndarray,
    point_stamps_ns: np.ndarray,
    camera_stamps_ns: np.ndarray,
    rig: Rig,
    T_base_lidar: np.ndarray,
    motion: EgoTrajectory,
    min_depth: float,
    max_depth: float,
) -> np.ndarray | None:
    """(N_cam, H, W) sparse depth with every point moved from its firing time to each image's stamp.

    ``points_lidar`` (M, 3) may hold NaN rows (dropped); ``point_stamps_ns``
    (M,) absolute firing times. Returns None when a needed pose is outside
    /tf (beyond the clamping tolerance): the caller falls back to the
    uncompensated projection and counts it.
    """
    keep = np.isfinite(points_lidar).all(axis=1)
    pts, times = points_lidar[keep], np.asarray(point_stamps_ns, dtype=np.int64)[keep]
    ref = int(camera_stamps_ns.min())  # express everything in the base frame at one moment (small numbers)
    uniq, inverse = np.unique(times, return_inverse=True)
    T_pts, ok_pts = motion.poses(uniq)
    T_cams, ok_cams = motion.poses(np.asarray(camera_stamps_ns, dtype=np.int64))
    T_ref, ok_ref = motion.poses(np.array([ref]))
    if not (ok_pts.all() and ok_cams.all() and ok_ref.all()):
        return None
    T_ref_fixed = np.linalg.inv(T_ref[0])
    # per distinct firing time: base(t_pt) -> base(ref); then each point with its time's transform
    T_rel = T_ref_fixed @ T_pts @ T_base_lidar
    p = np.einsum("nij,nj->ni", T_rel[inverse, :3, :3], pts) + T_rel[inverse, :3, 3]
    T_cam_ref = np.linalg.inv(T_cams) @ T_ref[0]  # base(ref) -> base(t_k), per camera
    return points_to_sparse_depth(p, rig, T_cam_ref, min_depth, max_depth)


def stamp_sparse_depth(
    points_lidar: np.ndarray,
    lidar_stamp_ns: int,
    camera_stamps_ns: np.ndarray,
    rig: Rig,
    T_base_lidar: np.ndarray,
    motion: EgoTrajectory,
    min_depth: float,
    max_depth: float,
) -> np.ndarray | None:
    """As :func:`compensated_sparse_depth` for a sweep without per-point times (or deskewed to its stamp)."""
    pts = points_lidar[np.isfinite(points_lidar).all(axis=1)]
    stamps = np.full(pts.shape[0], int(lidar_stamp_ns), dtype=np.int64)
    return compensated_sparse_depth(pts, stamps, camera_stamps_ns, rig, T_base_lidar, motion, min_depth, max_depth)


__all__ = [
    "POINT_TIME_FIELDS",
    "EgoTrajectory",
    "compensated_sparse_depth",
    "decode_point_times",
    "point_time_field",
    "stamp_sparse_depth",
]
