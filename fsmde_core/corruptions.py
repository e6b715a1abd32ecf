"""The 18 image corruptions x 5 severities of the RoboDepth / KITTI-C robustness protocol.

RoboDepth (Kong et al., 2023) builds KITTI-C with the ``imagecorruptions`` package
(Michaelis et al.'s any-size port of Hendrycks & Dietterich's ImageNet-C) plus three
of its own: ``dark`` (low light: gamma darkening + Poisson-Gaussian sensor noise),
``iso_noise`` and ``color_quant``. The parameters below are theirs, per severity.

Why our own numpy code and not that library: ``imagecorruptions`` 1.1.2 (2020)
calls scikit-image with the removed ``multichannel`` argument, imports the removed
``scipy.ndimage.interpolation`` and ``pkg_resources``, so it fails on today's stack;
its maintained fork ``imagecorruptions-imaug`` 1.1.5 does resolve beside numpy 2.4.6
(pip dry run), but pulls eight packages (opencv-python, scikit-image, scipy, numba,
llvmlite, imageio, tifffile, lazy-loader) for what is a few convolutions, draws from
numpy's global random state (so not reproducible from a caller's Generator), ships
frost photographs, and still lacks RoboDepth's three additions. Here every corruption
is vectorised numpy (FFT for the large defocus kernels), draws only from the
``rng`` it is given, and needs no image asset.

Checked against ``imagecorruptions-imaug`` (in a throwaway venv) on a 224 x 224 and a
192 x 640 image, mean over 3 seeds: mean |change|, contrast and edge energy agree within
a few per cent for the noises, brightness, contrast, blurs, elastic, pixelate and JPEG
(fog within its seed-to-seed spread); glass blur changes 10-20 % less at severities 3-5.

Where we depart from the reference, on purpose:

* **Any image size.** The protocol's pixel sizes (blur radii and sigmas, motion-blur
  length, glass-blur displacement, snow flake size, frost needles) assume ImageNet's
  224 px; they are multiplied by ``min(H, W) / 224`` (:func:`pixel_scale`, at least
  0.5 so that thumbnails still blur), so a corruption looks the same at any
  resolution (at KITTI-C's 192 x 640 the factor is 0.86, close to RoboDepth's
  unscaled use). Fog, zoom blur, elastic transform,
  pixelate and JPEG are already relative to the image.
* **Frost** is procedural (fractal ice haze + needle crystals at the three
  orientations of hexagonal ice) instead of one of six photographs; the blend
  ``c0 * image + c1 * frost`` and its per-severity weights are the protocol's.
* **Snow** flakes are thresholded Gaussian blobs zoomed into small disks, then
  motion-blurred along one fall direction, as in the reference.
* **Glass blur**'s sequential pixel-swap loop becomes one vectorised random local
  displacement per iteration (the same offset range, at least one pixel).
* **Impulse noise** is salt-and-pepper per channel value, as scikit-image does it.

Output: uint8, rounded to nearest (the reference truncates; the difference is < 1 grey level).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
from PIL import Image

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
REFERENCE_SIZE = 224  # ImageNet-C's image side, the size the protocol's pixel parameters were chosen for
MIN_PIXEL_SCALE = 0.5  # below a 112 px short side the protocol's pixel sizes are halved, no further

# Short names RoboDepth's docs use for two of them.
ALIASES = {"elastic": "elastic_transform", "jpeg": "jpeg_compression"}

# ====================================================================== helpers
def pixel_scale(height: int, width: int) -> float:
    """Factor applied to the protocol's pixel sizes: the short side relative to ImageNet-C's 224 px.

    Never below MIN_PIXEL_SCALE: on thumbnails a blur must still reach the neighbouring pixels.
    """
    return max(MIN_PIXEL_SCALE, min(height, width) / REFERENCE_SIZE)


def _to_float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255.0


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _pad(x: np.ndarray, py: int, px: int) -> np.ndarray:
    """Reflect-pad (OpenCV's default border) where the image is large enough, else replicate the edge."""
    mode = "reflect" if py < x.shape[0] and px < x.shape[1] else "edge"
    return np.pad(x, ((py, py), (px, px), (0, 0)), mode=mode)


def _convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Same-size 2-D convolution of every channel with one odd-sized kernel (float32).

    A 1-D kernel (one row or column: the separable Gaussians) is a weighted sum of
    shifted views; a 2-D one (the defocus disk) goes through the FFT, whose cost does
    not grow with the kernel (a 40 px defocus radius on a 1600 x 900 image stays cheap).
    """
    kh, kw = kernel.shape
    h, w = x.shape[:2]
    padded = _pad(x.astype(np.float32, copy=False), kh // 2, kw // 2)
    if kh == 1 or kw == 1:
        out = np.zeros_like(x, dtype=np.float32)
        for k, weight in enumerate(kernel.ravel()[::-1]):  # flipped: a convolution, not a correlation
            out += np.float32(weight) * (padded[:, k:k + w] if kh == 1 else padded[k:k + h])
        return out
    shape = padded.shape[:2]
    spectrum = np.fft.rfft2(padded, axes=(0, 1)) * np.fft.rfft2(kernel, s=shape)[..., None]
    full = np.fft.irfft2(spectrum, s=shape, axes=(0, 1))
    return full[kh - 1:kh - 1 + h, kw - 1:kw - 1 + w].astype(np.float32)


def _gaussian_kernel_1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    radius = max(1, math.ceil(truncate * sigma))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / max(sigma, 1e-6)) ** 2)
    return k / k.sum()


def gaussian_blur(x: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Separable Gaussian blur of an (H, W, C) float image (scipy's default truncation at 4 sigma)."""
    if sigma <= 0:
        return x
    k = _gaussian_kernel_1d(sigma, truncate)
    return _convolve(_convolve(x, k[None, :]), k[:, None])


def _disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """Normalised, anti-aliased disk (the defocus point-spread function); radius may be fractional."""
    half = max(math.ceil(radius), 1) + 1
    sub = 4  # supersampling per pixel for the disk coverage
    t = (np.arange(-half * sub, (half + 1) * sub) + 0.5) / sub - 0.5
    yy, xx = np.meshgrid(t, t, indexing="ij")
    inside = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    size = 2 * half + 1
    coverage = inside.reshape(size, sub, size, sub).mean(axis=(1, 3))
    if coverage.sum() == 0:
        coverage[half, half] = 1.0
    if alias_blur > 0:
        g = _gaussian_kernel_1d(alias_blur, truncate=2.0)
        coverage = np.apply_along_axis(np.convolve, 0, coverage, g, mode="same")
        coverage = np.apply_along_axis(np.convolve, 1, coverage, g, mode="same")
    return coverage / coverage.sum()


def _mirror(coord: np.ndarray, size: int) -> np.ndarray:
    """Fold coordinates back into [0, size - 1] by mirroring at the edges (scipy's ``mode='mirror'``)."""
    if size == 1:
        return np.zeros_like(coord)
    period = 2 * (size - 1)
    folded = np.abs(np.mod(coord, period))
    return np.where(folded > size - 1, period - folded, folded)


def _bilinear(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Sample an (H, W, C) image at fractional (rows, cols) inside the image (bilinear)."""
    h, w = x.shape[:2]
    r0 = np.clip(np.floor(rows).astype(np.int64), 0, h - 1)
    c0 = np.clip(np.floor(cols).astype(np.int64), 0, w - 1)
    r1, c1 = np.minimum(r0 + 1, h - 1), np.minimum(c0 + 1, w - 1)
    fr = (rows - r0)[..., None].astype(np.float32)
    fc = (cols - c0)[..., None].astype(np.float32)
    top = x[r0, c0] * (1 - fc) + x[r0, c1] * fc
    bottom = x[r1, c0] * (1 - fc) + x[r1, c1] * fc
    return top * (1 - fr) + bottom * fr


def _resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize with pixel-centre alignment (OpenCV / torch ``align_corners=False``)."""
    h, w = x.shape[:2]
    rows = np.clip((np.arange(height) + 0.5) * h / height - 0.5, 0, h - 1)
    cols = np.clip((np.arange(width) + 0.5) * w / width - 0.5, 0, w - 1)
    return _bilinear(x, rows[:, None], cols[None, :])


def _clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom into the centre by ``factor`` (>= 1) keeping the size: crop the middle 1/factor, upsample."""
    h, w = x.shape[:2]
    ch, cw = max(1, math.ceil(h / factor)), max(1, math.ceil(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    return _resize(x[top:top + ch, left:left + cw], h, w)


def _line_blur(x: np.ndarray, length: float, sigma: float, angle_deg: float) -> np.ndarray:
    """The protocol's motion blur: a half-Gaussian-weighted trail of shifted copies along ``angle``.

    Taps ``i = 0 .. 2*length`` weigh ``exp(-i^2 / 2 sigma^2)``; tap i is the image
    shifted by i pixels against the direction of motion (edges replicated).
    """
    taps = np.arange(round(2 * length) + 1)
    weights = np.exp(-0.5 * (taps / max(sigma, 1e-6)) ** 2)
    weights /= weights.sum()
    dy = -np.ceil(taps * math.sin(math.radians(angle_deg)) - 0.5).astype(int)
    dx = -np.ceil(taps * math.cos(math.radians(angle_deg)) - 0.5).astype(int)
    h, w = x.shape[:2]
    py, px = int(np.abs(dy).max()), int(np.abs(dx).max())
    padded = np.pad(x, ((py, py), (px, px), (0, 0)), mode="edge")
    out = np.zeros_like(x)
    for wgt, sy, sx in zip(weights, dy, dx, strict=True):  # one vectorised shift per tap (<= ~41 taps)
        out += wgt * padded[py - sy:py - sy + h, px - sx:px - sx + w]
    return out


def _next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 2 ** (n - 1).bit_length()


def plasma_fractal(size: int, wibble_decay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square height map in [0, 1] of side ``size`` (a power of two), as ImageNet-C's fog uses."""
    grid = np.zeros((size, size), dtype=np.float64)
    step, wibble = size, 100.0

    def wibbled_mean(total: np.ndarray) -> np.ndarray:
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        corners = grid[0:size:step, 0:size:step]
        square = corners + np.roll(corners, -1, axis=0)
        square = square + np.roll(square, -1, axis=1)
        grid[half:size:step, half:size:step] = wibbled_mean(square)
        centres = grid[half:size:step, half:size:step]
        corners = grid[0:size:step, 0:size:step]
        lr = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        grid[0:size:step, half:size:step] = wibbled_mean(lr)
        tb = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        grid[half:size:step, 0:size:step] = wibbled_mean(tb)
        step //= 2
        wibble /= wibble_decay
    grid -= grid.min()
    return grid / max(grid.max(), 1e-12)


def _plasma_for(x: np.ndarray, wibble_decay: float, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    return plasma_fractal(_next_power_of_2(max(h, w)), wibble_decay, rng)[:h, :w].astype(np.float32)


def _gray(x: np.ndarray) -> np.ndarray:
    return x @ np.array([0.2989, 0.5870, 0.1140], dtype=np.float32)


# ====================================================================== weather & lighting
def _brightness(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """HSV value + c. Hue and saturation kept, so RGB scales by V'/V (a black pixel becomes grey c)."""
    c = (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1]
    value = x.max(axis=2, keepdims=True)
    new_value = np.clip(value + c, 0, 1)
    scaled = x * (new_value / np.maximum(value, 1e-12))
    return np.where(value > 0, scaled, new_value)


def _dark(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """RoboDepth's low light: ``imadjust`` to [0, c] with gamma 2, then Poisson-Gaussian sensor noise."""
    c = (0.60, 0.50, 0.40, 0.30, 0.20)[severity - 1]
    lo, hi = float(x.min()), float(x.max())
    dark = ((x - lo) / (hi - lo + 1e-5)) ** 2 * c
    photons = 10 * (60, 25, 12, 5, 3)[severity - 1]
    noisy = np.clip(rng.poisson(dark * photons) / photons, 0, 1)
    read = 0.1 * (0.08, 0.12, 0.18, 0.26, 0.38)[severity - 1]
    return noisy + rng.normal(scale=read, size=x.shape)


def _fog(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))[severity - 1]
    max_val = float(x.max())
    fogged = x + c[0] * _plasma_for(x, c[1], rng)[..., None]
    return fogged * max_val / (max_val + c[0])


def procedural_frost(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A frosted-glass layer in [0, 1]: fractal ice haze plus needle crystals at 0/60/120 degrees + jitter.

    Stands in for ImageNet-C's six frost photographs: bluish white, brightest where
    needles cross, with structure at the image's own scale (needle length ~6 % of
    the short side). Needle density and the haze / needle weights are set so that,
    blended by the protocol, a frosted image's mean change and contrast match the
    photographs' within 10 % at every severity (measured against ``imagecorruptions``
    at 224 x 224 and 192 x 640); its edge energy is 15-45 % higher (crisper needles).
    """
    haze = plasma_fractal(_next_power_of_2(max(height, width)), 1.8, rng)[:height, :width].astype(np.float32)
    scale = pixel_scale(height, width)
    length = max(2.0, 14.0 * scale)
    seeds = np.zeros((height, width, 1), dtype=np.float32)
    needles = np.zeros((height, width), dtype=np.float32)
    base = rng.uniform(0, 60)
    for k in range(3):
        seeds[..., 0] = (rng.random((height, width)) < 0.006).astype(np.float32)
        streak = _line_blur(seeds, length, length, base + 60 * k + rng.uniform(-10, 10))[..., 0]
        needles = np.maximum(needles, streak)
    needles /= max(float(np.quantile(needles, 0.995)), 1e-6)
    needles = gaussian_blur(np.clip(needles, 0, 1)[..., None], max(0.5, 0.7 * scale))[..., 0]
    gray = np.clip(0.05 + 0.65 * haze + needles, 0, 1)
    return gray[..., None] * np.array([0.86, 0.93, 1.0], dtype=np.float32)


def _frost(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = ((1.0, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))[severity - 1]
    return c[0] * x + c[1] * procedural_frost(x.shape[0], x.shape[1], rng)


def _snow(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Flakes: thresholded Gaussian noise zoomed into small blobs, motion-blurred, added twice (180 deg)."""
    loc, spread, zoom, threshold, radius, sigma, keep = (
        (0.1, 0.3, 3.0, 0.5, 10, 4, 0.8),
        (0.2, 0.3, 2.0, 0.5, 12, 4, 0.7),
        (0.55, 0.3, 4.0, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    )[severity - 1]
    h, w = x.shape[:2]
    scale = pixel_scale(h, w)
    layer = rng.normal(loc=loc, scale=spread, size=(h, w, 1)).astype(np.float32)
    layer = _clipped_zoom(layer, max(1.0, zoom * scale))
    layer[layer < threshold] = 0
    layer = _line_blur(np.clip(layer, 0, 1), radius * scale, sigma * scale, rng.uniform(-135, -45))
    layer = np.round(layer * 255) / 255
    whitened = np.maximum(x, _gray(x)[..., None] * 1.5 + 0.5)
    return keep * x + (1 - keep) * whitened + layer + np.rot90(layer, k=2)


def _contrast(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.4, 0.3, 0.2, 0.1, 0.05)[severity - 1]
    means = x.mean(axis=(0, 1), keepdims=True)
    return (x - means) * c + means


# ====================================================================== sensor & movement
def _defocus_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    radius, alias = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))[severity - 1]
    scale = pixel_scale(*x.shape[:2])
    return _convolve(x, _disk_kernel(radius * scale, alias * scale))


def _glass_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    sigma, max_delta, iterations = ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))[severity - 1]
    scale = pixel_scale(*x.shape[:2])
    h, w = x.shape[:2]
    out = np.floor(np.clip(gaussian_blur(x, sigma * scale), 0, 1) * 255) / 255  # the reference's uint8 step
    delta = max(1, round(max_delta * scale))
    rows, cols = np.mgrid[0:h, 0:w]
    for _ in range(iterations):  # offsets in [-delta, delta - 1], the reference's randint range
        dy = rng.integers(-delta, delta, size=(h, w))
        dx = rng.integers(-delta, delta, size=(h, w))
        out = out[np.clip(rows + dy, 0, h - 1), np.clip(cols + dx, 0, w - 1)]
    return gaussian_blur(out, sigma * scale)


