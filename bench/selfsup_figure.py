"""One picture of the training-without-LiDAR benchmark: reflective surfaces and what each student makes of them.

Rows: the cameras of one held-out set with the most reflective pixels;
columns: the input with the renderer's reflective mask tinted, the ground
truth and each checkpoint's metric depth (inverse depth, 2-80 m, one colour
scale), labelled with its AbsRel overall and inside the mask. Reads what
``bench/bench_selfsup.py`` wrote, through the same reader and predictor as
``fsmde eval``.

    python bench/selfsup_figure.py --work /tmp/fsmde_selfsup \\
        --runs a_lidar_seed0,c_photo_kd_seed0,d_photo_kd_refl_seed0 --out bench/results/selfsup.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from robust_figure import front_sample, save_grid, tile_with_label

from fsmde_core.predictors import student_predictor
from fsmde_core.report import colour_inverse_depth


def tinted(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with reflective pixels pushed towards magenta (the mask without hiding the scene)."""
    out = rgb.astype(np.float32)
    out[mask] = 0.5 * out[mask] + 0.5 * np.array([255.0, 0.0, 255.0])
    return out.astype(np.uint8)


def abs_rel(depth: np.ndarray, gt: np.ndarray, where: np.ndarray) -> float:
    return float(np.mean(np.abs(depth[where] - gt[where]) / gt[where])) if where.any() else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--runs", required=True, help="comma-separated run directory names under WORK/runs")
    ap.add_argument("--scene", type=int, default=101)
    ap.add_argument("--cameras", type=int, default=3, help="rows: this many cameras, most reflective first")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    runs = args.runs.split(",")
    predictors = [student_predictor(args.work / "runs" / r) for r in runs]
    sample = front_sample(args.work / f"heldout_f4_seed{args.scene}", predictors[0].size)
    if sample.gt_reflective is None:
        raise SystemExit(f"{args.work}/heldout_f4_seed{args.scene} has no reflective mask (fsmde synth --reflective)")
    depths = [p.predict(sample) for p in predictors]
    order = np.argsort([-m.mean() for m in sample.gt_reflective])[: args.cameras]
    rows = []
    for cam in order:
        gt, mask = sample.gt_depth[cam], sample.gt_reflective[cam]
        valid = np.isfinite(gt) & (gt > 0) & (gt <= 80.0)
        tiles = [tile_with_label(tinted(sample.images[cam], mask), f"{sample.camera_names[cam]}: reflective "
                                 f"{100 * mask.mean():.0f} %"),
                 tile_with_label((colour_inverse_depth(np.where(valid, gt, np.inf), 2.0, 80.0) * 255)
                                 .astype(np.uint8), "ground truth (the surfaces)")]
        for name, depth in zip(runs, depths, strict=True):
            label = (f"{name}: {abs_rel(depth[cam], gt, valid):.3f} / "
                     f"reflective {abs_rel(depth[cam], gt, valid & mask):.3f}")
            tiles.append(tile_with_label((colour_inverse_depth(depth[cam], 2.0, 80.0) * 255).astype(np.uint8), label))
        rows.append(tiles)
    save_grid(rows, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
