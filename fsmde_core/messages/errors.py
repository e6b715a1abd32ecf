"""Why a message could not be converted, in three kinds that call for different reactions.

* :class:`UnsupportedEncodingError`: the topic uses an encoding / layout this
  code does not read (a Bayer image, an h264 stream, a cloud without float
  x/y/z). Every message of the topic will fail the same way, so offline
  readers stop with the topic named; the node reports the camera.
* :class:`MalformedMessageError`: one payload contradicts its own header (a
  truncated JPEG, a cloud shorter than ``row_step`` says). Recorders produce
  these; skip the message, count it, go on.
* :class:`ImageTooLargeError`: an image declares more pixels than the
  configured limit; refused from its header before any pixel is decoded, so a
  hostile or misconfigured camera cannot make the process allocate gigabytes.

All three are :class:`ConversionError` (a ``ValueError``): callers that only
need "this message is unusable" catch that one.
"""

from __future__ import annotations

from typing import Any


class ConversionError(ValueError):
    """A message cannot be converted; the text names the field, the frame and the reason."""


class UnsupportedEncodingError(ConversionError):
    """The message uses an encoding or field layout that is not supported (a topic-level problem)."""


class MalformedMessageError(ConversionError):
    """One message's payload cannot be decoded; skip it, do not stop."""


class ImageTooLargeError(MalformedMessageError):
    """An image declares more pixels than ``max_image_pixels``; refused before decoding."""


def frame_of(msg: Any) -> str:
    """``'frame_id'`` of a message with a header, for error texts (works on rclpy and rosbags messages)."""
    header = getattr(msg, "header", None)
    frame = getattr(header, "frame_id", "") if header is not None else ""
    return repr(frame) if frame else "'' (no frame_id)"
