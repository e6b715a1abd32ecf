"""Training without LiDAR benchmark (issue 12): how close does video self-supervision come to LiDAR?

Same student, same scenes, same steps and seeds, trained five ways on synthetic
bags with reflective materials (``fsmde synth --reflective``: glossy car paint,
windows, glass facades, puddles — view-dependent surfaces that break the
photometric loss's Lambertian assumption):

  (a) lidar             today's objective on the LiDAR bags (config/train_tiny.yaml)
  (b) photo             photometric only: the same scenes written without LiDAR (``--no-lidar``)
  (c) photo_kd          photometric + CKD + VRKD (the centres' metres from the video through CKD's cross depth)
  (d) photo_kd_refl     (c) + the reflective mask (intrinsic decomposition; the teacher fills the masked pixels)
  (e) lidar_photo       (a) + the photometric terms

evaluated in metric mode against the dense synthetic ground truth on held-out
reflective scenes (the distillation benchmark's set A seeds, rendered with
``--reflective``): AbsRel overall and inside the reflective mask, and the metric
scale error of each run (``exp(bias) - 1`` of the per-image median pred/GT).

**The goals** (issue 12): the LiDAR-free student within 15 % of the
LiDAR-supervised one on AbsRel with its scale within 5 %; reflective masking
lowering the reflective-pixel AbsRel by at least 10 % ((d) vs (c)). Every claim
is a PAIRED difference over the same seeds (same initialisation and data
order), mean and 95 % t-interval (``bench/paired_stats.py``), as in
``bench_distill.py``.

    python bench/bench_selfsup.py --work /tmp/fsmde_selfsup [--seeds 0,1,2] [--steps 300]
    python bench/bench_selfsup.py --variants a_lidar,c_photo_kd --add-variant 'c_posenet=loss.photometric_pose=posenet'

Time on the 2-core CPU machine: rendering the bags ~10 min once; a 300-step
photometric training 2-3x a supervised one (6 cameras x 4 warped sources per
step); results go to ``bench/results/selfsup.md``. A GPU run would use
3000 steps and 384x640: 300 CPU steps are far from convergence for the
photometric variants, which learn depth from scratch.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_distill import (
    HELDOUT_SETS,
    Context,
    bag_args,
    finished_steps,
    finite_mean,
    fmt,
    fmt_interval,
    metrics,
    parse_added_variant,
    report_is_current,
    run,
    train,
)
from paired_stats import PairedDifference, claim_table_lines, paired_rows

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "selfsup.md"
BASELINE = "a_lidar"
FIRST_TRAIN_SEED = 21
#: The LiDAR terms off (dense KD too: it anchors the teacher on LiDAR); CKD at the weight measured for it
#: without LiDAR (1.0: the camera-only student's structure comes from CKD; 0.3 is the LiDAR default).
CAMERA_ONLY = ["loss.use_photometric=true", "loss.use_silog=false", "loss.use_bins=false",
               "loss.use_dense_kd=false", "loss.w_ckd=1.0"]
#: name -> (LiDAR-free bags?, training overrides)
VARIANTS: dict[str, tuple[bool, list[str]]] = {
    "a_lidar": (False, []),
    "b_photo": (True, [*CAMERA_ONLY, "loss.use_ckd=false", "loss.use_vrkd=false"]),
    "c_photo_kd": (True, CAMERA_ONLY),
    "d_photo_kd_refl": (True, [*CAMERA_ONLY, "loss.use_reflective_mask=true"]),
    "e_lidar_photo": (False, ["loss.use_photometric=true"]),
}
EXTRA_VARIANTS: dict[str, tuple[bool, list[str]]] = {
    "c_photo_kd_posenet": (True, [*CAMERA_ONLY, "loss.photometric_pose=posenet"]),
    "c_photo_kd_spatial": (True, [*CAMERA_ONLY, "loss.photometric_temporal=false"]),
}
NOT_RUN: dict = {"not_run": True}
#: Row keys compared with the baseline: (key, label, digits).
PAIRED_KEYS = (("abs_rel", "AbsRel", 4), ("reflective_abs_rel", "reflective AbsRel", 4),
               ("scale_error", "|scale error|", 4))


def scene_bags(ctx: Context, seeds: list[int], frames: int, prefix: str, no_lidar: bool) -> list[Path]:
    """Reflective ddad scenes (synthesised when missing); ``no_lidar``: the same scenes without the LiDAR topic."""
    bags = []
    for seed in seeds:
        bag = ctx.work / f"{prefix}_f{frames}_seed{seed}{'_nolidar' if no_lidar else ''}"
        if not (bag / "metadata.yaml").exists():
            run([*ctx.fsmde, "synth", "--preset", "ddad", "--frames", str(frames), "--seed", str(seed),
                 "--reflective", *(["--no-lidar"] if no_lidar else []), "--out", str(bag), "--no-progress"],
                ctx.log)
        bags.append(bag)
    return bags


def evaluate(ctx: Context, run_dir: Path, tag: str, bags: list[Path]) -> dict:
    """Metric-mode evaluation on the held-out reflective scenes -> one table row."""
    out = ctx.work / "reports" / f"{tag}_metric"
    if not report_is_current(out, run_dir / "student.safetensors"):
        run([*ctx.fsmde, "eval", "--checkpoint", str(run_dir), *bag_args(bags), "--out", str(out), "--gt",
             "synthetic", "--mode", "metric", "--no-progress"], ctx.log)
    return row_from_metrics(metrics(out))


def row_from_metrics(m: dict) -> dict:
    """The numbers the tables use from one metric-mode metrics.json (reflective ones None without the mask)."""
    bias = float(m["scale"]["overall"]["bias_log"])
    refl = m.get("reflective") or {}
    return {**m["mean"], "scale_bias_log": bias, "scale_error": abs(math.expm1(bias)),
            "scale_spread_log": float(m["scale"]["overall"]["spread_log"]),
            "reflective_abs_rel": (refl.get("inside") or {}).get("abs_rel"),
            "outside_abs_rel": (refl.get("outside") or {}).get("abs_rel"),
            "reflective_fraction": refl.get("fraction")}


def values(rows: list[dict | None], key: str) -> list[float | None]:
    return [None if r is None or r.get(key) is None else float(r[key]) for r in rows]


def paired(rows: dict[str, list[dict | None]], baseline: str) -> dict[str, dict[str, PairedDifference]]:
    return paired_rows(rows, baseline, [key for key, _, _ in PAIRED_KEYS])


def claim_lines(diffs: dict[str, dict[str, PairedDifference]], baseline: str) -> list[str]:
    return claim_table_lines(diffs, baseline, PAIRED_KEYS, (("abs_rel", "AbsRel"), ("reflective_abs_rel",
                                                                                     "reflective AbsRel")),
                             fmt_interval)


SUMMARY = (("abs_rel", 4), ("reflective_abs_rel", 4), ("outside_abs_rel", 4), ("rmse", 2), ("a1", 3),
           ("scale_bias_log", 3), ("scale_error", 3), ("scale_spread_log", 3), ("cross_view", 4))


def summary_lines(rows: dict[str, list[dict | None]]) -> list[str]:
    lines = ["| run | AbsRel | AbsRel reflective | AbsRel outside | RMSE | δ<1.25 | scale bias (log) | |scale error| | "
             "scale spread (log) | cross-view |", "|---|" + "---|" * len(SUMMARY)]
    for name, r in rows.items():
        cells = []
        for key, digits in SUMMARY:
            vals = [v for v in values(r, key) if v is not None and math.isfinite(v)]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{fmt(finite_mean(vals), digits)} ± {fmt(sd, digits)}" if vals else "—")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return lines


def per_seed_lines(rows: dict[str, list[dict | None]], seeds: list[int]) -> list[str]:
    lines = [f"| run | {' | '.join(f'seed {s}' for s in seeds)} |", "|---|" + "---|" * len(seeds)]
    for name, r in rows.items():
        cells = ["failed" if x is None else "not run" if x.get("not_run") else
                 f"{fmt(x.get('abs_rel'), 4)} / {fmt(x.get('reflective_abs_rel'), 4)} / {fmt(x.get('scale_error'), 3)}"
                 for x in r]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/fsmde_selfsup"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--train-scenes", type=int, default=12)
    ap.add_argument("--train-frames", type=int, default=8, help="frames per training scene (neighbours need >= 3)")
    ap.add_argument("--eval-frames", type=int, default=4, help="frames per held-out scene")
    ap.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[0, 1, 2])
    ap.add_argument("--variants", type=lambda v: v.split(","), default=list(VARIANTS),
                    help=f"default {','.join(VARIANTS)}; more: {','.join(EXTRA_VARIANTS)}")
    ap.add_argument("--add-variant", type=parse_added_variant, action="append", default=[],
                    metavar="NAME=KEY=VALUE[ KEY=VALUE...]",
                    help="(c)'s camera-only objective plus these overrides, on the LiDAR-free bags")
    ap.add_argument("--no-record", action="store_true", help=f"do not append to {RESULTS.relative_to(ROOT)}")
    ap.add_argument("--no-train", action="store_true",
                    help="report only the (variant, seed) runs already finished in --work; train nothing")
    args = ap.parse_args(argv)
    known = {**VARIANTS, **EXTRA_VARIANTS}
    unknown = [v for v in args.variants if v not in known]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(known)}")
    # an added variant is (c) plus its overrides: it trains on the camera-only bags, so the LiDAR terms go off
    args.table = {v: known[v] for v in args.variants} | {n: (True, [*CAMERA_ONLY, *o]) for n, o in args.add_variant}
    return args


def main() -> int:
    args = parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FSMDE_CACHE", str(args.work / "cache"))
    ctx = Context(args.work, args.eval_frames, [sys.executable, "-m", "fsmde_core.cli"], [])
    t0 = time.perf_counter()
    seeds = list(range(FIRST_TRAIN_SEED, FIRST_TRAIN_SEED + args.train_scenes))
    train_bags = {no_lidar: scene_bags(ctx, seeds, args.train_frames, "train", no_lidar) for no_lidar in (False, True)}
    heldout = scene_bags(ctx, HELDOUT_SETS["A"], args.eval_frames, "heldout", False)
    rows: dict[str, list[dict | None]] = {}
    for name, (no_lidar, overrides) in args.table.items():
        for seed in args.seeds:
            tag = f"{name}_seed{seed}"
            run_dir = args.work / "runs" / tag
            if args.no_train and finished_steps(run_dir) != args.steps:
                rows.setdefault(name, []).append(NOT_RUN)
                continue
            ok = train(ctx, run_dir, train_bags[no_lidar], args.steps, seed, overrides)
            rows.setdefault(name, []).append(evaluate(ctx, run_dir, tag, heldout) if ok else None)
    text = "\n".join(report(args, rows, ctx.log, time.perf_counter() - t0))
    print(text)
    if not args.no_record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as fh:
            fh.write(text + "\n")
    return 0


def report(args: argparse.Namespace, rows: dict[str, list[dict | None]], log: list[str], wall_s: float) -> list[str]:
    rows = {k: [None if r is not None and r.get("not_run") else r for r in v] for k, v in rows.items()}
    scenes = ", ".join(map(str, HELDOUT_SETS["A"]))
    refl = paired({k: v for k, v in rows.items() if k in ("c_photo_kd", "d_photo_kd_refl")}, "c_photo_kd")
    return [
        f"## Training without LiDAR (issue 12) — {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} (CPU), load average "
        f"at the end {os.getloadavg()[0]:.1f}. Student: config/train_tiny.yaml, {args.steps} steps, seeds "
        f"{', '.join(map(str, args.seeds))}; trained on {args.train_scenes} reflective ddad scenes x "
        f"{args.train_frames} frames (seeds {FIRST_TRAIN_SEED}..{FIRST_TRAIN_SEED + args.train_scenes - 1}; the "
        f"LiDAR-free variants on the same scenes written with --no-lidar). Held-out: reflective scenes (seeds "
        f"{scenes}, {args.eval_frames} frames). Metric AbsRel vs dense synthetic GT; reflective = inside the "
        "renderer's reflective mask; |scale error| = |exp(mean log median(pred/GT)) - 1|.", "",
        f"Paired difference to {BASELINE} (mean [95 % t-interval]; **\\*** = excludes 0; negative = lower error):", "",
        *claim_lines(paired(rows, BASELINE), BASELINE), "",
        "Reflective masking, paired d_photo_kd_refl − c_photo_kd:", "", *claim_lines(refl, "c_photo_kd"), "",
        "Mean ± sd over seeds:", "", *summary_lines(rows), "",
        "Per seed (AbsRel / reflective AbsRel / |scale error|):", "", *per_seed_lines(rows, args.seeds), "",
        f"Total wall time {wall_s:.0f} s. Commands:", "", "```", *log, "```", ""]


if __name__ == "__main__":
    sys.exit(main())
