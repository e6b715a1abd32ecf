"""Tests of LiDAR -> sparse depth, depth -> fused cloud and cross-view projection."""

from __future__ import annotations

import numpy as np
import pytest

from fsmde_core.camera import CameraModel
from fsmde_core.geometry import (
    RayCache,
    cross_view_projection,
    depth_to_points,
    finite_points,
    fuse_cloud,
    lidar_to_sparse_depth,
    overlap_band,
    project_to_sparse_depth,
    transform_points,
)
from fsmde_core.rig import PRESET_NAMES, Rig, RigCamera, make_transform, optical_to_base_rotation, preset

W, H = 64, 48
# fx = fy = 50, principal point (32, 24): round numbers for hand computation.
K = np.array([[50.0, 0.0, 32.0], [0.0, 50.0, 24.0], [0.0, 0.0, 1.0]])
Rz90 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def one_camera_rig(yaw: float = 0.0, pos=(1.0, 0.0, 1.5), T_base_lidar=None, D=None,
                   max_depth: float = 80.0) -> Rig:
    T = make_transform(optical_to_base_rotation(yaw), np.asarray(pos, dtype=float))
    cam = RigCamera("cam", "camera_cam_optical_frame", CameraModel(W, H, K, D), T)
    T_bl = make_transform(np.eye(3), np.array([0.0, 0.0, 2.0])) if T_base_lidar is None else T_base_lidar
    return Rig("test", [cam], T_base_lidar=T_bl, max_depth=max_depth)


def finite_pixels(depth: np.ndarray) -> list[tuple[int, int, float]]:
    v, u = np.nonzero(np.isfinite(depth))
    return [(int(a), int(b), float(depth[a, b])) for a, b in zip(v, u, strict=True)]


# ------------------------------------------------------------ LiDAR -> sparse depth
def test_lidar_point_lands_on_hand_computed_pixel():
    rig = one_camera_rig()
    # Base point (11, -2, 0.5): relative to the camera at (1, 0, 1.5) it is
    # 10 m ahead, 2 m right, 1 m down -> optical (2, 1, 10) -> u = 50*0.2 + 32 = 42,
    # v = 50*0.1 + 24 = 29. The LiDAR sits at (0, 0, 2): lidar point (11, -2, -1.5).
    depth = lidar_to_sparse_depth(np.array([[11.0, -2.0, -1.5]]), rig)
    assert depth.shape == (1, H, W) and depth.dtype == np.float32
    assert finite_pixels(depth[0]) == [(29, 42, 10.0)]


def test_lidar_extrinsic_rotation_is_applied():
    T_bl = make_transform(Rz90, np.array([0.0, 0.0, 2.0]))  # LiDAR x axis points left
    rig = one_camera_rig(T_base_lidar=T_bl)
    # Same base point as above: p_lidar = Rz90^T (p_base - t) = (-2, -11, -1.5).
    depth = lidar_to_sparse_depth(np.array([[-2.0, -11.0, -1.5]]), rig)
    assert finite_pixels(depth[0]) == [(29, 42, 10.0)]
    # An explicit T_base_lidar overrides the rig's.
    unrotated = make_transform(np.eye(3), np.array([0.0, 0.0, 2.0]))
    depth = lidar_to_sparse_depth(np.array([[11.0, -2.0, -1.5]]), rig, T_base_lidar=unrotated)
    assert finite_pixels(depth[0]) == [(29, 42, 10.0)]


@pytest.mark.parametrize("order", [1, -1], ids=["near-first", "far-first"])
def test_z_buffer_keeps_the_nearest_point(order):
    rig = one_camera_rig()
    near = np.array([11.0, -2.0, -1.5])  # optical (2, 1, 10)
    cam_l = np.array([1.0, 0.0, -0.5])  # camera centre in the LiDAR frame
    far = cam_l + 3.0 * (near - cam_l)  # same ray, 30 m
    depth = lidar_to_sparse_depth(np.stack([near, far])[::order], rig)
    assert finite_pixels(depth[0]) == [(29, 42, 10.0)]


