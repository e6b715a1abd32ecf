"""Projection between LiDAR points, per-camera depth maps and the fused cloud.

Everything here is vectorised over points/pixels: the node calls these once per
synchronized set and the trainer once per sample, so a Python loop per point
would dominate both. Rays are constant per camera and size, so they are cached
(:class:`CameraRays`, :class:`RayCache`) and pre-rotated into the base frame.

Depth maps follow REP 117/118: float32 metres along the optical Z axis, NaN =
no measurement / masked, +Inf = beyond range (sky).
"""

from __future__ import annotations

import numpy as np

from fsmde_core.camera import CameraModel
from fsmde_core.rig import Rig, RigCamera


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to (N, 3) points."""
    return points @ T[:3, :3].T + T[:3, 3]


def finite_points(points: np.ndarray) -> np.ndarray:
    """(N, >=3) -> (M, 3) xyz rows without NaN/Inf (LiDAR drivers emit NaN for no-return).

    Extra columns (intensity, ring, time) are dropped so callers can pass a
    sweep as it comes out of the PointCloud2 decoder.
    """
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] < 3:
        if pts.size == 0:
            return np.zeros((0, 3), dtype=pts.dtype if pts.dtype.kind == "f" else np.float64)
        raise ValueError(f"expected (N, 3) points (extra columns allowed), got shape {pts.shape}")
    xyz = pts[:, :3]
    return xyz[np.isfinite(xyz).all(axis=1)]


def project_to_sparse_depth(
    points_cam: np.ndarray,
    model: CameraModel,
    min_depth: float = 0.1,
    max_depth: float = np.inf,
) -> np.ndarray:
    """Z-buffer (N, 3) optical-frame points into an (H, W) float32 sparse depth map.

    The nearest point wins a pixel; points behind the camera, closer than
    ``min_depth``, farther than ``max_depth``, non-finite, or outside the image
    are dropped. Empty pixels are NaN. A point lands on the pixel whose centre
    is nearest (pixel ``u`` covers ``[u - 0.5, u + 0.5)``).
    """
    depth = np.full(model.height * model.width, np.inf, dtype=np.float32)
    pts = finite_points(points_cam)
    if pts.shape[0]:
        z = pts[:, 2]
        keep = (z > min_depth) & (z < max_depth)
        pts, z = pts[keep], z[keep]
        uv, _ = model.project(pts)
        # floor(x + 0.5), not np.round: round-half-to-even would send x.5 to
        # alternating neighbours instead of one consistent half-open pixel.
        u = np.floor(uv[:, 0] + 0.5)
        v = np.floor(uv[:, 1] + 0.5)
        inside = (u >= 0) & (u < model.width) & (v >= 0) & (v < model.height)
        idx = (v[inside] * model.width + u[inside]).astype(np.int64)
        np.minimum.at(depth, idx, z[inside].astype(np.float32))
    depth[np.isinf(depth)] = np.nan
    return depth.reshape(model.height, model.width)


def _min_filter(z: np.ndarray, half_h: int, half_w: int) -> np.ndarray:
    """Minimum over a (2 half_h + 1) x (2 half_w + 1) window of the last two axes (+Inf padding).

    Separable (rows, then columns), so it costs O(window) per pixel with two
    strided views and no copies per window; scipy's minimum_filter would do
    the same, but scipy is not a dependency of the data layer.
    """
    from numpy.lib.stride_tricks import sliding_window_view

    lead = [(0, 0)] * (z.ndim - 2)
    rows = sliding_window_view(np.pad(z, [*lead, (half_h, half_h), (0, 0)], constant_values=np.inf),
                               2 * half_h + 1, axis=-2).min(-1)
    return sliding_window_view(np.pad(rows, [*lead, (0, 0), (half_w, half_w)], constant_values=np.inf),
                               2 * half_w + 1, axis=-1).min(-1)


def see_through_window(height: int, window: float) -> tuple[int, int]:
    """(half height, half width) in pixels of the see-through test at an image ``height``: ``window`` x height
    rows (at least 1) and three quarters of that in columns (a LiDAR samples densely in azimuth)."""
    half_h = max(1, round(window * height))
    return half_h, max(1, round(0.75 * half_h))


def drop_see_through_points(sparse: np.ndarray, window: float = 0.021, ratio: float = 1.5) -> np.ndarray:
    """Sparse LiDAR depth without the points a camera cannot see: NaN where a point is ``ratio`` x farther
    than the nearest point within the window around it (:func:`see_through_window`).

    Why: the LiDAR sits elsewhere than each camera (on the roof, in the middle),
    so it sees past the edges of, and over, things close to a camera: its points
    on the surface *behind* land on pixels where the camera sees the near object.
    A z-buffer cannot remove them (sparse points do not cover each other), and as
    ground truth they say "far" on a near object. Measured on the synthetic
    DDAD-style bags (bench/results/distill.md, 2026-11-30): 22 % of the LiDAR pixels
    closer than 3 m were > 5 % too far (mean log error +0.33, i.e. x1.4), and
    every student read near things too far; this test (window 0.021, ratio 1.5)
    keeps 93 % of the points and leaves +0.014 there, <= 0.004 beyond 3 m. A
    smooth surface does not trip it: the road ahead changes depth by < 50 % over
    the window's rows out to ~25 m, and beyond that a few far road points go.

    Args:
        sparse: (..., H, W) float depth, NaN = no point (REP 117 +Inf is kept as is).
        window: half window height as a fraction of the image height.
        ratio: a point this many times farther than its window's nearest point is dropped (> 1).
    """
    if not ratio > 1.0 or not window > 0.0:
        raise ValueError(f"see-through filter needs ratio > 1 and window > 0, got ratio={ratio}, window={window}")
    depth = np.asarray(sparse)
    finite = np.isfinite(depth)
    nearest = _min_filter(np.where(finite, depth, np.inf), *see_through_window(depth.shape[-2], window))
    return np.where(finite & (depth > ratio * nearest), np.float32(np.nan), depth).astype(depth.dtype, copy=False)


def lidar_to_sparse_depth(
    points_lidar: np.ndarray,
    rig: Rig,
    T_base_lidar: np.ndarray | None = None,
    min_depth: float = 0.1,
    max_depth: float | None = None,
) -> np.ndarray:
    """Project one LiDAR sweep into every camera of ``rig``: (N_cam, H, W) float32.

    All cameras must share one image size (the training/inference size).
    """
    T_bl = rig.T_base_lidar if T_base_lidar is None else T_base_lidar
    pts_base = transform_points(T_bl, finite_points(points_lidar).astype(np.float64))
    return points_to_sparse_depth(pts_base, rig, None, min_depth, max_depth)


def points_to_sparse_depth(
    points_base: np.ndarray,
    rig: Rig,
    T_base_now_base_then: np.ndarray | None = None,
    min_depth: float = 0.1,
    max_depth: float | None = None,
) -> np.ndarray:
    """Project (N, 3) base-frame points into every camera of ``rig``: (N_cam, H, W) float32.

    ``T_base_now_base_then`` (N_cam, 4, 4), optional: per camera, the motion of
    the vehicle between the moment the points are expressed at and that
    camera's exposure (identity = a rig that does not move), so a moving
    rig's images each see the points where the vehicle was at their stamp.
    All cameras must share one image size (the training/inference size).
    """
    sizes = {(c.model.width, c.model.height) for c in rig.cameras}
    if len(sizes) != 1:
        raise ValueError(f"sparse depth needs one image size for all cameras, got {sorted(sizes)}")
    pts = finite_points(points_base).astype(np.float64)
    cap = rig.max_depth if max_depth is None else max_depth
    out = []
    for k, c in enumerate(rig.cameras):
        T = c.T_cam_base if T_base_now_base_then is None else c.T_cam_base @ T_base_now_base_then[k]
        out.append(project_to_sparse_depth(transform_points(T, pts), c.model, min_depth, cap))
    return np.stack(out)


def depth_to_points(depth: np.ndarray, rays: np.ndarray) -> np.ndarray:
    """(H, W) depth and (H, W, 3) unit-Z rays -> (H, W, 3) optical-frame points."""
    return depth[..., None] * rays


class CameraRays:
    """One camera's pre-rotated, pre-strided rays: a depth map -> points in the base frame.

    The rays depend only on the intrinsics (at the depth size), the extrinsic and the
    stride, so they are built once and reused for every set: building a camera's cloud
    then costs one multiply-add per kept pixel. Per camera (not per rig) so cameras of
    different sizes, or a camera whose extrinsic arrives late (TF), each keep their own.
    """

    def __init__(self, model: CameraModel, T_base_cam: np.ndarray, stride: int = 1) -> None:
        if stride < 1:
            raise ValueError(f"cloud stride must be >= 1, got {stride}")
        self.model, self.stride = model, stride
        rays = model.pixel_rays(stride)  # only the kept pixels are undistorted
        vv, uu = np.mgrid[0:model.height:stride, 0:model.width:stride]
        flat = (vv * model.width + uu).reshape(-1)
        r = rays.reshape(-1, 3).astype(np.float64)
        valid = np.isfinite(r).all(axis=1)  # pixels with no ray under the lens model
        flat, r = flat[valid], r[valid]
        T = np.asarray(T_base_cam, dtype=np.float64)
        self.rays_base = (r @ T[:3, :3].T).astype(np.float32)
        self.origin = T[:3, 3].astype(np.float32)  # camera centre in base
        self.pixel_index = flat.astype(np.int64)  # flat indices into the full-size image
        self.ray_norm = np.linalg.norm(r, axis=1).astype(np.float32)  # range = depth * norm

    def points(
        self,
        depth: np.ndarray,
        colour: np.ndarray | None = None,
        max_range: float = np.inf,
        min_range: float = 0.0,
        mask: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(H, W) depth (REP 117: NaN/Inf skipped) -> xyz (M, 3) float32 in base, rgb (M, 3) or None.

        ``colour``: (H, W, 3) uint8 at the depth size; ``mask``: (H, W), non-zero = skip the pixel;
        ``max_range`` / ``min_range``: Euclidean range limits from the camera centre.
        """
        # Hot path of the node (once per camera and set): ``take`` with integer indices
        # instead of boolean masks on (M, 3) rows, in-place arithmetic, no redundant test.
        d = depth.reshape(-1).take(self.pixel_index)
        rng = d * self.ray_norm
        # NaN fails every comparison and d > 0 rejects 0, negatives and -Inf; +Inf
        # passes d > 0 and is only rejected by a finite max_range, else test it.
        keep = (d > 0) & (rng <= max_range) & (rng >= min_range)
        if not np.isfinite(max_range):
            keep &= np.isfinite(d)
        if mask is not None:
            # astype(bool): uint8 masks read from images (non-zero = ego) must
            # not go through bitwise ``~`` (~1 == 254 would count as "keep").
            keep &= ~mask.reshape(-1).take(self.pixel_index).astype(bool)
        idx = np.flatnonzero(keep)
        xyz = self.rays_base.take(idx, axis=0)  # a fresh array: safe to scale in place
        xyz *= d.take(idx)[:, None]
        xyz += self.origin
        rgb = None if colour is None else colour.reshape(-1, 3).take(self.pixel_index.take(idx), axis=0)
        return xyz, rgb


