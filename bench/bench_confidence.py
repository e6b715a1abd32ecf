"""Which per-pixel confidence ranks the student's errors better: bin mass near the readout or entropy?

Trains a small student with the ``fsmde`` CLI on a synthetic ddad bag (or reuses
``--work``'s run), then scores held-out frames of another seed against the dense
synthetic ground truth and, for each measure of :mod:`fsmde_core.models.confidence`,
reports AbsRel per confidence decile (:func:`fsmde_core.metrics.abs_rel_by_confidence`)
the Spearman rank correlation between confidence and the pixel's abs-rel error
(more negative = ranks errors better), and the sparsification area: the AbsRel of
the most confident 10 %, 20 %, ..., 100 % of the pixels, averaged (lower = filtering
by confidence removes more of the error).

It also checks the claim ``fsmde eval`` makes visible: with the default measure the most
confident decile has a lower AbsRel than the least confident one, for every seed (exit 1
otherwise). Not a unit test: students of a few dozen steps (3 frames, 36 steps, seeds
0/1/2) gave most / least 0.33 / 0.40, 0.54 / 0.48, 0.30 / 0.60, so the ordering needs
the trained student this bench builds. Results go to ``bench/results/confidence.md``.

    python bench/bench_confidence.py [--work /tmp/fsmde_confidence] [--steps 192] [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fsmde_core.checkpoint import load_student  # noqa: E402
from fsmde_core.data.bag import BagSource  # noqa: E402
from fsmde_core.data.config import DataConfig  # noqa: E402
from fsmde_core.metrics import abs_rel_by_confidence, confidence_histogram, eval_mask  # noqa: E402
from fsmde_core.models.confidence import CONFIDENCE_KINDS, student_confidence  # noqa: E402

WIDTH, HEIGHT = 160, 96
TRAIN_FRAMES, HELD_OUT_FRAMES = 16, 6


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})


def fsmde(*args: str) -> list[str]:
    return [sys.executable, "-m", "fsmde_core.cli", *args]


def synth(out: Path, seed: int, frames: int) -> Path:
    if not out.exists():
        run(fsmde("synth", "--preset", "ddad", "--frames", str(frames), "--seed", str(seed), "--width", str(WIDTH),
                  "--height", str(HEIGHT), "--out", str(out), "--no-progress", "--workers", "1"))
    return out


def train(bag: Path, out: Path, steps: int, seed: int) -> Path:
    if not (out / "student.safetensors").exists():
        epochs = -(-steps // TRAIN_FRAMES)
        run(fsmde("train", "--config", str(ROOT / "config" / "train_tiny.yaml"), "--bag", str(bag), "--out", str(out),
                  "--no-progress", f"seed={seed}", f"data.width={WIDTH}", f"data.height={HEIGHT}",
                  "teacher.cache_height=48", "teacher.cache_width=80", f"optim.epochs={epochs}",
                  f"optim.max_steps={steps}", "optim.checkpoint_every=1000", "log.tensorboard=false"))
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (ties broken by order: the pixel counts make that negligible)."""
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def sparsification_area(deciles: list[dict]) -> float:
    """Mean over k = 1..10 of the pixel-weighted AbsRel of the k most confident deciles."""
    kept = deciles[::-1]
    areas = []
    for k in range(1, len(kept) + 1):
        pixels = sum(d["pixels"] for d in kept[:k])
        areas.append(sum(d["abs_rel"] * d["pixels"] for d in kept[:k]) / pixels)
    return float(np.mean(areas))