def _motion_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    radius, sigma = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))[severity - 1]
    scale = pixel_scale(*x.shape[:2])
    return _line_blur(x, radius * scale, sigma * scale, rng.uniform(-45, 45))


def _zoom_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    stop, step = ((1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03))[severity - 1]
    factors = np.arange(1, stop, step)
    out = x.copy()
    for factor in factors:
        out += _clipped_zoom(x, float(factor))
    return out / (len(factors) + 1)


def _elastic_transform(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """imagecorruptions' elastic: a smoothed uniform displacement field (sigma 1 % of the image) x alpha."""
    alpha = 250 * (0.05, 0.065, 0.085, 0.1, 0.12)[severity - 1]
    h, w = x.shape[:2]
    max_d = h * 0.005
    field = rng.uniform(-max_d, max_d, size=(h, w, 2)).astype(np.float32)
    row_kernel = _gaussian_kernel_1d(0.01 * w, truncate=3.0)[None, :]
    col_kernel = _gaussian_kernel_1d(0.01 * h, truncate=3.0)[:, None]
    smooth = _convolve(_convolve(field, row_kernel), col_kernel) * alpha
    dy, dx = smooth[..., 0], smooth[..., 1]
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    return _bilinear(x, _mirror(rows + dy, h), _mirror(cols + dx, w))


# ====================================================================== data & processing
def _gaussian_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.08, 0.12, 0.18, 0.26, 0.38)[severity - 1]
    return x + rng.normal(scale=c, size=x.shape)