def test_dropped_points_behind_outside_nan_and_out_of_range():
    rig = one_camera_rig(max_depth=50.0)
    pts_cam = np.array([
        [0.0, 0.0, -5.0],  # behind
        [30.0, 0.0, 5.0],  # outside (u = 332)
        [0.0, -20.0, 5.0],  # outside (v < 0)
        [0.0, 0.0, 5.0],  # replaced by a NaN (no return) row below
        [0.0, 0.0, 5.0],  # replaced by an Inf row below
        [0.0, 0.0, 0.05],  # closer than min_depth
        [0.0, 0.0, 60.0],  # beyond the rig's max_depth
        [0.0, 0.0, 50.0],  # at max_depth (exclusive)
    ])
    pts_lidar = transform_points(np.linalg.inv(rig.T_base_lidar) @ rig.cameras[0].T_base_cam, pts_cam)
    pts_lidar[3] = [np.nan, 0.0, 0.0]
    pts_lidar[4] = [0.0, np.inf, 0.0]
    assert np.isnan(lidar_to_sparse_depth(pts_lidar, rig)).all()
    # With a larger cap the far points come back.
    kept = finite_pixels(lidar_to_sparse_depth(pts_lidar, rig, max_depth=100.0)[0])
    assert kept == [(24, 32, 50.0)]  # 60 m and 50 m share the centre pixel: nearest wins


def test_sparse_depth_accepts_extra_columns_and_empty_input():
    rig = one_camera_rig()
    with_intensity = np.array([[11.0, -2.0, -1.5, 0.7, 12.0]])
    assert finite_pixels(lidar_to_sparse_depth(with_intensity, rig)[0]) == [(29, 42, 10.0)]
    assert np.isnan(lidar_to_sparse_depth(np.zeros((0, 3)), rig)).all()
    assert np.isnan(lidar_to_sparse_depth(np.zeros((0,)), rig)).all()
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        finite_points(np.ones((5, 2)))


def test_pixel_assignment_is_half_open_and_consistent():
    """Pixel u covers [u - 0.5, u + 0.5): x.5 always goes up (np.round would alternate)."""
    model = CameraModel(W, H, np.array([[64.0, 0.0, 32.0], [0.0, 64.0, 24.0], [0.0, 0.0, 1.0]]))
    us = np.array([40.5, 41.5, 41.49, -0.5, W - 0.5])
    z = np.array([4.0, 2.0, 8.0, 16.0, 32.0])  # powers of two: u is reproduced exactly
    pts = np.column_stack([(us - 32.0) / 64.0 * z, np.zeros(5), z])
    depth = project_to_sparse_depth(pts, model)
    assert {u: d for v, u, d in finite_pixels(depth) if v == 24} == {41: 4.0, 42: 2.0, 0: 16.0}
    # 41.49 -> 41 loses the z-test to 40.5 (z 4 < 8); W - 0.5 falls off the right edge.


def test_preset_sweep_lands_in_the_right_cameras(surround_rig, camera_names):
    rig = surround_rig()
    lidar_origin = rig.T_base_lidar[:3, 3]  # the preset LiDAR is not rotated
    ahead = np.array([30.0, 0.0, 1.0]) - lidar_origin
    behind = np.array([-30.0, 0.0, 1.0]) - lidar_origin
    depth = lidar_to_sparse_depth(np.stack([ahead, behind]), rig)
    counts = np.isfinite(depth).sum(axis=(1, 2))
    assert dict(zip(rig.names, counts.tolist(), strict=True)) == {n: int(n in ("front", "back")) for n in camera_names}
    # Front camera at (1.8, 0, 1.55) pitched 2 deg down: optical Z = dx cos p + dz sin p.
    p = np.radians(2.0)
    assert np.nanmax(depth[0]) == pytest.approx(28.2 * np.cos(p) + 0.55 * np.sin(p), rel=1e-6)


def test_barrel_lens_does_not_receive_points_from_beyond_its_field_of_view():
    D = np.array([-0.37, 0.2, 0.002, -0.0001, -0.07])  # polynomial folds back at r ~ 1.2
    model = CameraModel(W, H, K, D)
    # 56 deg off axis (the half-FOV is ~33 deg): the raw polynomial maps it into the image.
    assert np.isnan(project_to_sparse_depth(np.array([[15.0, 0.0, 10.0]]), model)).all()
    assert np.isfinite(project_to_sparse_depth(np.array([[2.0, 1.0, 10.0]]), model)).sum() == 1


