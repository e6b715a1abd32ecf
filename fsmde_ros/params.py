"""Parameters of the surround depth node: declaration with descriptors, validation into settings.

Why a table (:data:`PARAMETERS`) instead of scattered ``declare_parameter``
calls: the same source drives the ROS declaration (descriptions, ranges,
read-only flags visible in ``ros2 param describe``), the validation that turns
raw values into a typed :class:`NodeSettings`, the README table, and the test
that checks ``config/surround_depth.yaml`` declares only known parameters.

Validation is a pure function (:func:`settings_from_values`) so it is tested
without a ROS graph; every error names the parameter, the bad value and what
is accepted. ROS itself already enforces types and numeric ranges at
declaration time; :func:`declare_parameters` re-raises its exceptions as
:class:`ParameterError` with a hint (``20`` for a double parameter is the
classic one: write ``20.0``).

Per-camera parameters (``cameras.<name>.image_topic`` / ``info_topic``) are
declared for the names in ``cameras.names``, which is therefore read-only.
Everything else is re-read on every lifecycle *configure*, so a
``cleanup`` + ``configure`` applies new values (a new model, say); the
``cloud.*`` limits also apply live when set on an active node.
"""

from __future__ import annotations

import difflib
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsmde_core.image_quality import QualityThresholds
from fsmde_core.messages import DEFAULT_MAX_IMAGE_PIXELS
from fsmde_core.names import SURROUND_CAMERAS
from fsmde_core.runtime.devices import check_device, check_precision_on_device
from fsmde_core.runtime.factory import MODEL_SUFFIXES, backend_for_model

__all__ = [
    "BACKENDS",
    "DEFAULT_CAMERAS",
    "LIVE_PARAMETERS",
    "PARAMETERS",
    "CameraSettings",
    "CloudSettings",
    "ExtrinsicsSettings",
    "ImageQualitySettings",
    "ModelSettings",
    "NodeSettings",
    "ParamSpec",
    "ParameterError",
    "QosSettings",
    "SyncSettings",
    "camera_parameter_specs",
    "declare_parameters",
    "known_parameter_names",
    "load_settings",
    "make_set_parameters_check",
    "params_file_problem",
    "ros_arguments_problem",
    "settings_from_values",
    "unknown_parameter_warnings",
    "warn_unknown_overrides",
]

DEFAULT_CAMERAS: tuple[str, ...] = SURROUND_CAMERAS
BACKENDS: tuple[str, ...] = ("auto", "torch", "onnxruntime", "tensorrt")
_TOPIC_RE = re.compile(r"^[~/]?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_FRAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$")


class ParameterError(ValueError):
    """A parameter is missing, mistyped or out of range; the message says which and why."""


# ------------------------------------------------------------------ the table
@dataclass(frozen=True)
class ParamSpec:
    """One parameter: name, default (its type is the ROS type), documentation and constraints."""

    name: str
    default: Any
    description: str
    read_only: bool = False
    choices: tuple[str, ...] = ()
    int_range: tuple[int, int] | None = None
    float_range: tuple[float, float] | None = None

    def constraints(self) -> str:
        """Human-readable constraints (ROS ``additional_constraints`` and the README)."""
        if self.choices:
            return "one of: " + ", ".join(self.choices)
        if self.int_range:
            return f"integer in [{self.int_range[0]}, {self.int_range[1]}]"
        if self.float_range:
            return f"number in [{self.float_range[0]:g}, {self.float_range[1]:g}]"
        return ""


PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("cameras.names", list(DEFAULT_CAMERAS),
              "Camera names, one per image stream; per-camera topics are cameras.<name>.*. "
              "With a calibration file they must be camera names of that rig.", read_only=True),
    ParamSpec("image_transport", "raw",
              "raw: subscribe to sensor_msgs/Image on each image_topic; compressed: "
              "sensor_msgs/CompressedImage (jpeg/png) on <image_topic>/compressed.",
              read_only=True, choices=("raw", "compressed")),
    ParamSpec("sync.slop_ms", 10.0,
              "Largest spread of the phase-corrected header.stamps inside one synchronized set [ms] (raw "
              "spread with sync.phase_correction false). Covers the trigger jitter; keep it below half the "
              "camera period (10 ms < 16.7 ms, half a 30 Hz period).", float_range=(0.1, 1000.0)),
    ParamSpec("sync.phase_correction", True,
              "Learn each camera's trigger phase from its stamps (sweep-triggered rigs fire cameras up to "
              "~45 ms apart) and match on corrected stamps; false: plain stamp matching, for cameras that "
              "are not triggered together.", read_only=True),
    ParamSpec("sync.queue_size", 10, "Pending images kept per camera while waiting for a set.",
              int_range=(1, 1000)),
    ParamSpec("sync.policy", "wait",
              "wait: only complete sets (every camera); partial: also sets with missing cameras once "
              "sync.timeout_ms has passed or the camera is known to be absent.", choices=("wait", "partial")),
    ParamSpec("sync.timeout_ms", 150.0,
              "partial policy: how long a set waits for a late camera, on the steady clock [ms].",
              float_range=(1.0, 60000.0)),
    ParamSpec("sync.min_cameras", 1, "partial policy: fewest cameras worth a (partial) output.",
              int_range=(1, 64)),
    ParamSpec("input.max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS,
              "Largest image (width x height, read from the header before decoding) a camera may send; "
              "a larger one is refused as that camera's input problem instead of being decoded.",
              int_range=(1, 1_000_000_000)),
    ParamSpec("model.path", "",
              "Student model: a run directory or student.safetensors (torch), a .onnx (onnxruntime, or "
              "tensorrt which builds an engine), or a .engine (tensorrt). Required."),
    ParamSpec("model.backend", "auto",
              "Inference backend; auto picks it from model.path's extension.", choices=BACKENDS),
    ParamSpec("model.device", "cpu", "cpu, cuda or cuda:<index>."),
    ParamSpec("model.precision", "fp32", "fp32, or fp16 (CUDA only).", choices=("fp32", "fp16")),
    ParamSpec("outputs.depth_suffix", "depth",
              "Depth topics live next to each camera's image: <camera namespace>/<suffix> (32FC1) and "
              "<camera namespace>/<suffix>/camera_info; the namespace is image_topic without its last "
              "segment."),
    ParamSpec("outputs.cloud_topic", "/surround_depth/points", "Fused sensor_msgs/PointCloud2 topic."),
    ParamSpec("outputs.confidence", False,
              "Also publish per-pixel confidence on <camera namespace>/<depth_suffix>/confidence (32FC1 in "
              "[0, 1], NaN where depth is NaN, the depth image's header). Needs a model with confidence: a "
              "torch checkpoint, or an ONNX/engine exported with `fsmde export --confidence`."),
    ParamSpec("cloud.enabled", True, "Publish the fused point cloud."),
    ParamSpec("cloud.frame_id", "base_link",
              "Frame of the fused cloud (REP 105 vehicle frame); with extrinsics.source=calibration it "
              "must equal the calibration's base_frame."),
    ParamSpec("cloud.stride", 4, "Use every stride-th depth pixel in each direction for the cloud.",
              int_range=(1, 64)),
    ParamSpec("cloud.max_range", 80.0, "Drop cloud points farther than this from their camera [m].",
              float_range=(0.01, 10000.0)),
    ParamSpec("cloud.min_range", 0.0, "Drop cloud points closer than this to their camera [m].",
              float_range=(0.0, 10000.0)),
    ParamSpec("cloud.max_points", 200000,
              "Upper bound on cloud size; excess points are subsampled with a fixed pattern.",
              int_range=(1, 50_000_000)),
    ParamSpec("cloud.colour", True, "Add the packed rgb field (camera colour of each point)."),
    ParamSpec("cloud.min_confidence", 0.0,
              "Leave depth pixels whose confidence is below this out of the cloud (0: off). Needs a model "
              "with confidence (see outputs.confidence); applied at the next configure.",
              float_range=(0.0, 1.0)),
    ParamSpec("cloud.motion_compensation", "auto",
              "Re-express each camera's points in the vehicle frame at the set's reference stamp, using "
              "the ego motion between the camera's stamp and it (TF cloud.fixed_frame <- cloud.frame_id; "
              "needs tf2_ros). auto: when TF has that motion; on: always, warn when it is missing; off: "
              "never (cameras exposed at different instants leave seams at speed).",
              choices=("auto", "on", "off")),
    ParamSpec("cloud.fixed_frame", "odom",
              "Fixed frame of the ego motion used by cloud.motion_compensation (REP 105 odom)."),
    ParamSpec("extrinsics.source", "tf",
              "tf: camera poses from TF (cloud.frame_id <- image frame_id; needs tf2_ros); "
              "calibration: from extrinsics.calibration_file.", choices=("tf", "calibration")),
    ParamSpec("extrinsics.calibration_file", "",
              "Rig calibration YAML (config/rig_*.yaml). Required with extrinsics.source=calibration; "
              "optional with tf, where it still provides fallback intrinsics and ego masks."),
    ParamSpec("qos.input_reliability", "best_effort",
              "Reliability of the image/camera_info subscriptions; best_effort matches both reliable and "
              "best-effort publishers.", read_only=True, choices=("best_effort", "reliable")),
    ParamSpec("qos.input_depth", 5, "History depth of the input subscriptions.", read_only=True,
              int_range=(1, 1000)),
    ParamSpec("qos.output_depth", 5, "History depth of the (reliable, keep-last) output publishers.",
              read_only=True, int_range=(1, 1000)),
    ParamSpec("pipeline.queue_size", 1,
              "Synchronized sets waiting for the inference thread. 1 (live): a new set replaces the waiting "
              "one, so latency stays bounded. >1 (offline replays that need every set): sets queue up and "
              "the oldest is dropped only when the queue is full; both are counted as replaced.",
              read_only=True, int_range=(1, 10_000)),
    ParamSpec("diagnostics.period_s", 1.0, "Period of /diagnostics reports [s] (steady clock).",
              float_range=(0.05, 3600.0)),
    ParamSpec("diagnostics.cross_view_every_n", 10,
              "Cross-view calibration health: check the depth consistency of adjacent cameras on every "
              "n-th output set (0: off). Reported per camera pair on /diagnostics; WARN names a camera "
              "whose consistency with both neighbours degraded (bumped camera, wrong extrinsic).",
              int_range=(0, 1_000_000)),
    ParamSpec("diagnostics.cross_view_stride", 4,
              "Cross-view check: use every stride-th depth pixel in each direction (cost ~ 1/stride^2).",
              int_range=(1, 64)),
    ParamSpec("image_quality.enabled", True,
              "Per-camera image-quality diagnostic (too dark/bright, blurred, blocked lens, low contrast, "
              "noisy) on /diagnostics as '<node>: image quality <camera>'. Measured on a small grey copy of "
              "every image_quality.every_n_sets-th set, in a thread of its own: inference only hands the "
              "decoded images over, so depth never waits for it."),
    ParamSpec("image_quality.every_n_sets", 10,
              "Check the images of every n-th output set (each check costs ~4-8 ms of CPU per 1080p camera).",
              int_range=(1, 1_000_000)),
    ParamSpec("image_quality.max_side", 320,
              "Longer side of the grey image the measures are taken on (area-averaged by an integer factor): "
              "blur and noise are judged at about the model's input resolution.", int_range=(16, 8192)),
    ParamSpec("image_quality.dark_mean", 40.0, "Too dark below this mean luma (0-255).",
              float_range=(0.0, 255.0)),
    ParamSpec("image_quality.bright_mean", 215.0, "Too bright above this mean luma (0-255).",
              float_range=(0.0, 255.0)),
    ParamSpec("image_quality.clipped_fraction", 0.4,
              "Too dark (bright) when more than this fraction of pixels is clipped black (white), whatever "
              "the mean.", float_range=(0.0, 1.0)),
    ParamSpec("image_quality.blur_px", 1.8,
              "Blurred above this equivalent Gaussian edge blur [pixels of the max_side image], from the ratio "
              "of first- to second-difference energy over 2 pixels (contrast-independent, noise removed; a sharp "
              "image reads ~1.0).", float_range=(0.1, 100.0)),
    ParamSpec("image_quality.flat_tile_std", 3.0,
              "A tile of the 8x8 grid is featureless when its luma std (noise removed) is below this.",
              float_range=(0.0, 255.0)),
    ParamSpec("image_quality.blocked_fraction", 0.4,
              "Blocked lens / occlusion when at least this fraction of the tiles is featureless.",
              float_range=(0.0, 1.0)),
    ParamSpec("image_quality.low_contrast_std", 18.0,
              "Low contrast (fog, glare) below this global luma std (RMS contrast, 0-255).",
              float_range=(0.0, 255.0)),
    ParamSpec("image_quality.noise_sigma", 8.0,
              "Noisy above this noise sigma (0-255; Immerkaer's kernel, median absolute response).",
              float_range=(0.0, 255.0)),
    ParamSpec("autostart", True,
              "Configure and activate on start (ros2 run without a lifecycle manager). false: wait for "
              "lifecycle transitions.", read_only=True),
)

