"""Discovering a bag's surround layout: cameras, intrinsics, extrinsics, LiDAR.

Discovery never raises on content problems; it records each as a
:class:`Problem` (topic + what is wrong), so ``fsmde inspect`` can report all
of them at once and the sample reader can refuse with one message that lists
them. Only the first messages of each topic are read (plus all of
``/tf_static``), so discovery is cheap even on large bags.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rosbags.highlevel import AnyReader

from fsmde_core.camera import CameraModel
from fsmde_core.data.config import CameraTopics, DataConfig
from fsmde_core.data.errors import BagError
from fsmde_core.data.motion import EgoTrajectory
from fsmde_core.data.reader import TopicSummary, deserialize, iter_raw, topic_table
from fsmde_core.data.tf import TfLookupError, TfTree, TransformBuffer, normalise_frame
from fsmde_core.messages import (
    MalformedMessageError,
    UnsupportedEncodingError,
    camera_info_to_model,
    check_xyz_fields,
    image_to_depth,
    image_to_mono8,
    message_to_rgb,
)
from fsmde_core.messages.types import CLOUD_TYPE, COMPRESSED_TYPE, IMAGE_TYPE, IMAGE_TYPES, INFO_TYPE, TF_TYPE
from fsmde_core.rig import Rig, RigCamera, RigError

log = logging.getLogger(__name__)

# image_transport suffixes that follow the image topic they transport
_TRANSPORTS = {"compressed", "theora", "h264", "ffmpeg", "zstd", "compresseddepth", "foxglove"}
_FIRST_IMAGE_TRIES = 3


@dataclass
class Problem:
    """Something that makes the bag unusable as configured."""

    topic: str | None
    detail: str

    def __str__(self) -> str:
        return f"{self.topic}: {self.detail}" if self.topic else self.detail


@dataclass
class CameraStream:
    """One camera as found in the bag."""

    name: str
    image_topic: str
    image_type: str
    info_topic: str
    gt_topic: str | None = None
    labels_topic: str | None = None
    reflective_topic: str | None = None
    frame_id: str = ""
    model: CameraModel | None = None  # native intrinsics
    T_base_cam: np.ndarray | None = None
    image_size: tuple[int, int] | None = None  # (w, h) of the first decodable image
    intrinsics_from: str = ""
    extrinsics_from: str = ""
    mask: str | None = None

    @property
    def yaw_deg(self) -> float | None:
        if self.T_base_cam is None:
            return None
        z = self.T_base_cam[:3, 2]
        return float(np.degrees(np.arctan2(z[1], z[0])))


@dataclass
class BagLayout:
    """Everything needed to turn the bag's messages into samples."""

    bag: Path
    config: DataConfig
    topics: dict[str, TopicSummary]
    cameras: list[CameraStream] = field(default_factory=list)
    lidar_topic: str | None = None
    lidar_frame: str | None = None
    T_base_lidar: np.ndarray | None = None
    tf: TfTree | None = None
    motion: EgoTrajectory | None = None  # /tf ego trajectory for motion-compensated LiDAR ground truth
    extrinsics_from: str = ""
    rig_name: str = "bag"
    max_depth: float = 80.0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def camera_only(self) -> bool:
        """The bag has no PointCloud2 topic at all and none is configured: a LiDAR-free recording.

        Such a bag is read (every sample with empty sparse depth) instead of
        refused, for training from the video alone (the photometric loss); a
        bag with a LiDAR topic still drops sets without a sweep (``require_lidar``).
        """
        return (self.config.lidar_topic is None and self.lidar_topic is None
                and not any(i.msgtype == CLOUD_TYPE for i in self.topics.values()))

    def problem(self, topic: str | None, detail: str) -> None:
        self.problems.append(Problem(topic, detail))

    def raise_for_problems(self) -> None:
        """One :class:`BagError` listing every problem (named by the first one's topic)."""
        if self.problems:
            probs = self.problems
            detail = "; ".join(str(p) for p in probs) if len(probs) > 1 else probs[0].detail
            raise BagError(self.bag, self.problems[0].topic, detail)

    def rig(self) -> Rig:
        """The native-size rig (valid only when :attr:`ok`)."""
        self.raise_for_problems()
        cams = [
            RigCamera(c.name, c.frame_id, c.model, c.T_base_cam, c.image_topic, c.info_topic, c.mask)
            for c in self.cameras
        ]
        return Rig(self.rig_name, cams, base_frame=self.config.base_frame,
                   lidar_frame=self.lidar_frame or "", T_base_lidar=self.T_base_lidar
                   if self.T_base_lidar is not None else np.eye(4), lidar_topic=self.lidar_topic or "",
                   max_depth=self.max_depth)


