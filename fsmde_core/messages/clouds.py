"""``sensor_msgs/PointCloud2`` -> numpy through one strided structured view, for rclpy and rosbags messages.

Works on clouds from any driver: LiDARs with intensity / ring / time fields at
arbitrary offsets and ``point_step``, organised clouds with ``row_step``
padding, float64 coordinates, either byte order. Points come back in storage
order, NaN (no return) included; projections drop them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fsmde_core.messages.errors import MalformedMessageError, UnsupportedEncodingError, frame_of

#: PointField datatype constant -> numpy kind (INT8 .. FLOAT64, sensor_msgs/PointField).
POINTFIELD_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}
FLOAT32, FLOAT64 = 7, 8


def _where(msg: Any) -> str:
    return f"PointCloud2 (frame {frame_of(msg)})"


def cloud_dtype(msg: Any, names: tuple[str, ...], as_bits: str | None = None) -> np.dtype:
    """Structured dtype picking the fields ``names`` out of one point (itemsize = ``point_step``).

    ``as_bits`` names a 4-byte field to read as uint32 whatever its declared
    type: packed colour is bits, not a number. UnsupportedEncodingError for an
    unknown datatype, MalformedMessageError for a field outside the point.
    """
    order = ">" if msg.is_bigendian else "<"
    step = int(msg.point_step)
    by_name = {f.name: f for f in msg.fields}
    formats, offsets = [], []
    for name in names:
        field = by_name[name]
        code = POINTFIELD_DTYPES.get(int(field.datatype))
        if code is None:
            raise UnsupportedEncodingError(f"{_where(msg)}: field {name!r} has unknown datatype {field.datatype}")
        if name == as_bits:
            if np.dtype(code).itemsize != 4:
                raise UnsupportedEncodingError(f"{_where(msg)}: colour field {name!r} is not 4 bytes wide")
            code = "u4"
        dt = np.dtype(order + code)
        if int(field.offset) + dt.itemsize > step:
            raise MalformedMessageError(
                f"{_where(msg)}: field {name!r} at offset {field.offset} overruns point_step {step}")
        formats.append(dt)
        offsets.append(int(field.offset))
    return np.dtype({"names": list(names), "formats": formats, "offsets": offsets, "itemsize": step})


def cloud_view(msg: Any, dtype: np.dtype) -> np.ndarray:
    """(N,) structured array of every point (a view when rows are unpadded), honouring ``row_step``."""
    h, w = int(msg.height), int(msg.width)
    step, row_step = int(msg.point_step), int(msg.row_step)
    if h * w == 0:
        return np.zeros(0, dtype=dtype)
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if row_step < w * step:
        raise MalformedMessageError(f"{_where(msg)}: row_step {row_step} < width {w} x point_step {step}")
    needed = (h - 1) * row_step + w * step
    if buf.size < needed:
        raise MalformedMessageError(f"{_where(msg)}: data has {buf.size} bytes, {w}x{h} points need {needed}")
    return np.ndarray(shape=(h, w), dtype=dtype, buffer=buf, strides=(row_step, step)).reshape(-1)


def check_xyz_fields(msg: Any) -> None:
    """UnsupportedEncodingError unless the cloud has single FLOAT32/FLOAT64 x, y and z fields."""
    by_name = {f.name: f for f in msg.fields}
    missing = [n for n in "xyz" if n not in by_name]
    if missing:
        raise UnsupportedEncodingError(
            f"{_where(msg)}: no {'/'.join(missing)} field(s); need x/y/z (fields: {sorted(by_name)})")
    for n in "xyz":
        f = by_name[n]
        if int(f.datatype) not in (FLOAT32, FLOAT64) or int(f.count) not in (0, 1):
            raise UnsupportedEncodingError(
                f"{_where(msg)}: field {n!r} has datatype {f.datatype} (count {f.count}); "
                "only single FLOAT32 (7) and FLOAT64 (8) coordinates are supported")


def cloud_xyz(msg: Any, dtype: type = np.float32) -> np.ndarray:
    """(N, 3) x, y, z of every point as ``dtype`` (float64 keeps float64 clouds exact)."""
    check_xyz_fields(msg)
    return _xyz_columns(cloud_view(msg, cloud_dtype(msg, ("x", "y", "z"))), dtype)


def _xyz_columns(view: np.ndarray, dtype: type) -> np.ndarray:
    """(N, 3) array from the x, y, z fields of a structured point view (one strided copy per axis)."""
    xyz = np.empty((view.shape[0], 3), dtype=dtype)
    for i, axis in enumerate("xyz"):
        xyz[:, i] = view[axis]
    return xyz


def cloud_field(msg: Any, name: str) -> np.ndarray:
    """(N,) values of one field (e.g. a LiDAR's per-point time), in the order of :func:`cloud_xyz`."""
    return np.ascontiguousarray(cloud_view(msg, cloud_dtype(msg, (name,)))[name])


def cloud_to_points(msg: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """Any ``PointCloud2`` with x/y/z -> ((N, 3) float32 xyz, (N, 3) uint8 rgb or None).

    Colour is read from an ``rgb`` or ``rgba`` field (FLOAT32 or UINT32 bits, ``0x00RRGGBB``).
    """
    check_xyz_fields(msg)
    names = {f.name for f in msg.fields}
    color = next((c for c in ("rgb", "rgba") if c in names), None)
    picked = ("x", "y", "z") + ((color,) if color else ())
    view = cloud_view(msg, cloud_dtype(msg, picked, as_bits=color))
    xyz = _xyz_columns(view, np.float32)
    if color is None:
        return xyz, None
    bits = view[color].astype(np.uint32)
    rgb = (np.stack([bits >> 16, bits >> 8, bits], axis=1) & 0xFF).astype(np.uint8)
    return xyz, rgb
