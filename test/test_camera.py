"""Tests of the pinhole + plumb_bob camera model (fsmde_core.camera)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsmde_core.camera import CameraModel

# Typical automotive barrel lens (moderate), and a wide one (~100 deg) whose
# image corners OpenCV-style fixed-point undistortion does not reach.
AUTOMOTIVE_D = np.array([-0.28, 0.07, 0.0005, -0.0003, 0.0])
# k1 < 0 with a negative k3: the radial polynomial folds back at r^2 ~ 1.45.
FOLDING_D = np.array([-0.37, 0.2, 0.002, -0.0001, -0.07])


def simple_camera(D: np.ndarray | None = None) -> CameraModel:
    """640x480, fx = fy = 500, principal point (320, 240)."""
    K = np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]])
    return CameraModel(640, 480, K, np.zeros(5) if D is None else D)


def lens(D: np.ndarray, hfov: float, width: int = 640, height: int = 384) -> CameraModel:
    return CameraModel(width, height, CameraModel.pinhole(width, height, hfov).K, D)


def pixel_grid(m: CameraModel) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(m.width, dtype=np.float64), np.arange(m.height, dtype=np.float64))


# ------------------------------------------------------------ known answers
def test_project_known_answer_pinhole():
    uv, z = simple_camera().project(np.array([[1.0, 0.5, 10.0]]))
    # u = fx * x / z + cx = 500 * 0.1 + 320; v = 500 * 0.05 + 240
    np.testing.assert_allclose(uv, [[370.0, 265.0]], atol=1e-12)
    np.testing.assert_allclose(z, [10.0])


def test_project_known_answer_plumb_bob():
    D = np.array([-0.2, 0.05, 0.001, -0.002, 0.01])
    uv, _ = simple_camera(D).project(np.array([[1.0, 0.5, 10.0]]))
    # Hand computation: xn = 0.1, yn = 0.05, r2 = 0.0125
    # radial = 1 - 0.2*0.0125 + 0.05*0.0125^2 + 0.01*0.0125^3 = 0.99750783203125
    # xd = 0.1*radial + 2*p1*xn*yn + p2*(r2 + 2 xn^2) = 0.09975078320 + 1e-5 - 6.5e-5
    # yd = 0.05*radial + p1*(r2 + 2 yn^2) + 2*p2*xn*yn = 0.04987539160 + 1.75e-5 - 2e-5
    xd, yd = 0.099695783203125, 0.0498728916015625
    np.testing.assert_allclose(uv, [[500 * xd + 320, 500 * yd + 240]], atol=1e-9)
    np.testing.assert_allclose(uv, [[369.8478916015625, 264.9364458007813]], atol=1e-9)


def test_points_behind_camera_project_to_nan():
    uv, z = simple_camera().project(np.array([[1.0, 0.5, -10.0], [0.0, 0.0, 0.0]]))
    assert np.isnan(uv).all()
    np.testing.assert_allclose(z, [-10.0, 0.0])


def test_project_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        simple_camera().project(np.array([1.0, 2.0, 3.0]))


def test_pinhole_constructor_gives_requested_fov_and_centre():
    m = CameraModel.pinhole(640, 384, 90.0)
    assert m.hfov_deg == pytest.approx(90.0)
    assert m.fx == pytest.approx(320.0)
    assert (m.cx, m.cy) == (319.5, 191.5)  # centre of the pixel-centre grid


# ------------------------------------------------------------ rays
@pytest.mark.parametrize("D", [np.zeros(5), AUTOMOTIVE_D], ids=["pinhole", "plumb_bob"])
@pytest.mark.parametrize("stride", [2, 3, 7])
def test_strided_pixel_rays_equal_the_subsampled_full_grid(D, stride):
    m = lens(D, 90.0, 160, 96)
    np.testing.assert_array_equal(m.pixel_rays(stride), m.pixel_rays()[::stride, ::stride])


@pytest.mark.parametrize("D", [np.zeros(5), AUTOMOTIVE_D], ids=["pinhole", "plumb_bob"])
def test_pixel_rays_unit_z_and_reproject_to_their_pixel(D):
    m = lens(D, 90.0, 160, 96)
    rays = m.pixel_rays()
    assert rays.shape == (96, 160, 3) and rays.dtype == np.float32
    np.testing.assert_array_equal(rays[..., 2], 1.0)
    uv, z = m.project(rays.reshape(-1, 3).astype(np.float64))
    uu, vv = pixel_grid(m)
    np.testing.assert_allclose(uv[:, 0], uu.ravel(), atol=1e-4)  # float32 rays
    np.testing.assert_allclose(uv[:, 1], vv.ravel(), atol=1e-4)
    np.testing.assert_array_equal(z, 1.0)


def test_pixel_ray_of_principal_point_is_optical_axis():
    m = simple_camera(AUTOMOTIVE_D)
    np.testing.assert_allclose(m.pixel_rays()[240, 320], [0.0, 0.0, 1.0], atol=1e-7)


@pytest.mark.parametrize("D", [np.zeros(5), AUTOMOTIVE_D], ids=["pinhole", "plumb_bob"])
def test_depth_times_ray_projects_back(D):
    m = lens(D, 80.0, 96, 64)
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 80.0, size=(m.height, m.width))
    pts = depth[..., None] * m.pixel_rays().astype(np.float64)
    uv, z = m.project(pts.reshape(-1, 3))
    uu, vv = pixel_grid(m)
    np.testing.assert_allclose(z, depth.ravel())
    np.testing.assert_allclose(uv, np.stack([uu.ravel(), vv.ravel()], 1), atol=1e-4)


# ------------------------------------------------------------ distortion
@pytest.mark.parametrize("D, hfov", [(AUTOMOTIVE_D, 70.0), (AUTOMOTIVE_D, 100.0),
                                     (np.array([0.1, 0.02, 0.001, 0.001, 0.0]), 90.0)],
                         ids=["barrel-70", "barrel-100", "pincushion-90"])
def test_undistort_distort_round_trip_over_the_image(D, hfov):
    """undistort(distort(x)) == x to 1e-6 for every pixel's undistorted coordinate."""
    m = lens(D, hfov)
    uu, vv = pixel_grid(m)
    # The undistorted coordinates that cover the image, in float64.
    x, y = m.undistort_normalised((uu - m.cx) / m.fx, (vv - m.cy) / m.fy)
    assert np.isfinite(x).all() and np.isfinite(y).all()
    xd, yd = m.distort_normalised(x, y)
    np.testing.assert_allclose(xd, (uu - m.cx) / m.fx, atol=1e-9)
    np.testing.assert_allclose(yd, (vv - m.cy) / m.fy, atol=1e-9)
    x2, y2 = m.undistort_normalised(xd, yd)
    np.testing.assert_allclose(x2, x, atol=1e-6)
    np.testing.assert_allclose(y2, y, atol=1e-6)