# ----------------------------------------------------------------- naming
def _topic_parts(topic: str) -> list[str]:
    parts = [p for p in topic.split("/") if p]
    if parts and parts[-1].lower() in _TRANSPORTS:
        parts = parts[:-1]
    return parts


def camera_namespace(image_topic: str) -> str:
    """``/cameras/front/image_raw[/compressed]`` -> ``/cameras/front``."""
    parts = _topic_parts(image_topic)
    return "/" + "/".join(parts[:-1])


def camera_name_from_topic(image_topic: str) -> str:
    """The namespace's last component (``front``), ``camera`` for a top-level topic."""
    parts = _topic_parts(image_topic)
    return parts[-2] if len(parts) >= 2 else "camera"


def sibling_info_topic(image_topic: str) -> str:
    """The ``camera_info`` next to the image topic, as image_transport/camera drivers publish it."""
    ns = camera_namespace(image_topic)
    return f"{ns.rstrip('/')}/camera_info"


def _is_camera_image_topic(topic: str, msgtype: str) -> bool:
    """ROS camera convention: an Image/CompressedImage whose name starts with ``image``."""
    if msgtype not in IMAGE_TYPES:
        return False
    parts = [p for p in topic.split("/") if p]
    if msgtype == COMPRESSED_TYPE and parts and parts[-1].lower() == "compresseddepth":
        return False
    parts = _topic_parts(topic)
    return bool(parts) and parts[-1].lower().startswith("image")


# --------------------------------------------------------------- discovery
def discover_cameras(
    topics: dict[str, TopicSummary], config: DataConfig, notes: list[str]
) -> list[CameraTopics]:
    """Camera topics by convention; a raw Image beats its compressed sibling."""
    patterns = (config.gt_topic_pattern, config.labels_topic_pattern, config.reflective_topic_pattern)
    prefixes = tuple(p.split("{name}")[0] for p in patterns)
    gt_topics = {t for t in topics if t.startswith(prefixes)}
    by_name: dict[str, list[str]] = {}
    for topic, info in topics.items():
        if topic in gt_topics or not _is_camera_image_topic(topic, info.msgtype):
            continue
        by_name.setdefault(camera_name_from_topic(topic), []).append(topic)
    cams = []
    for name, cands in sorted(by_name.items()):
        cands.sort(key=lambda t: (topics[t].msgtype != IMAGE_TYPE, t))
        if len(cands) > 1:
            notes.append(f"camera {name}: using {cands[0]} (also found {', '.join(cands[1:])})")
        cams.append(CameraTopics(name, cands[0]))
    return cams


def _select_cameras(layout: BagLayout) -> None:
    cfg, topics = layout.config, layout.topics
    cams = cfg.cameras if cfg.cameras is not None else discover_cameras(topics, cfg, layout.notes)
    if not cams:
        images = [t for t, i in topics.items() if i.msgtype in IMAGE_TYPES]
        layout.problem(None, "no camera image topics (sensor_msgs/msg/Image or CompressedImage named "
                       f".../image*) in the bag; image-typed topics: {images or 'none'}")
        return
    for c in cams:
        info = topics.get(c.image_topic)
        if info is None:
            layout.problem(c.image_topic, f"camera {c.name}: image topic is not in the bag")
            continue
        if info.msgtype not in IMAGE_TYPES:
            layout.problem(c.image_topic, f"camera {c.name}: type {info.msgtype} is not an image type")
            continue
        if info.count == 0:
            layout.problem(c.image_topic, f"camera {c.name}: image topic has no messages")
            continue
        gt = c.gt_topic or cfg.gt_topic_pattern.format(name=c.name)
        if gt not in topics:
            if c.gt_topic:
                layout.problem(gt, f"camera {c.name}: configured ground-truth topic is not in the bag")
            gt = None
        elif topics[gt].msgtype != IMAGE_TYPE:
            layout.problem(gt, f"camera {c.name}: ground truth must be sensor_msgs/msg/Image 32FC1")
            gt = None
        layout.cameras.append(CameraStream(
            name=c.name, image_topic=c.image_topic, image_type=info.msgtype,
            info_topic=c.info_topic or sibling_info_topic(c.image_topic), gt_topic=gt,
            labels_topic=_mono8_topic(layout, c.name, cfg.labels_topic_pattern, "semantic labels"),
            reflective_topic=_mono8_topic(layout, c.name, cfg.reflective_topic_pattern, "reflective masks"),
        ))