def test_sparse_depth_needs_one_image_size(surround_rig):
    rig = surround_rig()
    rig.cameras[2].model = rig.cameras[2].model.resized(80, 48)
    with pytest.raises(ValueError, match="one image size"):
        lidar_to_sparse_depth(np.zeros((1, 3)), rig)


# ------------------------------------------------------------ depth -> points
@pytest.mark.parametrize("D", [None, np.array([-0.2, 0.05, 0.001, -0.001, 0.0])],
                         ids=["pinhole", "plumb_bob"])
def test_depth_to_points_to_project_round_trip(D):
    model = CameraModel(W, H, K, D)
    depth = np.random.default_rng(3).uniform(0.5, 60.0, size=(H, W)).astype(np.float32)
    pts = depth_to_points(depth, model.pixel_rays())
    assert pts.shape == (H, W, 3)
    np.testing.assert_allclose(pts[..., 2], depth)
    uv, z = model.project(pts.reshape(-1, 3).astype(np.float64))
    np.testing.assert_array_equal(z, depth.ravel())
    uu, vv = np.meshgrid(np.arange(W), np.arange(H))
    np.testing.assert_allclose(uv, np.stack([uu.ravel(), vv.ravel()], 1), atol=1e-3)
    # ...and z-buffering those points gives the depth map back.
    np.testing.assert_allclose(project_to_sparse_depth(pts.reshape(-1, 3), model), depth, rtol=1e-6)


# ------------------------------------------------------------ fused cloud
def _left_camera_rig() -> Rig:
    """One camera looking left (yaw 90 deg) mounted at (0.5, 0.8, 1.6)."""
    return one_camera_rig(yaw=90.0, pos=(0.5, 0.8, 1.6))


def _two_pixel_depth() -> np.ndarray:
    depth = np.full((1, H, W), np.nan, dtype=np.float32)
    depth[0, 24, 32] = 5.0  # principal point
    depth[0, 29, 42] = 5.0  # optical (1.0, 0.5, 5.0): 1 m right, 0.5 m down
    return depth


def test_fuse_matches_hand_computed_base_points():
    xyz, rgb = RayCache(_left_camera_rig()).fuse(_two_pixel_depth())
    assert rgb is None and xyz.dtype == np.float32
    # Centre: 5 m along +y from the camera -> (0.5, 5.8, 1.6). The off-centre pixel:
    # its right is the car's front (+x), down is -z -> (1.5, 5.8, 1.1).
    expected = np.array([[0.5, 5.8, 1.6], [1.5, 5.8, 1.1]])
    np.testing.assert_allclose(xyz[np.argsort(xyz[:, 0])], expected, atol=1e-5)


def test_fuse_range_limits_are_euclidean_from_the_camera():
    cache = RayCache(_left_camera_rig())
    # ranges: 5.0 (centre) and 5 * sqrt(1 + 0.2^2 + 0.1^2) = 5.123 (off-centre)
    near, _ = cache.fuse(_two_pixel_depth(), max_range=5.05)
    np.testing.assert_allclose(near, [[0.5, 5.8, 1.6]], atol=1e-5)
    far, _ = cache.fuse(_two_pixel_depth(), min_range=5.05)
    np.testing.assert_allclose(far, [[1.5, 5.8, 1.1]], atol=1e-5)


def test_fuse_skips_invalid_depths():
    depth = np.full((1, H, W), 7.0, dtype=np.float32)
    depth[0, 0, :4] = [np.nan, np.inf, 0.0, -1.0]
    xyz, _ = fuse_cloud(depth, _left_camera_rig())
    assert xyz.shape == (H * W - 4, 3) and np.isfinite(xyz).all()