@settings(max_examples=200, deadline=None, database=None)
@given(st.floats(-1.0, 1.0), st.floats(-0.7, 0.7))
def test_undistort_inverts_distort_anywhere_in_a_wide_view(x, y):
    m = lens(AUTOMOTIVE_D, 100.0)
    xd, yd = m.distort_normalised(np.array([x]), np.array([y]))
    xu, yu = m.undistort_normalised(xd, yd)
    np.testing.assert_allclose([xu[0], yu[0]], [x, y], atol=1e-6)


def test_wide_corner_needs_more_than_fixed_point_iteration():
    """Regression: at the corner of a 100 deg lens the old fixed-point loop
    (OpenCV undistortPoints style) was off by tens of pixels."""
    m = lens(AUTOMOTIVE_D, 100.0)
    xd, yd = np.array([(0 - m.cx) / m.fx]), np.array([(0 - m.cy) / m.fy])
    fx_, fy_ = xd.copy(), yd.copy()
    k1, k2, p1, p2, k3 = m.D
    for _ in range(20):  # what the model used to do
        r2 = fx_**2 + fy_**2
        rad = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        fx_, fy_ = ((xd - 2 * p1 * fx_ * fy_ - p2 * (r2 + 2 * fx_**2)) / rad,
                    (yd - p1 * (r2 + 2 * fy_**2) - 2 * p2 * fx_ * fy_) / rad)
    rx, _ = m.distort_normalised(fx_, fy_)
    assert abs(rx[0] - xd[0]) * m.fx > 1.0  # fixed point: > 1 px reprojection error
    x, y = m.undistort_normalised(xd, yd)
    rx, ry = m.distort_normalised(x, y)
    assert abs(rx[0] - xd[0]) * m.fx < 1e-6 and abs(ry[0] - yd[0]) * m.fy < 1e-6