def _mono8_topic(layout: BagLayout, camera: str, pattern: str, what: str) -> str | None:
    """The camera's optional mono8 side topic (labels, reflective mask) when the bag has one.

    Optional because most bags (every real recording) have none; a topic of the
    wrong type is a problem rather than silently ignored, so a typo'd recording
    does not evaluate as if it had no masks.
    """
    topic = pattern.format(name=camera)
    info = layout.topics.get(topic)
    if info is None:
        return None
    if info.msgtype != IMAGE_TYPE:
        layout.problem(topic, f"camera {camera}: {what} must be sensor_msgs/msg/Image mono8, got {info.msgtype}")
        return None
    return topic


def _select_lidar(layout: BagLayout, rig_yaml: Rig | None) -> None:
    cfg, topics = layout.config, layout.topics
    clouds = sorted(t for t, i in topics.items() if i.msgtype == CLOUD_TYPE)
    if cfg.lidar_topic is not None:
        topic = cfg.lidar_topic
        if topic not in topics:
            layout.problem(topic, f"LiDAR topic is not in the bag (PointCloud2 topics: {clouds or 'none'})")
            return
        if topics[topic].msgtype != CLOUD_TYPE:
            layout.problem(topic, f"LiDAR topic has type {topics[topic].msgtype}, need {CLOUD_TYPE}")
            return
    elif len(clouds) == 1:
        topic = clouds[0]
    elif not clouds:
        layout.notes.append("no LiDAR (sensor_msgs/msg/PointCloud2) topic: a camera-only bag, every sample gets "
                            "all-NaN sparse depth (train it with loss.use_photometric)")
        return
    elif rig_yaml is not None and rig_yaml.lidar_topic in clouds:
        topic = rig_yaml.lidar_topic
    else:
        layout.problem(None, f"several PointCloud2 topics {clouds}: set data.lidar_topic")
        return
    if topics[topic].count == 0:
        layout.problem(topic, "LiDAR topic has no messages")
        return
    layout.lidar_topic = topic


def _read_tf(reader: AnyReader, layout: BagLayout) -> None:
    topic = layout.config.tf_static_topic
    info = layout.topics.get(topic)
    if info is None or info.count == 0 or info.msgtype != TF_TYPE:
        return
    tree = TfTree()
    for t, msgtype, _, raw in iter_raw(reader, layout.bag, [topic]):
        try:
            tree.add_message(deserialize(reader, raw, msgtype, t))
        except MalformedMessageError as exc:
            layout.notes.append(f"skipped a malformed {topic} message: {exc}")
    layout.tf = tree if len(tree) else None


