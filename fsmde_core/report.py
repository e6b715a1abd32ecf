"""Pictures and the markdown report of ``fsmde eval``.

Everything draws with matplotlib's object API (``Figure`` + Agg), never
``pyplot``: no global state, no GUI backend, safe in tests and on headless
machines.

Conventions of the pictures:

* Cameras are laid out *as seen from above the car*: for a six-camera ring
  (ring order CCW from the front: front, front-left, back-left, back,
  back-right, front-right) the top row is front-left / front / front-right and
  the bottom row back-left / back / back-right. Other rigs: ring order, rows
  of three.
* Depth is coloured by inverse depth (near = bright) on one scale shared by
  every camera, frame and by prediction and GT, so colours compare directly.
* Sparse LiDAR GT is dilated (nearest depth wins) for display only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fsmde_core.metrics import BOUNDARY_RADIUS

DEPTH_CMAP = "magma"
ERROR_CMAP = "inferno"
#: Abs-rel error shown at full colour; larger errors saturate.
ERROR_VMAX = 0.5


@dataclass
class MosaicFrame:
    """One surround set as evaluated (cameras in metric order, (N, H, W[, 3]) arrays)."""

    title: str
    images: np.ndarray  # uint8 RGB
    pred: np.ndarray  # depth as scored (aligned, clipped)
    gt: np.ndarray  # reference depth (sparse or dense)
    error: np.ndarray  # abs-rel per pixel, NaN where not scored
    masks: np.ndarray  # True = ego pixel


@dataclass
class CorruptionPicture:
    """One camera of the first frame under one corruption: what the model saw and what it predicted."""

    name: str
    severity: int
    camera: str
    image: np.ndarray  # (H, W, 3) uint8, corrupted
    pred: np.ndarray  # (H, W) depth as scored
    mask: np.ndarray  # (H, W) True = ego pixel


# ----------------------------------------------------------------- layout
def grid_layout(ring: Sequence[int]) -> list[list[int | None]]:
    """Camera indices on a grid: the bird's-eye 2x3 for six cameras, else ring rows of 3."""
    ring = list(ring)
    if len(ring) == 6:
        return [[ring[1], ring[0], ring[5]], [ring[2], ring[3], ring[4]]]
    rows = [ring[k:k + 3] for k in range(0, len(ring), 3)]
    return [r + [None] * (3 - len(r)) for r in rows] if len(ring) > 3 else [list(ring)]


def tile(images: np.ndarray, layout: list[list[int | None]], gap: int = 2) -> np.ndarray:
    """(N, H, W, C) float/uint8 -> one image with the cameras placed per ``layout``."""
    h, w = images.shape[1:3]
    rows, cols = len(layout), len(layout[0])
    out = np.zeros((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, *images.shape[3:]),
                   dtype=images.dtype)
    for r, row in enumerate(layout):
        for c, k in enumerate(row):
            if k is not None:
                out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = images[k]
    return out


def tile_centres(
    shape: tuple[int, int], layout: list[list[int | None]], gap: int = 2
) -> dict[int, tuple[float, float]]:
    """Top-left label anchor (x, y) of each camera's tile, for annotations."""
    h, w = shape
    return {k: (c * (w + gap) + 3.0, r * (h + gap) + 3.0)
            for r, row in enumerate(layout) for c, k in enumerate(row) if k is not None}


# ------------------------------------------------------------------ colour
def depth_range(frames: Sequence[MosaicFrame], cap: float) -> tuple[float, float]:
    """(near, far) of the shared colour scale: 2nd percentile of all depths, and ``cap``."""
    vals = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for f in frames for a in (f.pred, f.gt)])
    vals = vals[np.isfinite(vals) & (vals > 0)]
    near = float(np.percentile(vals, 2)) if vals.size else 1.0
    return max(min(near, 0.5 * cap), 1e-3), float(cap)