def test_points_beyond_the_fold_do_not_project_into_the_image():
    """A barrel polynomial folds back: far off-axis points must not land in the image."""
    m = lens(FOLDING_D, 70.0)
    r2_max = m.max_valid_radius2()
    assert 1.0 < r2_max < 2.0
    far = np.array([[1.5, 0.0, 1.0]])  # 56 deg off axis; the half field of view is 35 deg
    xd, _ = m.distort_normalised(far[:, 0], far[:, 1])
    naive_u = m.fx * xd[0] + m.cx
    assert 0 <= naive_u < m.width  # the polynomial alone puts it inside the image
    uv, _ = m.project(far)
    assert np.isnan(uv).all()
    inside = np.array([[0.5, 0.2, 1.0]])
    assert np.isfinite(m.project(inside)[0]).all()


def test_pixels_without_a_valid_inverse_get_nan_rays():
    m = lens(FOLDING_D, 100.0, 160, 96)
    rays = m.pixel_rays()
    bad = ~np.isfinite(rays).all(axis=-1)
    assert bad[0, 0] and not bad[48, 80]  # corner has no inverse, centre does
    good = rays[~bad].astype(np.float64)
    assert (good[:, 0] ** 2 + good[:, 1] ** 2 < m.max_valid_radius2()).all()
    uv, _ = m.project(good)
    uu, vv = pixel_grid(m)
    np.testing.assert_allclose(uv[:, 0], uu[~bad], atol=1e-3)
    np.testing.assert_allclose(uv[:, 1], vv[~bad], atol=1e-3)


def test_max_valid_radius_is_infinite_without_fold():
    assert lens(AUTOMOTIVE_D, 90.0).max_valid_radius2() == np.inf
    assert simple_camera().max_valid_radius2() == np.inf
    assert lens(np.array([0.1, 0, 0, 0, 0]), 90.0).max_valid_radius2() == np.inf
    # k1 < 0 only: f'(r) = 1 + 3 k1 r^2 = 0 at r^2 = -1 / (3 k1)
    assert lens(np.array([-0.2, 0, 0, 0, 0]), 90.0).max_valid_radius2() == pytest.approx(1 / 0.6)


def test_undistort_accepts_scalars():
    m = lens(AUTOMOTIVE_D, 90.0)
    x, y = m.undistort_normalised(0.3, 0.2)
    xd, yd = m.distort_normalised(x, y)
    assert (float(xd), float(yd)) == pytest.approx((0.3, 0.2), abs=1e-9)


# ------------------------------------------------------------ skew
def test_skew_is_used_consistently_by_project_rays_and_resize():
    K = np.array([[400.0, 3.0, 100.0], [0.0, 410.0, 60.0], [0.0, 0.0, 1.0]])
    m = CameraModel(200, 120, K, AUTOMOTIVE_D)
    uv, _ = m.project(np.array([[1.0, 0.5, 10.0]]))
    xd, yd = m.distort_normalised(np.array([0.1]), np.array([0.05]))
    np.testing.assert_allclose(uv[0], [400 * xd[0] + 3 * yd[0] + 100, 410 * yd[0] + 60])
    uv, _ = m.project(m.pixel_rays().reshape(-1, 3).astype(np.float64))
    uu, vv = pixel_grid(m)
    np.testing.assert_allclose(uv, np.stack([uu.ravel(), vv.ravel()], 1), atol=1e-4)
    r = m.resized(100, 60)
    assert r.skew == pytest.approx(1.5)
    _check_resize_consistent(m, r)


