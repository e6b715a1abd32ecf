"""What to read from a recording and how to turn it into samples.

Every field has a default that fits the conventions of this project's bags
(``/cameras/<name>/image_raw`` + sibling ``camera_info``, ``/tf_static``, one
PointCloud2); real recordings override the topics. The config is part of the
dataset cache key, so every field must be JSON-serialisable via
:meth:`DataConfig.to_key`.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from fsmde_core.messages.images import DEFAULT_MAX_IMAGE_PIXELS

EXTRINSICS_SOURCES = ("auto", "tf", "yaml")


def nearest_first(key: str, valid: list[str] | tuple[str, ...]) -> list[str]:
    """``valid`` with the closest matches of a misspelt ``key`` first (difflib), then the rest sorted."""
    near = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    return near + sorted(k for k in valid if k not in near)
MOTION_COMPENSATION = ("auto", "stamp", "off")


@dataclass(frozen=True)
class CameraTopics:
    """One camera's topics, for recordings whose names discovery cannot guess.

    Attributes:
        name: camera name used in samples and reports (e.g. ``front``).
        image_topic: ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage`` topic.
        info_topic: ``sensor_msgs/CameraInfo`` topic; empty = the sibling
            ``camera_info`` of the image topic's namespace.
        gt_topic: optional dense ground-truth depth (32FC1); empty = the
            ``DataConfig.gt_topic_pattern`` topic when the bag has it.
    """

    name: str
    image_topic: str
    info_topic: str = ""
    gt_topic: str = ""


@dataclass
class DataConfig:
    """Topics, calibration source, synchronisation and output size of samples.

    Attributes:
        cameras: explicit camera list (sample order = this order); None =
            discover image topics (``.../image*``) and order cameras by the
            yaw of their optical axis, counter-clockwise from the front.
        lidar_topic: PointCloud2 topic; None = the bag's only PointCloud2.
        tf_static_topic: static transforms (``tf2_msgs/TFMessage``).
        base_frame: vehicle frame that extrinsics are expressed in.
        rig_yaml: rig calibration (:meth:`fsmde_core.rig.Rig.load`): extrinsics
            when the bag has no /tf_static, intrinsics for cameras without
            camera_info, and ego masks.
        extrinsics: ``auto`` (TF if the bag has /tf_static, else the YAML),
            ``tf`` or ``yaml`` (force one source).
        width, height: sample size; None = native (all cameras must agree).
        sync_tolerance_ms: max spread of the phase-corrected ``header.stamp`` s
            within one set (the raw spread without ``phase_correction``). Each
            camera's trigger phase is learnt from the bag, so this only has to
            cover the trigger jitter (~1 ms on nuScenes/DDAD-style rigs); 10 ms
            leaves margin for that and stays below half the period of a 30 Hz
            camera (16.7 ms), so two capture instants are never mixed.
        phase_correction: learn per-camera trigger phases (sweep-triggered
            rigs fire cameras up to ~45 ms apart) and match on corrected
            stamps; False = plain stamp matching, for unrelated cameras.
        lidar_tolerance_ms: max distance between the set's reference stamp
            and the LiDAR sweep's stamp.
        require_lidar: drop sets without a sweep within tolerance (counted);
            False keeps them with all-NaN sparse depth.
        min_depth, max_depth: LiDAR points outside are not projected;
            max_depth None = the rig's ``max_depth``.
        gt_topic_pattern: synthetic dense ground truth, ``{name}`` = camera.
        labels_topic_pattern: synthetic per-pixel semantic labels (mono8, ids
            of :mod:`fsmde_core.semantics`), ``{name}`` = camera; read into
            ``SurroundSample.gt_labels`` when the bag has them. Not part of the
            cache key: the training cache does not store labels.
        reflective_topic_pattern: per-pixel reflective-surface ground truth
            (mono8, non-zero = reflective: car paint, glass, wet road),
            ``{name}`` = camera; read into ``SurroundSample.gt_reflective`` when
            the bag has it, to score depth inside and outside reflective areas.
            Like the labels: optional per bag, not in the cache key, not cached.
        horizon_s: how far (in log time) a message may lag the rest of its set:
            the reader keeps ``horizon_s`` x 30 images per camera (30 Hz = the
            fastest camera planned for), which also bounds its memory when a
            camera stops publishing.
        tf_topic: odometry (``tf2_msgs/TFMessage``) for motion compensation.
        motion_compensation: ``auto`` (with a /tf chain odom|map -> base: each
            LiDAR point moved from its firing time, the sweep stamp + the
            cloud's ``t``/``time``/``timestamp`` field, to each image's stamp),
            ``stamp`` (the same, but every point at the sweep's stamp: for
            clouds deskewed by the driver that kept firing times) or ``off``.
        see_through_filter: drop LiDAR points the camera cannot see (the
            LiDAR looks past and over near objects from its own mount; those
            points land on the near object's pixels with a far depth):
            :func:`fsmde_core.geometry.drop_see_through_points`.
        see_through_window, see_through_ratio: its window (half height as a
            fraction of the image height) and how many times farther than the
            window's nearest point a point must be to go.
        max_image_pixels: images declaring more pixels (width x height, read
            from the header before decoding) are skipped as malformed, so one
            bad message cannot make the reader allocate gigabytes.
    """

    cameras: list[CameraTopics] | None = None
    lidar_topic: str | None = None
    tf_static_topic: str = "/tf_static"
    base_frame: str = "base_link"
    rig_yaml: Path | None = None
    extrinsics: str = "auto"
    width: int | None = None
    height: int | None = None
    sync_tolerance_ms: float = 10.0
    phase_correction: bool = True
    lidar_tolerance_ms: float = 50.0
    require_lidar: bool = True
    min_depth: float = 0.1
    max_depth: float | None = None
    gt_topic_pattern: str = "/synthetic_gt/{name}/depth"
    labels_topic_pattern: str = "/synthetic_gt/{name}/labels"
    reflective_topic_pattern: str = "/synthetic_gt/{name}/reflective"
    horizon_s: float = 1.0
    tf_topic: str = "/tf"
    motion_compensation: str = "auto"
    see_through_filter: bool = True
    see_through_window: float = 0.021
    see_through_ratio: float = 1.5
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

    def __post_init__(self) -> None:
        if self.cameras is not None:
            self.cameras = [c if isinstance(c, CameraTopics) else CameraTopics(**c) for c in self.cameras]
            names = [c.name for c in self.cameras]
            if len(set(names)) != len(names) or not names:
                raise ValueError(f"DataConfig.cameras needs unique camera names, got {names}")
        if self.rig_yaml is not None:
            self.rig_yaml = Path(self.rig_yaml)
        if (self.width is None) != (self.height is None):
            raise ValueError("DataConfig.width and height must both be set or both be None")
        if self.width is not None and (int(self.width) <= 0 or int(self.height) <= 0):
            raise ValueError(f"DataConfig size must be positive, got {self.width}x{self.height}")
        if self.extrinsics not in EXTRINSICS_SOURCES:
            raise ValueError(
                f"DataConfig.extrinsics must be one of {EXTRINSICS_SOURCES}, got {self.extrinsics!r}")
        if int(self.max_image_pixels) <= 0:
            raise ValueError(f"DataConfig.max_image_pixels must be positive, got {self.max_image_pixels}")
        if self.motion_compensation not in MOTION_COMPENSATION:
            raise ValueError(f"DataConfig.motion_compensation must be one of {MOTION_COMPENSATION}, "
                             f"got {self.motion_compensation!r}")
        if self.extrinsics == "yaml" and self.rig_yaml is None:
            raise ValueError("DataConfig.extrinsics='yaml' needs DataConfig.rig_yaml")
        for name in ("sync_tolerance_ms", "lidar_tolerance_ms", "horizon_s"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"DataConfig.{name} must be > 0, got {getattr(self, name)}")
        if not isinstance(self.see_through_filter, bool):
            raise ValueError(f"DataConfig.see_through_filter must be true or false, got {self.see_through_filter!r}")
        if not 0.0 < float(self.see_through_window) <= 0.25:
            raise ValueError(f"DataConfig.see_through_window must be in (0, 0.25] (a fraction of the image height), "
                             f"got {self.see_through_window!r}")
        if not float(self.see_through_ratio) > 1.0:
            raise ValueError(f"DataConfig.see_through_ratio must be > 1, got {self.see_through_ratio!r}")
        if not isinstance(self.phase_correction, bool):
            raise ValueError(f"DataConfig.phase_correction must be true or false, got {self.phase_correction!r}")
        for name in ("gt_topic_pattern", "labels_topic_pattern", "reflective_topic_pattern"):
            pattern = getattr(self, name)
            if not isinstance(pattern, str) or "{name}" not in pattern:
                raise ValueError(f"DataConfig.{name} must contain '{{name}}', got {pattern!r}")

    @property
    def size(self) -> tuple[int, int] | None:
        """Target (width, height), or None for native size."""
        return None if self.width is None else (int(self.width), int(self.height))

    @property
    def sync_tolerance_ns(self) -> int:
        return round(self.sync_tolerance_ms * 1e6)

    @property
    def lidar_tolerance_ns(self) -> int:
        return round(self.lidar_tolerance_ms * 1e6)

    @property
    def horizon_ns(self) -> int:
        return round(self.horizon_s * 1e9)

    def to_key(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field (part of the cache key)."""
        d = asdict(self)
        # labels and reflective masks are not cached (the cache stores what training reads), so their
        # topics must not invalidate caches built before they existed
        del d["labels_topic_pattern"], d["reflective_topic_pattern"]
        d["rig_yaml"] = None if self.rig_yaml is None else str(Path(self.rig_yaml).resolve())
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DataConfig:
        """Build from a YAML mapping; unknown keys are refused (nearest valid key first) so typos do not pass."""
        data = dict(data or {})
        known = [f.name for f in fields(cls)]
        for key in data:
            if key not in known:
                raise ValueError(f"unknown data key {key!r}; valid data keys: {', '.join(nearest_first(key, known))}")
        return cls(**data)