#: Parameters applied immediately when set on a running node (the rest at the next configure).
LIVE_PARAMETERS: frozenset[str] = frozenset(
    {"cloud.stride", "cloud.max_range", "cloud.min_range", "cloud.max_points", "cloud.colour"}
    | {spec.name for spec in PARAMETERS if spec.name.startswith("image_quality.")}
)


def camera_parameter_specs(name: str) -> tuple[ParamSpec, ...]:
    """The per-camera parameters of camera ``name``."""
    return (
        ParamSpec(f"cameras.{name}.image_topic", f"/cameras/{name}/image_raw",
                  f"Image topic of camera {name!r} (raw; compressed adds /compressed).", read_only=True),
        ParamSpec(f"cameras.{name}.info_topic", f"/cameras/{name}/camera_info",
                  f"sensor_msgs/CameraInfo topic of camera {name!r}.", read_only=True),
    )


def known_parameter_names(camera_names: Sequence[str]) -> set[str]:
    """Every parameter the node declares for these cameras (besides ROS's own, e.g. use_sim_time)."""
    names = {spec.name for spec in PARAMETERS}
    for cam in camera_names:
        names |= {spec.name for spec in camera_parameter_specs(cam)}
    return names


# ------------------------------------------------------------- settings types
@dataclass(frozen=True)
class CameraSettings:
    """Topics of one camera."""

    name: str
    image_topic: str
    info_topic: str
    subscribe_topic: str  # image_topic, or image_topic + "/compressed"
    depth_topic: str
    depth_info_topic: str
    confidence_topic: str = ""  # depth_topic + "/confidence"


