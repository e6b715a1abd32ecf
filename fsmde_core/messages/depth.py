"""Depth ``sensor_msgs/Image`` -> (H, W) float32 metres (REP 117/118), for rclpy and rosbags messages alike."""

from __future__ import annotations

from typing import Any

import numpy as np

from fsmde_core.messages.errors import UnsupportedEncodingError, frame_of
from fsmde_core.messages.images import pixel_rows, view_or_copy

DEPTH_ENCODINGS: dict[str, tuple[str, float | None]] = {
    # encoding -> (numpy kind + size, scale to metres; None = already metres)
    "32fc1": ("f4", None),
    "64fc1": ("f8", None),
    "16uc1": ("u2", 1e-3),  # millimetres (REP 118 / openni convention), 0 = no return
}


def image_to_depth(msg: Any, copy: bool = False) -> np.ndarray:
    """``sensor_msgs/Image`` depth -> (H, W) float32 metres.

    32FC1 (and 64FC1) are returned as is (NaN / +Inf kept); 16UC1 is read as
    millimetres with 0 = no measurement -> NaN. ``is_bigendian`` and row
    padding are honoured; a native, unpadded 32FC1 image is a zero-copy
    read-only view unless ``copy`` is set.
    """
    encoding = str(msg.encoding)
    enc = DEPTH_ENCODINGS.get(encoding.strip().lower())
    if enc is None:
        raise UnsupportedEncodingError(
            f"unsupported depth encoding {encoding!r} (frame {frame_of(msg)}); "
            "supported: 32FC1, 64FC1, 16UC1 (millimetres)")
    kind, scale = enc
    rows = pixel_rows(msg, int(kind[1]))
    h, w = int(msg.height), int(msg.width)
    dtype = np.dtype(kind).newbyteorder(">" if msg.is_bigendian else "<")
    padded = rows.shape[1] != int(msg.step)
    values = (np.ascontiguousarray(rows) if padded else rows).view(dtype).reshape(h, w)
    if scale is None:
        if dtype != np.dtype(np.float32):  # other byte order or float64: converting copies anyway
            return values.astype(np.float32)
        return values if padded else view_or_copy(values, copy)
    metres = values.astype(np.float32) * np.float32(scale)
    metres[values == 0] = np.nan
    return metres
