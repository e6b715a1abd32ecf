"""Per-camera image quality: too dark / too bright, blurred, blocked lens, low contrast, noisy.

Why: depth from a camera degrades at night, in fog or with a dirty lens, and a user
looking at bad depth wants to know whether the *image* was bad. These measures say
so per camera, cheaply, without any model: the node (``fsmde_ros``) reports them on
/diagnostics; here they are ROS-free and numpy-only so they are tested directly.

Every measure is taken on one grey (Rec. 601 luma) image, area-downsampled by an
integer factor until its longer side is at most ``max_side`` (default 320, about the
student's input size): the cost is one pass over the image plus a few passes over
~60k pixels, and blur or noise is judged at roughly the resolution the model sees
(blur that the model's own downscaling removes does not matter to its depth).
All values are in grey levels of 0..255 or pixels of that analysis image.

The measures and why each one:

* **exposure**: mean luma, and the fractions of pixels clipped black (<= 3) or
  white (>= 252). The mean alone misses a half-black, half-sky image.
* **blur**: the ratio of high- to low-frequency energy, E[Laplacian^2] /
  E[|gradient|^2], not the classic variance of the Laplacian. Both energies scale
  with contrast squared, so the ratio does not fall in a dark or foggy image that
  is still sharp (the Laplacian variance does, and would call every night image
  blurred); and it has a unit: an edge blurred by a Gaussian of sigma s pixels has
  a ratio of 1 / (2 s^2), so the ratio is reported as the equivalent edge blur
  ``blur_px = sqrt(1 / (2 ratio))`` (a sharp edge reads ~0.5 px). The estimated
  noise's share of both energies (20 sigma^2 and 4 sigma^2 for white noise) is
  subtracted first, so sensor noise does not make a blurred image look sharp.
* **blocked lens / occlusion**: the fraction of an 8x8 grid of tiles that are
  featureless: their standard deviation, less the estimated noise, below
  ``flat_tile_std``. Mud, a sticker or a cover on the lens is far out of focus and
  featureless; so, unfortunately, is a cloudless sky or a blank wall, which is why
  the verdict needs a large fraction (see :class:`QualityThresholds`).
* **low contrast** (fog, haze, glare): the global standard deviation of the luma
  (RMS contrast in grey levels).
* **noise**: Immerkaer's kernel [[1,-2,1],[-2,4,-2],[1,-2,1]] (the difference of
  two Laplacians: it cancels smooth structure up to second order, white noise of
  sigma gives 6 sigma), with the median absolute response (Donoho's MAD,
  sigma = median|r| / (6 * 0.6745)) instead of Immerkaer's mean, so the edges of a
  scene, a minority of its pixels, do not inflate it. Texture covering most of the
  image still reads as noise.

Each measure has a verdict with a threshold (:class:`QualityThresholds`; the node
exposes them as ``image_quality.*`` parameters). The defaults were chosen on the
images these tests and the synthetic renderer produce and on the RoboDepth-style
corruptions' typical levels: a clear image has mean ~80-170, std 40-70, blur
0.5-1.2 px, noise < 3; a night image mean < 40; fog std < 20.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

__all__ = ["ImageQuality", "QualityThresholds", "analysis_grey", "assess", "judge", "measure"]

BLACK_LEVEL = 3.0  # luma at or below: clipped black
WHITE_LEVEL = 252.0  # luma at or above: clipped white
TILE_GRID = 8  # featureless tiles are counted on this grid (8x8 = 64 tiles)
_MAD_TO_SIGMA = 1.0 / (6.0 * 0.6745)  # median |Immerkaer response| -> gaussian sigma
_LAPLACIAN_NOISE_GAIN = 20.0  # E[lap^2] of unit white noise (4-neighbour Laplacian: 16 + 4 * 1)
_GRADIENT_NOISE_GAIN = 4.0  # E[dx^2 + dy^2] of unit white noise (forward differences: 2 + 2)
_MIN_STRUCTURE_ENERGY = 0.25  # mean |gradient|^2 (grey levels^2) below which blur is not defined


@dataclass(frozen=True)
class QualityThresholds:
    """Where each measure turns into a problem (grey levels of 0..255, pixels of the analysis image).

    ``blocked_fraction`` is 0.4, not more: a lens half covered by mud must be flagged, and a
    clear sky rarely fills 40 % of an 8x8 grid *and* stays featureless to within 3 grey levels
    (a real sky has a gradient and clouds); a camera looking mostly at sky or a blank wall may
    still be flagged, which the message words as a question ("blocked lens or occlusion?").
    """

    dark_mean: float = 40.0  # mean luma below: too dark
    bright_mean: float = 215.0  # mean luma above: too bright
    clipped_fraction: float = 0.4  # fraction of clipped-black (white) pixels above: too dark (bright)
    blur_px: float = 1.5  # equivalent edge blur above: blurred
    flat_tile_std: float = 3.0  # a tile whose std (noise removed) is below this is featureless
    blocked_fraction: float = 0.4  # fraction of featureless tiles at or above: blocked lens / occlusion
    low_contrast_std: float = 20.0  # global luma std below: low contrast
    noise_sigma: float = 8.0  # estimated noise sigma above: noisy

    def __post_init__(self) -> None:
        if not self.dark_mean < self.bright_mean:
            raise ValueError(f"dark_mean ({self.dark_mean}) must be below bright_mean ({self.bright_mean})")


@dataclass(frozen=True)
class ImageQuality:
    """The measures of one image and the problems they show (empty = looks fine)."""

    mean_luma: float
    black_fraction: float
    white_fraction: float
    blur_px: float  # NaN: no structure to judge blur on (a flat image)
    featureless_fraction: float
    contrast_std: float
    noise_sigma: float
    analysis_size: tuple[int, int]  # (width, height) of the grey image the measures were taken on
    problems: tuple[str, ...] = field(default=())

    def values(self) -> dict[str, str]:
        """The measures as diagnostic key/value strings."""
        return {
            "mean_luma": f"{self.mean_luma:.1f}",
            "black_clipped_fraction": f"{self.black_fraction:.3f}",
            "white_clipped_fraction": f"{self.white_fraction:.3f}",
            "blur_px": "n/a" if math.isnan(self.blur_px) else f"{self.blur_px:.2f}",
            "featureless_fraction": f"{self.featureless_fraction:.3f}",
            "contrast_std": f"{self.contrast_std:.1f}",
            "noise_sigma": f"{self.noise_sigma:.2f}",
            "analysis_size": f"{self.analysis_size[0]}x{self.analysis_size[1]}",
        }


# ------------------------------------------------------------------ the grey image
def analysis_grey(image: np.ndarray, max_side: int = 320) -> np.ndarray:
    """(H, W, 3) or (H, W) uint8 -> float32 luma, area-averaged by the smallest integer factor
    that brings the longer side to at most ``max_side`` (edge rows/columns that do not fill a
    block are dropped). Averaging, not striding: striding keeps full-resolution noise and
    aliases edges, so a blurred image would look sharp again."""
    if image.ndim not in (2, 3) or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {image.shape}")
    if max_side < 8:
        raise ValueError(f"max_side must be at least 8, got {max_side}")
    h, w = image.shape[:2]
    factor = max(1, math.ceil(max(h, w) / max_side))
    hh, ww = h // factor, w // factor
    if hh < 1 or ww < 1:
        raise ValueError(f"image {w}x{h} is too thin to analyse at max_side {max_side}")
    pixels = _block_sums(image, factor, hh, ww).astype(np.float32) / float(factor * factor)
    if pixels.ndim == 3:
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)[: pixels.shape[2]]
        pixels = pixels[..., :3] @ weights if pixels.shape[2] >= 3 else pixels[..., 0]
    return pixels


def _block_sums(image: np.ndarray, factor: int, hh: int, ww: int) -> np.ndarray:
    """Sums over factor x factor blocks, as ``factor`` strided slice additions per axis into an
    integer accumulator: 15x faster than ``reshape(...).sum(axis=(1, 3))`` on a 1920x1080 frame
    (1.9 ms against 30 ms), which walks the array in a cache-hostile order."""
    if factor == 1:
        return image[:hh, :ww]
    acc_type = np.uint16 if factor * factor * 255 <= np.iinfo(np.uint16).max else np.uint32
    rows = np.zeros((hh, image.shape[1], *image.shape[2:]), acc_type)
    for i in range(factor):
        rows += image[i::factor][:hh]
    out = np.zeros((hh, ww, *image.shape[2:]), acc_type)
    for j in range(factor):
        out += rows[:, j::factor][:, :ww]
    return out


# ------------------------------------------------------------------ the measures
def noise_sigma(grey: np.ndarray) -> float:
    """Gaussian noise sigma from the median absolute Immerkaer response (module doc)."""
    g = grey
    if g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    r = (g[:-2, :-2] + g[:-2, 2:] + g[2:, :-2] + g[2:, 2:]
         - 2.0 * (g[:-2, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] + g[2:, 1:-1]) + 4.0 * g[1:-1, 1:-1])
    return float(np.median(np.abs(r))) * _MAD_TO_SIGMA


def edge_blur_px(grey: np.ndarray, noise: float) -> float:
    """Equivalent Gaussian edge blur in pixels from E[lap^2] / E[|grad|^2], noise removed; NaN
    when the image has no structure beyond its noise (module doc)."""
    g = grey
    if g.shape[0] < 3 or g.shape[1] < 3:
        return math.nan
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    dx = g[1:-1, 2:] - g[1:-1, 1:-1]
    dy = g[2:, 1:-1] - g[1:-1, 1:-1]
    variance = noise * noise
    lap_energy = max(float(np.mean(lap * lap)) - _LAPLACIAN_NOISE_GAIN * variance, 0.0)
    grad_energy = float(np.mean(dx * dx + dy * dy)) - _GRADIENT_NOISE_GAIN * variance
    if grad_energy < _MIN_STRUCTURE_ENERGY:
        return math.nan
    if lap_energy <= 0.0:
        return math.inf
    return math.sqrt(grad_energy / (2.0 * lap_energy))


def featureless_fraction(grey: np.ndarray, noise: float, flat_tile_std: float) -> float:
    """Fraction of the tiles of a TILE_GRID x TILE_GRID grid whose std, noise removed, is below
    ``flat_tile_std`` (small images: a coarser grid with tiles of at least 4x4 pixels)."""
    h, w = grey.shape
    rows, cols = min(TILE_GRID, h // 4), min(TILE_GRID, w // 4)
    if rows < 1 or cols < 1:
        return 0.0
    th, tw = h // rows, w // cols
    tiles = grey[: rows * th, : cols * tw].reshape(rows, th, cols, tw)
    structure_var = tiles.var(axis=(1, 3)) - noise * noise
    return float(np.mean(structure_var < flat_tile_std * flat_tile_std))


def measure(image: np.ndarray, max_side: int = 320,
            thresholds: QualityThresholds | None = None) -> ImageQuality:
    """Every measure of ``image`` (no verdicts: see :func:`judge` / :func:`assess`)."""
    t = thresholds or QualityThresholds()
    grey = analysis_grey(image, max_side)
    noise = noise_sigma(grey)
    return ImageQuality(
        mean_luma=float(grey.mean()),
        black_fraction=float(np.mean(grey <= BLACK_LEVEL)),
        white_fraction=float(np.mean(grey >= WHITE_LEVEL)),
        blur_px=edge_blur_px(grey, noise),
        featureless_fraction=featureless_fraction(grey, noise, t.flat_tile_std),
        contrast_std=float(grey.std()),
        noise_sigma=noise,
        analysis_size=(grey.shape[1], grey.shape[0]),
    )


# ------------------------------------------------------------------ the verdicts
def judge(q: ImageQuality, t: QualityThresholds) -> tuple[str, ...]:
    """The problems ``q`` shows under ``t``, each a short phrase with the value that tripped it."""
    problems = []
    if q.mean_luma < t.dark_mean:
        problems.append(f"too dark (mean {q.mean_luma:.0f}/255)")
    elif q.black_fraction > t.clipped_fraction:
        problems.append(f"too dark ({100 * q.black_fraction:.0f} % clipped black)")
    if q.mean_luma > t.bright_mean:
        problems.append(f"too bright (mean {q.mean_luma:.0f}/255)")
    elif q.white_fraction > t.clipped_fraction:
        problems.append(f"too bright ({100 * q.white_fraction:.0f} % clipped white)")
    exposure_problem = bool(problems)  # explains a low std and featureless tiles: not reported on top
    if q.blur_px > t.blur_px:  # NaN (no structure) compares False
        problems.append(f"blurred (edge blur {q.blur_px:.1f} px > {t.blur_px:g})")
    if q.featureless_fraction >= t.blocked_fraction and not exposure_problem:
        problems.append(f"blocked lens or occlusion? ({100 * q.featureless_fraction:.0f} % featureless)")
    if q.contrast_std < t.low_contrast_std and not exposure_problem:
        problems.append(f"low contrast (std {q.contrast_std:.1f} < {t.low_contrast_std:g}; fog, glare?)")
    if q.noise_sigma > t.noise_sigma:
        problems.append(f"noisy (sigma {q.noise_sigma:.1f} > {t.noise_sigma:g})")
    return tuple(problems)


def assess(image: np.ndarray, thresholds: QualityThresholds | None = None, max_side: int = 320) -> ImageQuality:
    """Measures and verdicts of one image (what the node reports per camera)."""
    t = thresholds or QualityThresholds()
    q = measure(image, max_side, t)
    return replace(q, problems=judge(q, t))
