"""rclpy message builders (numpy -> ROS) and the readers the node uses (ROS -> numpy, from the core).

Reading is not ROS-version specific: :mod:`fsmde_core.messages` decodes
rclpy and rosbags messages alike, and its readers are imported here under the
names the node uses (one implementation, so the node and the offline reader
accept the same encodings and apply ROI/binning the same way). What stays here
is what needs rclpy's generated classes: building Image, CameraInfo,
PointCloud2 and Time messages, fast.

Why not ``cv_bridge`` / ``sensor_msgs_py``: neither is installable here, and
rclpy's generated message classes have slow paths that matter at six cameras
x 30 Hz:

* Assigning a numpy array to a ``uint8[]`` field (``msg.data = arr``) makes
  ``array.array('B', arr)`` iterate element by element: ~350 ms for 5.9 MB
  (a memoryview: ~200 ms). ``bytes`` costs two memcpys (``tobytes`` and the
  setter's ``array.array('B', value)``), but with ``ROS_PYTHON_CHECK_FIELDS=1``
  the setter loops over every byte in Python (~400 ms). :func:`_as_uint8_array`
  builds an ``array.array('B')`` with one ``frombytes`` memcpy: as fast as
  ``bytes`` by default (the setter copies it once more) and stored without
  any copy or check when field checks are on, so it is never the slow path
  (``bench/bench_conversions.py`` prints the measurements).
* Reading: rclpy hands ``uint8[]`` fields back as ``array.array('B')``, which
  exports the buffer protocol, so the core's ``np.frombuffer`` views it
  without a copy (``copy=False`` readers return read-only views).
"""

from __future__ import annotations

import array
import sys

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

from fsmde_core.camera import CameraModel
from fsmde_core.messages import (
    COLOR_ENCODINGS,
    DEPTH_ENCODINGS,
    ConversionError,
    camera_info_to_model,
    cloud_to_points,
    compressed_to_rgb,
    image_to_depth,
    image_to_rgb,
    message_to_rgb,
    ns_to_sec_nanosec,
    stamp_to_ns,
)

__all__ = [
    "COLOR_ENCODINGS",
    "DEPTH_ENCODINGS",
    "ConversionError",
    "camera_info_to_model",
    "cloud_to_points",
    "compressed_to_rgb",
    "depth_to_image",
    "image_to_depth",
    "image_to_rgb",
    "message_to_rgb",
    "model_to_camera_info",
    "ns_to_stamp",
    "points_to_cloud",
    "stamp_to_ns",
]

NATIVE_BIG_ENDIAN = sys.byteorder == "big"


# ----------------------------------------------------------------- builders
def _as_uint8_array(arr: np.ndarray) -> array.array:
    """One-memcpy ``array.array('B')`` from a numpy array (the fast way to fill ``uint8[]``)."""
    out = array.array("B")
    out.frombytes(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))  # reshape/view: no copy
    return out


# ------------------------------------------------------------ depth images
def depth_to_image(depth: np.ndarray, header: Header) -> Image:
    """(H, W) depth in metres -> ``sensor_msgs/Image`` 32FC1 in native byte order.

    Values are copied verbatim: NaN (invalid) and +Inf (beyond range) survive
    as REP 117 asks. ``header`` is copied, so the caller may reuse its own.
    """
    arr = np.asarray(depth)
    if arr.ndim != 2:
        raise ConversionError(f"depth must be (H, W), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ConversionError(f"depth must be floating point metres, got dtype {arr.dtype}")
    h, w = arr.shape
    if h == 0 or w == 0:
        raise ConversionError(f"depth image is empty ({w}x{h})")
    msg = Image()
    msg.header = _copy_header(header)
    msg.height, msg.width = h, w
    msg.encoding = "32FC1"
    msg.is_bigendian = NATIVE_BIG_ENDIAN
    msg.step = w * 4
    msg.data = _as_uint8_array(arr.astype(np.float32, copy=False))
    return msg


def model_to_camera_info(model: CameraModel, header: Header) -> CameraInfo:
    """:class:`CameraModel` -> ``sensor_msgs/CameraInfo`` (R = identity, P = [K | 0], no ROI/binning)."""
    fields = model.to_camera_info_fields()
    msg = CameraInfo()
    msg.header = _copy_header(header)
    msg.width, msg.height = fields["width"], fields["height"]
    msg.distortion_model = fields["distortion_model"]
    msg.k = np.asarray(fields["k"], dtype=np.float64)
    msg.d = array.array("d", fields["d"])
    msg.r = np.asarray(fields["r"], dtype=np.float64)
    msg.p = np.asarray(fields["p"], dtype=np.float64)
    return msg


# ------------------------------------------------------------ point clouds
_POINT_STEP = 16


def _pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 -> (N,) uint32 ``0x00RRGGBB`` (alpha 0 keeps the float bits out of NaN space)."""
    c = rgb.astype(np.uint32)
    return (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]


def points_to_cloud(xyz: np.ndarray, rgb: np.ndarray | None, header: Header) -> PointCloud2:
    """(N, 3) points (+ (N, 3) uint8 colours) -> unorganised ``PointCloud2``.

    Layout: x, y, z float32 at 0/4/8 and ``rgb`` at 12 (the PCL / RViz
    convention: the uint32 ``0x00RRGGBB`` bits stored in a FLOAT32 field),
    ``point_step`` 16 with or without colour so the points stay 16-byte
    aligned. ``is_dense`` is True only when every coordinate is finite.
    """
    pts = np.asarray(xyz)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ConversionError(f"points must be (N, 3), got shape {pts.shape}")
    n = pts.shape[0]
    buf = np.zeros((n, 4), dtype=np.float32)
    buf[:, :3] = pts
    fields = [_point_field(name, 4 * i) for i, name in enumerate("xyz")]
    if rgb is not None:
        colours = np.asarray(rgb)
        if colours.shape != (n, 3):
            raise ConversionError(f"rgb must be ({n}, 3) to match the points, got {colours.shape}")
        buf.view(np.uint32)[:, 3] = _pack_rgb(colours)
        fields.append(_point_field("rgb", 12))
    msg = PointCloud2()
    msg.header = _copy_header(header)
    msg.height, msg.width = 1, n
    msg.fields = fields
    msg.is_bigendian = NATIVE_BIG_ENDIAN
    msg.point_step = _POINT_STEP
    msg.row_step = _POINT_STEP * n
    # The contiguous input is ~15x faster to scan than the strided xyz columns of buf; only a
    # float64 input must be checked after the cast (a huge value becomes +Inf in float32).
    msg.is_dense = bool(np.isfinite(pts if pts.dtype == np.float32 else buf[:, :3]).all())
    msg.data = _as_uint8_array(buf)
    return msg


def _point_field(name: str, offset: int) -> PointField:
    return PointField(name=name, offset=offset, datatype=PointField.FLOAT32, count=1)


def ns_to_stamp(ns: int) -> Time:
    """Integer nanoseconds -> ``builtin_interfaces/Time`` (nanosec in [0, 1e9), sec may be negative)."""
    sec, nanosec = ns_to_sec_nanosec(ns)
    return Time(sec=sec, nanosec=nanosec)


def _copy_header(header: Header) -> Header:
    """Own copy of a header: messages hold references, and callers reuse theirs."""
    return Header(stamp=Time(sec=header.stamp.sec, nanosec=header.stamp.nanosec), frame_id=header.frame_id)