def _shot_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (60, 25, 12, 5, 3)[severity - 1]
    return rng.poisson(x * c) / c


def _impulse_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    amount = (0.03, 0.06, 0.09, 0.17, 0.27)[severity - 1]
    flipped = rng.random(x.shape) < amount
    salt = rng.random(x.shape) < 0.5
    return np.where(flipped, salt.astype(np.float32), x)


def _iso_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """RoboDepth / 3DCC: fixed photon noise (ISO does not change it) + gain-amplified read noise."""
    photons = 25
    shot = np.clip(rng.poisson(x * photons) / photons, 0, 1)
    return shot + rng.normal(scale=0.7 * (0.08, 0.12, 0.18, 0.26, 0.38)[severity - 1], size=x.shape)


def _uint8_op(fn: Callable[[np.ndarray, int], np.ndarray]) -> Callable[[np.ndarray, int, np.random.Generator],
                                                                       np.ndarray]:
    """Wrap a uint8 -> uint8 operation (PIL codecs, bit depth) into the float pipeline."""
    def wrapped(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
        return _to_float(fn(_to_uint8(x), severity))
    return wrapped


def _color_quant(image: np.ndarray, severity: int) -> np.ndarray:
    """PIL ``posterize`` to 5, 4, 3, 2, 1 bits per channel."""
    bits = 6 - severity
    return image & np.uint8((0xFF << (8 - bits)) & 0xFF)


def _pixelate(image: np.ndarray, severity: int) -> np.ndarray:
    c = (0.6, 0.5, 0.4, 0.3, 0.25)[severity - 1]
    h, w = image.shape[:2]
    small = Image.fromarray(image).resize((max(1, int(w * c)), max(1, int(h * c))), Image.Resampling.BOX)
    return np.asarray(small.resize((w, h), Image.Resampling.NEAREST))


def _jpeg_compression(image: np.ndarray, severity: int) -> np.ndarray:
    quality = (25, 18, 15, 10, 7)[severity - 1]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


_FUNCTIONS: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    "brightness": _brightness,
    "dark": _dark,
    "fog": _fog,
    "frost": _frost,
    "snow": _snow,
    "contrast": _contrast,
    "defocus_blur": _defocus_blur,
    "glass_blur": _glass_blur,
    "motion_blur": _motion_blur,
    "zoom_blur": _zoom_blur,
    "elastic_transform": _elastic_transform,
    "color_quant": _uint8_op(_color_quant),
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "iso_noise": _iso_noise,
    "pixelate": _uint8_op(_pixelate),
    "jpeg_compression": _uint8_op(_jpeg_compression),
}

