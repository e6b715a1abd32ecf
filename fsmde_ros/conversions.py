"""ROS message <-> numpy conversions for images, depth, camera info and point clouds.

Why this module exists instead of ``cv_bridge`` / ``sensor_msgs_py``: neither is
installable here, and rclpy's generated message classes have slow paths that
matter at six cameras x 30 Hz:

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
  exports the buffer protocol, so ``np.frombuffer`` views it without a copy.

Readers return a read-only view of the message buffer when no pixel conversion
is needed (``copy=False``, the default) and a fresh array otherwise; pass
``copy=True`` to always get an owned, writable array.
"""

from __future__ import annotations

import array
import io
import sys
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header

from fsmde_core.camera import CameraModel

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
    "model_to_camera_info",
    "ns_to_stamp",
    "points_to_cloud",
    "stamp_to_ns",
]

NATIVE_BIG_ENDIAN = sys.byteorder == "big"
_NS_PER_S = 1_000_000_000
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


class ConversionError(ValueError):
    """A message cannot be converted; the message says which field and which frame."""


# ----------------------------------------------------------------- buffers
def _as_uint8_array(arr: np.ndarray) -> array.array:
    """One-memcpy ``array.array('B')`` from a numpy array (the fast way to fill ``uint8[]``)."""
    out = array.array("B")
    out.frombytes(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))  # reshape/view: no copy
    return out


def _frame(msg: object) -> str:
    header = getattr(msg, "header", None)
    frame = getattr(header, "frame_id", "") if header is not None else ""
    return repr(frame) if frame else "'' (no frame_id)"


def _view_or_copy(view: np.ndarray, copy: bool) -> np.ndarray:
    """A view of the message buffer: copied if asked, else read-only (no silent aliasing)."""
    if copy:
        return view.copy()
    view.flags.writeable = False
    return view


def _pixel_rows(msg: Image, bytes_per_pixel: int) -> np.ndarray:
    """(H, W * bytes_per_pixel) uint8 view of the pixel bytes, row padding (``step``) removed."""
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = w * bytes_per_pixel
    where = f"Image encoding {msg.encoding!r}, frame {_frame(msg)}"
    if h <= 0 or w <= 0:
        raise ConversionError(f"{where}: empty image ({w}x{h})")
    if step < row_bytes:
        raise ConversionError(
            f"{where}: step {step} < width {w} x {bytes_per_pixel} bytes per pixel = {row_bytes}"
        )
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if buf.size != step * h:
        raise ConversionError(
            f"{where}: data has {buf.size} bytes, expected step {step} x height {h} = {step * h}"
        )
    return buf.reshape(h, step)[:, :row_bytes]


# ------------------------------------------------------------ colour images
@dataclass(frozen=True)
class _ColorLayout:
    channels: int
    rgb_index: tuple[int, int, int] | None  # channel order to read R, G, B; None = grey


COLOR_ENCODINGS: dict[str, _ColorLayout] = {
    "rgb8": _ColorLayout(3, (0, 1, 2)),
    "bgr8": _ColorLayout(3, (2, 1, 0)),
    "rgba8": _ColorLayout(4, (0, 1, 2)),
    "bgra8": _ColorLayout(4, (2, 1, 0)),
    "mono8": _ColorLayout(1, None),
}