def subsample_points(
    xyz: np.ndarray, rgb: np.ndarray | None, max_points: int | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Bound a cloud to ``max_points`` with a fixed integer pattern (the same points every frame
    for the same count, so a static scene does not flicker); None = no bound."""
    if max_points is None or xyz.shape[0] <= max_points:
        return xyz, rgb
    if max_points < 0:
        raise ValueError(f"max_points must be >= 0, got {max_points}")
    # Integer arithmetic: exact, and max_points == 0 gives an empty cloud
    # (the float step n / max_points divided by zero).
    sel = (np.arange(max_points, dtype=np.int64) * xyz.shape[0]) // max(max_points, 1)
    return xyz[sel], (rgb[sel] if rgb is not None else None)


class RayCache:
    """:class:`CameraRays` of every camera of one rig, for fusing a whole depth stack at once.

    Built once per (rig, image size, stride); offline tools and tests reuse it for
    every sample. The node, whose cameras may differ in size, keeps one
    :class:`CameraRays` per camera instead (:mod:`fsmde_core.estimator`).
    """

    def __init__(self, rig: Rig, stride: int = 1) -> None:
        if stride < 1:
            raise ValueError(f"cloud stride must be >= 1, got {stride}")
        sizes = {(c.model.width, c.model.height) for c in rig.cameras}
        if len(sizes) != 1:
            raise ValueError(f"RayCache needs one image size for all cameras, got {sorted(sizes)}")
        self.rig = rig
        self.stride = stride
        self.cameras = [CameraRays(cam.model, cam.T_base_cam, stride) for cam in rig.cameras]

    def matches(self, rig: Rig, stride: int) -> bool:
        return rig is self.rig and stride == self.stride

    def _check_shape(self, what: str, arr: np.ndarray, trailing: tuple[int, ...] = ()) -> None:
        """Depth/mask/colour stacks must be at the rig's size: a flat index into a
        differently sized image would silently read the wrong pixels."""
        m = self.rig.cameras[0].model
        want = (len(self.rig.cameras), m.height, m.width, *trailing)
        if tuple(np.shape(arr)) != want:
            raise ValueError(f"{what} must have shape {want} (rig cameras x H x W), got {np.shape(arr)}")

    def fuse(
        self,
        depths: np.ndarray,
        colours: np.ndarray | None = None,
        max_range: float = np.inf,
        min_range: float = 0.0,
        masks: np.ndarray | None = None,
        max_points: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Fuse (N_cam, H, W) depth maps into one cloud in the base frame.

        Args:
            depths: per-camera depth (REP 117: NaN/Inf pixels are skipped).
            colours: optional (N_cam, H, W, 3) uint8 images at the depth size.
            max_range / min_range: Euclidean range limits from each camera centre.
            masks: optional (N_cam, H, W) bool, True = ego/invalid pixel to skip.
            max_points: bound on the cloud size; excess points are subsampled
                uniformly with a fixed pattern (deterministic across frames).

        Returns:
            xyz (M, 3) float32 in the base frame, rgb (M, 3) uint8 or None.
        """
        self._check_shape("depths", depths)
        if colours is not None:
            self._check_shape("colours", colours, trailing=(3,))
        if masks is not None:
            self._check_shape("masks", masks)
        if max_points is not None and max_points < 0:
            raise ValueError(f"max_points must be >= 0, got {max_points}")
        parts = [cam.points(depths[k], None if colours is None else colours[k], max_range, min_range,
                            None if masks is None else masks[k])
                 for k, cam in enumerate(self.cameras)]
        xyz = np.concatenate([p[0] for p in parts]).astype(np.float32, copy=False)
        rgb = np.concatenate([p[1] for p in parts]) if colours is not None else None
        return subsample_points(xyz, rgb, max_points)


def fuse_cloud(
    depths: np.ndarray, rig: Rig, stride: int = 1, **kwargs
) -> tuple[np.ndarray, np.ndarray | None]:
    """One-shot convenience wrapper around :class:`RayCache` (tests, offline tools)."""
    return RayCache(rig, stride).fuse(depths, **kwargs)


def cross_view_projection(
    depth_src: np.ndarray, cam_src: RigCamera, cam_dst: RigCamera, stride: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Project camera ``src``'s depth into camera ``dst``.

    Returns:
        uv_dst: (M, 2) pixel coordinates in dst of the src pixels that land inside dst.
        z_dst: (M,) their depth in dst's optical frame.
    Used by the cross-view consistency metric (overlap regions of adjacent cameras).
    """
    m = cam_src.model
    if np.shape(depth_src) != (m.height, m.width):
        raise ValueError(
            f"depth_src must be at camera {cam_src.name!r}'s size {(m.height, m.width)}, "
            f"got {np.shape(depth_src)}"
        )
    rays = m.pixel_rays(stride).reshape(-1, 3)
    d = depth_src[::stride, ::stride].reshape(-1)
    ok = np.isfinite(d) & (d > 0) & np.isfinite(rays).all(axis=1)
    uv, z, inside = _project_into(d[ok, None] * rays[ok], cam_src, cam_dst, margin=0.0)
    return uv[inside], z[inside]


def _project_into(
    pts_src: np.ndarray, cam_src: RigCamera, cam_dst: RigCamera, margin: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 3) points in src's optical frame -> dst pixels, dst depth, and which land inside dst.

    ``inside``: in front of dst (z > 0.1 m) and within ``margin`` px beyond the
    outermost pixel centres (0 = centres only, 0.5 = the image's outer edges).
    """
    pts_dst = transform_points(cam_dst.T_cam_base @ cam_src.T_base_cam, pts_src.astype(np.float64))
    uv, z = cam_dst.model.project(pts_dst)
    w, h = cam_dst.model.width, cam_dst.model.height
    with np.errstate(invalid="ignore"):  # NaN uv (behind a distorted camera) is simply outside
        inside = (z > 0.1) & (uv[:, 0] >= -margin) & (uv[:, 0] <= w - 1 + margin) \
            & (uv[:, 1] >= -margin) & (uv[:, 1] <= h - 1 + margin)
    return uv, z, inside


def overlap_band(
    cam_src: RigCamera, cam_dst: RigCamera, reference_depth: float = 50.0, rows: int = 9
) -> tuple[float, float] | None:
    """The column band of ``src`` that ``dst`` also sees, as normalised ``(u0, u1)`` in [0, 1].

    Rays of ``rows`` evenly spaced image rows of src are placed at
    ``reference_depth`` (metres, z in src's optical frame) and projected into
    dst; every column with at least one ray landing inside dst's image is in
    the band. A far reference depth gives (almost) the angular overlap, which is
    what matters for content seen by both cameras; the baseline between the
    cameras shrinks it only for near objects. The band spans from its first to
    its last such column (it is contiguous for cameras side by side on a ring).

    Returns None when the cameras do not overlap.
    """
    if reference_depth <= 0 or rows < 1:
        raise ValueError(f"need reference_depth > 0 and rows >= 1, got {reference_depth}, {rows}")
    m = cam_src.model
    row_idx = np.unique(np.linspace(0, m.height - 1, rows).round().astype(np.int64))
    rays = m.pixel_rays()[row_idx]  # (R, W, 3)
    _, _, inside = _project_into(reference_depth * rays.reshape(-1, 3), cam_src, cam_dst, margin=0.5)
    cols = np.nonzero(inside.reshape(len(row_idx), m.width).any(axis=0))[0]
    if cols.size == 0:
        return None
    return float(cols[0]) / m.width, float(cols[-1] + 1) / m.width
