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
* **blur**: the ratio of low- to high-frequency energy, not the classic variance
  of the Laplacian: ``blur_px = 2 sqrt(E[d1^2] / (2 E[d2^2]))`` with d1, d2 the first
  and second differences over 2 pixels (x[i+2] - x[i], x[i-2] - 2 x[i] + x[i+2]),
  along rows and along columns, the larger of the two (motion blur smears one
  direction). Both energies scale with contrast squared, so the ratio does not fall
  in a dark or foggy image that is still sharp (the Laplacian variance does, and
  would call every night image blurred), and it has a unit: an edge blurred by a
  Gaussian of sigma s >= 2 px reads about s; a perfectly sharp edge reads 1.0 (the
  floor of 2-pixel differences). The white noise's share of both energies (6 and 2
  sigma^2) is subtracted, so noise does not make a blurred image look sharp. Why 2
  pixels, not 1: a blurred image's 1-pixel second differences are almost all noise
  (97-100 % at luma sigma 1.4-2.7 on a sigma-3 blur), and subtracting the noise
  estimate left its error, read as blur; over 2 pixels the structure's share is 16x
  larger for the same noise. Measured on the dead-leaves scene of the tests: sharp
  0.95, Gaussian sigma 1 / 2 / 3 / 4: 1.32 / 2.04 / 2.79 / 3.44; sigma 3 plus luma
  noise 2.7: 2.79. When the noise is over 90 % of the second-difference energy
  (luma sigma ~5 on a sigma-3 blur) blur is not judged (NaN, "n/a").
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
exposes them as ``image_quality.*`` parameters). The defaults were checked against
the synthetic renderer's clear images (``fsmde synth --preset nuscenes``, 320x192:
no verdict on any of 24 images; mean luma 95-129, std 22-45, blur 0.96-1.03 px,
noise < 1.5: the side cameras' std of 22 is why ``low_contrast_std`` is 18, not 20)
and the RoboDepth corruptions of ``fsmde_core.corruptions`` on 6 of them. Images
flagged of 6 at severity 1 / 2 / 3 / 4 / 5, by the verdict that names the corruption:

=================  =========================  ==============
corruption         images flagged             verdict
=================  =========================  ==============
dark               3 / 4 / 4 / 6 / 6          too dark
brightness         0 / 0 / 0 / 0 / 4          too bright
contrast           6 / 6 / 6 / 6 / 6          low contrast
fog                3 / 2 / 1 / 2 / 0          low contrast
defocus_blur       1 / 5 / 6 / 6 / 6          blurred
motion_blur        0 / 0 / 3 / 3 / 3          blurred
glass_blur         0 / 0 / 0 / 0 / 4          blurred
gaussian, shot,    6 / 6 / 6 / 6 / 6          noisy
iso noise
impulse_noise      0 / 6 / 6 / 6 / 6          noisy
=================  =========================  ==============

The synthetic adverse conditions (``fsmde synth --condition``, nuscenes, 2 frames x 6
cameras at 320x192): night 10/12 too dark (the other two lit by headlights, mean 64),
fog 5/12 low contrast and 1/12 blocked, rain 3/12 and dusk 2/12 low contrast.

No noise corruption gave a blur verdict. KITTI-C's fog overlays a fractal pattern whose
own variation keeps the std up (a physical fog blend, as in the tests, reads clearly);
frost, snow, zoom blur, elastic, colour quantisation (below severity 5), pixelate and
JPEG are not named: the image stays exposed, sharp and clean enough by these measures.
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
_LAG = 2  # blur from differences over 2 pixels: why in the module doc
_SECOND_DIFF_NOISE_GAIN = 6.0  # E[(x[i-2] - 2 x[i] + x[i+2])^2] of unit white noise
_FIRST_DIFF_NOISE_GAIN = 2.0  # E[(x[i+2] - x[i])^2] of unit white noise
_MAX_NOISE_SHARE = 0.9  # noise above this share of the second-difference energy: blur not judged
_MIN_STRUCTURE_ENERGY = 0.25  # mean squared first difference (grey levels^2) below which blur is not defined