@pytest.mark.parametrize("dtype", [bool, np.uint8])
def test_fuse_masks_drop_ego_pixels(dtype):
    mask = np.zeros((1, H, W), dtype=dtype)
    mask[0, 29, 42] = 1  # a uint8 mask read from an image: non-zero = ego
    xyz, _ = RayCache(_left_camera_rig()).fuse(_two_pixel_depth(), masks=mask)
    np.testing.assert_allclose(xyz, [[0.5, 5.8, 1.6]], atol=1e-5)


def test_fuse_colours_follow_their_points():
    colours = np.zeros((1, H, W, 3), dtype=np.uint8)
    colours[0, 24, 32] = [255, 0, 0]
    colours[0, 29, 42] = [0, 0, 255]
    xyz, rgb = RayCache(_left_camera_rig()).fuse(_two_pixel_depth(), colours=colours)
    assert rgb.dtype == np.uint8
    order = np.argsort(xyz[:, 0])
    np.testing.assert_array_equal(rgb[order], [[255, 0, 0], [0, 0, 255]])


def test_fuse_max_points_bound_is_deterministic_and_a_subset():
    rig = preset("nuscenes", 48, 32)
    depths = np.random.default_rng(0).uniform(2.0, 40.0, size=(6, 32, 48)).astype(np.float32)
    colours = np.random.default_rng(1).integers(0, 255, size=(6, 32, 48, 3), dtype=np.uint8)
    cache = RayCache(rig)
    full, full_rgb = cache.fuse(depths, colours=colours)
    assert full.shape == (6 * 32 * 48, 3)
    a, a_rgb = cache.fuse(depths, colours=colours, max_points=1000)
    b, _ = cache.fuse(depths, colours=colours, max_points=1000)
    assert a.shape == (1000, 3) and a_rgb.shape == (1000, 3)
    np.testing.assert_array_equal(a, b)
    # Every kept point (with its colour) is one of the full cloud's, spread over all cameras.
    rows = {tuple(p) + tuple(c) for p, c in zip(full.tolist(), full_rgb.tolist(), strict=True)}
    assert all(tuple(p) + tuple(c) in rows for p, c in zip(a.tolist(), a_rgb.tolist(), strict=True))
    assert a[:, 0].min() < 0 < a[:, 0].max() and a[:, 1].min() < 0 < a[:, 1].max()  # all around the car
    same, _ = cache.fuse(depths, max_points=10**6)
    np.testing.assert_array_equal(same, full)
    assert cache.fuse(depths, max_points=0)[0].shape == (0, 3)


def test_fuse_stride_keeps_every_nth_pixel():
    rig = preset("ddad", 50, 31)
    depths = np.full((6, 31, 50), 10.0, dtype=np.float32)
    xyz, _ = RayCache(rig, stride=4).fuse(depths)
    assert xyz.shape == (6 * 8 * 13, 3)
    with pytest.raises(ValueError, match="stride"):
        RayCache(rig, stride=0)


def test_fuse_refuses_wrong_shapes():
    cache = RayCache(preset("ddad", 64, 32))
    with pytest.raises(ValueError, match=r"depths must have shape \(6, 32, 64\)"):
        cache.fuse(np.ones((6, 64, 32), dtype=np.float32))
    with pytest.raises(ValueError, match="masks"):
        cache.fuse(np.ones((6, 32, 64), dtype=np.float32), masks=np.zeros((6, 16, 32), dtype=bool))
    with pytest.raises(ValueError, match="colours"):
        cache.fuse(np.ones((6, 32, 64), dtype=np.float32), colours=np.zeros((6, 32, 64), dtype=np.uint8))


def test_ray_cache_drops_pixels_without_a_ray():
    D = np.array([-0.37, 0.2, 0.002, -0.0001, -0.07])
    wide = np.array([[20.0, 0.0, 32.0], [0.0, 20.0, 24.0], [0.0, 0.0, 1.0]])  # corners beyond the fold
    cam = RigCamera("wide", "f", CameraModel(W, H, wide, D), np.eye(4))
    xyz, _ = fuse_cloud(np.full((1, H, W), 3.0, dtype=np.float32), Rig("r", [cam]))
    assert 0 < xyz.shape[0] < H * W and np.isfinite(xyz).all()