@dataclass(frozen=True)
class SyncSettings:
    slop_ns: int
    queue_size: int
    policy: str
    timeout_ns: int
    min_cameras: int
    phase_correction: bool = True


@dataclass(frozen=True)
class ModelSettings:
    path: Path
    backend: str  # canonical: torch | onnxruntime | tensorrt (auto resolved)
    device: str
    precision: str


@dataclass(frozen=True)
class CloudSettings:
    enabled: bool
    topic: str
    frame_id: str
    stride: int
    max_range: float
    min_range: float
    max_points: int
    colour: bool
    motion_compensation: str = "auto"  # auto | on | off
    fixed_frame: str = "odom"
    min_confidence: float = 0.0  # 0 = off


@dataclass(frozen=True)
class ExtrinsicsSettings:
    source: str
    calibration_file: Path | None


@dataclass(frozen=True)
class QosSettings:
    input_reliability: str
    input_depth: int
    output_depth: int


@dataclass(frozen=True)
class ImageQualitySettings:
    """The per-camera image-quality diagnostic (``image_quality.*``)."""

    enabled: bool = True
    every_n_sets: int = 10
    max_side: int = 320
    thresholds: QualityThresholds = field(default_factory=QualityThresholds)


@dataclass(frozen=True)
class NodeSettings:
    """Everything the node needs, validated and typed."""

    cameras: tuple[CameraSettings, ...]
    image_transport: str
    sync: SyncSettings
    model: ModelSettings
    cloud: CloudSettings
    extrinsics: ExtrinsicsSettings
    qos: QosSettings
    diagnostics_period_s: float
    autostart: bool
    pipeline_queue_size: int = 1
    cross_view_every_n: int = 10
    cross_view_stride: int = 4
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    confidence: bool = False  # outputs.confidence
    image_quality: ImageQualitySettings = ImageQualitySettings()

    @property
    def needs_confidence(self) -> bool:
        """The model must give confidence: it is published, or it filters the cloud."""
        return self.confidence or self.cloud.min_confidence > 0.0

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.cameras)


# ------------------------------------------------------------------ validation
def _spec(name: str) -> ParamSpec:
    for spec in PARAMETERS:
        if spec.name == name:
            return spec
    raise KeyError(name)


def _get(values: Mapping[str, Any], name: str, default: Any) -> Any:
    value = values.get(name, default)
    return default if value is None else value


