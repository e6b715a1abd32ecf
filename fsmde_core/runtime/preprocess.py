"""Host-side image and depth resizing shared by every backend and the node.

Cameras of one rig need not share a resolution (a wide front camera next to
smaller side cameras), but the student runs on one fixed size. Images are
resized on the host with Pillow: its bilinear filter widens its support when
it downscales (anti-aliased), which matches what the training data loader
sees better than a plain 2-tap interpolation would.

Depth goes the other way with *nearest* neighbour, never bilinear: blending a
foreground edge with the background invents "flying pixels" at depths where
nothing exists, and would mix NaN/Inf markers (REP 117) into valid pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or int(size[0]) <= 0 or int(size[1]) <= 0:
        raise ValueError(f"size must be (height, width) with positive values, got {size!r}")
    return int(size[0]), int(size[1])


def _check_image(index: int, image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image {index}: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"image {index}: expected uint8 RGB, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image {index}: expected shape (H, W, 3), got {image.shape}")


def resize_batch(images: Sequence[np.ndarray] | np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize per-camera RGB images to one size and stack them.

    Args:
        images: a list of ``(Hi, Wi, 3)`` ``uint8`` arrays (sizes may differ per
            camera) or an ``(N, Hi, Wi, 3)`` ``uint8`` array.
        size: ``(H, W)`` target size.

    Returns:
        ``(N, H, W, 3)`` ``uint8``, C-contiguous. An array input that already has
        the target size is returned as is (no copy); images already at the size
        are copied without resampling.
    """
    height, width = _check_size(size)
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise ValueError(
                f"expected an (N, H, W, 3) array or a list of (H, W, 3) arrays, got {images.shape}"
            )
        if images.dtype == np.uint8 and images.shape[1:] == (height, width, 3):
            return np.ascontiguousarray(images)
    if len(images) == 0:
        raise ValueError("resize_batch: no images given")
    out = np.empty((len(images), height, width, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        _check_image(i, image)
        if image.shape[:2] == (height, width):
            out[i] = image
        else:
            pil = Image.fromarray(np.ascontiguousarray(image))
            out[i] = np.asarray(pil.resize((width, height), resample=Image.Resampling.BILINEAR))
    return out


def to_nchw_float(images: np.ndarray, dtype: type[np.floating] = np.float32) -> np.ndarray:
    """``(N, H, W, 3) uint8 -> (N, 3, H, W)`` float in ``[0, 1]``, C-contiguous, in one pass.

    Division by 255 (not multiplication by its reciprocal) matches the torch
    backends bit for bit, so a backend comparison measures the model, not this.
    """
    out = np.empty((images.shape[0], 3, *images.shape[1:3]), dtype=dtype)
    np.divide(images.transpose(0, 3, 1, 2), dtype(255.0), out=out)
    return out


def nearest_indices(src: int, dst: int) -> np.ndarray:
    """Source index of each destination pixel for nearest resampling (pixel-centre aligned).

    Pixel centres map as ``(i + 0.5) * src / dst - 0.5``, the same convention as
    Pillow and ``align_corners=False``, so the depth image lines up with the
    camera image and its rescaled intrinsics.
    """
    idx = np.floor((np.arange(dst, dtype=np.float64) + 0.5) * (src / dst)).astype(np.int64)
    return np.clip(idx, 0, src - 1)


def resize_depth_nearest(depth: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of depth maps; NaN and Inf markers survive untouched.

    Args:
        depth: ``(H, W)`` or ``(N, H, W)`` array (any dtype).
        size: ``(H_out, W_out)``.

    Returns:
        Array of shape ``(H_out, W_out)`` or ``(N, H_out, W_out)``, same dtype.
        The input itself is returned when it already has the size.
    """
    height, width = _check_size(size)
    if depth.ndim not in (2, 3):
        raise ValueError(f"depth must be (H, W) or (N, H, W), got shape {depth.shape}")
    src_h, src_w = depth.shape[-2:]
    if (src_h, src_w) == (height, width):
        return depth
    rows = nearest_indices(src_h, height)
    cols = nearest_indices(src_w, width)
    return depth[..., rows[:, None], cols[None, :]]