def _read_motion(reader: AnyReader, layout: BagLayout) -> None:
    """The ego trajectory from /tf (all of it: 50 Hz odometry is small), and a note on what it allows.

    Read whenever the bag has it, LiDAR or not: besides motion-compensating the
    LiDAR ground truth it gives each sample its odometry poses
    (``SurroundSample.T_odom_base``), which the photometric loss uses to warp
    between a frame and its temporal neighbours.
    """
    cfg = layout.config
    compensating = layout.lidar_topic is not None and cfg.motion_compensation != "off"
    info = layout.topics.get(cfg.tf_topic)
    if info is None or info.count == 0 or info.msgtype != TF_TYPE:
        if compensating:
            layout.notes.append(f"LiDAR ground truth is NOT motion compensated: no {cfg.tf_topic} "
                                "(tf2_msgs/msg/TFMessage) odometry in the bag")
        return
    buf = TransformBuffer()
    for t, msgtype, _, raw in iter_raw(reader, layout.bag, [cfg.tf_topic]):
        try:
            buf.add_message(deserialize(reader, raw, msgtype, t))
        except MalformedMessageError as exc:
            layout.notes.append(f"skipped a malformed {cfg.tf_topic} message: {exc}")
    chain = buf.chain_to_fixed(cfg.base_frame, layout.tf) if len(buf) else None
    if chain is None:
        what = "LiDAR ground truth is NOT motion compensated" if compensating else "no odometry poses"
        layout.notes.append(f"{what}: {cfg.tf_topic} has no chain from odom or map to {cfg.base_frame} "
                            f"(edges: {sorted(buf.tracks)})")
        return
    layout.motion = EgoTrajectory(buf, chain, layout.tf)
    moving = [buf.tracks[(p, c)] for p, c, dynamic in chain if dynamic]
    n = min(tr.stamps.size for tr in moving)
    span = min(tr.span_ns[1] - tr.span_ns[0] for tr in moving) / 1e9
    rate = f", ~{(n - 1) / span:.0f} Hz" if span > 0 else ""
    what = (f"LiDAR ground truth is motion compensated ({cfg.motion_compensation}) with {cfg.tf_topic}"
            if compensating else f"odometry poses from {cfg.tf_topic}")
    layout.notes.append(f"{what}: {' -> '.join([chain[0][0], *[c for _, c, _ in chain]])} "
                        f"({n} poses over {span:.1f} s{rate})")


@dataclass
class _Firsts:
    """First messages of each topic, as discovery needs them."""

    info: dict[str, object] = field(default_factory=dict)
    image: dict[str, np.ndarray] = field(default_factory=dict)
    image_frame: dict[str, str] = field(default_factory=dict)
    image_error: dict[str, str] = field(default_factory=dict)
    tries: dict[str, int] = field(default_factory=dict)
    cloud: object | None = None
    gt_checked: set[str] = field(default_factory=set)


def _read_firsts(reader: AnyReader, layout: BagLayout) -> _Firsts:
    """One pass over the bag until every topic of interest has given its first message."""
    f = _Firsts()
    topics = layout.topics
    infos = {c.info_topic for c in layout.cameras if topics.get(c.info_topic, TopicSummary("", 0)).count}
    images = {c.image_topic for c in layout.cameras}
    gts = {c.gt_topic for c in layout.cameras if c.gt_topic and topics[c.gt_topic].count}
    labels = {t for c in layout.cameras for t in (c.labels_topic, c.reflective_topic) if t and topics[t].count}
    wanted = infos | images | gts | labels | ({layout.lidar_topic} if layout.lidar_topic else set())
    pending = set(wanted)
    for topic, msgtype, _, raw in iter_raw(reader, layout.bag, wanted):
        if topic not in pending:
            continue
        try:
            msg = deserialize(reader, raw, msgtype, topic)
        except MalformedMessageError as exc:
            layout.notes.append(str(exc))
            continue
        if topic in infos and msgtype == INFO_TYPE:
            f.info[topic] = msg
            pending.discard(topic)
        elif topic in images:
            _first_image(f, layout, topic, msg, pending)
        elif topic in gts or topic in labels:
            try:
                (image_to_depth if topic in gts else image_to_mono8)(msg)
            except UnsupportedEncodingError as exc:
                layout.problem(topic, str(exc))
            except MalformedMessageError:
                continue
            pending.discard(topic)
        elif topic == layout.lidar_topic:
            try:
                check_xyz_fields(msg)
            except UnsupportedEncodingError as exc:
                layout.problem(topic, str(exc))
            f.cloud = msg
            pending.discard(topic)
        if not pending:
            break
    return f