def _typed(values: Mapping[str, Any], spec: ParamSpec) -> Any:
    """Value of ``spec`` with its type, choices and range checked."""
    value = _get(values, spec.name, spec.default)
    want = type(spec.default)
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # only reachable from plain dicts; ROS itself refuses ints for doubles
    ok = isinstance(value, want) and not (want is not bool and isinstance(value, bool))
    if want is list:
        ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
    if not ok:
        raise ParameterError(
            f"parameter {spec.name!r} must be {_type_word(spec.default)}, "
            f"got {value!r} ({type(value).__name__})"
        )
    if spec.choices and value not in spec.choices:
        raise ParameterError(
            f"parameter {spec.name!r} is {value!r}; expected one of: {', '.join(spec.choices)}"
        )
    rng = spec.int_range or spec.float_range
    if rng and not rng[0] <= value <= rng[1]:
        raise ParameterError(f"parameter {spec.name!r} is {value!r}; expected {spec.constraints()}")
    return value


def _type_word(default: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a double (write 20.0, not 20)",
            str: "a string", list: "a list of strings"}[type(default)]


def _topic(name: str, value: str) -> str:
    if not _TOPIC_RE.match(value) or "//" in value:
        raise ParameterError(
            f"parameter {name!r} is {value!r}: not a valid ROS topic name (letters, digits, '_' and '/', "
            f"no empty or digit-leading segments, no trailing '/')"
        )
    return value


def _camera_names(values: Mapping[str, Any]) -> tuple[str, ...]:
    names = tuple(_typed(values, _spec("cameras.names")))
    if not names:
        raise ParameterError("parameter 'cameras.names' is empty; list at least one camera")
    for name in names:
        if not _NAME_RE.match(name):
            raise ParameterError(
                f"parameter 'cameras.names' has {name!r}: camera names must start with a letter and contain "
                f"only letters, digits and '_' (they become parameter and topic names)"
            )
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ParameterError(f"parameter 'cameras.names' lists {dup} more than once")
    return names


def _cameras(values: Mapping[str, Any], names: tuple[str, ...], transport: str,
             depth_suffix: str) -> tuple[CameraSettings, ...]:
    cams = []
    for name in names:
        image_spec, info_spec = camera_parameter_specs(name)
        image = _topic(image_spec.name, _typed(values, image_spec))
        info = _topic(info_spec.name, _typed(values, info_spec))
        namespace = posixpath.dirname(image)
        depth = posixpath.join(namespace, depth_suffix) if namespace else depth_suffix
        cams.append(CameraSettings(
            name=name, image_topic=image, info_topic=info,
            subscribe_topic=image + "/compressed" if transport == "compressed" else image,
            depth_topic=depth, depth_info_topic=depth + "/camera_info", confidence_topic=depth + "/confidence",
        ))
    topics = [c.depth_topic for c in cams]
    dup = sorted({t for t in topics if topics.count(t) > 1})
    if dup:
        raise ParameterError(
            f"cameras share the depth topic(s) {dup}: each image_topic must live in its own namespace "
            f"(depth goes to <namespace>/{depth_suffix})"
        )
    return tuple(cams)


def _model(values: Mapping[str, Any]) -> ModelSettings:
    raw_path = _typed(values, _spec("model.path")).strip()
    if not raw_path:
        raise ParameterError(
            "parameter 'model.path' is required: a student run directory or student.safetensors (torch), "
            "a .onnx or a .engine file (e.g. -p model.path:=/path/to/run)"
        )
    path = Path(raw_path).expanduser()
    if not path.exists():
        raise ParameterError(f"parameter 'model.path': {str(path)!r} does not exist")
    backend = _typed(values, _spec("model.backend"))
    if backend == "auto":
        backend = backend_for_model(path) or ""
        if not backend:
            raise ParameterError(
                f"parameter 'model.path': cannot tell the backend of {str(path)!r} from its extension; "
                f"use a run directory, {', '.join(MODEL_SUFFIXES)}, or set model.backend"
            )
    device = _typed(values, _spec("model.device")).strip()
    precision = _typed(values, _spec("model.precision"))
    try:  # the device rules of every backend (fsmde_core.runtime.devices): one place
        check_device(device)
        check_precision_on_device(precision, device)
    except ValueError as exc:
        raise ParameterError(f"parameter 'model.device'/'model.precision': {exc}") from None
    return ModelSettings(path=path, backend=backend, device=device, precision=precision)


