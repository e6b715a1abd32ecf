"""``sensor_msgs/Image`` and ``CompressedImage`` -> (H, W, 3) uint8 RGB, for rclpy and rosbags messages alike.

Duck-typed: only the message fields are read (``height``, ``width``, ``step``,
``encoding``, ``format``, ``data``), and ``data`` may be rclpy's
``array.array('B')``, rosbags' numpy array or ``bytes``: all export the buffer
protocol, so ``np.frombuffer`` views them without a copy.

Every image is checked against ``max_pixels`` before its pixels are touched:
a compressed image by the size its PNG/JPEG header declares (no decoding), a
raw one by ``width x height``. Decoding an 80 MP PNG costs ~250 MB that the
allocator may keep for good, and PIL's own bomb check raises an exception
that is no ``ConversionError``; one oversized camera must be one refused image.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from fsmde_core.messages.errors import (
    ImageTooLargeError,
    MalformedMessageError,
    UnsupportedEncodingError,
    frame_of,
)

#: Default pixel limit: above any automotive camera (8 MP is typical, 4K UHD is 8.3 MP) with margin.
DEFAULT_MAX_IMAGE_PIXELS = 16_000_000


@dataclass(frozen=True)
class ColorLayout:
    """Bytes per pixel and the channel order that gives R, G, B (None = one grey channel)."""

    channels: int
    rgb_index: tuple[int, int, int] | None


#: Raw encodings read as colour. "8UC3" is refused: it does not say whether the bytes are RGB or
#: BGR, and guessing swaps colours silently; one channel (mono8 / 8UC1) has no such ambiguity.
COLOR_ENCODINGS: dict[str, ColorLayout] = {
    "rgb8": ColorLayout(3, (0, 1, 2)),
    "bgr8": ColorLayout(3, (2, 1, 0)),
    "rgba8": ColorLayout(4, (0, 1, 2)),
    "bgra8": ColorLayout(4, (2, 1, 0)),
    "mono8": ColorLayout(1, None),
    "8uc1": ColorLayout(1, None),
}
COMPRESSED_FORMATS = ("jpeg", "jpg", "png")
# image_transport plugins whose payload is not a still image Pillow can read.
_STREAM_CODECS = ("h264", "h265", "hevc", "theora", "ffmpeg", "av1", "vp9", "compresseddepth", "zstd", "qoi")


# ----------------------------------------------------------------- buffers
def view_or_copy(view: np.ndarray, copy: bool) -> np.ndarray:
    """A view of the message buffer: copied if asked, else read-only (no silent aliasing)."""
    if copy:
        return view.copy()
    view.flags.writeable = False
    return view


def pixel_rows(msg: Any, bytes_per_pixel: int) -> np.ndarray:
    """(H, W * bytes_per_pixel) uint8 view of an Image's pixel bytes, row padding (``step``) removed.

    MalformedMessageError when the size, ``step`` and ``data`` length disagree.
    """
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = w * bytes_per_pixel
    where = f"Image encoding {msg.encoding!r}, frame {frame_of(msg)}"
    if h <= 0 or w <= 0:
        raise MalformedMessageError(f"{where}: empty image ({w}x{h})")
    if step < row_bytes:
        raise MalformedMessageError(
            f"{where}: step {step} < width {w} x {bytes_per_pixel} bytes per pixel = {row_bytes}")
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if buf.size != step * h:
        raise MalformedMessageError(
            f"{where}: data has {buf.size} bytes, expected step {step} x height {h} = {step * h}")
    return buf.reshape(h, step)[:, :row_bytes]


def check_pixel_count(width: int, height: int, max_pixels: int | None, where: str) -> None:
    """ImageTooLargeError when ``width x height`` exceeds ``max_pixels`` (None = no limit)."""
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"{where}: image is {width}x{height} = {width * height / 1e6:.1f} MP, above the limit of "
            f"{max_pixels} pixels (max_image_pixels); refused without decoding")


# ------------------------------------------------------------------- raw
def image_to_rgb(msg: Any, copy: bool = False, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """``sensor_msgs/Image`` -> (H, W, 3) uint8 RGB.

    Supports rgb8, bgr8, rgba8, bgra8 and mono8 / 8UC1 (replicated to three
    channels); 8-bit encodings have no byte order, so ``is_bigendian`` does not
    apply. An unpadded rgb8 image comes back as a zero-copy read-only view
    unless ``copy`` is set. UnsupportedEncodingError for other encodings
    (16-bit, Bayer, YUV...), MalformedMessageError for inconsistent sizes.
    """
    encoding = str(msg.encoding)
    layout = COLOR_ENCODINGS.get(encoding.strip().lower())
    if layout is None:
        raise UnsupportedEncodingError(
            f"unsupported Image encoding {encoding!r} (frame {frame_of(msg)}); "
            f"supported: {', '.join(COLOR_ENCODINGS)}. Debayer / convert upstream (image_proc).")
    h, w = int(msg.height), int(msg.width)
    check_pixel_count(w, h, max_pixels, f"Image (frame {frame_of(msg)})")
    rows = pixel_rows(msg, layout.channels)
    pixels = rows.reshape(h, w, layout.channels)
    if layout.rgb_index is None:
        return np.repeat(pixels, 3, axis=2)  # always a fresh array
    if layout.rgb_index == (0, 1, 2) and layout.channels == 3:
        padded = rows.shape[1] != int(msg.step)
        return np.ascontiguousarray(pixels) if padded else view_or_copy(pixels, copy)
    # One gather copy: reorder / drop alpha into a fresh C-contiguous array.
    return np.ascontiguousarray(pixels[..., list(layout.rgb_index)])


#: Raw encodings of one-byte-per-pixel maps (semantic labels): read as the stored values, never as colour.
MONO8_ENCODINGS = ("mono8", "8uc1")


def image_to_mono8(msg: Any, copy: bool = False) -> np.ndarray:
    """``sensor_msgs/Image`` mono8 / 8UC1 -> (H, W) uint8 values as stored (e.g. semantic class ids).

    Read-only view unless ``copy``; UnsupportedEncodingError for any other
    encoding (a colour image here is a wrong topic, not something to convert),
    MalformedMessageError for inconsistent sizes.
    """
    encoding = str(msg.encoding)
    if encoding.strip().lower() not in MONO8_ENCODINGS:
        raise UnsupportedEncodingError(
            f"unsupported label map encoding {encoding!r} (frame {frame_of(msg)}); supported: mono8, 8UC1")
    rows = pixel_rows(msg, 1)
    if rows.shape[1] != int(msg.step):
        return np.ascontiguousarray(rows)
    return view_or_copy(rows, copy)


# ------------------------------------------------------------ compressed
def check_compressed_format(msg: Any) -> None:
    """UnsupportedEncodingError for a ``format`` that is not a still jpeg/png (video codecs, compressedDepth).

    An empty format is let through: Pillow identifies the payload itself.
    """
    fmt = str(msg.format).strip()
    low = fmt.lower()
    if "compresseddepth" in low:
        raise UnsupportedEncodingError(
            f"CompressedImage format {fmt!r} (frame {frame_of(msg)}) is a compressedDepth payload, "
            "not a colour image; subscribe to the raw or jpeg/png colour topic")
    if any(c in low for c in _STREAM_CODECS) or (low and not any(f in low for f in COMPRESSED_FORMATS)):
        raise UnsupportedEncodingError(
            f"CompressedImage format {fmt!r} (frame {frame_of(msg)}) is not supported (jpeg or png)")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (SOF0..SOF15 without DHT C4, JPG C8 and DAC CC) carry height, width.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_NO_LENGTH = frozenset(range(0xD0, 0xD9)) | {0x01}  # RSTn, SOI, EOI, TEM: markers without a length


def declared_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """(width, height) a PNG or JPEG header declares, read without decoding; None if not found.

    PNG: the IHDR chunk right after the signature. JPEG: walk the marker
    segments to the first start-of-frame (a few hundred bytes in practice).
    """
    mv = memoryview(data).cast("B")
    if bytes(mv[:8]) == _PNG_SIGNATURE and bytes(mv[12:16]) == b"IHDR" and len(mv) >= 24:
        width, height = struct.unpack(">II", mv[16:24])
        return int(width), int(height)
    if bytes(mv[:2]) != b"\xff\xd8":
        return None
    i, n = 2, len(mv)
    while i + 4 <= n and mv[i] == 0xFF:
        marker = mv[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in _JPEG_NO_LENGTH:
            i += 2
            continue
        if marker in _JPEG_SOF and i + 9 <= n:
            height, width = struct.unpack(">HH", mv[i + 5:i + 9])
            return (int(width), int(height)) if width and height else None
        if marker == 0xDA:  # start of scan: no frame header before the entropy-coded data
            return None
        i += 2 + struct.unpack(">H", mv[i + 2:i + 4])[0]
    return None


def compressed_to_rgb(msg: Any, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (jpeg / png, as image_transport writes) -> (H, W, 3) uint8 RGB.

    The declared size is checked against ``max_pixels`` before decoding (from
    the PNG/JPEG header, else from Pillow's lazy open, which reads only the
    header). Decoding is forced (``load``) so truncated data fails here, with
    the format and frame in the message, not later inside the network.
    """
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    check_compressed_format(msg)
    fmt = str(msg.format).strip()
    where = f"CompressedImage format {fmt!r} (frame {frame_of(msg)})"
    data = memoryview(msg.data).cast("B")
    if len(data) == 0:
        raise MalformedMessageError(f"{where} has no data")
    size = declared_size(data)
    if size is not None:
        check_pixel_count(*size, max_pixels, where)
    try:
        with PILImage.open(io.BytesIO(data)) as img:
            check_pixel_count(*img.size, max_pixels, where)
            img.load()
            rgb = img if img.mode == "RGB" else img.convert("RGB")
            return np.asarray(rgb, dtype=np.uint8).copy()
    except PILImage.DecompressionBombError as err:  # not an OSError: would escape every handler
        raise ImageTooLargeError(f"{where}: {err}; refused without decoding") from err
    except ImageTooLargeError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise MalformedMessageError(f"cannot decode {where}, {len(data)} bytes: {err}") from err


def message_to_rgb(msg: Any, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Image or CompressedImage (told apart by their fields) -> (H, W, 3) uint8 RGB, owned or read-only."""
    if hasattr(msg, "format"):
        return compressed_to_rgb(msg, max_pixels)
    return image_to_rgb(msg, max_pixels=max_pixels)
