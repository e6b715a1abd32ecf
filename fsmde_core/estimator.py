"""ROS-free surround depth: one set of camera frames in, a REP 117 depth stack and a fused cloud out.

Why a module of its own: the ROS node, the runtime benchmark and the tests all need
the same steps between "decoded images + calibration" and "depth + cloud" (resize
to the network size, ONE batched backend pass, intrinsics rescaled to the depth
size, REP 117 invalid values, ego masks, per-camera rays, motion compensation).
Kept here once, the node only converts messages and publishes, and a test can
compare the node with this very code instead of a re-implementation.

Conventions (REP 117/118): depth is float32 metres along the optical Z axis at the
network's size; NaN = invalid or ego-masked, +Inf = beyond range, never 0 or a
negative value. The cloud is unorganised xyz (+rgb) in the vehicle frame of the
extrinsics (``T_vehicle_cam``), optionally moved to a reference instant.

Per-pixel confidence (:mod:`fsmde_core.models.confidence`) comes from the same
backend pass when the estimator is built with ``confidence=True``; it is NaN
wherever depth is NaN (invalid or ego-masked), and ``CloudOptions.min_confidence``
leaves less confident pixels out of the cloud.

Constant work is cached across sets: each camera's rays (keyed on its intrinsics
at the depth size, extrinsic and stride) and its ego mask at the depth size.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fsmde_core.camera import CameraModel
from fsmde_core.geometry import CameraRays, subsample_points
from fsmde_core.motion import compensate_points
from fsmde_core.rig import Rig, RigCamera
from fsmde_core.runtime import resize_batch, resize_depth_nearest

__all__ = ["CameraFrame", "CloudOptions", "DepthResult", "SurroundDepthEstimator", "Timings", "finish_confidence",
           "finish_depth"]


@dataclass(frozen=True)
class CameraFrame:
    """One camera's input for a set.

    Attributes:
        name: camera name (unique within the set; keys the caches).
        rgb: (H, W, 3) uint8 image, any size (resized to the network's).
        model: intrinsics at the image's size.
        extrinsic: 4x4 ``T_vehicle_cam``; None = the camera is left out of the cloud.
        mask: optional ego mask with the image's aspect (any size), non-zero = vehicle body.
    """

    name: str
    rgb: np.ndarray
    model: CameraModel
    extrinsic: np.ndarray | None = None
    mask: np.ndarray | None = None


@dataclass(frozen=True)
class CloudOptions:
    """How the fused cloud is built: every ``stride``-th pixel, Euclidean range limits from
    each camera centre, colour from the network-size image, and a bound on its size.
    ``min_confidence`` > 0 drops pixels whose confidence is below it (needs a result with
    confidence); 0 = off."""

    stride: int = 4
    max_range: float = 80.0
    min_range: float = 0.0
    colour: bool = True
    max_points: int | None = None
    min_confidence: float = 0.0


@dataclass
class Timings:
    """Seconds spent per step of one set (``model_s`` is ``backend.infer`` alone)."""

    resize_s: float = 0.0
    model_s: float = 0.0
    finish_s: float = 0.0
    cloud_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.resize_s + self.model_s + self.finish_s + self.cloud_s


@dataclass
class DepthResult:
    """Everything one set produced; per-camera sequences follow ``names``.

    ``images`` are the network-size inputs (the cloud's colours); ``models`` the
    intrinsics at the depth size (what a depth camera_info must carry).
    """

    names: tuple[str, ...]
    depth: np.ndarray  # (N, h, w) float32, REP 117
    models: tuple[CameraModel, ...]
    extrinsics: tuple[np.ndarray | None, ...]
    images: np.ndarray  # (N, h, w, 3) uint8
    timings: Timings = field(default_factory=Timings)
    xyz: np.ndarray | None = None  # (M, 3) float32 in the vehicle frame, None = no cloud asked for
    rgb: np.ndarray | None = None  # (M, 3) uint8 with ``CloudOptions.colour``
    confidence: np.ndarray | None = None  # (N, h, w) float32 in [0, 1], NaN where depth is NaN; None = not asked

    def posed_rig(self, base_frame: str = "base_link") -> tuple[Rig, np.ndarray] | None:
        """The cameras with an extrinsic as a :class:`Rig` at the depth size, and their depth maps:
        the input of :meth:`fsmde_core.calib_health.CrossViewMonitor.update`. None: fewer than two."""
        keep = [k for k, T in enumerate(self.extrinsics) if T is not None]
        if len(keep) < 2:
            return None
        cams = [RigCamera(self.names[k], self.names[k], self.models[k], self.extrinsics[k]) for k in keep]
        return Rig("estimator", cams, base_frame=base_frame), self.depth[keep]


def finish_depth(depth: np.ndarray, masks: Sequence[np.ndarray | None] = ()) -> np.ndarray:
    """REP 117 in place where possible: non-positive / NaN / -Inf -> NaN, +Inf kept; masked -> NaN.

    ``depth > 0`` is exactly "positive or +Inf" (NaN compares false), so one comparison
    finds every pixel to blank. In place because the backend returns a fresh array per
    call that nothing else holds: copying 6 MB per set would buy nothing.
    """
    if depth.dtype != np.float32 or not depth.flags.writeable:
        depth = np.array(depth, dtype=np.float32)
    np.copyto(depth, np.float32(np.nan), where=~(depth > 0))
    for k, mask in enumerate(masks):
        if mask is not None:
            depth[k][mask] = np.nan
    return depth


class SurroundDepthEstimator:
    """Runs a depth backend on a set of cameras and fuses the cloud (module doc).

    ``backend``: an :class:`fsmde_core.runtime.InferenceBackend` (``input_size``, ``batch_size``,
    ``infer``; ``has_confidence`` and ``infer_with_confidence`` with ``confidence=True``).
    ``backend_calls`` and ``ray_cache_builds`` count the work done, for diagnostics and for
    tests that check the caches hold.
    """

    def __init__(self, backend: Any, confidence: bool = False) -> None:
        if confidence and not backend.has_confidence:
            raise ValueError("confidence asked for but the model has no confidence output; "
                             "re-export it with `fsmde export --confidence`")
        self.backend = backend
        self.confidence = bool(confidence)
        self.backend_calls = 0
        self.ray_cache_builds = 0
        self._rays: dict[str, tuple[tuple, CameraRays]] = {}
        self._masks: dict[str, tuple[np.ndarray, tuple[int, int], np.ndarray]] = {}

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the network, = the depth size."""
        return tuple(self.backend.input_size)

    # ------------------------------------------------------------ the set
    def estimate(self, frames: Sequence[CameraFrame], cloud: CloudOptions | None = None,
                 ego_poses: Mapping[str, np.ndarray] | None = None,
                 reference_pose: np.ndarray | None = None) -> DepthResult:
        """Depth of every frame, plus the cloud when ``cloud`` is given (see :meth:`fuse`)."""
        result = self.predict(frames)
        return result if cloud is None else self.fuse(result, cloud, ego_poses, reference_pose)

    def predict(self, frames: Sequence[CameraFrame]) -> DepthResult:
        """One batched backend pass over all frames; REP 117 depth with ego masks applied."""
        _check_frames(frames)
        height, width = self.input_size
        t0 = time.perf_counter()
        images = resize_batch([f.rgb for f in frames], (height, width))
        t1 = time.perf_counter()
        raw, confidence = self._infer(images)
        raw = self._to_each_camera(raw, frames)
        t2 = time.perf_counter()
        depth = finish_depth(raw, [self._mask_at(f, height, width) for f in frames])
        if confidence is not None:
            confidence = finish_confidence(confidence, depth)
        t3 = time.perf_counter()
        return DepthResult(
            names=tuple(f.name for f in frames), depth=depth,
            models=tuple(f.model.scaled_to(width, height) for f in frames),
            extrinsics=tuple(f.extrinsic for f in frames), images=images,
            timings=Timings(resize_s=t1 - t0, model_s=t2 - t1, finish_s=t3 - t2), confidence=confidence,
        )

    def fuse(self, result: DepthResult, cloud: CloudOptions, ego_poses: Mapping[str, np.ndarray] | None = None,
             reference_pose: np.ndarray | None = None) -> DepthResult:
        """The result with its cloud: every camera with an extrinsic, in the vehicle frame.

        Motion compensation: ``ego_poses[name]`` is ``T_fixed_vehicle`` at that camera's
        exposure and ``reference_pose`` the same at the set's reference instant; a camera's
        points are moved to the reference (:func:`fsmde_core.motion.compensate_points`)
        when both are given, else left in the vehicle frame of its own exposure.
        """
        t0 = time.perf_counter()
        unsure = _below_confidence(result, cloud.min_confidence)
        xyz_parts, rgb_parts = [], []
        for k, name in enumerate(result.names):
            T = result.extrinsics[k]
            if T is None:
                continue
            rays = self._camera_rays(name, result.models[k], T, cloud.stride)
            xyz, rgb = rays.points(result.depth[k], result.images[k] if cloud.colour else None,
                                   max_range=cloud.max_range, min_range=cloud.min_range,
                                   mask=None if unsure is None else unsure[k])
            pose = None if ego_poses is None else ego_poses.get(name)
            if pose is not None and reference_pose is not None:
                xyz = compensate_points(xyz, pose, reference_pose)
            xyz_parts.append(xyz)
            rgb_parts.append(rgb)
        xyz = np.concatenate(xyz_parts) if xyz_parts else np.zeros((0, 3), dtype=np.float32)
        rgb = None
        if cloud.colour:
            rgb = np.concatenate(rgb_parts) if rgb_parts else np.zeros((0, 3), dtype=np.uint8)
        xyz, rgb = subsample_points(xyz, rgb, cloud.max_points)
        timings = replace(result.timings, cloud_s=time.perf_counter() - t0)
        return replace(result, xyz=xyz, rgb=rgb, timings=timings)

    # ------------------------------------------------------------ the parts
    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """ONE backend call for the whole set (depth, and confidence when asked for; else None);
        a fixed-batch export gets zero images as padding."""
        backend, n = self.backend, images.shape[0]
        fixed = backend.batch_size
        if fixed is not None and n > fixed:
            raise ValueError(f"{n} cameras but the model was exported for a fixed batch of {fixed} images")
        if fixed is not None and n < fixed:
            images = np.concatenate([images, np.zeros((fixed - n, *images.shape[1:]), dtype=np.uint8)])
        self.backend_calls += 1
        if not self.confidence:
            return backend.infer(images)[:n], None
        depth, confidence = backend.infer_with_confidence(images)
        return depth[:n], confidence[:n]

    def _to_each_camera(self, depth: np.ndarray, frames: Sequence[CameraFrame]) -> np.ndarray:
        """Camera-aware centres: the backend's canonical-camera depth times each camera's
        ``(fx / width) / focal_canonical`` (:func:`fsmde_core.models.student.focal_factors`); as is otherwise."""
        canonical = getattr(self.backend, "focal_canonical", None)
        if canonical is None:
            return depth
        ratio = np.array([f.model.K[0, 0] / f.model.width for f in frames], dtype=np.float32)
        return depth * (ratio / np.float32(canonical))[:, None, None]

    def _mask_at(self, frame: CameraFrame, height: int, width: int) -> np.ndarray | None:
        """The frame's ego mask at the depth size (nearest neighbour), cached while the same
        mask array comes back (masks are loaded once with the calibration)."""
        if frame.mask is None:
            return None
        entry = self._masks.get(frame.name)
        if entry is not None and entry[0] is frame.mask and entry[1] == (height, width):
            return entry[2]
        resized = resize_depth_nearest(np.asarray(frame.mask) != 0, (height, width))
        self._masks[frame.name] = (frame.mask, (height, width), resized)
        return resized

    def _camera_rays(self, name: str, model: CameraModel, T: np.ndarray, stride: int) -> CameraRays:
        """Per camera, rebuilt only when its intrinsics, extrinsic or the stride change."""
        key = (model, np.asarray(T, dtype=np.float64).tobytes(), stride)
        entry = self._rays.get(name)
        if entry is not None and entry[0] == key:
            return entry[1]
        rays = CameraRays(model, T, stride)
        self._rays[name] = (key, rays)
        self.ray_cache_builds += 1
        return rays


def finish_confidence(confidence: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Confidence masked like the finished ``depth``: NaN wherever depth is NaN (invalid or
    ego), so a consumer never trusts a pixel that has no depth. In place, like :func:`finish_depth`."""
    if confidence.dtype != np.float32 or not confidence.flags.writeable:
        confidence = np.array(confidence, dtype=np.float32)
    np.copyto(confidence, np.float32(np.nan), where=np.isnan(depth))
    return confidence


def _below_confidence(result: DepthResult, min_confidence: float) -> np.ndarray | None:
    """(N, h, w) bool, True = confidence below ``min_confidence`` (left out of the cloud); None = no filter."""
    if min_confidence <= 0.0:
        return None
    if result.confidence is None:
        raise ValueError(f"CloudOptions.min_confidence is {min_confidence} but the result has no confidence; "
                         "build the estimator with confidence=True (a model exported with --confidence)")
    return result.confidence < np.float32(min_confidence)


def _check_frames(frames: Sequence[CameraFrame]) -> None:
    """A set is non-empty, names are unique and each image matches its intrinsics: a wrong size
    would silently scale the intrinsics wrongly (a camera_info for another resolution)."""
    if not frames:
        raise ValueError("no camera frames given")
    names = [f.name for f in frames]
    if len(set(names)) != len(names):
        raise ValueError(f"camera names must be unique within a set, got {names}")
    for f in frames:
        h, w = np.shape(f.rgb)[:2]
        if (w, h) != (f.model.width, f.model.height):
            raise ValueError(f"camera {f.name!r}: image is {w}x{h} but its camera model is "
                             f"{f.model.width}x{f.model.height}")
        if f.extrinsic is not None and np.shape(f.extrinsic) != (4, 4):
            raise ValueError(f"camera {f.name!r}: extrinsic must be 4x4, got shape {np.shape(f.extrinsic)}")