@dataclass(frozen=True)
class QualityThresholds:
    """Where each measure turns into a problem (grey levels of 0..255, pixels of the analysis image).

    ``blocked_fraction`` is 0.4, not more: a lens half covered by mud must be flagged (half the
    tiles), with margin for tiles the cover's edge crosses. The synthetic clear images stay at
    0.27 at most; a camera looking mostly at a cloudless sky or a blank wall can still be
    flagged, which is why the message is worded as a question ("blocked lens or occlusion?").
    """

    dark_mean: float = 40.0  # mean luma below: too dark
    bright_mean: float = 215.0  # mean luma above: too bright
    clipped_fraction: float = 0.4  # fraction of clipped-black (white) pixels above: too dark (bright)
    blur_px: float = 1.8  # equivalent edge blur above: blurred
    flat_tile_std: float = 3.0  # a tile whose std (noise removed) is below this is featureless
    blocked_fraction: float = 0.4  # fraction of featureless tiles at or above: blocked lens / occlusion
    low_contrast_std: float = 18.0  # global luma std below: low contrast
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
    """Equivalent Gaussian edge blur in pixels: the larger of the row and column readings
    LAG * sqrt(E[d1^2] / (2 E[d2^2])) over lag-LAG first and second differences, with the noise's
    share removed (module doc). NaN when no direction can be judged: no structure beyond the
    noise, or noise making nearly all of the second differences (its estimate's error would then
    be read as blur)."""
    k = _LAG
    if grey.shape[0] <= 2 * k or grey.shape[1] <= 2 * k:
        return math.nan
    core = grey[k:-k, k:-k]
    readings = []
    for before, after in ((grey[k:-k, : -2 * k], grey[k:-k, 2 * k:]), (grey[: -2 * k, k:-k], grey[2 * k:, k:-k])):
        readings.append(_axis_blur(after - core, before + after - 2.0 * core, noise * noise))
    judged = [r for r in readings if not math.isnan(r)]
    return max(judged) if judged else math.nan


def _axis_blur(first: np.ndarray, second: np.ndarray, noise_var: float) -> float:
    """One axis of :func:`edge_blur_px`, from its first and second differences."""
    second_raw = float(np.mean(second * second))
    second_noise = _SECOND_DIFF_NOISE_GAIN * noise_var
    if second_noise > _MAX_NOISE_SHARE * second_raw:
        return math.nan
    first_energy = float(np.mean(first * first)) - _FIRST_DIFF_NOISE_GAIN * noise_var
    if first_energy < _MIN_STRUCTURE_ENERGY:
        return math.nan
    return _LAG * math.sqrt(first_energy / (2.0 * (second_raw - second_noise)))


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
    """The problems ``q`` shows under ``t``, each a short phrase with the value that tripped it.

    A verdict explained by another is left out: a too-dark or too-bright image has a low std and
    featureless tiles because of its exposure (a lens cap reads as too dark), and a low-contrast
    one has featureless tiles because of the contrast (synthetic fog: 3 of 12 images had 40-50 %
    featureless tiles, 2 of them low contrast). "Blocked" is kept for a featureless part of an
    image whose contrast is otherwise fine: a lens half covered by mud.
    """
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
    low_contrast = q.contrast_std < t.low_contrast_std and not exposure_problem
    if low_contrast:  # fog whites out the distance: its featureless tiles are not a blocked lens
        problems.append(f"low contrast (std {q.contrast_std:.1f} < {t.low_contrast_std:g}; fog, glare, "
                        f"covered lens?)")
    elif q.featureless_fraction >= t.blocked_fraction and not exposure_problem:
        problems.append(f"blocked lens or occlusion? ({100 * q.featureless_fraction:.0f} % featureless)")
    if q.noise_sigma > t.noise_sigma:
        problems.append(f"noisy (sigma {q.noise_sigma:.1f} > {t.noise_sigma:g})")
    return tuple(problems)


def assess(image: np.ndarray, thresholds: QualityThresholds | None = None, max_side: int = 320) -> ImageQuality:
    """Measures and verdicts of one image (what the node reports per camera)."""
    t = thresholds or QualityThresholds()
    q = measure(image, max_side, t)
    return replace(q, problems=judge(q, t))