# ------------------------------------------------------------ resize / crop
def _check_resize_consistent(m: CameraModel, r: CameraModel) -> None:
    """Pixel-centre convention: (u + 0.5) / W is invariant under a resize."""
    rng = np.random.default_rng(1)
    pts = np.column_stack([rng.uniform(-3, 3, 50), rng.uniform(-2, 2, 50), rng.uniform(5, 50, 50)])
    uv0, _ = m.project(pts)
    uv1, _ = r.project(pts)
    np.testing.assert_allclose((uv1[:, 0] + 0.5) / r.width, (uv0[:, 0] + 0.5) / m.width, atol=1e-12)
    np.testing.assert_allclose((uv1[:, 1] + 0.5) / r.height, (uv0[:, 1] + 0.5) / m.height, atol=1e-12)


@pytest.mark.parametrize("size", [(320, 192), (1280, 768), (333, 201), (640, 192)])
@pytest.mark.parametrize("D", [np.zeros(5), AUTOMOTIVE_D], ids=["pinhole", "plumb_bob"])
def test_resize_keeps_projection_at_same_relative_position(size, D):
    m = lens(D, 80.0)
    r = m.resized(*size)
    assert (r.width, r.height) == size
    _check_resize_consistent(m, r)
    np.testing.assert_array_equal(r.D, m.D)


def test_resize_known_answer_half_size():
    r = simple_camera().resized(320, 240)
    # fx' = fx / 2; cx' = (cx + 0.5) / 2 - 0.5 (image_proc's cx / 2 is off by 1/4 px)
    np.testing.assert_allclose(r.K, [[250.0, 0, 159.75], [0, 250.0, 119.75], [0, 0, 1]])
    # The pixel-centre-centred principal point stays centred.
    c = CameraModel.pinhole(640, 384, 90.0).resized(160, 96)
    assert (c.cx, c.cy) == pytest.approx((79.5, 47.5))
    assert c.hfov_deg == pytest.approx(90.0)


def test_scaled_to_is_noop_at_same_size():
    m = simple_camera()
    assert m.scaled_to(640, 480) is m
    assert m.scaled_to(320, 240) == m.resized(320, 240)


def test_crop_shifts_principal_point_and_projection():
    m = simple_camera(AUTOMOTIVE_D)
    c = m.cropped(100, 50, 300, 200)
    assert (c.width, c.height) == (300, 200)
    assert (c.cx, c.cy) == (220.0, 190.0)
    assert (c.fx, c.fy) == (m.fx, m.fy)
    pts = np.array([[1.0, 0.5, 10.0], [-0.3, 0.2, 4.0]])
    np.testing.assert_allclose(c.project(pts)[0], m.project(pts)[0] - [100, 50], atol=1e-12)


@pytest.mark.parametrize("crop", [(-1, 0, 10, 10), (0, 0, 641, 10), (600, 0, 41, 10), (0, 470, 10, 11)])
def test_crop_outside_image_is_refused(crop):
    with pytest.raises(ValueError, match="outside image"):
        simple_camera().cropped(*crop)


