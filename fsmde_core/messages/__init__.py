"""One message layer: ROS messages -> numpy / CameraModel, for the offline reader and the node alike.

Duck-typed on the message fields, so the same code reads ``rosbags``-deserialised
messages (offline: ``fsmde_core.data``) and rclpy messages (online:
``fsmde_ros.conversions`` keeps only rclpy-specific builders). One
implementation means one behaviour: the encodings accepted, how ROI/binning
change the intrinsics and which errors are raised cannot drift apart again.

Modules: ``errors`` (what went wrong, and whether to skip the message or the
topic), ``images`` (raw / compressed -> RGB, size guard), ``depth``,
``camera_info``, ``clouds``, ``stamps``, ``types`` (ROS type names).
"""

from __future__ import annotations

from fsmde_core.messages.camera_info import apply_roi_and_binning, camera_info_to_model
from fsmde_core.messages.clouds import check_xyz_fields, cloud_field, cloud_to_points, cloud_xyz
from fsmde_core.messages.depth import DEPTH_ENCODINGS, image_to_depth
from fsmde_core.messages.errors import (
    ConversionError,
    ImageTooLargeError,
    MalformedMessageError,
    UnsupportedEncodingError,
)
from fsmde_core.messages.images import (
    COLOR_ENCODINGS,
    DEFAULT_MAX_IMAGE_PIXELS,
    compressed_to_rgb,
    declared_size,
    image_to_mono8,
    image_to_rgb,
    message_to_rgb,
)
from fsmde_core.messages.stamps import header_stamp_ns, ns_to_sec_nanosec, stamp_to_ns

__all__ = [
    "COLOR_ENCODINGS",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEPTH_ENCODINGS",
    "ConversionError",
    "ImageTooLargeError",
    "MalformedMessageError",
    "UnsupportedEncodingError",
    "apply_roi_and_binning",
    "camera_info_to_model",
    "check_xyz_fields",
    "cloud_field",
    "cloud_to_points",
    "cloud_xyz",
    "compressed_to_rgb",
    "declared_size",
    "header_stamp_ns",
    "image_to_depth",
    "image_to_mono8",
    "image_to_rgb",
    "message_to_rgb",
    "ns_to_sec_nanosec",
    "stamp_to_ns",
]