def colour_inverse_depth(depth: np.ndarray, near: float, far: float, cmap: str = DEPTH_CMAP) -> np.ndarray:
    """(…, H, W) depth -> (…, H, W, 3) float RGB; near = bright; NaN/<=0 -> black, +Inf -> far."""
    import matplotlib

    d = np.asarray(depth, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = (1.0 / np.clip(d, near, far) - 1.0 / far) / (1.0 / near - 1.0 / far)
    rgb = matplotlib.colormaps[cmap](np.clip(np.nan_to_num(x, nan=0.0), 0, 1))[..., :3]
    return np.where((np.isnan(d) | (d <= 0))[..., None], 0.0, rgb)


def colour_error(err: np.ndarray, vmax: float = ERROR_VMAX, cmap: str = ERROR_CMAP) -> np.ndarray:
    """Abs-rel error -> RGB; pixels without a score are dark grey (not 'zero error')."""
    import matplotlib

    e = np.asarray(err, dtype=np.float64)
    rgb = matplotlib.colormaps[cmap](np.clip(np.nan_to_num(e, nan=0.0) / vmax, 0, 1))[..., :3]
    return np.where(np.isnan(e)[..., None], 0.15, rgb)


def dilate_nearest(depth: np.ndarray, radius: int = 1) -> np.ndarray:
    """Display-only: spread sparse depth over a (2r+1)² window, nearest depth wins (NaN-aware)."""
    d = np.asarray(depth, dtype=np.float64)
    if radius < 1 or np.isfinite(d).mean() > 0.5:  # dense already
        return d
    h, w = d.shape[-2:]
    pad = np.pad(np.where(np.isnan(d), np.inf, d), [(0, 0)] * (d.ndim - 2) + [(radius, radius)] * 2,
                 constant_values=np.inf)
    out = np.full(d.shape, np.inf)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out = np.minimum(out, pad[..., dy:dy + h, dx:dx + w])
    return np.where(np.isinf(out) & ~np.isinf(d), np.nan, out)


def _shade_ego(rgb: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Grey out ego pixels so nobody reads them as predictions."""
    return np.where(masks[..., None], 0.5 * rgb + 0.25, rgb)


# ----------------------------------------------------------------- figures
def _figure(width_in: float, height_in: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")


def _panel(ax: Any, image: np.ndarray, title: str, layout: list[list[int | None]], names: Sequence[str],
           tile_shape: tuple[int, int]) -> None:
    ax.imshow(image, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    for k, (x, y) in tile_centres(tile_shape, layout).items():
        ax.text(x, y, names[k], color="white", fontsize=6, va="top", ha="left",
                bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "linewidth": 0})


def save_depth_mosaic(path: Path, frames: Sequence[MosaicFrame], names: Sequence[str], ring: Sequence[int],
                      cap: float) -> None:
    """``depth_mosaic.png``: per frame, RGB / prediction / GT / abs-rel error, cameras on the ring grid."""
    layout = grid_layout(ring)
    near, far = depth_range(frames, cap)
    h, w = frames[0].images.shape[1:3]
    aspect = (len(layout) * h) / (len(layout[0]) * w)
    fig = _figure(14, len(frames) * 2 * (7 * aspect + 0.35))
    axes = fig.subplots(2 * len(frames), 2, squeeze=False)
    for f_i, fr in enumerate(frames):
        panels = [
            (_shade_ego(fr.images / 255.0, fr.masks), f"{fr.title}: RGB"),
            (_shade_ego(colour_inverse_depth(fr.pred, near, far), fr.masks),
             f"prediction (inverse depth, {near:.1f}-{far:.0f} m)"),
            (colour_inverse_depth(dilate_nearest(fr.gt), near, far), "ground truth (same scale)"),
            (colour_error(dilate_nearest(fr.error)), f"abs-rel error (0-{ERROR_VMAX:g})"),
        ]
        for p_i, (img, title) in enumerate(panels):
            _panel(axes[2 * f_i + p_i // 2, p_i % 2], tile(img, layout), title, layout, names, (h, w))
    fig.savefig(path)


def save_error_maps(path: Path, err_sum: np.ndarray, err_count: np.ndarray, names: Sequence[str],
                    ring: Sequence[int], per_camera: dict[str, dict[str, Any]]) -> None:
    """``error_maps.png``: per-pixel mean abs-rel over all frames (where errors sit: horizon, edges, ego)."""
    layout = grid_layout(ring)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_err = np.where(err_count > 0, err_sum / np.maximum(err_count, 1), np.nan)
    h, w = mean_err.shape[1:]
    aspect = (len(layout) * h) / (len(layout[0]) * w)
    fig = _figure(10, 10 * aspect + 0.9)
    ax = fig.subplots()
    labels = [f"{n}  abs_rel {_fmt(per_camera.get(n, {}).get('abs_rel'))}" for n in names]
    _panel(ax, tile(colour_error(dilate_nearest(mean_err)), layout), "mean abs-rel error over all frames "
           f"(0-{ERROR_VMAX:g}; grey = never scored)", layout, labels, (h, w))
    _error_colourbar(fig, ax)
    fig.savefig(path)


def _error_colourbar(fig: Any, ax: Any) -> None:
    import matplotlib
    from matplotlib.cm import ScalarMappable

    sm = ScalarMappable(norm=matplotlib.colors.Normalize(0, ERROR_VMAX), cmap=ERROR_CMAP)
    fig.colorbar(sm, ax=ax, orientation="horizontal", fraction=0.05, label="abs-rel error")


def save_metric_bars(path: Path, result: dict[str, Any], names: Sequence[str]) -> None:
    """``per_camera_metrics.png``: abs_rel and δ<1.25 per camera, dashed line = mean of cameras."""
    fig = _figure(10, 3.6)
    axes = fig.subplots(1, 2)
    x = np.arange(len(names))
    for ax, key, colour in zip(axes, ("abs_rel", "a1"), ("tab:red", "tab:blue"), strict=True):
        vals = [_num(result["per_camera"][n][key]) for n in names]
        ax.bar(x, vals, color=colour)
        mean = _num(result["mean"][key])
        if np.isfinite(mean):
            ax.axhline(mean, color="black", linestyle="--", linewidth=1, label=f"mean {mean:.3f}")
            ax.legend(fontsize=8)
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{key} per camera ({result['mode']}, {result['gt']} GT)", fontsize=9)
        if key == "a1":
            ax.set_ylim(0, 1)
    fig.savefig(path)


def save_confidence_calibration(path: Path, deciles: Sequence[dict[str, Any]], result: dict[str, Any]) -> None:
    """``confidence_calibration.png``: AbsRel per confidence decile, least confident left.

    A useful confidence makes the bars fall from left to right; the dashed line is the
    run's pixel-weighted AbsRel over all deciles (pixels, not the per-camera mean).
    """
    fig = _figure(8, 3.6)
    ax = fig.subplots()
    x = np.arange(len(deciles))
    ax.bar(x, [d["abs_rel"] for d in deciles], color="tab:purple")
    pixels = sum(d["pixels"] for d in deciles)
    overall = sum(d["abs_rel"] * d["pixels"] for d in deciles) / max(pixels, 1)
    ax.axhline(overall, color="black", linestyle="--", linewidth=1, label=f"all pixels {overall:.3f}")
    ax.legend(fontsize=8)
    labels = [f"{d['confidence_min']:.2f}-{d['confidence_max']:.2f}" for d in deciles]
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=7)
    ax.set_xlabel("confidence (decile of scored pixels, least confident left)", fontsize=8)
    ax.set_ylabel("abs_rel", fontsize=8)
    ax.set_title(f"error per confidence decile ({result['mode']}, {result['gt']} GT)", fontsize=9)
    fig.savefig(path)


def save_corruption_picture(path: Path, picture: CorruptionPicture, near: float, far: float) -> None:
    """``corruption_<name>.png``: the corrupted input beside its predicted depth (the report's shared scale)."""
    h, w = picture.image.shape[:2]
    fig = _figure(10, 5 * h / w + 0.45)
    axes = fig.subplots(1, 2)
    panels = [
        (_shade_ego(picture.image / 255.0, picture.mask),
         f"{picture.name} @ severity {picture.severity}: {picture.camera}"),
        (_shade_ego(colour_inverse_depth(picture.pred, near, far), picture.mask),
         f"prediction (inverse depth, {near:.1f}-{far:.0f} m)"),
    ]
    for ax, (image, title) in zip(axes, panels, strict=True):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.savefig(path)


# --------------------------------------------------------------- markdown
def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _fmt(v: Any, digits: int = 4) -> str:
    return "n/a" if v is None or not np.isfinite(float(v)) else f"{float(v):.{digits}f}"


def _md(text: str) -> str:
    """Escape a name for a markdown table cell (a '|' would split the cell)."""
    return str(text).replace("|", "\\|")


def markdown_report(result: dict[str, Any], names: Sequence[str], bags: Sequence[Path],
                    pictures: Sequence[str], corruption_pictures: Sequence[str] = ()) -> str:
    """The report.md text: what was evaluated, the metric table, cross-view, pictures."""
    keys = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
    lines = [
        "# Depth evaluation",
        "",
        f"- source: `{result['source']}`",
        f"- bags: {', '.join(f'`{b}`' for b in bags)}",
        f"- frames: {result['frames']}; ground truth: {result['gt']}; alignment: {result['mode']}; "
        f"cap: {result['cap']:g} m",
        "",
        "| camera | " + " | ".join(keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    lines += [f"| {_md(n)} | " + " | ".join(_fmt(result["per_camera"][n][k]) for k in keys) + " |"
              for n in names]
    lines.append("| **mean** | " + " | ".join(f"**{_fmt(result['mean'][k])}**" for k in keys) + " |")
    lines += [
        "",
        "abs_rel, sq_rel, rmse (m), rmse_log: lower is better; a1..a3 (δ < 1.25ⁿ): higher is better. "
        "Per camera = mean over frames; mean = mean over cameras.",
        "",
        "## Cross-view consistency",
        "",
        "Mean relative depth difference in the overlap of adjacent cameras: "
        f"**{_fmt(result['mean']['cross_view'])}**"
        + (f" (dense ground truth, the floor: {_fmt(result['cross_view_gt'])})"
           if result.get("cross_view_gt") is not None else ""),
        "",
        "| pair | prediction | inlier fraction | ground truth |",
        "|---|---|---|---|",
    ]
    lines += [f"| {_md(p)} | {_fmt(v['pred'])} | {_fmt(v['pred_inliers'], 3)} | {_fmt(v['gt'])} |"
              for p, v in result["cross_view_pairs"].items()]
    lines += ["", "Correspondences with a relative difference above 0.5 count as occlusions and are left out "
              "(inlier fraction).", ""]
    lines += _boundary_section(result, names)
    lines += _reflective_section(result.get("reflective"))
    lines += _scale_section(result.get("scale"), names)
    lines += _confidence_section(result.get("confidence_deciles"))
    lines += _robustness_section(result, corruption_pictures)
    lines += ["## Pictures", ""]
    lines += [f"![{Path(p).stem}]({p})" for p in pictures]
    return "\n".join(lines) + "\n"


def _boundary_section(result: dict[str, Any], names: Sequence[str]) -> list[str]:
    """The report.md lines of AbsRel near object boundaries vs elsewhere (only with dense synthetic GT)."""
    if "abs_rel_boundary" not in result["mean"]:
        return []
    lines = ["## Object boundaries", "",
             f"AbsRel of the pixels within {BOUNDARY_RADIUS} px of a ground-truth depth discontinuity or class "
             "boundary, and of the others.", "",
             "| camera | abs_rel_boundary | abs_rel_interior |", "|---|---|---|"]
    rows = [(_md(n), result["per_camera"][n]) for n in names] + [("**mean**", result["mean"])]
    lines += [f"| {label} | {_fmt(v.get('abs_rel_boundary'))} | {_fmt(v.get('abs_rel_interior'))} |"
              for label, v in rows]
    return [*lines, ""]


def _reflective_section(refl: dict[str, Any] | None) -> list[str]:
    """Depth error inside / outside the bag's reflective-surface mask; nothing when the bag has none."""
    if not refl:
        return []
    lines = ["## Reflective surfaces", "",
             f"Pixels on reflective surfaces (car paint and windows, glass facades, puddles): "
             f"{_fmt(refl.get('fraction'), 3)} of the scored pixels. Pooled over every scored pixel, so "
             "inside and outside combine into all by that fraction.", "",
             "| region | AbsRel | SqRel | RMSE | δ<1.25 | pixels |", "|---|---|---|---|---|---|"]
    lines += [f"| {region} | {_fmt(refl[region]['abs_rel'])} | {_fmt(refl[region]['sq_rel'])} | "
              f"{_fmt(refl[region]['rmse'])} | {_fmt(refl[region]['a1'], 3)} | {refl[region]['pixels']} |"
              for region in ("inside", "outside", "all") if region in refl]
    return [*lines, ""]


def _scale_section(scale: dict[str, Any] | None, names: Sequence[str]) -> list[str]:
    """The report.md lines of the per-image scale error (bias and spread of median(pred/gt))."""
    if not scale:
        return []
    lines = ["## Per-image scale error", "",
             "s = median(prediction / ground truth) per image (1 = right scale). Bias = mean of log s "
             "(as a factor: exp); spread = std of log s over the images; p10 / p90 of s.", "",
             "| camera | bias log s | bias factor | spread log s | p10 | p90 | images |",
             "|---|---|---|---|---|---|---|"]
    rows = [(_md(n), scale["per_camera"][n]) for n in names] + [("**all images**", scale["overall"])]
    lines += [f"| {label} | {_fmt(v['bias_log'])} | {_fmt(v['bias_factor'], 3)} | {_fmt(v['spread_log'])} | "
              f"{_fmt(v['p10'], 3)} | {_fmt(v['p90'], 3)} | {v['images']} |" for label, v in rows]
    return [*lines, ""]


def _confidence_section(deciles: Sequence[dict[str, Any]] | None) -> list[str]:
    """The report.md lines of the confidence calibration (none for a model without confidence)."""
    if not deciles:
        return []
    lines = ["## Confidence calibration", "",
             "AbsRel per confidence decile of the scored pixels (least confident first): "
             "it should fall as confidence rises.", "",
             "| confidence | abs_rel | pixels |", "|---|---|---|"]
    lines += [f"| {d['confidence_min']:.3f}-{d['confidence_max']:.3f} | {_fmt(d['abs_rel'])} | {d['pixels']} |"
              for d in deciles]
    return [*lines, ""]


def _robustness_section(result: dict[str, Any], pictures: Sequence[str]) -> list[str]:
    """The report.md lines of the corruption suite: mDEE / mRR, AbsRel per severity, DEE and RR per corruption."""
    robust, per = result.get("robustness"), result.get("corruptions")
    if not robust or not per:
        return []
    severities = sorted({int(s) for levels in per.values() for s in levels})
    lines = ["## Robustness to image corruptions", "",
             "The same frames with every camera image corrupted (RoboDepth / KITTI-C suite, "
             f"`fsmde_core.corruptions`, seed {robust.get('seed', 0)}); ground truth untouched. "
             "DEE = (AbsRel - δ1 + 1) / 2 (0 = perfect); DEE of a corruption = mean over its severities; "
             "mDEE = mean over corruptions; RR = (1 - DEE) / (1 - DEE_clean); mRR = mean over corruptions.", "",
             f"- clean DEE: **{_fmt(robust['dee_clean'])}**",
             f"- mDEE: **{_fmt(robust['mdee'])}** over {robust['corruptions']} corruptions "
             f"({robust['severities']} corruption/severity passes)",
             f"- mRR: **{_fmt(robust['mrr'])}**", "",
             "| corruption | " + " | ".join(f"abs_rel @{s}" for s in severities) + " | DEE | RR |",
             "|---" * (len(severities) + 3) + "|"]
    for name, levels in per.items():
        cells = [_fmt(levels[str(s)]["abs_rel"]) if str(s) in levels else "-" for s in severities]
        summary = robust["per_corruption"].get(name, {})
        lines.append(f"| {_md(name)} | " + " | ".join(cells)
                     + f" | {_fmt(summary.get('dee'))} | {_fmt(summary.get('rr'), 3)} |")
    lines += ["", "Only all 18 corruptions at all 5 severities give numbers comparable with RoboDepth's.", ""]
    lines += [f"![{Path(p).stem}]({p})" for p in pictures]
    return [*lines, ""] if pictures else lines


def write_report(out_dir: Path, result: dict[str, Any], names: Sequence[str], ring: Sequence[int],
                 frames: Sequence[MosaicFrame], err_sum: np.ndarray | None, err_count: np.ndarray | None,
                 bags: Sequence[Path], corruption_pictures: dict[str, CorruptionPicture] | None = None,
                 ) -> list[Path]:
    """Write the pictures (three, the confidence calibration for a model with confidence, one per
    corruption when the suite ran) and report.md into ``out_dir``; returns the paths written."""
    out_dir = Path(out_dir)
    written = []
    if frames:
        save_depth_mosaic(out_dir / "depth_mosaic.png", frames, names, ring, float(result["cap"]))
        written.append(out_dir / "depth_mosaic.png")
    if err_sum is not None and err_count is not None:
        save_error_maps(out_dir / "error_maps.png", err_sum, err_count, names, ring, result["per_camera"])
        written.append(out_dir / "error_maps.png")
    save_metric_bars(out_dir / "per_camera_metrics.png", result, names)
    written.append(out_dir / "per_camera_metrics.png")
    if result.get("confidence_deciles"):
        save_confidence_calibration(out_dir / "confidence_calibration.png", result["confidence_deciles"], result)
        written.append(out_dir / "confidence_calibration.png")
    corrupted = []
    if corruption_pictures:
        near, far = depth_range(frames, float(result["cap"])) if frames else (1.0, float(result["cap"]))
        for name, picture in corruption_pictures.items():
            path = out_dir / f"corruption_{name}.png"
            save_corruption_picture(path, picture, near, far)
            corrupted.append(path)
    md = out_dir / "report.md"
    md.write_text(markdown_report(result, names, bags, [p.name for p in written], [p.name for p in corrupted]))
    return [*written, *corrupted, md]