def test_ray_cache_matches():
    rig = preset("ddad", 32, 16)
    cache = RayCache(rig, 2)
    assert cache.matches(rig, 2) and not cache.matches(rig, 1)
    assert not cache.matches(preset("ddad", 32, 16), 2)  # identity: a rebuilt rig needs a new cache


# ------------------------------------------------------------ ground plane
def analytic_ground_depth(cam: RigCamera, u: np.ndarray, v: np.ndarray, cap: float = 250.0) -> np.ndarray:
    """Depth (optical Z) of the ground plane z = 0 seen through pixel (u, v), from K and
    T_base_cam alone (pinhole); +inf where the ray does not hit the ground within ``cap``."""
    m = cam.model
    rays = np.stack([(u - m.cx) / m.fx, (v - m.cy) / m.fy, np.ones_like(u, dtype=np.float64)], axis=-1)
    dz = rays @ cam.T_base_cam[2, :3]  # base z component of each (unit-Z) ray
    with np.errstate(divide="ignore"):
        t = np.where(dz < 0, -cam.T_base_cam[2, 3] / dz, np.inf)
    return np.where(t * np.linalg.norm(rays, axis=-1) <= cap, t, np.inf)


def ground_depths(rig: Rig) -> np.ndarray:
    m = rig.cameras[0].model
    uu, vv = np.meshgrid(np.arange(m.width, dtype=np.float64), np.arange(m.height, dtype=np.float64))
    return np.stack([analytic_ground_depth(c, uu, vv) for c in rig.cameras]).astype(np.float32)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_fused_ground_plane_is_flat_in_base(name):
    rig = preset(name, 128, 72)
    depths = ground_depths(rig)
    xyz, _ = fuse_cloud(depths, rig)
    assert xyz.shape[0] == np.isfinite(depths).sum() > 6 * 128 * 10  # every ground pixel, none else
    np.testing.assert_allclose(xyz[:, 2], 0.0, atol=2e-3)
    # Each camera's ground points lie in its own viewing direction.
    for k, cam in enumerate(rig.cameras):
        only_k = np.full_like(depths, np.nan)
        only_k[k] = depths[k]
        pts, _ = fuse_cloud(only_k, rig)
        rel = pts[:, :2] - cam.T_base_cam[:2, 3]
        bearing = np.degrees(np.arctan2(rel[:, 1], rel[:, 0]))
        off = np.abs((bearing - cam.yaw_deg + 180.0) % 360.0 - 180.0)
        assert off.max() <= cam.model.hfov_deg / 2 + 1.0, cam.name  # + pitch effect at the corners


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_cross_view_projection_of_the_ground_matches_dst_ground_depth(name):
    rig = preset(name, 128, 72)
    depths = ground_depths(rig)
    for i, j in rig.adjacent_pairs():
        for src, dst in ((i, j), (j, i)):
            uv, z = cross_view_projection(depths[src], rig.cameras[src], rig.cameras[dst])
            assert uv.shape[0] > 20, (rig.cameras[src].name, rig.cameras[dst].name)  # views overlap
            m = rig.cameras[dst].model
            assert (uv >= 0).all() and (uv[:, 0] <= m.width - 1).all() and (uv[:, 1] <= m.height - 1).all()
            expected = analytic_ground_depth(rig.cameras[dst], uv[:, 0], uv[:, 1], cap=np.inf)
            np.testing.assert_allclose(z, expected, rtol=1e-4)


def test_cross_view_projection_stride_and_shape_check():
    rig = preset("ddad", 128, 72)
    depths = ground_depths(rig)
    full_uv, _ = cross_view_projection(depths[0], rig.cameras[0], rig.cameras[1])
    half_uv, _ = cross_view_projection(depths[0], rig.cameras[0], rig.cameras[1], stride=2)
    assert 0 < half_uv.shape[0] < full_uv.shape[0]
    with pytest.raises(ValueError, match="depth_src must be at camera 'front'"):
        cross_view_projection(depths[0, ::2], rig.cameras[0], rig.cameras[1])