# ------------------------------------------------------------ CameraInfo
def test_camera_info_fields_round_trip():
    m = simple_camera(np.array([-0.2, 0.05, 0.001, -0.002, 0.01]))
    f = m.to_camera_info_fields()
    assert (f["width"], f["height"], f["distortion_model"]) == (640, 480, "plumb_bob")
    assert len(f["k"]) == 9 and len(f["d"]) == 5 and len(f["r"]) == 9 and len(f["p"]) == 12
    np.testing.assert_array_equal(np.reshape(f["r"], (3, 3)), np.eye(3))
    P = np.reshape(f["p"], (3, 4))
    np.testing.assert_array_equal(P[:, :3], m.K)
    np.testing.assert_array_equal(P[:, 3], 0.0)
    back = CameraModel.from_camera_info_fields(f["width"], f["height"], f["k"], f["d"], f["distortion_model"])
    assert back == m
    assert hash(back) == hash(m)


@pytest.mark.parametrize("d", [[], None, [0.1, 0.01, 0.0, 0.0], [0.1, 0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
def test_camera_info_short_or_padded_d(d):
    m = CameraModel.from_camera_info_fields(640, 480, simple_camera().K.ravel(), d, "")
    assert m.D.shape == (5,)
    expected = np.zeros(5) if not d else np.array([0.1, 0.01, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(m.D, expected)
    assert m.distortion_model == "plumb_bob"


def test_equality_compares_values():
    assert simple_camera() == simple_camera()
    assert simple_camera() != simple_camera(AUTOMOTIVE_D)
    assert simple_camera() != simple_camera().resized(320, 240)
    assert simple_camera() in [simple_camera(AUTOMOTIVE_D), simple_camera()]
    assert len({simple_camera(), simple_camera()}) == 1


# ------------------------------------------------------------ errors
@pytest.mark.parametrize("K", [
    [[-500.0, 0, 320], [0, 500, 240], [0, 0, 1]],  # negative fx
    [[500.0, 0, 320], [0, 0, 240], [0, 0, 1]],  # zero fy
    [[500.0, 0, 320], [0, 500, 240], [0, 0, 2]],  # not normalised
    [[500.0, 0, 320], [1, 500, 240], [0, 0, 1]],  # non-zero lower triangle
    [[500.0, 0, 320], [0, 500, 240], [0, 0.1, 1]],
    [[np.nan, 0, 320], [0, 500, 240], [0, 0, 1]],
], ids=["neg-fx", "zero-fy", "k22", "k10", "k21", "nan"])
def test_bad_intrinsics_are_refused(K):
    with pytest.raises(ValueError, match="invalid intrinsic matrix K"):
        CameraModel(640, 480, np.array(K))


def test_wrong_sized_k_is_refused():
    with pytest.raises(ValueError, match="invalid intrinsic matrix K"):
        CameraModel(640, 480, np.eye(2))
    with pytest.raises(ValueError, match="9 elements"):
        CameraModel.from_camera_info_fields(640, 480, [500.0, 0.0, 320.0], [], "plumb_bob")
    with pytest.raises(ValueError, match="not numeric"):
        CameraModel(640, 480, [["a", 0, 0], [0, 1, 0], [0, 0, 1]])


@pytest.mark.parametrize("model", ["rational_polynomial", "equidistant", "fisheye"])
def test_unsupported_distortion_model_is_refused(model):
    with pytest.raises(ValueError, match=f"distortion model '{model}' is not supported"):
        CameraModel(640, 480, simple_camera().K, np.zeros(5), model)


def test_extra_nonzero_coefficients_are_refused():
    with pytest.raises(ValueError, match="at most 5"):
        CameraModel(640, 480, simple_camera().K, np.array([0.1, 0, 0, 0, 0, 0.2, 0, 0]))
    with pytest.raises(ValueError, match="must be finite"):
        CameraModel(640, 480, simple_camera().K, np.array([np.nan, 0, 0, 0, 0]))


@pytest.mark.parametrize("size", [(0, 480), (640, 0), (-640, 480)])
def test_non_positive_size_is_refused(size):
    with pytest.raises(ValueError, match="size must be positive"):
        CameraModel(*size, simple_camera().K)
    with pytest.raises(ValueError, match="must be positive"):
        simple_camera().resized(*size)