def image_to_rgb(msg: Image, copy: bool = False) -> np.ndarray:
    """``sensor_msgs/Image`` -> (H, W, 3) uint8 RGB.

    Supports rgb8, bgr8, rgba8, bgra8 and mono8 (replicated to three channels);
    8-bit encodings have no byte order, so ``is_bigendian`` does not apply.
    An unpadded rgb8 image comes back as a zero-copy read-only view unless
    ``copy`` is set. Raises :class:`ConversionError` for other encodings
    (16-bit, Bayer, YUV...) and for inconsistent ``step``/``data`` sizes.
    """
    layout = COLOR_ENCODINGS.get(msg.encoding.strip().lower())
    if layout is None:
        raise ConversionError(
            f"unsupported Image encoding {msg.encoding!r} (frame {_frame(msg)}); "
            f"supported: {', '.join(COLOR_ENCODINGS)}. Debayer / convert upstream (image_proc)."
        )
    rows = _pixel_rows(msg, layout.channels)
    pixels = rows.reshape(int(msg.height), int(msg.width), layout.channels)
    if layout.rgb_index is None:
        return np.repeat(pixels, 3, axis=2)  # always a fresh array
    if layout.rgb_index == (0, 1, 2) and layout.channels == 3:
        padded = rows.shape[1] != int(msg.step)
        return np.ascontiguousarray(pixels) if padded else _view_or_copy(pixels, copy)
    # One gather copy: reorder / drop alpha into a fresh C-contiguous array.
    return np.ascontiguousarray(pixels[..., list(layout.rgb_index)])


