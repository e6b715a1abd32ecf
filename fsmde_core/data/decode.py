"""Message payloads -> numpy, for the pure-Python message classes of ``rosbags``.

Each decoder separates two failure kinds (see :mod:`fsmde_core.data.errors`):
an encoding the reader does not support is :class:`UnsupportedEncodingError` (the
whole topic is unusable), a payload that contradicts its own header is
:class:`MalformedMessageError` (skip that one message).
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image, UnidentifiedImageError

from fsmde_core.camera import CameraModel
from fsmde_core.data.errors import MalformedMessageError, UnsupportedEncodingError

# encoding -> (channels, channel order to get RGB). "8UC3" is refused: it does not
# say whether the bytes are RGB or BGR, and guessing swaps colours silently.
RAW_ENCODINGS: dict[str, tuple[int, tuple[int, ...]]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
    "8uc1": (1, (0, 0, 0)),
}
COMPRESSED_FORMATS = ("jpeg", "jpg", "png")
# image_transport plugins whose payload is not a still image Pillow can read.
_STREAM_CODECS = ("h264", "h265", "hevc", "theora", "ffmpeg", "av1", "vp9", "compresseddepth", "zstd", "qoi")

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
INFO_TYPE = "sensor_msgs/msg/CameraInfo"
CLOUD_TYPE = "sensor_msgs/msg/PointCloud2"
TF_TYPE = "tf2_msgs/msg/TFMessage"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)

_POINTFIELD_DTYPES = {7: "f4", 8: "f8"}  # FLOAT32, FLOAT64


def stamp_to_ns(stamp) -> int:
    """``builtin_interfaces/Time`` -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def header_stamp_ns(raw: bytes | memoryview) -> int | None:
    """``header.stamp`` of a CDR-serialised message that starts with a ``std_msgs/Header``.

    Image, CompressedImage, CameraInfo and PointCloud2 all begin with a Header,
    whose stamp (int32 sec, uint32 nanosec) sits right after the 4-byte CDR
    encapsulation. Reading it directly lets the reader pair megabytes of image
    data without deserialising any of it. Returns None for encapsulations
    other than plain CDR (the caller then deserialises).
    """
    if len(raw) < 12 or raw[0] != 0:
        return None
    if raw[1] == 1:
        sec, nsec = struct.unpack_from("<iI", raw, 4)
    elif raw[1] == 0:
        sec, nsec = struct.unpack_from(">iI", raw, 4)
    else:
        return None
    return sec * 1_000_000_000 + nsec


def _rows(data: np.ndarray, height: int, step: int, row_bytes: int, what: str) -> np.ndarray:
    """(height, row_bytes) view of a row-padded buffer; MalformedMessageError if it is short."""
    need = height * step
    if step < row_bytes or data.size < need:
        raise MalformedMessageError(
            f"{what}: buffer has {data.size} bytes, header promises {height} rows x step {step} "
            f"(row needs {row_bytes})"
        )
    return data[:need].reshape(height, step)[:, :row_bytes]


def check_image_encoding(msg, msgtype: str) -> None:
    """Raise :class:`UnsupportedEncodingError` if this topic's encoding/format cannot be decoded."""
    if msgtype == IMAGE_TYPE:
        if msg.encoding.lower() not in RAW_ENCODINGS:
            raise UnsupportedEncodingError(
                f"image encoding {msg.encoding!r} is not supported "
                "(supported: rgb8, bgr8, rgba8, bgra8, mono8)"
            )
    elif msgtype == COMPRESSED_TYPE:
        fmt = msg.format.lower()
        if any(c in fmt for c in _STREAM_CODECS) or (fmt and not any(f in fmt for f in COMPRESSED_FORMATS)):
            raise UnsupportedEncodingError(
                f"compressed image format {msg.format!r} is not supported (jpeg or png)")
    else:
        raise UnsupportedEncodingError(f"message type {msgtype} is not an image")


