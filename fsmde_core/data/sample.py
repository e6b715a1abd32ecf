"""One synchronised surround sample, and the resizing rules that produce it.

Resizing follows one convention everywhere: pixel centres map as
``u' = (u + 0.5) * s - 0.5`` (Pillow's resampling and
:meth:`fsmde_core.camera.CameraModel.resized` agree on it), so images,
intrinsics, projected LiDAR and resized ground truth stay aligned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fsmde_core.camera import CameraModel
from fsmde_core.rig import Rig, RigCamera


@dataclass(frozen=True)
class SampleSource:
    """Where a sample came from: the bag and the ordinal of the set within it.

    The ordinal counts the synchronised sets of the bag in stamp order; it is
    deterministic for a given bag and :class:`~fsmde_core.data.config.DataConfig`.
    """

    bag: Path
    index: int

    def __str__(self) -> str:
        return f"{self.bag}#{self.index}"


@dataclass
class SurroundSample:
    """N synchronised camera images at the target size, with their geometry and depth.

    Attributes:
        stamp_ns: reference stamp of the set = the LATEST camera
            ``header.stamp`` (the whole set exists from that moment on; the
            node stamps its outputs the same way, :mod:`fsmde_core.sync`).
        camera_names: N names, in sample order.
        images: (N, H, W, 3) uint8 RGB.
        camera_stamps_ns: (N,) int64 each image's ``header.stamp``.
        models: N intrinsics at (W, H).
        T_base_cam: (N, 4, 4) optical frame -> ``base_frame``.
        sparse_depth: (N, H, W) float32, LiDAR z-buffered at (W, H); NaN = no point.
        gt_depth: (N, H, W) float32 dense ground truth (REP 117 NaN/Inf kept)
            or None when the bag has none.
        masks: (N, H, W) bool, True = ego pixel (vehicle body); all False if none.
        source: bag and set ordinal.
        lidar_stamp_ns: stamp of the sweep used, None if no sweep matched.
        base_frame: the vehicle frame of ``T_base_cam``.
        motion_compensated: True when ``sparse_depth`` follows the ego motion
            from each point's firing time to each image's stamp (/tf odometry);
            False when it projects the sweep as if the rig stood still.
        gt_labels: (N, H, W) uint8 semantic class ids (:mod:`fsmde_core.semantics`,
            255 = void, e.g. a camera whose label message was missing),
            resized nearest like ``gt_depth``; None when the bag has none.
        gt_reflective: (N, H, W) bool, True = reflective surface (the bag's
            ``reflective_topic_pattern`` mono8 mask, non-zero = reflective),
            resized nearest; all False for a camera whose mask message was
            missing; None when the bag has none.
        T_odom_base: (N, 4, 4) float64 base pose in the odometry fixed frame
            (odom or map, from /tf) at each camera's own stamp; None when the
            bag has no such /tf chain or a stamp is outside it.
    """

    stamp_ns: int
    camera_names: list[str]
    images: np.ndarray
    camera_stamps_ns: np.ndarray
    models: list[CameraModel]
    T_base_cam: np.ndarray
    sparse_depth: np.ndarray
    gt_depth: np.ndarray | None
    masks: np.ndarray
    source: SampleSource
    lidar_stamp_ns: int | None = None
    base_frame: str = "base_link"
    motion_compensated: bool = False
    gt_labels: np.ndarray | None = None
    gt_reflective: np.ndarray | None = None
    T_odom_base: np.ndarray | None = None

    @property
    def num_cameras(self) -> int:
        return len(self.camera_names)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return int(self.images.shape[2]), int(self.images.shape[1])

    @property
    def K(self) -> np.ndarray:
        """(N, 3, 3) intrinsic matrices at the sample size."""
        return np.stack([m.K for m in self.models])

    @property
    def D(self) -> np.ndarray:
        """(N, 5) plumb_bob coefficients."""
        return np.stack([m.D for m in self.models])

    def rig(self, name: str = "sample") -> Rig:
        """The sample's cameras as a :class:`Rig` (for geometry helpers)."""
        cams = [RigCamera(n, "", m, T) for n, m, T in zip(self.camera_names, self.models, self.T_base_cam,
                                                           strict=True)]
        return Rig(name, cams, base_frame=self.base_frame)


def resize_rgb(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3) with Pillow bilinear (antialiased when shrinking)."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel for a nearest-neighbour resize (pixel-centre mapping)."""
    idx = np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64)
    return np.clip(idx, 0, n_in - 1)


def resize_nearest(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize of the first two axes.

    Depth and masks must not be interpolated: averaging a foreground and a
    background depth invents a surface in between, and NaN/Inf (REP 117) must
    survive unchanged.
    """
    h, w = array.shape[:2]
    if (w, h) == (width, height):
        return array
    return array[nearest_indices(h, height)[:, None], nearest_indices(w, width)[None, :]]


def load_mask(path: str | Path, width: int, height: int) -> np.ndarray:
    """Ego-mask image (non-zero = vehicle body) -> (height, width) bool."""
    with Image.open(path) as im:
        mask = np.asarray(im.convert("L")) > 0
    return resize_nearest(mask, width, height)
