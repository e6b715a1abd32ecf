"""ROS 2 messages of the synthetic recording, serialised to CDR with rosbags' types.

The rosbags typestore (Kilted) holds the same message definitions as a ROS
install, so a bag written here replays with ``ros2 bag play`` and reads with
any rosbag2 reader. Builders return serialised bytes; large payloads are
passed as numpy views (no per-element Python work).
"""

from __future__ import annotations

import numpy as np
from rosbags.typesys import Stores, get_typestore

from fsmde_core.camera import CameraModel
from fsmde_core.rig import matrix_to_quaternion

TYPESTORE = get_typestore(Stores.ROS2_KILTED)
T = TYPESTORE.types

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
POINT_CLOUD2 = "sensor_msgs/msg/PointCloud2"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"

JPEG_FORMAT = "rgb8; jpeg compressed bgr8"  # what compressed_image_transport writes for an rgb8 source

_POINTFIELD_TYPES = {
    np.dtype("<f4"): 7,
    np.dtype("<u2"): 4,
    np.dtype("<f8"): 8,
    np.dtype("<u4"): 6,
    np.dtype("<i4"): 5,
    np.dtype("<u1"): 2,
}


def header(stamp_ns: int, frame_id: str) -> object:
    """``std_msgs/Header`` with the stamp split into sec/nanosec."""
    sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec), frame_id=frame_id)


def serialize(msg, msgtype: str) -> memoryview:
    return TYPESTORE.serialize_cdr(msg, msgtype)


def image_rgb8(stamp_ns: int, frame_id: str, rgb: np.ndarray) -> memoryview:
    """``sensor_msgs/Image`` rgb8 from an (H, W, 3) uint8 array."""
    h, w, _ = rgb.shape
    data = np.ascontiguousarray(rgb, dtype=np.uint8).reshape(-1)
    return serialize(
        T[IMAGE](
            header=header(stamp_ns, frame_id),
            height=h,
            width=w,
            encoding="rgb8",
            is_bigendian=0,
            step=w * 3,
            data=data,
        ),
        IMAGE,
    )


def image_depth(stamp_ns: int, frame_id: str, depth: np.ndarray) -> memoryview:
    """``sensor_msgs/Image`` 32FC1 (metres, little endian) from an (H, W) float array."""
    h, w = depth.shape
    data = np.ascontiguousarray(depth, dtype="<f4").reshape(-1).view(np.uint8)
    return serialize(
        T[IMAGE](
            header=header(stamp_ns, frame_id),
            height=h,
            width=w,
            encoding="32FC1",
            is_bigendian=0,
            step=w * 4,
            data=data,
        ),
        IMAGE,
    )


def image_mono8(stamp_ns: int, frame_id: str, values: np.ndarray) -> memoryview:
    """``sensor_msgs/Image`` mono8 from an (H, W) uint8 array (e.g. semantic class ids)."""
    h, w = values.shape
    if values.dtype != np.uint8:
        raise ValueError(f"mono8 needs uint8 values, got {values.dtype}")
    return serialize(
        T[IMAGE](
            header=header(stamp_ns, frame_id),
            height=h,
            width=w,
            encoding="mono8",
            is_bigendian=0,
            step=w,
            data=np.ascontiguousarray(values).reshape(-1),
        ),
        IMAGE,
    )


def compressed_image(stamp_ns: int, frame_id: str, payload: bytes, fmt: str = JPEG_FORMAT) -> memoryview:
    """``sensor_msgs/CompressedImage`` carrying an encoded image."""
    return serialize(
        T[COMPRESSED_IMAGE](header=header(stamp_ns, frame_id), format=fmt, data=np.frombuffer(payload, dtype=np.uint8)),
        COMPRESSED_IMAGE,
    )


def camera_info(stamp_ns: int, frame_id: str, model: CameraModel) -> memoryview:
    """``sensor_msgs/CameraInfo`` (plumb_bob, R = I, P = [K | 0]) for ``model``."""
    f = model.to_camera_info_fields()
    roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    msg = T[CAMERA_INFO](
        header=header(stamp_ns, frame_id),
        height=f["height"],
        width=f["width"],
        distortion_model=f["distortion_model"],
        d=np.asarray(f["d"], dtype=np.float64),
        k=np.asarray(f["k"], dtype=np.float64),
        r=np.asarray(f["r"], dtype=np.float64),
        p=np.asarray(f["p"], dtype=np.float64),
        binning_x=0,
        binning_y=0,
        roi=roi,
    )
    return serialize(msg, CAMERA_INFO)


def point_cloud2(stamp_ns: int, frame_id: str, points: np.ndarray, is_dense: bool) -> memoryview:
    """``sensor_msgs/PointCloud2`` from a structured array: (H, W) = organised, (N,) = unorganised."""
    pts = np.ascontiguousarray(points)
    h, w = pts.shape if pts.ndim == 2 else (1, pts.shape[0])
    dt = pts.dtype
    fields = [
        T["sensor_msgs/msg/PointField"](
            name=name, offset=dt.fields[name][1], datatype=_POINTFIELD_TYPES[dt.fields[name][0]], count=1
        )
        for name in dt.names
    ]
    msg = T[POINT_CLOUD2](
        header=header(stamp_ns, frame_id),
        height=h,
        width=w,
        fields=fields,
        is_bigendian=False,
        point_step=dt.itemsize,
        row_step=dt.itemsize * w,
        data=pts.reshape(-1).view(np.uint8),
        is_dense=bool(is_dense),
    )
    return serialize(msg, POINT_CLOUD2)


def tf_message(transforms: list[tuple[int, str, str, np.ndarray]]) -> memoryview:
    """``tf2_msgs/TFMessage`` from (stamp_ns, parent, child, 4x4 T_parent_child) tuples."""
    out = []
    for stamp_ns, parent, child, Tpc in transforms:
        q = matrix_to_quaternion(Tpc[:3, :3])
        tr = T["geometry_msgs/msg/Transform"](
            translation=T["geometry_msgs/msg/Vector3"](x=float(Tpc[0, 3]), y=float(Tpc[1, 3]), z=float(Tpc[2, 3])),
            rotation=T["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])),
        )
        out.append(
            T["geometry_msgs/msg/TransformStamped"](header=header(stamp_ns, parent), child_frame_id=child, transform=tr)
        )
    return serialize(T[TF_MESSAGE](transforms=out), TF_MESSAGE)