def decode_image(msg, msgtype: str) -> np.ndarray:
    """Image / CompressedImage -> (H, W, 3) uint8 RGB."""
    check_image_encoding(msg, msgtype)
    if msgtype == COMPRESSED_TYPE:
        try:
            with Image.open(io.BytesIO(np.asarray(msg.data, dtype=np.uint8).tobytes())) as im:
                return np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise MalformedMessageError(f"cannot decode {msg.format or 'compressed'} image: {exc}") from exc
    channels, order = RAW_ENCODINGS[msg.encoding.lower()]
    h, w = int(msg.height), int(msg.width)
    if h <= 0 or w <= 0:
        raise MalformedMessageError(f"image has size {w}x{h}")
    rows = _rows(np.asarray(msg.data, dtype=np.uint8), h, int(msg.step), w * channels, "image")
    px = rows.reshape(h, w, channels)
    return np.ascontiguousarray(px[:, :, list(order)])


def decode_depth32(msg) -> np.ndarray:
    """``32FC1`` depth Image -> (H, W) float32 metres; NaN/Inf kept (REP 117)."""
    if msg.encoding.upper() != "32FC1":
        raise UnsupportedEncodingError(f"depth encoding {msg.encoding!r} is not supported (need 32FC1)")
    h, w = int(msg.height), int(msg.width)
    rows = _rows(np.asarray(msg.data, dtype=np.uint8), h, int(msg.step), w * 4, "depth image")
    dtype = ">f4" if msg.is_bigendian else "<f4"
    return np.ascontiguousarray(rows).view(dtype).reshape(h, w).astype(np.float32)


def cloud_layout(msg) -> np.dtype:
    """Structured dtype picking x, y, z (float32 or float64, any offsets) out of one point.

    Raises :class:`UnsupportedEncodingError` when the cloud has no float x/y/z fields.
    """
    by_name = {f.name: f for f in msg.fields}
    missing = [n for n in "xyz" if n not in by_name]
    if missing:
        raise UnsupportedEncodingError(
            f"PointCloud2 has no {'/'.join(missing)} field(s) (fields: {[f.name for f in msg.fields]})"
        )
    endian = ">" if msg.is_bigendian else "<"
    formats = []
    for n in "xyz":
        f = by_name[n]
        if f.datatype not in _POINTFIELD_DTYPES or f.count not in (0, 1):
            raise UnsupportedEncodingError(
                f"PointCloud2 field {n!r} has datatype {f.datatype}; need FLOAT32/FLOAT64")
        formats.append(endian + _POINTFIELD_DTYPES[f.datatype])
    return np.dtype({
        "names": ["x", "y", "z"],
        "formats": formats,
        "offsets": [int(by_name[n].offset) for n in "xyz"],
        "itemsize": int(msg.point_step),
    })


def decode_cloud_xyz(msg) -> np.ndarray:
    """PointCloud2 -> (M, 3) float64 points in the cloud's frame.

    Organised clouds (height > 1) and row padding are handled; no-return points
    (NaN) are kept here and dropped by the projection.
    """
    dtype = cloud_layout(msg)
    h, w, step = int(msg.height), int(msg.width), int(msg.point_step)
    if h * w == 0:
        return np.zeros((0, 3))
    if step < max(dtype.fields[n][1] + dtype.fields[n][0].itemsize for n in "xyz"):
        raise MalformedMessageError(f"PointCloud2 point_step {step} is smaller than its fields")
    rows = _rows(np.asarray(msg.data, dtype=np.uint8), h, int(msg.row_step), w * step, "PointCloud2")
    pts = np.ascontiguousarray(rows).reshape(-1).view(dtype)
    return np.stack([pts["x"], pts["y"], pts["z"]], axis=1).astype(np.float64)


def camera_model_from_info(msg) -> CameraModel:
    """``sensor_msgs/CameraInfo`` -> :class:`CameraModel` (ValueError if unusable).

    Binning and ROI are refused rather than silently ignored: they change the
    pixel grid that K refers to.
    """
    if int(msg.binning_x) > 1 or int(msg.binning_y) > 1:
        raise ValueError(f"binning {msg.binning_x}x{msg.binning_y} is not supported")
    roi = msg.roi
    roi_size = (int(roi.width), int(roi.height))
    if all(roi_size) and roi_size != (int(msg.width), int(msg.height)):
        raise ValueError(f"ROI {roi.width}x{roi.height} is not supported")
    return CameraModel.from_camera_info_fields(
        int(msg.width), int(msg.height), np.asarray(msg.k, dtype=np.float64),
        np.asarray(msg.d, dtype=np.float64), msg.distortion_model,
    )