def _cloud(values: Mapping[str, Any]) -> CloudSettings:
    frame = _typed(values, _spec("cloud.frame_id")).strip()
    if not _FRAME_RE.match(frame):
        raise ParameterError(
            f"parameter 'cloud.frame_id' is {frame!r}: a TF frame id is non-empty and has no leading '/'"
        )
    min_range = _typed(values, _spec("cloud.min_range"))
    max_range = _typed(values, _spec("cloud.max_range"))
    if min_range >= max_range:
        raise ParameterError(
            f"parameter 'cloud.min_range' ({min_range}) must be smaller than 'cloud.max_range' ({max_range})"
        )
    fixed = _typed(values, _spec("cloud.fixed_frame")).strip()
    if not _FRAME_RE.match(fixed):
        raise ParameterError(
            f"parameter 'cloud.fixed_frame' is {fixed!r}: a TF frame id is non-empty and has no leading '/'"
        )
    if fixed == frame:
        raise ParameterError(
            f"parameter 'cloud.fixed_frame' is {fixed!r}, the same as cloud.frame_id: the ego motion is the "
            f"vehicle frame's pose in a fixed frame such as odom"
        )
    return CloudSettings(
        enabled=_typed(values, _spec("cloud.enabled")),
        topic=_topic("outputs.cloud_topic", _typed(values, _spec("outputs.cloud_topic"))),
        frame_id=frame,
        stride=_typed(values, _spec("cloud.stride")),
        max_range=max_range,
        min_range=min_range,
        max_points=_typed(values, _spec("cloud.max_points")),
        colour=_typed(values, _spec("cloud.colour")),
        motion_compensation=_typed(values, _spec("cloud.motion_compensation")),
        fixed_frame=fixed,
        min_confidence=_typed(values, _spec("cloud.min_confidence")),
    )


def _extrinsics(values: Mapping[str, Any]) -> ExtrinsicsSettings:
    source = _typed(values, _spec("extrinsics.source"))
    raw = _typed(values, _spec("extrinsics.calibration_file")).strip()
    path = Path(raw).expanduser() if raw else None
    if source == "calibration" and path is None:
        raise ParameterError(
            "parameter 'extrinsics.calibration_file' is required with extrinsics.source=calibration "
            "(a rig YAML such as config/rig_ddad.yaml)"
        )
    if path is not None and not path.is_file():
        raise ParameterError(f"parameter 'extrinsics.calibration_file': {str(path)!r} is not a file")
    return ExtrinsicsSettings(source=source, calibration_file=path)


def _sync(values: Mapping[str, Any], n_cameras: int) -> SyncSettings:
    min_cameras = _typed(values, _spec("sync.min_cameras"))
    if min_cameras > n_cameras:
        raise ParameterError(
            f"parameter 'sync.min_cameras' is {min_cameras} but only {n_cameras} cameras are configured"
        )
    return SyncSettings(
        slop_ns=round(_typed(values, _spec("sync.slop_ms")) * 1e6),
        queue_size=_typed(values, _spec("sync.queue_size")),
        policy=_typed(values, _spec("sync.policy")),
        timeout_ns=round(_typed(values, _spec("sync.timeout_ms")) * 1e6),
        min_cameras=min_cameras,
        phase_correction=_typed(values, _spec("sync.phase_correction")),
    )


def _image_quality(values: Mapping[str, Any]) -> ImageQualitySettings:
    dark = _typed(values, _spec("image_quality.dark_mean"))
    bright = _typed(values, _spec("image_quality.bright_mean"))
    if dark >= bright:
        raise ParameterError(
            f"parameter 'image_quality.dark_mean' ({dark}) must be smaller than 'image_quality.bright_mean' "
            f"({bright})"
        )
    thresholds = QualityThresholds(
        dark_mean=dark, bright_mean=bright,
        **{name: _typed(values, _spec(f"image_quality.{name}")) for name in (
            "clipped_fraction", "blur_px", "flat_tile_std", "blocked_fraction", "low_contrast_std", "noise_sigma")},
    )
    return ImageQualitySettings(
        enabled=_typed(values, _spec("image_quality.enabled")),
        every_n_sets=_typed(values, _spec("image_quality.every_n_sets")),
        max_side=_typed(values, _spec("image_quality.max_side")),
        thresholds=thresholds,
    )