def compressed_to_rgb(msg: CompressedImage) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (jpeg / png, as image_transport writes) -> (H, W, 3) uint8 RGB.

    ``compressedDepth`` payloads carry a private header and depth quantisation
    and are refused. Decoding is forced (``load``) so truncated data fails here,
    with the format and frame in the message, not later inside the network.
    """
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    fmt = msg.format.strip()
    if "compresseddepth" in fmt.lower():
        raise ConversionError(
            f"CompressedImage format {fmt!r} (frame {_frame(msg)}) is a compressedDepth payload, "
            f"not a colour image; subscribe to the raw or jpeg/png colour topic"
        )
    if len(msg.data) == 0:
        raise ConversionError(f"CompressedImage format {fmt!r} (frame {_frame(msg)}) has no data")
    try:
        with PILImage.open(io.BytesIO(memoryview(msg.data))) as img:
            img.load()
            rgb = img if img.mode == "RGB" else img.convert("RGB")
            return np.asarray(rgb, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ConversionError(
            f"cannot decode CompressedImage format {fmt!r} (frame {_frame(msg)}, "
            f"{len(msg.data)} bytes): {err}"
        ) from err


# ------------------------------------------------------------ depth images
DEPTH_ENCODINGS: dict[str, tuple[str, float | None]] = {
    # encoding -> (numpy kind + size, scale to metres; None = already metres)
    "32fc1": ("f4", None),
    "64fc1": ("f8", None),
    "16uc1": ("u2", 1e-3),  # millimetres (REP 118 / openni convention), 0 = no return
}


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


def image_to_depth(msg: Image, copy: bool = False) -> np.ndarray:
    """``sensor_msgs/Image`` depth -> (H, W) float32 metres.

    32FC1 (and 64FC1) are returned as is (NaN / +Inf kept); 16UC1 is read as
    millimetres with 0 = no measurement -> NaN. ``is_bigendian`` and row
    padding are honoured; a native, unpadded 32FC1 image is a zero-copy
    read-only view unless ``copy`` is set.
    """
    enc = DEPTH_ENCODINGS.get(msg.encoding.strip().lower())
    if enc is None:
        raise ConversionError(
            f"unsupported depth encoding {msg.encoding!r} (frame {_frame(msg)}); "
            f"supported: 32FC1, 64FC1, 16UC1 (millimetres)"
        )
    kind, scale = enc
    itemsize = int(kind[1])
    rows = _pixel_rows(msg, itemsize)
    h, w = int(msg.height), int(msg.width)
    dtype = np.dtype(kind).newbyteorder(">" if msg.is_bigendian else "<")
    padded = rows.shape[1] != int(msg.step)
    values = (np.ascontiguousarray(rows) if padded else rows).view(dtype).reshape(h, w)
    if scale is None:
        if dtype != np.dtype(np.float32):  # other byte order or float64: converting copies anyway
            return values.astype(np.float32)
        return values if padded else _view_or_copy(values, copy)
    metres = values.astype(np.float32) * np.float32(scale)
    metres[values == 0] = np.nan
    return metres


# ------------------------------------------------------------- camera info
def camera_info_to_model(msg: CameraInfo, use_projection: bool = False) -> CameraModel:
    """``sensor_msgs/CameraInfo`` -> :class:`CameraModel` for the image actually published.

    ``use_projection=False`` (raw images): intrinsics from ``k`` and ``d``.
    ``use_projection=True`` (``image_rect`` topics): intrinsics from ``p[:, :3]``,
    no distortion. A region of interest and binning are then applied with the
    model's pixel-centre-exact crop / resize, so the model matches the
    ``width/binning_x`` x ``height/binning_y`` image the driver sends.
    """
    where = f"CameraInfo (frame {_frame(msg)})"
    w, h = int(msg.width), int(msg.height)
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if w <= 0 or h <= 0:
        raise ConversionError(f"{where}: image size is {w}x{h}; the camera is not calibrated")
    if not np.any(K):
        raise ConversionError(f"{where}: K is all zeros; the camera is not calibrated")
    D = np.asarray(msg.d, dtype=np.float64)
    model_name = msg.distortion_model.strip()
    if use_projection:
        P = np.asarray(msg.p, dtype=np.float64).reshape(3, 4)
        if not np.any(P):
            raise ConversionError(f"{where}: P is all zeros; cannot use the rectified projection")
        K, D, model_name = P[:, :3].copy(), np.zeros(5), "plumb_bob"
    elif model_name in ("plumb_bob", "") and D.size > 5 and np.any(D[5:]):
        raise ConversionError(
            f"{where}: distortion model {model_name or 'plumb_bob'!r} has {D.size} non-zero "
            f"coefficients; plumb_bob takes 5 (k1, k2, p1, p2, k3)"
        )
    try:
        model = CameraModel(w, h, K, D[:5], model_name or "plumb_bob")
    except ValueError as err:
        raise ConversionError(f"{where}: {err}") from err
    return _apply_roi_and_binning(model, msg, where)


def _apply_roi_and_binning(model: CameraModel, msg: CameraInfo, where: str) -> CameraModel:
    roi = msg.roi
    try:
        if roi.width > 0 and roi.height > 0 and (roi.width, roi.height) != (model.width, model.height):
            model = model.cropped(int(roi.x_offset), int(roi.y_offset), int(roi.width), int(roi.height))
        bx, by = max(int(msg.binning_x), 1), max(int(msg.binning_y), 1)
        if bx > 1 or by > 1:
            model = model.resized(model.width // bx, model.height // by)
    except ValueError as err:
        raise ConversionError(f"{where}: bad roi / binning: {err}") from err
    return model


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
_FIELD_DTYPES = {
    PointField.INT8: "i1", PointField.UINT8: "u1", PointField.INT16: "i2", PointField.UINT16: "u2",
    PointField.INT32: "i4", PointField.UINT32: "u4", PointField.FLOAT32: "f4", PointField.FLOAT64: "f8",
}


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


def _cloud_dtype(msg: PointCloud2, names: tuple[str, ...], as_bits: str | None = None) -> np.dtype:
    """Structured dtype picking ``names`` out of one point (itemsize = point_step).

    ``as_bits`` names a 4-byte field to read as uint32 whatever its declared
    type: packed colour is bits, not a number.
    """
    where = f"PointCloud2 (frame {_frame(msg)})"
    order = ">" if msg.is_bigendian else "<"
    by_name = {f.name: f for f in msg.fields}
    formats, offsets = [], []
    for name in names:
        field = by_name[name]
        code = _FIELD_DTYPES.get(field.datatype)
        if code is None:
            raise ConversionError(f"{where}: field {name!r} has unknown datatype {field.datatype}")
        if name == as_bits:
            if np.dtype(code).itemsize != 4:
                raise ConversionError(f"{where}: colour field {name!r} is not 4 bytes wide")
            code = "u4"
        dt = np.dtype(order + code)
        if field.offset + dt.itemsize > msg.point_step:
            raise ConversionError(
                f"{where}: field {name!r} at offset {field.offset} overruns point_step {msg.point_step}"
            )
        formats.append(dt)
        offsets.append(int(field.offset))
    return np.dtype({"names": list(names), "formats": formats, "offsets": offsets,
                     "itemsize": int(msg.point_step)})


def _cloud_view(msg: PointCloud2, dtype: np.dtype) -> np.ndarray:
    """(H, W) structured view of the point buffer, honouring ``row_step`` padding."""
    h, w, step, row_step = int(msg.height), int(msg.width), int(msg.point_step), int(msg.row_step)
    where = f"PointCloud2 (frame {_frame(msg)})"
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if h * w == 0:
        return np.zeros((0, 0), dtype=dtype)
    if row_step < w * step:
        raise ConversionError(f"{where}: row_step {row_step} < width {w} x point_step {step}")
    needed = (h - 1) * row_step + w * step
    if buf.size < needed:
        raise ConversionError(f"{where}: data has {buf.size} bytes, {w}x{h} points need {needed}")
    return np.ndarray(shape=(h, w), dtype=dtype, buffer=buf, strides=(row_step, step))


def cloud_to_points(msg: PointCloud2) -> tuple[np.ndarray, np.ndarray | None]:
    """Any ``PointCloud2`` with x/y/z fields -> ((N, 3) float32 xyz, (N, 3) uint8 rgb or None).

    Works on clouds from other drivers (LiDARs with intensity / ring / time at
    arbitrary offsets and point_step, organised clouds with row padding,
    float64 coordinates, either byte order) through one strided structured
    view of the buffer. Points are returned in storage order, NaNs included.
    Colour is read from an ``rgb`` or ``rgba`` field (FLOAT32 or UINT32 bits).
    """
    where = f"PointCloud2 (frame {_frame(msg)})"
    names = {f.name for f in msg.fields}
    if not {"x", "y", "z"} <= names:
        raise ConversionError(f"{where}: no x/y/z fields (fields: {sorted(names)})")
    for f in msg.fields:
        if f.name in ("x", "y", "z") and f.datatype not in (PointField.FLOAT32, PointField.FLOAT64):
            raise ConversionError(
                f"{where}: field {f.name!r} has datatype {f.datatype}; "
                f"only FLOAT32 (7) and FLOAT64 (8) coordinates are supported"
            )
    color = next((c for c in ("rgb", "rgba") if c in names), None)
    picked = ("x", "y", "z") + ((color,) if color else ())
    view = _cloud_view(msg, _cloud_dtype(msg, picked, as_bits=color)).reshape(-1)
    xyz = np.empty((view.shape[0], 3), dtype=np.float32)
    for i, axis in enumerate("xyz"):
        xyz[:, i] = view[axis]
    if color is None:
        return xyz, None
    bits = view[color].astype(np.uint32)
    rgb = (np.stack([bits >> 16, bits >> 8, bits], axis=1) & 0xFF).astype(np.uint8)
    return xyz, rgb


# ------------------------------------------------------------------ stamps
def stamp_to_ns(stamp: Time) -> int:
    """``builtin_interfaces/Time`` -> integer nanoseconds (exact, no float rounding)."""
    return int(stamp.sec) * _NS_PER_S + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    """Integer nanoseconds -> ``builtin_interfaces/Time`` (nanosec in [0, 1e9), sec may be negative)."""
    sec, nanosec = divmod(int(ns), _NS_PER_S)
    if not _INT32_MIN <= sec <= _INT32_MAX:
        raise ConversionError(f"time {ns} ns does not fit builtin_interfaces/Time (int32 seconds)")
    return Time(sec=sec, nanosec=nanosec)


def _copy_header(header: Header) -> Header:
    """Own copy of a header: messages hold references, and callers reuse theirs."""
    return Header(stamp=Time(sec=header.stamp.sec, nanosec=header.stamp.nanosec), frame_id=header.frame_id)