def _first_image(f: _Firsts, layout: BagLayout, topic: str, msg, pending: set[str]) -> None:
    f.image_frame.setdefault(topic, normalise_frame(msg.header.frame_id))
    try:
        f.image[topic] = message_to_rgb(msg, layout.config.max_image_pixels)
        pending.discard(topic)
    except UnsupportedEncodingError as exc:
        layout.problem(topic, str(exc))
        pending.discard(topic)
    except MalformedMessageError as exc:
        f.tries[topic] = f.tries.get(topic, 0) + 1
        f.image_error[topic] = str(exc)
        if f.tries[topic] >= _FIRST_IMAGE_TRIES:
            pending.discard(topic)


def _load_rig_yaml(layout: BagLayout) -> Rig | None:
    path = layout.config.rig_yaml
    if path is None:
        return None
    try:
        rig = Rig.load(path)
    except RigError as exc:
        layout.problem(None, f"rig calibration: {exc}")
        return None
    for cam in rig.cameras:
        if cam.mask and not Path(cam.mask).is_file():
            layout.problem(None, f"rig calibration {path}: mask of camera {cam.name} not found: {cam.mask}")
    layout.rig_name = rig.name
    layout.max_depth = rig.max_depth
    return rig


def _yaml_camera(rig_yaml: Rig | None, name: str) -> RigCamera | None:
    if rig_yaml is None:
        return None
    try:
        return rig_yaml.camera(name)
    except KeyError:
        return None


def _resolve_intrinsics(layout: BagLayout, cam: CameraStream, firsts: _Firsts, rig_yaml: Rig | None) -> None:
    info = firsts.info.get(cam.info_topic)
    ycam = _yaml_camera(rig_yaml, cam.name)
    if info is not None:
        try:
            cam.model = camera_info_to_model(info)
        except ValueError as exc:
            layout.problem(cam.info_topic, f"camera {cam.name}: unusable camera_info: {exc}")
            return
        cam.frame_id = normalise_frame(info.header.frame_id) or cam.frame_id
        cam.intrinsics_from = "camera_info"
    elif ycam is not None:
        cam.model = ycam.model
        cam.intrinsics_from = "rig_yaml"
        layout.notes.append(
            f"camera {cam.name} has no camera_info on {cam.info_topic}: intrinsics from rig YAML")
    else:
        layout.problem(cam.info_topic, f"camera {cam.name} has no camera_info (expected on {cam.info_topic})")
        return
    if cam.image_size is not None and (cam.model.width, cam.model.height) != cam.image_size:
        src = cam.info_topic if cam.intrinsics_from == "camera_info" else str(layout.config.rig_yaml)
        w, h = cam.image_size
        layout.problem(cam.image_topic, f"camera {cam.name}: images are {w}x{h} "
                       f"but {src} says {cam.model.width}x{cam.model.height}")


def _choose_extrinsics(layout: BagLayout, rig_yaml: Rig | None) -> str | None:
    mode, tf_topic = layout.config.extrinsics, layout.config.tf_static_topic
    if mode == "yaml" or (mode == "auto" and layout.tf is None and rig_yaml is not None):
        return "rig_yaml" if rig_yaml is not None else None
    if layout.tf is None:
        why = "not in the bag" if tf_topic not in layout.topics else "empty or not tf2_msgs/msg/TFMessage"
        layout.problem(tf_topic, f"no {tf_topic} ({why}) and no rig calibration YAML: "
                       "camera extrinsics are unknown (set data.rig_yaml)")
        return None
    return "tf"


def _resolve_extrinsics(layout: BagLayout, cam: CameraStream, source: str, rig_yaml: Rig | None) -> None:
    base = layout.config.base_frame
    if source == "tf":
        if not cam.frame_id:
            layout.problem(cam.info_topic, f"camera {cam.name}: camera_info and image have an empty frame_id")
            return
        try:
            cam.T_base_cam = layout.tf.lookup(base, cam.frame_id)
        except TfLookupError as exc:
            layout.problem(layout.config.tf_static_topic, f"camera {cam.name}: {exc}")
            return
    else:
        ycam = _yaml_camera(rig_yaml, cam.name)
        if ycam is None:
            layout.problem(cam.image_topic,
                           f"camera {cam.name} is not in the rig calibration {layout.config.rig_yaml}")
            return
        cam.T_base_cam = ycam.T_base_cam.copy()
        cam.frame_id = cam.frame_id or ycam.frame_id
    cam.extrinsics_from = source