def measure(run_dir: Path, bag: Path) -> dict[str, dict]:
    """Per confidence kind: deciles, Spearman(confidence, abs-rel error) and the overall AbsRel."""
    model, cfg, _ = load_student(run_dir, map_location="cpu")
    config = DataConfig(width=WIDTH, height=HEIGHT, require_lidar=False)
    cap = float(cfg.max_depth)
    pixels: dict[str, list[np.ndarray]] = {k: [] for k in CONFIDENCE_KINDS}
    errors: list[np.ndarray] = []
    hist = {k: [0, 0] for k in CONFIDENCE_KINDS}
    for sample in BagSource([bag], config):
        x = torch.from_numpy(sample.images).permute(0, 3, 1, 2).float().div(255.0)
        with torch.inference_mode():
            focal_width = torch.tensor([m.K[0, 0] / m.width for m in sample.models], dtype=torch.float32)
            out = model(x, focal_width)  # camera-aware centres read fx / width (student.focal_canonical)
            conf = {k: student_confidence(model, out, k)[:, 0].numpy() for k in CONFIDENCE_KINDS}
        pred, gt = out.depth[:, 0].numpy(), sample.gt_depth
        valid = ~np.asarray(sample.masks, dtype=bool)
        mask = eval_mask(gt, valid, cap)
        g = np.clip(gt[mask], 1e-3, cap)
        errors.append(np.abs(np.clip(pred[mask], 1e-3, cap) - g) / g)
        for k in CONFIDENCE_KINDS:
            pixels[k].append(conf[k][mask])
            count, err_sum = confidence_histogram(pred, gt, conf[k], valid, cap)
            hist[k][0] += count
            hist[k][1] += err_sum
    err = np.concatenate(errors)
    return {k: {"deciles": abs_rel_by_confidence(*hist[k]), "spearman": spearman(np.concatenate(pixels[k]), err),
                "abs_rel": float(err.mean())} for k in CONFIDENCE_KINDS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/fsmde_confidence"))
    parser.add_argument("--steps", type=int, default=192)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "confidence.md")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    train_bag = synth(args.work / "train_bag", 0, TRAIN_FRAMES)
    held_out = synth(args.work / "held_out_bag", 1, HELD_OUT_FRAMES)
    lines = [
        "# Confidence: which measure ranks the student's errors (bench/bench_confidence.py)",
        "",
        f"- {datetime.date.today()}, {platform.processor() or platform.machine()}, torch {torch.__version__}",
        f"- student: config/train_tiny.yaml at {WIDTH}x{HEIGHT}, {args.steps} steps on {TRAIN_FRAMES} frames of "
        f"synthetic ddad seed 0; scored on {HELD_OUT_FRAMES} held-out frames of seed 1, dense GT, metric mode",
        f"- command: `python bench/bench_confidence.py --steps {args.steps} --seeds {args.seeds}`",
        "",
        "| seed | measure | AbsRel all | AbsRel least confident decile | AbsRel most confident decile "
        "| Spearman(conf, error) | sparsification area |",
        "|---|---|---|---|---|---|---|",
    ]
    failures = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        run_dir = train(train_bag, args.work / f"run_seed{seed}", args.steps, seed)
        for kind, r in measure(run_dir, held_out).items():
            d = r["deciles"]
            row = (f"| {seed} | {kind} | {r['abs_rel']:.3f} | {d[0]['abs_rel']:.3f} | {d[-1]['abs_rel']:.3f} "
                   f"| {r['spearman']:.3f} | {sparsification_area(d):.3f} |")
            print(row, flush=True)
            lines.append(row)
            print("   deciles:", " ".join(f"{x['abs_rel']:.3f}" for x in d), flush=True)
            if kind == CONFIDENCE_KINDS[0] and not d[-1]["abs_rel"] < d[0]["abs_rel"]:
                failures.append(f"seed {seed}: most confident decile AbsRel {d[-1]['abs_rel']:.3f} is not below "
                                f"the least confident one's {d[0]['abs_rel']:.3f}")
            decile_text = " ".join(f"{x['abs_rel']:.2f}" for x in d)
            lines.append(f"|  | deciles (least -> most confident) | {decile_text} | | | | |")
    lines += ["", "Sparsification area: the AbsRel of the most confident 10 %, 20 %, ..., 100 % of the pixels, "
              "averaged (what thresholding by confidence buys). The choice of the default measure and why: "
              "`fsmde_core/models/confidence.py`."]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"written {args.out}")
    for failure in failures:
        print(f"FAIL ({CONFIDENCE_KINDS[0]}): {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