def test_overlap_band_of_two_coincident_pinhole_cameras_matches_the_angles() -> None:
    """Same centre, yaw 0 and 40 deg, fx 50 on 64 px: a column u of cam 0 looks
    atan((32 - u) / 50) to the left; cam 1 sees it when that angle minus 40 deg
    projects inside its image (u' <= 63.5)."""
    cam0 = one_camera_rig(0.0, pos=(0.0, 0.0, 1.5)).cameras[0]
    cam1 = one_camera_rig(40.0, pos=(0.0, 0.0, 1.5)).cameras[0]
    theta_min = np.radians(40.0) + np.arctan((32.0 - 63.5) / 50.0)  # leftmost angle cam 1 needs
    last = int(np.floor(32.0 - 50.0 * np.tan(theta_min)))  # last column of cam 0 inside
    assert overlap_band(cam0, cam1) == pytest.approx((0.0, (last + 1) / W))
    # and from cam 1: its right-hand columns, those whose angle stays left of cam 0's u = -0.5
    first = int(np.ceil(32.0 - 50.0 * np.tan(np.arctan(32.5 / 50.0) - np.radians(40.0))))
    assert overlap_band(cam1, cam0) == pytest.approx((first / W, 1.0))
    behind = one_camera_rig(180.0, pos=(0.0, 0.0, 1.5)).cameras[0]
    assert overlap_band(cam0, behind) is None
    with pytest.raises(ValueError):
        overlap_band(cam0, cam1, reference_depth=0.0)


# ------------------------------------------------------------------ see-through LiDAR points
def test_see_through_points_behind_a_near_object_are_dropped() -> None:
    """A near object's points (2 m) with far points (20 m, seen by the LiDAR past it) between them:
    the far ones go, the object's and a far wall's points away from the object stay."""
    from fsmde_core.geometry import drop_see_through_points

    sparse = np.full((96, 160), np.nan, dtype=np.float32)
    sparse[40:60:4, 40:80] = 2.0           # the near object's scan lines, 4 rows apart
    sparse[42:58:4, 40:80:2] = 20.0        # far points in the gaps between them
    sparse[10:20:4, 120:150] = 20.0        # the far wall elsewhere, nothing near it
    out = drop_see_through_points(sparse, window=0.021, ratio=1.5)
    assert np.isnan(out[42:58:4, 40:80:2]).all()
    np.testing.assert_array_equal(out[40:60:4, 40:80], 2.0)
    np.testing.assert_array_equal(out[10:20:4, 120:150], 20.0)
    assert np.isnan(sparse).sum() < np.isnan(out).sum()  # the input is untouched, a new array comes back
    stacked = drop_see_through_points(np.stack([sparse, sparse]))  # (N, H, W): per image, same result
    np.testing.assert_array_equal(np.isnan(stacked[1]), np.isnan(out))


def test_a_smooth_road_survives_the_see_through_test() -> None:
    """The road ahead of a camera 1.5 m up (fy 96 px at 96 rows): depth grows row by row towards the
    horizon; out to ~25 m no row changes by 50 % within the window, so nothing is dropped there."""
    from fsmde_core.geometry import drop_see_through_points, see_through_window

    h, w, fy, cy, cam_h = 96, 160, 96.0, 47.5, 1.5
    rows = np.arange(h, dtype=np.float64)
    depth = np.where(rows > cy, cam_h * fy / np.maximum(rows - cy, 1e-9), np.nan)
    road = np.repeat(depth[:, None], w, axis=1).astype(np.float32)
    sparse = np.full_like(road, np.nan)
    sparse[::3, ::2] = road[::3, ::2]
    out = drop_see_through_points(sparse)
    kept_region = np.isfinite(sparse) & (sparse < 25.0)
    np.testing.assert_array_equal(out[kept_region], sparse[kept_region])
    assert see_through_window(192, 0.021) == (4, 3) and see_through_window(24, 0.021) == (1, 1)


@pytest.mark.parametrize("kwargs", [{"ratio": 1.0}, {"ratio": 0.5}, {"window": 0.0}])
def test_see_through_settings_are_checked(kwargs) -> None:
    from fsmde_core.geometry import drop_see_through_points

    with pytest.raises(ValueError, match="see-through"):
        drop_see_through_points(np.ones((4, 4), dtype=np.float32), **kwargs)
