"""SurroundDepthEstimator with real backends on tiny students (no ROS).

Two students (:mod:`tiny_students`): a *textured* one, compared pixel by pixel with the
backend's own offline output, and a *plane* one (every pixel exactly 8.5 m), whose cloud
has a known place in the vehicle frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is needed for the student")

from tiny_students import PLANE_DEPTH_M as PLANE_M  # noqa: E402
from tiny_students import save_plane_student, save_textured_student  # noqa: E402

from fsmde_core.calib_health import CrossViewMonitor  # noqa: E402
from fsmde_core.estimator import (  # noqa: E402
    CameraFrame,
    CloudOptions,
    SurroundDepthEstimator,
    finish_depth,
)
from fsmde_core.motion import compensate_points  # noqa: E402
from fsmde_core.rig import Rig, make_transform, preset  # noqa: E402
from fsmde_core.runtime import build_backend, resize_batch, resize_depth_nearest  # noqa: E402

H, W = 64, 96  # network input = depth size
IMG_H, IMG_W = 96, 160  # camera images: another size and aspect
STRIDE = 4


@pytest.fixture(scope="module")
def rig() -> Rig:
    return preset("ddad", IMG_W, IMG_H)


@pytest.fixture(scope="module")
def textured_backend(tmp_path_factory: pytest.TempPathFactory, rig: Rig):
    return build_backend("torch", save_textured_student(tmp_path_factory.mktemp("textured"), rig.names, H, W))


@pytest.fixture(scope="module")
def plane_run(tmp_path_factory: pytest.TempPathFactory, rig: Rig) -> Path:
    return save_plane_student(tmp_path_factory.mktemp("plane"), rig.names, H, W)


@pytest.fixture(scope="module")
def plane_backend(plane_run: Path):
    return build_backend("torch", plane_run)


class CountingBackend:
    """The real backend, with its ``infer`` calls counted (the estimator must batch a set)."""

    def __init__(self, backend) -> None:
        self._backend, self.calls, self.batches = backend, 0, []

    def __getattr__(self, name: str):
        return getattr(self._backend, name)

    def infer(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.batches.append(images.shape[0])
        return self._backend.infer(images)


def make_images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:IMG_H, 0:IMG_W].astype(np.float32)
    out = []
    for k in range(n):
        base = np.stack([np.sin(xx / (5 + k) + c) * np.cos(yy / (7 + c) - k) for c in range(3)], axis=-1)
        out.append(np.clip(128 + 90 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
    return out


def frames_for(rig: Rig, images: list[np.ndarray], **per_camera) -> list[CameraFrame]:
    return [CameraFrame(c.name, images[k], c.model, extrinsic=c.T_base_cam,
                        mask=per_camera.get("masks", {}).get(c.name))
            for k, c in enumerate(rig.cameras)]


# ------------------------------------------------------------------ depth
def test_finish_depth_follows_rep117() -> None:
    raw = np.array([[[-1.0, 0.0, np.nan, -np.inf, np.inf, 5.0]]], dtype=np.float32)
    out = finish_depth(raw.copy(), [None])
    np.testing.assert_array_equal(out[0, 0], [np.nan, np.nan, np.nan, np.nan, np.inf, 5.0])
    out = finish_depth(raw.copy(), [np.array([[False] * 5 + [True]])])
    assert np.isnan(out[0, 0, 5])  # ego-masked: NaN, never 0
    frozen = raw.copy()
    frozen.flags.writeable = False
    assert np.isnan(finish_depth(frozen)[0, 0, 1]) and frozen[0, 0, 1] == 0.0  # a copy: the input is untouched


def test_depth_stack_equals_the_backend_with_masks_applied(textured_backend, rig: Rig) -> None:
    images = make_images(6)
    mask = np.zeros((IMG_H, IMG_W), dtype=np.uint8)
    mask[int(0.8 * IMG_H):, :] = 255  # hood
    mask[:, : IMG_W // 10] = 255  # mirror strip
    counting = CountingBackend(textured_backend)
    est = SurroundDepthEstimator(counting)
    result = est.estimate(frames_for(rig, images, masks={"front": mask}))
    assert result.names == tuple(rig.names)
    assert result.depth.shape == (6, H, W) and result.depth.dtype == np.float32
    assert counting.calls == 1 and counting.batches == [6] and est.backend_calls == 1
    offline = textured_backend.infer(resize_batch(images, (H, W)))
    small = resize_depth_nearest(mask != 0, (H, W))
    assert small.any() and not small.all()
    np.testing.assert_array_equal(result.depth[0][~small], offline[0][~small])
    assert np.isnan(result.depth[0][small]).all()
    np.testing.assert_array_equal(result.depth[1:], offline[1:])
    valid = result.depth[np.isfinite(result.depth)]
    assert (valid > 0).all() and valid.std() > 1.0  # REP 117: no 0 / negative; really textured
    # intrinsics at the depth size (pixel-centre exact rescale), one model per camera
    for m, cam in zip(result.models, rig.cameras, strict=True):
        assert m == cam.model.scaled_to(W, H) and (m.width, m.height) == (W, H)
    assert result.timings.model_s > 0 and result.timings.total_s >= result.timings.model_s
    assert result.xyz is None  # no cloud asked for


def test_cameras_of_different_sizes_share_one_batch(textured_backend, rig: Rig) -> None:
    images = make_images(3)
    images[1] = np.ascontiguousarray(images[1][: IMG_H // 2, : IMG_W // 2])
    frames = [CameraFrame(c.name, images[k], c.model.scaled_to(images[k].shape[1], images[k].shape[0]))
              for k, c in enumerate(rig.cameras[:3])]
    counting = CountingBackend(textured_backend)
    result = SurroundDepthEstimator(counting).predict(frames)
    assert counting.calls == 1 and result.depth.shape == (3, H, W)
    np.testing.assert_array_equal(result.depth, textured_backend.infer(resize_batch(images, (H, W))))


def test_bad_frames_are_refused_with_the_camera_named(textured_backend, rig: Rig) -> None:
    est = SurroundDepthEstimator(textured_backend)
    cam = rig.cameras[0]
    with pytest.raises(ValueError, match="camera 'front': image is 80x48 but its camera model is 160x96"):
        est.predict([CameraFrame("front", np.zeros((48, 80, 3), np.uint8), cam.model)])
    with pytest.raises(ValueError, match="unique"):
        est.predict([CameraFrame("front", make_images(1)[0], cam.model)] * 2)
    with pytest.raises(ValueError, match="no camera frames"):
        est.predict([])
    assert est.backend_calls == 0  # refused before the model runs


def test_fixed_batch_onnx_export_is_padded_in_one_call(plane_run: Path, rig: Rig, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from fsmde_core.export import export_onnx

    report = export_onnx(plane_run, tmp_path / "plane.onnx", num_cameras=6)
    assert report["passed"]
    counting = CountingBackend(build_backend("onnxruntime", tmp_path / "plane.onnx"))
    assert counting.batch_size == 6
    result = SurroundDepthEstimator(counting).predict(frames_for(rig, make_images(6))[:4])
    assert counting.calls == 1 and counting.batches == [6]  # four cameras + two zero images
    assert result.depth.shape == (4, H, W)
    np.testing.assert_allclose(result.depth, PLANE_M, rtol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_camera_aware_centres_put_each_camera_at_its_own_scale(rig: Rig, tmp_path: Path, backend: str) -> None:
    """A student with student.focal_canonical: the model (and its ONNX export) predicts for the
    canonical camera, the estimator multiplies each camera by (fx / width) / focal_canonical."""
    run = save_plane_student(tmp_path / "run", rig.names, H, W, focal_canonical=0.5)
    model_path = run
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
        from fsmde_core.export import export_onnx

        report = export_onnx(run, tmp_path / "plane.onnx", num_cameras=6)
        assert report["passed"] and report["focal_canonical"] == 0.5
        model_path = tmp_path / "plane.onnx"
    built = build_backend(backend, model_path)
    assert built.focal_canonical == 0.5 and built.describe()["focal_canonical"] == 0.5
    result = SurroundDepthEstimator(built).predict(frames_for(rig, make_images(6)))
    ratios = np.array([c.model.K[0, 0] / c.model.width for c in rig.cameras])
    assert np.ptp(ratios) > 0.05  # the ddad preset mixes lenses: the test can tell per-camera from global
    np.testing.assert_allclose(result.depth, (PLANE_M * ratios / 0.5)[:, None, None] * np.ones((1, H, W)), rtol=1e-4)


# ------------------------------------------------------------------ cloud
def test_plane_at_known_depth_lands_where_the_geometry_puts_it(plane_backend, rig: Rig) -> None:
    images = make_images(6)
    frames = frames_for(rig, images)
    frames[3] = CameraFrame(frames[3].name, frames[3].rgb, frames[3].model, extrinsic=None)  # no pose: left out
    result = SurroundDepthEstimator(plane_backend).estimate(frames, CloudOptions(stride=STRIDE, max_range=80.0))
    np.testing.assert_allclose(result.depth, PLANE_M, rtol=1e-5)
    colours = resize_batch(images, (H, W))
    vv, uu = np.mgrid[0:H:STRIDE, 0:W:STRIDE]
    per_camera = vv.size
    assert result.xyz.shape == (5 * per_camera, 3) and result.rgb.shape == (5 * per_camera, 3)
    offset = 0
    for k, cam in enumerate(rig.cameras):
        if k == 3:
            continue
        pts = result.xyz[offset:offset + per_camera].astype(np.float64)
        T_cam_base = np.linalg.inv(cam.T_base_cam)
        p_cam = pts @ T_cam_base[:3, :3].T + T_cam_base[:3, 3]
        np.testing.assert_allclose(p_cam[:, 2], PLANE_M, rtol=1e-5)  # on the plane z = 8.5 m of this camera
        uv, _ = result.models[k].project(p_cam)
        np.testing.assert_allclose(uv, np.stack([uu.ravel(), vv.ravel()], axis=1), atol=1e-3)  # its pixel grid
        np.testing.assert_array_equal(result.rgb[offset:offset + per_camera], colours[k][vv.ravel(), uu.ravel()])
        offset += per_camera
    front = result.xyz[:per_camera]
    assert front[:, 0].min() > PLANE_M  # the front camera's plane is ahead of the vehicle origin


def test_range_limits_colour_off_and_max_points(plane_backend, rig: Rig) -> None:
    est = SurroundDepthEstimator(plane_backend)
    frames = frames_for(rig, make_images(6))
    near = est.estimate(frames, CloudOptions(stride=STRIDE, max_range=PLANE_M - 0.1))
    assert near.xyz.shape == (0, 3)  # every point is beyond 8.4 m
    far = est.estimate(frames, CloudOptions(stride=STRIDE, min_range=PLANE_M * 10))
    assert far.xyz.shape == (0, 3)
    full = est.estimate(frames, CloudOptions(stride=STRIDE, colour=False))
    assert full.rgb is None and full.xyz.shape[0] == 6 * len(range(0, H, STRIDE)) * len(range(0, W, STRIDE))
    bounded = est.estimate(frames, CloudOptions(stride=STRIDE, max_points=100))
    assert bounded.xyz.shape == (100, 3)
    np.testing.assert_array_equal(bounded.xyz, full.xyz[(np.arange(100) * full.xyz.shape[0]) // 100])


def test_masked_pixels_are_absent_from_the_cloud(plane_backend, rig: Rig) -> None:
    est = SurroundDepthEstimator(plane_backend)
    mask = np.zeros((IMG_H, IMG_W), dtype=bool)
    mask[IMG_H // 2:] = True  # lower half
    full = est.estimate(frames_for(rig, make_images(6)), CloudOptions(stride=STRIDE))
    masked = est.estimate(frames_for(rig, make_images(6), masks={"front": mask}), CloudOptions(stride=STRIDE))
    per_camera = len(range(0, H, STRIDE)) * len(range(0, W, STRIDE))
    assert masked.xyz.shape[0] == full.xyz.shape[0] - per_camera // 2
    np.testing.assert_array_equal(masked.xyz[: per_camera // 2], full.xyz[: per_camera // 2])  # upper rows


def test_ego_motion_moves_each_camera_to_the_reference_instant(plane_backend, rig: Rig) -> None:
    est = SurroundDepthEstimator(plane_backend)
    frames = frames_for(rig, make_images(6))
    plain = est.estimate(frames, CloudOptions(stride=STRIDE))
    T_ref = make_transform(np.eye(3), np.array([0.48, 0.0, 0.0]))  # 12 m/s, front exposed 40 ms earlier
    T_front = np.eye(4)
    moved = est.estimate(frames, CloudOptions(stride=STRIDE), ego_poses={"front": T_front}, reference_pose=T_ref)
    n = plain.xyz.shape[0] // 6
    np.testing.assert_allclose(moved.xyz[:n], plain.xyz[:n] - np.array([0.48, 0.0, 0.0], np.float32), atol=1e-5)
    np.testing.assert_allclose(moved.xyz[:n], compensate_points(plain.xyz[:n], T_front, T_ref), atol=1e-6)
    np.testing.assert_array_equal(moved.xyz[n:], plain.xyz[n:])  # no pose given: left as they are


def test_rays_are_built_once_per_camera_for_constant_inputs(plane_backend, rig: Rig) -> None:
    est = SurroundDepthEstimator(plane_backend)
    frames = frames_for(rig, make_images(6))
    for _ in range(3):
        est.estimate(frames, CloudOptions(stride=STRIDE))
    assert est.ray_cache_builds == 6 and est.backend_calls == 3
    est.estimate(frames, CloudOptions(stride=2))  # a live stride change rebuilds every camera
    assert est.ray_cache_builds == 12
    bumped = list(frames)
    T = bumped[2].extrinsic.copy()
    T[2, 3] += 0.01
    bumped[2] = CameraFrame(bumped[2].name, bumped[2].rgb, bumped[2].model, extrinsic=T)
    est.estimate(bumped, CloudOptions(stride=2))  # one camera's pose changed: only it is rebuilt
    assert est.ray_cache_builds == 13


def test_cross_view_check_runs_on_the_result(plane_backend, rig: Rig) -> None:
    result = SurroundDepthEstimator(plane_backend).predict(frames_for(rig, make_images(6)))
    posed, depth = result.posed_rig("base_link")
    assert posed.names == rig.names and depth.shape == (6, H, W)
    assert posed.camera("front").model == rig.camera("front").model.scaled_to(W, H)
    monitor = CrossViewMonitor.for_rig(posed, stride=2)
    assert monitor.update(depth, posed) >= 1
    one = SurroundDepthEstimator(plane_backend).predict(
        [CameraFrame(c.name, img, c.model) for c, img in zip(rig.cameras, make_images(6), strict=True)])
    assert one.posed_rig() is None  # no extrinsics: nothing to compare
