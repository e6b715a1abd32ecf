"""Test images with known degradations for the image-quality tests (unit and node).

Why a dead-leaves scene: overlapping opaque discs with power-law radii are the standard
stand-in for natural images in camera sharpness and texture tests (ISO 19567-2): sharp
occlusion edges at every scale, flat-ish regions between them, like a street scene. Each
leaf carries a faint shading so no large patch is perfectly flat (real surfaces never are).
The degradations are applied the way the world applies them: exposure scales the light,
fog blends toward an airlight grey, blur is a Gaussian point spread, noise is additive.
"""

from __future__ import annotations

import numpy as np


def dead_leaves(height: int, width: int, seed: int = 0, leaves: int = 600) -> np.ndarray:
    """(H, W, 3) float32 in [0, 255]: a sharp, textured scene (module doc)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.full((height, width, 3), 128.0, np.float32)
    radii = np.minimum((rng.pareto(2.0, leaves) + 1.0) * 0.03 * max(height, width), max(height, width) / 3)
    for r in radii:
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        colour = rng.uniform(40, 215, 3).astype(np.float32)
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 14)
        shading = 8.0 * np.sin((np.cos(angle) * xx[inside] + np.sin(angle) * yy[inside]) * 2 * np.pi / period)
        img[inside] = colour + shading[:, None]
    return img


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (H, W, C) image, reflected borders (numpy only: no scipy here)."""
    r = int(4 * sigma + 0.5)
    x = np.arange(-r, r + 1, dtype=np.float32)
    k = np.exp(-x * x / (2 * sigma * sigma))
    k /= k.sum()
    padded = np.pad(img, ((r, r), (r, r), (0, 0)), mode="reflect")
    rows = sum(k[i] * padded[i:i + img.shape[0]] for i in range(2 * r + 1))
    return sum(k[i] * rows[:, i:i + img.shape[1]] for i in range(2 * r + 1))


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def dark(img: np.ndarray, gain: float = 0.1) -> np.ndarray:
    """Night: a tenth of the light."""
    return to_uint8(img * gain)


def foggy(img: np.ndarray, transmission: float = 0.25, airlight: float = 200.0) -> np.ndarray:
    """Koschmieder's fog at one distance: I = t * J + (1 - t) * A."""
    return to_uint8(transmission * img + (1 - transmission) * airlight)


def noisy(img: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    return to_uint8(img + np.random.default_rng(seed).normal(0, sigma, img.shape))


def half_covered(img: np.ndarray, level: float = 60.0) -> np.ndarray:
    """The right half of the lens under mud: one dull, featureless level."""
    out = img.copy()
    out[:, img.shape[1] // 2:] = level
    return to_uint8(out)