def settings_from_values(values: Mapping[str, Any]) -> NodeSettings:
    """Validate raw parameter values (missing ones take their defaults) into :class:`NodeSettings`.

    Raises:
        ParameterError: the first problem found, naming the parameter.
    """
    names = _camera_names(values)
    transport = _typed(values, _spec("image_transport"))
    suffix = _typed(values, _spec("outputs.depth_suffix")).strip().strip("/")
    if not suffix or not _TOPIC_RE.match(suffix):
        raise ParameterError(
            f"parameter 'outputs.depth_suffix' is {suffix!r}: not a valid relative topic name"
        )
    cameras = _cameras(values, names, transport, suffix)
    return NodeSettings(
        cameras=cameras,
        image_transport=transport,
        sync=_sync(values, len(names)),
        model=_model(values),
        cloud=_cloud(values),
        extrinsics=_extrinsics(values),
        qos=QosSettings(
            input_reliability=_typed(values, _spec("qos.input_reliability")),
            input_depth=_typed(values, _spec("qos.input_depth")),
            output_depth=_typed(values, _spec("qos.output_depth")),
        ),
        diagnostics_period_s=_typed(values, _spec("diagnostics.period_s")),
        autostart=_typed(values, _spec("autostart")),
        pipeline_queue_size=_typed(values, _spec("pipeline.queue_size")),
        cross_view_every_n=_typed(values, _spec("diagnostics.cross_view_every_n")),
        cross_view_stride=_typed(values, _spec("diagnostics.cross_view_stride")),
        max_image_pixels=_typed(values, _spec("input.max_image_pixels")),
        confidence=_typed(values, _spec("outputs.confidence")),
        image_quality=_image_quality(values),
    )


# ------------------------------------------------------------- ROS glue
def _descriptor(spec: ParamSpec) -> Any:
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    desc = ParameterDescriptor(
        name=spec.name, description=spec.description, read_only=spec.read_only,
        additional_constraints=spec.constraints(),
    )
    if spec.int_range:
        desc.integer_range = [IntegerRange(from_value=spec.int_range[0], to_value=spec.int_range[1], step=1)]
    if spec.float_range:
        desc.floating_point_range = [
            FloatingPointRange(from_value=spec.float_range[0], to_value=spec.float_range[1], step=0.0)
        ]
    return desc


def _declare(node: Any, spec: ParamSpec) -> None:
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

    try:
        node.declare_parameter(spec.name, spec.default, _descriptor(spec))
    except InvalidParameterTypeException as exc:
        raise ParameterError(
            f"parameter {spec.name!r} must be {_type_word(spec.default)} ({exc})"
        ) from None
    except InvalidParameterValueException as exc:
        raise ParameterError(f"parameter {spec.name!r}: {exc}; expected {spec.constraints()}") from None


def declare_parameters(node: Any) -> None:
    """Declare every parameter (and the per-camera ones for ``cameras.names``) on ``node``.

    Raises:
        ParameterError: an override from the command line / params file has the wrong type or range.
    """
    for spec in PARAMETERS:
        _declare(node, spec)
    for name in _camera_names({"cameras.names": node.get_parameter("cameras.names").value}):
        for spec in camera_parameter_specs(name):
            _declare(node, spec)


def _current_values(node: Any) -> dict[str, Any]:
    names = list(node.get_parameter("cameras.names").value or [])
    values = {spec.name: node.get_parameter(spec.name).value for spec in PARAMETERS}
    for cam in names:
        for spec in camera_parameter_specs(cam):
            if node.has_parameter(spec.name):
                values[spec.name] = node.get_parameter(spec.name).value
    return values


def load_settings(node: Any) -> NodeSettings:
    """Read the declared parameters of ``node`` and validate them (raises :class:`ParameterError`)."""
    return settings_from_values(_current_values(node))


def make_set_parameters_check(node: Any, on_live_change: Callable[[NodeSettings], None]) -> Callable:
    """``add_on_set_parameters_callback`` hook: refuse bad values with the reason; apply live ones.

    The candidate values are validated together with the current ones, so a
    ``ros2 param set`` that would make the configuration invalid is rejected
    with the same message the node would log at configure.
    """
    from rcl_interfaces.msg import SetParametersResult

    def check(params: list[Any]) -> SetParametersResult:
        values = _current_values(node)
        values.update({p.name: p.value for p in params})
        try:
            settings = settings_from_values(values)
        except ParameterError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        if any(p.name in LIVE_PARAMETERS for p in params):
            on_live_change(settings)
        return SetParametersResult(successful=True)

    return check


