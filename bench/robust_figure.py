"""One picture of the robustness benchmark: one scene clear, at night, in fog and in rain, and each student's depth.

Rows: conditions; columns: the front camera's input, the ground truth and each
checkpoint's metric depth (same colour scale: inverse depth, 2-80 m), with the
image's AbsRel in the corner. Reads the bags and checkpoints that
``bench/bench_robust.py`` wrote, through the same reader and predictor as
``fsmde eval``.

    python bench/robust_figure.py --work /tmp/fsmde_robust --runs a_today_seed0,b_augment_seed0 \\
        --out bench/results/robust.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fsmde_core.data.bag import BagSource
from fsmde_core.data.config import DataConfig
from fsmde_core.predictors import student_predictor
from fsmde_core.report import colour_inverse_depth


def front_sample(bag: Path, size: tuple[int, int]):
    """The first surround set of ``bag`` at the model's size, with its dense ground truth."""
    cfg = DataConfig(width=size[0], height=size[1], require_lidar=False)
    return next(iter(BagSource([bag], cfg)))


def tile_with_label(rgb: np.ndarray, text: str) -> Image.Image:
    pil = Image.fromarray(rgb)
    draw = ImageDraw.Draw(pil)
    draw.rectangle(draw.textbbox((4, 4), text), fill=(0, 0, 0))  # readable on the bright (near) colours too
    draw.text((4, 4), text, fill=(255, 255, 255))
    return pil


def save_grid(rows: list[list[Image.Image]], out: Path) -> None:
    """Equal-sized tiles as a grid (2 px black gaps) saved to ``out``."""
    w, h = rows[0][0].size
    canvas = Image.new("RGB", (len(rows[0]) * (w + 2), len(rows) * (h + 2)), (0, 0, 0))
    for r, tiles in enumerate(rows):
        for c, t in enumerate(tiles):
            canvas.paste(t, (c * (w + 2), r * (h + 2)))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    print(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--runs", required=True, help="comma-separated run directory names under WORK/runs")
    ap.add_argument("--scene", type=int, default=101)
    ap.add_argument("--camera", default="front")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    runs = args.runs.split(",")
    predictors = [student_predictor(args.work / "runs" / r) for r in runs]
    size = predictors[0].size
    rows = []
    for condition in ("clear", "night", "fog", "rain"):
        suffix = "" if condition == "clear" else f"_{condition}"
        sample = front_sample(args.work / f"heldout_f4_seed{args.scene}{suffix}", size)
        cam = list(sample.camera_names).index(args.camera)
        gt = sample.gt_depth[cam]
        valid = np.isfinite(gt) & (gt > 0) & (gt <= 80.0)
        tiles = [tile_with_label(sample.images[cam], condition),
                 tile_with_label((colour_inverse_depth(np.where(valid, gt, np.inf), 2.0, 80.0) * 255)
                                 .astype(np.uint8), "ground truth")]
        for name, pred in zip(runs, predictors, strict=True):
            depth = pred.predict(sample)[cam]
            abs_rel = float(np.mean(np.abs(depth[valid] - gt[valid]) / gt[valid]))
            tiles.append(tile_with_label((colour_inverse_depth(depth, 2.0, 80.0) * 255).astype(np.uint8),
                                         f"{name}: AbsRel {abs_rel:.3f}"))
        rows.append(tiles)
    save_grid(rows, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