def _resolve_lidar(layout: BagLayout, firsts: _Firsts, source: str, rig_yaml: Rig | None) -> None:
    if layout.lidar_topic is None or firsts.cloud is None:
        return
    layout.lidar_frame = normalise_frame(firsts.cloud.header.frame_id)
    if source == "rig_yaml":
        layout.T_base_lidar = rig_yaml.T_base_lidar.copy()
        if rig_yaml.lidar_frame and layout.lidar_frame and rig_yaml.lidar_frame != layout.lidar_frame:
            layout.notes.append(f"LiDAR frame {layout.lidar_frame!r} differs from the rig YAML's "
                                f"{rig_yaml.lidar_frame!r}; using the YAML's T_base_lidar")
        return
    try:
        layout.T_base_lidar = layout.tf.lookup(layout.config.base_frame, layout.lidar_frame)
    except TfLookupError as exc:
        layout.problem(layout.config.tf_static_topic, f"LiDAR ({layout.lidar_topic}): {exc}")


def check_one_sample_size(layout: BagLayout) -> None:
    """Samples stack the cameras: at native size they must agree (else ``data.width``/``height`` resize).

    A problem for reading samples (``fsmde inspect`` reports it), not for the layout itself: the node and
    ``fsmde rig`` take cameras of any sizes."""
    if layout.config.size is not None:
        return
    sizes = {c.name: (c.model.width, c.model.height) for c in layout.cameras if c.model is not None}
    if len(set(sizes.values())) > 1:
        first = next(iter(sizes.values()))
        odd = next(c for c in layout.cameras if c.model is not None and sizes[c.name] != first)
        text = ", ".join(f"{name} {w}x{h}" for name, (w, h) in sizes.items())
        layout.problem(odd.image_topic, f"cameras have different sizes ({text}): set data.width and "
                       "data.height to read them as one sample")


def discover_layout(reader: AnyReader, bag: Path, config: DataConfig) -> BagLayout:
    """Find cameras, intrinsics, extrinsics, LiDAR and GT of an open bag; problems are recorded."""
    layout = BagLayout(bag=bag, config=config, topics=topic_table(reader))
    rig_yaml = _load_rig_yaml(layout)
    _select_cameras(layout)
    _select_lidar(layout, rig_yaml)
    _read_tf(reader, layout)
    if not layout.cameras:
        return layout
    firsts = _read_firsts(reader, layout)
    for cam in layout.cameras:
        img = firsts.image.get(cam.image_topic)
        if img is not None:
            cam.image_size = (int(img.shape[1]), int(img.shape[0]))
        elif cam.image_topic in firsts.image_error:
            layout.problem(cam.image_topic, f"camera {cam.name}: first images cannot be decoded "
                           f"({firsts.image_error[cam.image_topic]})")
        cam.frame_id = firsts.image_frame.get(cam.image_topic, "")
        _resolve_intrinsics(layout, cam, firsts, rig_yaml)
        ycam = _yaml_camera(rig_yaml, cam.name)
        cam.mask = ycam.mask if ycam is not None else None
    if layout.lidar_topic is not None and firsts.cloud is None and layout.topics[layout.lidar_topic].count:
        layout.problem(layout.lidar_topic, "no readable PointCloud2 message")
    source = _choose_extrinsics(layout, rig_yaml)
    if source is not None:
        layout.extrinsics_from = source
        for cam in layout.cameras:
            _resolve_extrinsics(layout, cam, source, rig_yaml)
        _resolve_lidar(layout, firsts, source, rig_yaml)
    _read_motion(reader, layout)
    if config.cameras is None and all(c.T_base_cam is not None for c in layout.cameras):
        # Discovered cameras: ring order by yaw (front first, counter-clockwise), stable across bags.
        layout.cameras.sort(key=lambda c: (np.mod(c.yaw_deg + 1e-9, 360.0), c.name))
    return layout