# ------------------------------------------------- typos and the command line
def unknown_parameter_warnings(given: Sequence[str], known: set[str], node_name: str) -> list[str]:
    """One warning per given parameter name that is not known, naming the nearest known name.

    Why: ROS ignores an override nobody declares, so ``cloud.strid: 2`` in a params file would
    silently keep the default stride; the user only learns of it from a warning. ``known`` is every
    declared parameter, rclpy's own included (use_sim_time; qos_overrides.* only exist where a
    publisher accepts QoS overrides, which this node's do not, so those are warned about too).
    """
    warnings = []
    for name in given:
        if name in known:
            continue
        line = f"parameter {name!r} is not a parameter of {node_name} and is ignored"
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.7)
        warnings.append(line + (f"; did you mean {close[0]!r}?" if close else ""))
    return warnings


def warn_unknown_overrides(node: Any) -> None:
    """Log :func:`unknown_parameter_warnings` for the overrides (params files, ``-p``) given to ``node``.

    rclpy keeps the overrides meant for this node (matched by its name and namespace) in
    ``Node._parameter_overrides``; it has no public accessor. Call after every declaration.
    """
    overrides = getattr(node, "_parameter_overrides", {})
    declared = set(node.list_parameters([], 0).names)  # ours and rclpy's own (use_sim_time, ...)
    for line in unknown_parameter_warnings(sorted(overrides), declared, node.get_fully_qualified_name()):
        node.get_logger().warning(line)


def params_file_problem(path: str) -> str | None:
    """Why ``path`` is not a usable ROS params file (missing, not YAML, not a mapping), or None."""
    import yaml

    file = Path(path).expanduser()
    if not file.is_file():
        return f"params file {path!r} does not exist (--params-file)"
    try:
        data = yaml.safe_load(file.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        return f"params file {path!r} cannot be read: {exc}"
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        return f"params file {path!r} is not valid YAML{at}: {getattr(exc, 'problem', None) or exc}"
    if not isinstance(data, dict):
        return (f"params file {path!r} must map node names to ros__parameters "
                f"(e.g. /**/surround_depth_node: {{ros__parameters: {{...}}}}), not a {type(data).__name__}")
    mixed = _mixed_list(data)
    if mixed:
        return (f"params file {path!r}: parameter {mixed!r} mixes types in its list; a ROS list holds one type "
                f"(write 1.0, not 1)")
    return None


def _mixed_list(tree: Mapping[str, Any], prefix: str = "") -> str | None:
    """The first parameter whose list mixes value types (rcl refuses the whole file for it), or None."""
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            found = _mixed_list(value, "" if key == "ros__parameters" else name + ".")
            if found:
                return found
        elif isinstance(value, list) and len({type(v) for v in value}) > 1:
            return name
    return None


def _override_problem(rule: str) -> str | None:
    name, sep, value = rule.partition(":=")
    if not sep or not name:
        return f"-p {rule!r} is not NAME:=VALUE"
    if not value:
        return f"-p {rule} has no value: write -p {name}:=VALUE (an empty string is -p {name}:=\"''\")"
    return None


def ros_arguments_problem(argv: Sequence[str]) -> str | None:
    """The first problem rcl would refuse in the ``--ros-args`` part of ``argv``, said in one line.

    rcl raises a multi-line RCLError (with C source locations) from ``rclpy.init`` for a missing or
    unparsable params file or an empty ``-p`` value; checking first lets the node name the file or
    parameter and exit with the invalid-parameters code instead of a traceback.
    """
    in_ros_args = False
    items = list(argv)
    for i, arg in enumerate(items):
        if arg == "--ros-args":
            in_ros_args = True
        elif arg == "--":
            in_ros_args = False
        elif in_ros_args and arg in ("--params-file", "-p", "--param"):
            if i + 1 >= len(items):
                return f"{arg} needs a value"
            follow = items[i + 1]
            problem = params_file_problem(follow) if arg == "--params-file" else _override_problem(follow)
            if problem:
                return problem
    return None
