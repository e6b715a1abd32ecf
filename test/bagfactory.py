"""Write tiny surround rosbag2 recordings for tests, with switches to break them.

A 6-camera rig (the ``ddad`` preset layout at a small size) with camera_info,
``/tf_static`` (camera optical frames two hops below ``base_link`` through a
mount frame, split over two messages), a LiDAR PointCloud2 with fields at
unusual offsets, organised with NaN no-returns and row padding, and optional
32FC1 ground truth. Every message's log time is its stamp plus a random
latency, so readers that pair on log time fail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from fsmde_core.rig import Rig, matrix_to_quaternion, preset

TS = get_typestore(Stores.ROS2_KILTED)
T0_NS = 1_700_000_000 * 1_000_000_000
# optical axes expressed in a REP 103 camera_link frame (x fwd, y left, z up)
R_LINK_OPT = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
MOUNT_T = np.array([0.2, 0.0, 1.0])  # base_link -> roof_mount
LIDAR_YAW_DEG = 90.0
#: Trigger phases [ms] of a sweep-triggered (nuScenes-like) rig at 12 Hz, in the order the LiDAR passes
#: the cameras: six stamps spread over 42.6 ms, beyond half the 83.3 ms period.
SWEEP_OFFSETS_MS = (0.0, 8.5, 17.0, 25.5, 34.0, 42.6)


@dataclass
class BagSpec:
    """What to write. Defaults give a complete, valid recording."""

    storage: str = "sqlite3"  # or "mcap"
    width: int = 64
    height: int = 48
    n_frames: int = 4
    period_ms: float = 100.0
    offsets_ms: list[float] | None = None  # per-camera stamp offset (trigger phase)
    latency_ms: tuple[float, float] = (2.0, 40.0)  # log time = stamp + uniform latency
    camera_latency_ms: list[float] | None = None  # extra per-camera transport delay (may exceed a period)
    seed: int = 0
    compressed: dict[str, str] = field(default_factory=dict)  # camera -> "jpeg"/"png"/other format
    encodings: dict[str, str] = field(default_factory=dict)  # camera -> raw encoding (default rgb8)
    omit_info: set[str] = field(default_factory=set)
    omit_tf_static: bool = False
    omit_lidar: bool = False
    omit_images: set[str] = field(default_factory=set)
    disconnected: set[str] = field(default_factory=set)  # camera frames hung under a foreign root
    info_size_mismatch: set[str] = field(default_factory=set)
    drop: set[tuple[str, int]] = field(default_factory=set)  # (camera, frame) images not written
    corrupt: set[tuple[str, int]] = field(default_factory=set)  # (camera, frame) broken payload
    with_gt: bool = False
    lidar_points: np.ndarray | None = None  # (M, 3) in the lidar frame; default: a few points
    lidar_offset_ms: float = 3.0


@dataclass
class WrittenBag:
    path: Path
    rig: Rig  # native size, T_base_cam as written to TF
    spec: BagSpec
    camera_stamps: dict[str, list[int]]  # per camera, per frame (including dropped ones)
    lidar_stamps: list[int]
    lidar_points: np.ndarray


def make_rig(width: int, height: int) -> Rig:
    rig = preset("ddad", width, height)
    rig.T_base_lidar = _lidar_transform()
    rig.lidar_frame = "lidar_top"
    rig.lidar_topic = "/lidar/points"
    for c in rig.cameras:
        c.frame_id = f"camera_{c.name}_optical_frame"
    return rig


def _lidar_transform() -> np.ndarray:
    a = np.radians(LIDAR_YAW_DEG)
    T = np.eye(4)
    T[:3, :3] = [[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]
    T[:3, 3] = MOUNT_T + np.array([0.0, 0.0, 0.9])
    return T


def point_for_pixel(rig: Rig, camera: str, u: float, v: float, depth: float) -> np.ndarray:
    """The lidar-frame point that projects to pixel (u, v) of ``camera`` (pinhole) at ``depth``."""
    cam = rig.camera(camera)
    m = cam.model
    p_cam = np.array([(u - m.cx) / m.fx * depth, (v - m.cy) / m.fy * depth, depth])
    p_base = cam.T_base_cam[:3, :3] @ p_cam + cam.T_base_cam[:3, 3]
    T_lb = np.linalg.inv(rig.T_base_lidar)
    return T_lb[:3, :3] @ p_base + T_lb[:3, 3]


def expected_image(cam_index: int, frame: int, width: int, height: int) -> np.ndarray:
    """Deterministic RGB content: smooth, so jpeg round trips stay close."""
    vv, uu = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[..., 0] = (30 * cam_index + 3 * frame) % 256
    img[..., 1] = (uu * 255 // max(width - 1, 1)).astype(np.uint8)
    img[..., 2] = (vv * 255 // max(height - 1, 1)).astype(np.uint8)
    return img


def expected_gt(cam_index: int, frame: int, width: int, height: int) -> np.ndarray:
    """Ground truth: a ramp with a NaN (invalid) block and an +Inf (sky) band (REP 117)."""
    vv, uu = np.mgrid[0:height, 0:width].astype(np.float32)
    d = 5.0 + cam_index + 0.1 * frame + 0.05 * uu + 0.02 * vv
    d[: height // 6] = np.inf
    d[height // 2: height // 2 + 3, :4] = np.nan
    return d.astype(np.float32)


# ------------------------------------------------------------------ messages
def _header(stamp_ns: int, frame: str):
    Time = TS.types["builtin_interfaces/msg/Time"]
    return TS.types["std_msgs/msg/Header"](stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9),
                                           frame_id=frame)


def _image_msg(img: np.ndarray, stamp: int, frame: str, encoding: str):
    h, w = img.shape[:2]
    if encoding == "bgr8":
        data = img[..., ::-1]
    elif encoding == "mono8":
        data = img[..., 1]
    else:
        data = img
    data = np.ascontiguousarray(data).reshape(-1)
    step = w * (1 if encoding in ("mono8", "16UC1") else 3)
    if encoding == "16UC1":
        data = np.zeros(h * w * 2, dtype=np.uint8)
        step = w * 2
    return TS.types["sensor_msgs/msg/Image"](
        header=_header(stamp, frame), height=h, width=w, encoding=encoding, is_bigendian=0, step=step,
        data=data)


def _compressed_msg(img: np.ndarray, stamp: int, frame: str, fmt: str):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG" if fmt != "png" else "PNG", quality=95)
    return TS.types["sensor_msgs/msg/CompressedImage"](
        header=_header(stamp, frame), format=fmt, data=np.frombuffer(buf.getvalue(), dtype=np.uint8))


def _depth_msg(depth: np.ndarray, stamp: int, frame: str):
    h, w = depth.shape
    return TS.types["sensor_msgs/msg/Image"](
        header=_header(stamp, frame), height=h, width=w, encoding="32FC1", is_bigendian=0, step=w * 4,
        data=np.frombuffer(depth.astype("<f4").tobytes(), dtype=np.uint8))


def _info_msg(rig: Rig, name: str, stamp: int, mismatch: bool):
    c = rig.camera(name)
    f = c.model.to_camera_info_fields()
    RoI = TS.types["sensor_msgs/msg/RegionOfInterest"]
    return TS.types["sensor_msgs/msg/CameraInfo"](
        header=_header(stamp, c.frame_id), height=f["height"] * (2 if mismatch else 1),
        width=f["width"] * (2 if mismatch else 1), distortion_model="plumb_bob",
        d=np.array(f["d"]), k=np.array(f["k"]), r=np.array(f["r"]), p=np.array(f["p"]),
        binning_x=0, binning_y=0, roi=RoI(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def _cloud_msg(points: np.ndarray, stamp: int, frame: str):
    """Organised 2-row cloud: intensity@0, x@4, y@8, z@12, ring(u16)@16, point_step 20, row padding."""
    PF = TS.types["sensor_msgs/msg/PointField"]
    n = points.shape[0]
    width = (n + 1) // 2 + 1  # at least one NaN no-return per row
    pts = np.full((2 * width, 3), np.nan, dtype=np.float32)
    pts[:n] = points
    step, pad = 20, 8
    rec = np.zeros((2, width * step + pad), dtype=np.uint8)
    body = np.zeros((2 * width, step), dtype=np.uint8)
    body[:, 0:4] = np.full((2 * width, 1), 7.5, dtype="<f4").view(np.uint8)
    body[:, 4:16] = pts.astype("<f4").view(np.uint8).reshape(-1, 12)
    body[:, 16:18] = np.arange(2 * width, dtype="<u2").view(np.uint8).reshape(-1, 2)
    rec[:, : width * step] = body.reshape(2, width * step)
    fields = [PF(name=n, offset=o, datatype=t, count=1)
              for n, o, t in (("intensity", 0, 7), ("x", 4, 7), ("y", 8, 7), ("z", 12, 7), ("ring", 16, 4))]
    return TS.types["sensor_msgs/msg/PointCloud2"](
        header=_header(stamp, frame), height=2, width=width, fields=fields, is_bigendian=False,
        point_step=step, row_step=width * step + pad, data=rec.reshape(-1), is_dense=False)


def _transform(parent: str, child: str, T: np.ndarray, stamp: int):
    G = TS.types
    q = matrix_to_quaternion(T[:3, :3])
    return G["geometry_msgs/msg/TransformStamped"](
        header=_header(stamp, parent), child_frame_id=child,
        transform=G["geometry_msgs/msg/Transform"](
            translation=G["geometry_msgs/msg/Vector3"](x=T[0, 3], y=T[1, 3], z=T[2, 3]),
            rotation=G["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3])))


def _tf_messages(rig: Rig, spec: BagSpec, stamp: int) -> list:
    """Two TFMessages: mount + LiDAR, then camera links and optical frames."""
    T_mount = np.eye(4)
    T_mount[:3, 3] = MOUNT_T
    T_mount_inv = np.linalg.inv(T_mount)
    first = [_transform("base_link", "roof_mount", T_mount, stamp),
             _transform("roof_mount", rig.lidar_frame, T_mount_inv @ rig.T_base_lidar, stamp)]
    second = []
    T_link_opt = np.eye(4)
    T_link_opt[:3, :3] = R_LINK_OPT
    for c in rig.cameras:
        T_base_link = c.T_base_cam @ np.linalg.inv(T_link_opt)
        parent = "floating_rig" if c.name in spec.disconnected else "roof_mount"
        second.append(_transform(parent, f"camera_{c.name}_link", T_mount_inv @ T_base_link, stamp))
        second.append(_transform(f"camera_{c.name}_link", c.frame_id, T_link_opt, stamp))
    TFM = TS.types["tf2_msgs/msg/TFMessage"]
    return [TFM(transforms=first), TFM(transforms=second)]


def default_lidar_points(rig: Rig) -> np.ndarray:
    return np.stack([
        point_for_pixel(rig, "front", rig.camera("front").model.width / 2,
                        rig.camera("front").model.height / 2, 12.0),
        point_for_pixel(rig, "back", 10.0, 20.0, 7.5),
        [np.nan, np.nan, np.nan],
    ]).astype(np.float32)


# ------------------------------------------------------------------- writing
def write_bag(path: Path, spec: BagSpec | None = None) -> WrittenBag:
    """Write the recording described by ``spec`` to ``path`` (must not exist)."""
    spec = spec or BagSpec()
    rig = make_rig(spec.width, spec.height)
    rng = np.random.default_rng(spec.seed)
    n_cam = len(rig.cameras)
    offsets = spec.offsets_ms if spec.offsets_ms is not None else [1.5 * k for k in range(n_cam)]
    period = int(spec.period_ms * 1e6)
    points = default_lidar_points(rig) if spec.lidar_points is None else np.asarray(spec.lidar_points,
                                                                                     np.float32)
    msgs: list[tuple[int, str, str, object]] = []  # (log time, topic, type, msg)

    def add(stamp: int, topic: str, msgtype: str, msg, extra_ms: float = 0.0) -> None:
        msgs.append((stamp + int((rng.uniform(*spec.latency_ms) + extra_ms) * 1e6), topic, msgtype, msg))

    camera_stamps: dict[str, list[int]] = {c.name: [] for c in rig.cameras}
    extra = spec.camera_latency_ms or [0.0] * n_cam
    for f in range(spec.n_frames):
        for k, c in enumerate(rig.cameras):
            stamp = T0_NS + f * period + int(offsets[k] * 1e6)
            camera_stamps[c.name].append(stamp)
            ns = f"/cameras/{c.name}"
            if c.name not in spec.omit_info:
                add(stamp, f"{ns}/camera_info", "sensor_msgs/msg/CameraInfo",
                    _info_msg(rig, c.name, stamp, c.name in spec.info_size_mismatch))
            if spec.with_gt:
                add(stamp, f"/synthetic_gt/{c.name}/depth", "sensor_msgs/msg/Image",
                    _depth_msg(expected_gt(k, f, spec.width, spec.height), stamp, c.frame_id))
            if c.name in spec.omit_images or (c.name, f) in spec.drop:
                continue
            img = expected_image(k, f, spec.width, spec.height)
            if c.name in spec.compressed:
                msg = _compressed_msg(img, stamp, c.frame_id, spec.compressed[c.name])
                if (c.name, f) in spec.corrupt:
                    msg.data = msg.data[: len(msg.data) // 3].copy()
                add(stamp, f"{ns}/image_raw/compressed", "sensor_msgs/msg/CompressedImage", msg, extra[k])
            else:
                msg = _image_msg(img, stamp, c.frame_id, spec.encodings.get(c.name, "rgb8"))
                if (c.name, f) in spec.corrupt:
                    msg.data = msg.data[: len(msg.data) // 2].copy()
                add(stamp, f"{ns}/image_raw", "sensor_msgs/msg/Image", msg, extra[k])
    lidar_stamps = []
    if not spec.omit_lidar:
        for f in range(spec.n_frames):
            stamp = T0_NS + f * period + int(spec.lidar_offset_ms * 1e6)
            lidar_stamps.append(stamp)
            add(stamp, "/lidar/points", "sensor_msgs/msg/PointCloud2",
                _cloud_msg(points, stamp, rig.lidar_frame))
    if not spec.omit_tf_static:
        for m in _tf_messages(rig, spec, T0_NS):
            msgs.append((T0_NS - 10**6, "/tf_static", "tf2_msgs/msg/TFMessage", m))

    msgs.sort(key=lambda m: m[0])
    plugin = StoragePlugin.MCAP if spec.storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = {}
        for _, topic, msgtype, _ in msgs:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=TS)
        for log_ns, topic, msgtype, msg in msgs:
            writer.write(conns[topic], log_ns, TS.serialize_cdr(msg, msgtype))
    return WrittenBag(path, rig, spec, camera_stamps, lidar_stamps, points)


def storage_file(bag: Path) -> Path:
    """The single storage file (.mcap/.db3) of a bag written by :func:`write_bag`."""
    files = [p for p in bag.iterdir() if p.suffix in (".mcap", ".db3")]
    assert len(files) == 1, files
    return files[0]