# RoboDepth's order: weather & lighting, sensor & movement, data & processing.
CORRUPTIONS: tuple[str, ...] = tuple(_FUNCTIONS)


# ====================================================================== public API
def _check(name: str, severity: int) -> None:
    if name not in _FUNCTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise ValueError(f"corruption {name!r}: severity must be one of 1..5, got {severity!r}")


def corrupt(image: np.ndarray, name: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Apply corruption ``name`` at ``severity`` (1..5) to an (H, W, 3) uint8 RGB image.

    Returns a new (H, W, 3) uint8 image; the result depends only on the image and
    the state of ``rng`` (the same state gives the same pixels). ValueError names a
    bad corruption, severity or image.
    """
    _check(name, severity)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"corruption {name!r}: expected an (H, W, 3) uint8 RGB image, "
                         f"got {image.dtype} {image.shape}")
    out = _FUNCTIONS[name](_to_float(image), int(severity), rng)
    return _to_uint8(np.asarray(out, dtype=np.float32))


def corruption_rng(seed: int, name: str, severity: int, *keys: int) -> np.random.Generator:
    """A Generator seeded from (seed, corruption, severity, keys...): reproducible per frame / camera."""
    _check(name, severity)
    return np.random.default_rng([int(seed), CORRUPTIONS.index(name), int(severity), *(int(k) for k in keys)])


def parse_corruption_spec(spec: str) -> list[tuple[str, int]]:
    """``"all"`` | ``"NAME"`` (severities 1..5) | ``"NAME@S"`` | a comma list of those -> [(name, severity)].

    Order kept, duplicates dropped; ``elastic`` / ``jpeg`` are accepted for
    ``elastic_transform`` / ``jpeg_compression``. ValueError (one line) names the bad item.
    """
    items = [item.strip() for item in str(spec).split(",")]
    if not any(items):
        raise ValueError("empty corruption spec; expected 'all', NAME, NAME@SEVERITY or a comma list")
    pairs: list[tuple[str, int]] = []
    for item in items:
        pairs.extend(_parse_item(item, spec))
    return list(dict.fromkeys(pairs))


def _parse_item(item: str, spec: str) -> list[tuple[str, int]]:
    if not item:
        raise ValueError(f"empty item in corruption spec {spec!r}")
    if item.lower() == "all":
        return [(name, s) for name in CORRUPTIONS for s in SEVERITIES]
    name, at, level = item.partition("@")
    name = ALIASES.get(name.strip().lower(), name.strip().lower())
    if name not in _FUNCTIONS:
        raise ValueError(f"unknown corruption {name!r} in {spec!r}; known: all, {', '.join(CORRUPTIONS)}")
    if not at:
        return [(name, s) for s in SEVERITIES]
    level = level.strip()
    if not level.isdigit() or int(level) not in SEVERITIES:
        raise ValueError(f"corruption {name!r}: severity must be 1..5, got {level!r} in {spec!r}")
    return [(name, int(level))]
