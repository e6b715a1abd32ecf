"""Pictures of what RViz would show: the six depth images and a bird's-eye view
of the fused cloud. Used by the demo and the node snapshot tool, so a user
without a display (or without RViz) still sees the result.

The depth colouring and camera tiling are shared with the evaluation report
(:mod:`fsmde_core.report`), so the same scene looks the same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fsmde_core.report import colour_inverse_depth, grid_layout, tile


def birds_eye_view(
    xyz: np.ndarray,
    rgb: np.ndarray | None = None,
    extent_m: float = 40.0,
    pixels: int = 640,
    ego_length_m: float = 4.6,
    ego_width_m: float = 1.9,
) -> np.ndarray:
    """Top-down image of a cloud in the vehicle frame (x forward = up, y left = left).

    Each cell shows its highest point (what a viewer looking down sees), in the
    point's colour or, without colour, coloured by height. Vectorised: one sort.
    """
    scale = pixels / (2 * extent_m)
    cx = cy = pixels / 2
    base = Image.new("RGB", (pixels, pixels), (24, 24, 24))
    grid = ImageDraw.Draw(base)
    for ring_m in (10, 20, 30, 40, 60, 80):  # range rings under the points
        if ring_m < extent_m:
            rr = ring_m * scale
            grid.ellipse([cx - rr, cy - rr, cx + rr, cy + rr], outline=(70, 70, 70))
    img = np.array(base)
    pts = np.asarray(xyz, dtype=np.float32)
    ok = np.isfinite(pts).all(axis=1)
    col = -pts[ok, 1] * scale + pixels / 2  # y left -> image left
    row = -pts[ok, 0] * scale + pixels / 2  # x forward -> image up
    z = pts[ok, 2]
    inside = (col >= 0) & (col < pixels) & (row >= 0) & (row < pixels)
    r, c, z = row[inside].astype(np.int64), col[inside].astype(np.int64), z[inside]
    if rgb is not None:
        colours = np.asarray(rgb)[ok][inside]
    else:
        import matplotlib

        t = np.clip((z + 0.5) / 6.0, 0, 1)
        colours = (matplotlib.colormaps["viridis"](t)[:, :3] * 255).astype(np.uint8)
    if r.size:
        cell = r * pixels + c
        order = np.lexsort((-z, cell))  # per cell, highest point first
        first = np.unique(cell[order], return_index=True)[1]
        sel = order[first]
        img.reshape(-1, 3)[cell[sel]] = colours[sel]
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    hl, hw = ego_length_m / 2 * scale, ego_width_m / 2 * scale
    draw.rectangle([cx - hw, cy - hl, cx + hw, cy + hl], outline=(255, 255, 255), width=2)
    draw.line([cx, cy - hl, cx, cy - hl - 0.8 * hl], fill=(255, 80, 80), width=2)  # heading
    draw.text((6, 6), f"bird's-eye view, {2 * extent_m:.0f} m x {2 * extent_m:.0f} m, rings every 10 m",
              fill=(220, 220, 220))
    return np.asarray(pil)


def depth_mosaic(
    depths: np.ndarray, names: Sequence[str], ring: Sequence[int], near: float = 1.0, far: float = 80.0
) -> np.ndarray:
    """(N, H, W) depth maps -> one RGB image with the cameras tiled in ring order."""
    coloured = (colour_inverse_depth(np.asarray(depths), near, far) * 255).astype(np.uint8)
    mosaic = tile(coloured, grid_layout(ring))
    pil = Image.fromarray(mosaic)
    draw = ImageDraw.Draw(pil)
    layout = grid_layout(ring)
    h, w = depths.shape[1:3]
    for r, row in enumerate(layout):
        for c, idx in enumerate(row):
            if idx is not None:
                draw.text((c * (w + 2) + 4, r * (h + 2) + 4), names[idx], fill=(255, 255, 255))
    return np.asarray(pil)


def save_png(path: str | Path, image: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image)).save(path)
    return path
