"""``builtin_interfaces/Time`` <-> integer nanoseconds, and the stamp of a still-serialised message.

Integer nanoseconds everywhere (never float seconds): two stamps 1 ns apart
must stay apart after a round trip, which float64 seconds cannot promise for
epoch times.
"""

from __future__ import annotations

import struct
from typing import Any

from fsmde_core.messages.errors import ConversionError

NS_PER_S = 1_000_000_000
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def stamp_to_ns(stamp: Any) -> int:
    """``builtin_interfaces/Time`` (rclpy or rosbags) -> integer nanoseconds (exact, no float rounding)."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def ns_to_sec_nanosec(ns: int) -> tuple[int, int]:
    """Integer nanoseconds -> (sec, nanosec) as ``builtin_interfaces/Time`` wants them.

    ``nanosec`` is in [0, 1e9) and ``sec`` may be negative; ConversionError when
    ``sec`` does not fit the message's int32.
    """
    sec, nanosec = divmod(int(ns), NS_PER_S)
    if not _INT32_MIN <= sec <= _INT32_MAX:
        raise ConversionError(f"time {ns} ns does not fit builtin_interfaces/Time (int32 seconds)")
    return sec, nanosec


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
    return sec * NS_PER_S + nsec
