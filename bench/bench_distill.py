"""The experiment that proves the method (issue: distillation trainer).

Same student, same data, same steps, trained three ways on synthetic bags:

  (a) supervised only      SILog + bin-centre Chamfer on sparse LiDAR
  (b) + CKD                cross-interaction KD of the teacher's scale-invariant bins
  (c) + CKD + VRKD         plus view-relational KD between adjacent cameras

evaluated on HELD-OUT bags (other seeds: other scenes) against the dense
synthetic ground truth in metric mode, with the teacher's own affine-aligned
score for reference; then the speed of the student vs the real Depth Anything
V2-Small architecture on the same 6-camera input, side by side.

Twenty-four training scenes of 4 frames (96 surround sets). Earlier setups
used two scenes of 40 frames, then six of 15: consecutive frames of one scene
are near duplicates, so those were really two or six examples of a street, and
every variant learnt them by heart (training AbsRel 0.14 against 0.21 held
out with six scenes; metric scale off by up to 1.7x per camera with two).
A real training set (DDAD: 150 scenes) has many streets; so does this one now,
at the same number of training sets and steps.

Each variant is trained with several seeds (student initialisation and data
order): at this size one run's held-out metric scale moves by more than the
effects being measured, so the table reports the mean and spread over seeds.

Every step is a ``fsmde`` CLI command, printed and recorded with the results in
``bench/results/distill.md`` so anyone can re-run them. A run directory whose
student.json says it finished the asked number of steps is reused as it is,
and a report newer than its checkpoint too, so re-running the script only
fills in what is missing; delete ``--work`` after changing code or settings.

    python bench/bench_distill.py [--work /tmp/fsmde_distill] [--steps 300] [--seeds 0,1,2]
    python bench/bench_distill.py --preset lite --summary-json lite.json   # one student of the family

``--preset`` trains that student preset (``student.preset=...``; the tiny
config's 32 bins stay, so presets differ in encoder and decoder only) in run
directories of its own; ``bench/bench_student.py`` runs it per preset for the
accuracy half of its speed/accuracy table and reads ``--summary-json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "distill.md"

#: The first training scene's seed; --train-scenes N uses N consecutive seeds from here.
FIRST_TRAIN_SEED = 21
HELDOUT_SEEDS = (101, 102, 103, 104)
COLUMNS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "cross_view", "abs_rel_median", "cross_view_median")
VARIANTS = {
    "a_supervised": ["loss.use_ckd=false", "loss.use_vrkd=false", "teacher.kind=none"],
    "b_ckd": ["loss.use_vrkd=false"],
    "c_ckd_vrkd": [],
}
#: Ablations run only when asked for (--variants): VRKD over whole images, the CKD targets kept in
#: fsmde_core/distill/ablations.py (kernel; linear with the LiDAR line-fit anchor, then with the
#: median/MAD one), supervised-only with AdaBins' arithmetic bin readout (the baseline's best readout).
EXTRA_VARIANTS = {
    "c_vrkd_whole_image": ["loss.vrkd_region=image", "loss.vrkd_grid=[4,8]"],
    "b_ckd_kernel_target": ["loss.use_vrkd=false", "loss.ckd_target=kernel"],
    "b_ckd_linear_target": ["loss.use_vrkd=false", "loss.ckd_target=linear", "loss.ckd_anchor=gt_fit"],
    "b_ckd_linear_moments_anchor": ["loss.use_vrkd=false", "loss.ckd_target=linear", "loss.ckd_anchor=gt"],
    "a_supervised_linear_readout": [*VARIANTS["a_supervised"], "student.readout=linear"],
}


def run(cmd: list[str], log: list[str], check: bool = True) -> int:
    line = " ".join(shlex.quote(c) for c in cmd)
    print(f"$ {line}", flush=True)
    log.append(line)
    return subprocess.run(cmd, check=check).returncode


def finished_steps(run_dir: Path) -> int | None:
    """Steps of a finished run in ``run_dir`` (its student.json), None when there is none."""
    meta = run_dir / "student.json"
    if not (meta.is_file() and (run_dir / "student.safetensors").is_file()):
        return None
    return int(json.loads(meta.read_text()).get("steps", -1))


def is_newer(path: Path, than: Path) -> bool:
    """True when ``path`` exists and was written after ``than`` (an up-to-date report)."""
    return path.is_file() and than.is_file() and path.stat().st_mtime > than.stat().st_mtime


def metrics(path: Path) -> dict:
    return json.loads((path / "metrics.json").read_text())


def time_forward(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        model(x)  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            model(x)
    return (time.perf_counter() - t0) / repeats


def speed_table(repeats: int, preset: str | None) -> list[tuple[str, str, float, float]]:
    """Student (deployment size 384x640) vs DA-V2-Small (518-class input 378x644), 6 cameras."""
    from transformers import DepthAnythingForDepthEstimation

    from fsmde_core.models.student import StudentConfig, SurroundDepthStudent
    from fsmde_core.models.teachers.depth_anything_v2 import small_depth_anything_v2_config

    torch.manual_seed(0)
    cfg = StudentConfig(**({"preset": preset} if preset else {}), input_height=384, input_width=640)
    student = SurroundDepthStudent(cfg).eval()
    teacher = DepthAnythingForDepthEstimation(small_depth_anything_v2_config()).eval()
    rows = []
    for name, model, shape in ((f"student {cfg.preset} ({cfg.encoder}) + bins", student, (6, 3, 384, 640)),
                               ("teacher Depth Anything V2-Small", teacher, (6, 3, 378, 644))):
        params = sum(p.numel() for p in model.parameters()) / 1e6
        sec = time_forward(model, torch.rand(shape), repeats)
        rows.append((name, "x".join(map(str, shape)), params, sec))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/fsmde_distill"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--train-scenes", type=int, default=24)
    ap.add_argument("--train-frames", type=int, default=4)
    ap.add_argument("--eval-frames", type=int, default=8)
    ap.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[0, 1, 2],
                    help="training seeds per variant, comma-separated (default 0,1,2)")
    ap.add_argument("--variants", type=lambda v: v.split(","), default=list(VARIANTS),
                    help=f"comma-separated, default {','.join(VARIANTS)}; ablations: {','.join(EXTRA_VARIANTS)}")
    ap.add_argument("--speed-repeats", type=int, default=3, help="0 skips the speed table")
    ap.add_argument("--preset", default=None,
                    help="student preset to train (lite|base|large|legacy); default: the config's own")
    ap.add_argument("--summary-json", type=Path, default=None,
                    help="also write each variant's per-seed and mean held-out metrics here (JSON)")
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/results/distill.md")
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FSMDE_CACHE", str(work / "cache"))
    fsmde = [sys.executable, "-m", "fsmde_core.cli"]
    log: list[str] = []
    t_all = time.perf_counter()

    train_seeds = list(range(FIRST_TRAIN_SEED, FIRST_TRAIN_SEED + args.train_scenes))
    train_bags = [work / f"train_seed{s}" for s in train_seeds]
    eval_bags = [work / f"heldout_seed{s}" for s in HELDOUT_SEEDS]
    for bag, frames, seed in [(b, args.train_frames, s) for b, s in zip(train_bags, train_seeds, strict=True)] + \
            [(b, args.eval_frames, s) for b, s in zip(eval_bags, HELDOUT_SEEDS, strict=True)]:
        if not (bag / "metadata.yaml").exists():
            run([*fsmde, "synth", "--preset", "ddad", "--frames", str(frames), "--seed", str(seed), "--out", str(bag)],
                log)

    bag_args = [a for b in train_bags for a in ("--bag", str(b))]
    eval_bag_args = [a for b in eval_bags for a in ("--bag", str(b))]
    per_seed: dict[str, list[dict | None]] = {}
    failed: list[str] = []
    chosen = {**VARIANTS, **EXTRA_VARIANTS}
    unknown = sorted(set(args.variants) - set(chosen))
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {sorted(chosen)}")
    student_overrides = [f"student.preset={args.preset}"] if args.preset else []
    for name in args.variants:
        overrides = [*chosen[name], *student_overrides]
        for seed in args.seeds:
            tag = f"{args.preset}_{name}_seed{seed}" if args.preset else f"{name}_seed{seed}"
            run_dir = work / "runs" / tag
            train_cmd = [*fsmde, "train", "--config", str(ROOT / "config" / "train_tiny.yaml"), *bag_args, "--out",
                         str(run_dir), "--no-progress", f"optim.max_steps={args.steps}", "optim.epochs=1000",
                         f"seed={seed}", *overrides]
            if finished_steps(run_dir) == args.steps:
                log.append(" ".join(shlex.quote(c) for c in train_cmd) + "   # (finished earlier, reused)")
            elif run(train_cmd, log, check=False) != 0:
                # e.g. the trainer stopped a collapsed student: reported, left out of the means
                log.append(f"# {tag}: training stopped with an error (see its output above)")
                failed.append(tag)
                per_seed.setdefault(name, []).append(None)
                continue
            reports = {}
            for mode in ("metric", "median"):
                rep = reports[mode] = work / "reports" / (tag if mode == "metric" else f"{tag}_{mode}")
                if not is_newer(rep / "metrics.json", run_dir / "student.safetensors"):
                    run([*fsmde, "eval", "--checkpoint", str(run_dir), *eval_bag_args, "--out", str(rep), "--gt",
                         "synthetic", "--mode", mode], log)
            rep, rep_median = reports["metric"], reports["median"]
            row = dict(metrics(rep)["mean"])
            median = metrics(rep_median)["mean"]
            row["cross_view_median"] = median["cross_view"]
            row["abs_rel_median"] = median["abs_rel"]
            per_seed.setdefault(name, []).append(row)

    rep = work / "reports" / "teacher"
    run([*fsmde, "eval", "--teacher", "synthetic", *eval_bag_args, "--out", str(rep), "--gt", "synthetic",
         "--mode", "affine", "--cap", "80"], log)
    teacher = metrics(rep)["mean"]

    speed = speed_table(args.speed_repeats, args.preset) if args.speed_repeats > 0 else []
    ok_rows = {name: [r for r in rows if r is not None] for name, rows in per_seed.items()}
    ok_rows = {name: rows for name, rows in ok_rows.items() if rows}
    mean = {name: {k: statistics.fmean(r[k] for r in rows) for k in COLUMNS} for name, rows in ok_rows.items()}
    spread = {name: {k: (statistics.stdev(r[k] for r in rows) if len(rows) > 1 else 0.0) for k in COLUMNS}
              for name, rows in ok_rows.items()}
    base = mean["a_supervised"]["abs_rel"] if "a_supervised" in mean else math.nan
    n_seeds = len(args.seeds)
    if args.summary_json is not None:
        args.summary_json.write_text(json.dumps({"preset": args.preset, "steps": args.steps, "seeds": args.seeds,
                                                 "per_seed": per_seed, "mean": mean, "spread": spread}, indent=1))
    student_text = f"preset {args.preset}" if args.preset else "the config's preset"
    lines = [
        f"## Distillation experiment — {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"torch {torch.__version__} (CPU). Student: {student_text} (config/train_tiny.yaml), 32 bins, 192x320, "
        f"{args.steps} steps, batch 1 surround set (6 cameras), synthetic teacher quality 0.7. "
        f"Train bags: ddad preset seeds {train_seeds[0]}..{train_seeds[-1]} ({args.train_frames} frames each); "
        f"held-out: seeds {', '.join(map(str, HELDOUT_SEEDS))} ({args.eval_frames} frames each). "
        f"Metric mode vs dense synthetic GT, cap 80 m. Each variant trained with seeds "
        f"{', '.join(map(str, args.seeds))}: mean ± standard deviation over the {n_seeds} runs.",
        "",
        "| run | AbsRel | vs (a) | SqRel | RMSE | RMSElog | δ<1.25 | cross-view | AbsRel (median mode) | "
        "cross-view (median mode) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def pm(name: str, key: str, digits: int) -> str:
        return f"{mean[name][key]:.{digits}f} ± {spread[name][key]:.{digits}f}"

    for name in mean:
        rel = f"{100 * (mean[name]['abs_rel'] - base) / base:+.1f} %"
        lines.append(f"| {name} | {pm(name, 'abs_rel', 4)} | {rel} | {pm(name, 'sq_rel', 3)} | {pm(name, 'rmse', 2)} | "
                     f"{pm(name, 'rmse_log', 4)} | {pm(name, 'a1', 3)} | {pm(name, 'cross_view', 4)} | "
                     f"{pm(name, 'abs_rel_median', 4)} | {pm(name, 'cross_view_median', 4)} |")
    lines.append(f"| teacher (affine-aligned, reference) | {teacher['abs_rel']:.4f} | | {teacher['sq_rel']:.3f} | "
                 f"{teacher['rmse']:.2f} | {teacher['rmse_log']:.4f} | {teacher['a1']:.3f} | "
                 f"{teacher['cross_view']:.4f} | | |")
    header = "| run | " + " | ".join(f"seed {s}" for s in args.seeds) + " |"
    lines += ["", "Per seed (metric AbsRel / metric cross-view / median-mode cross-view):", "", header,
              "|---|" + "---|" * n_seeds]
    for name, rows in per_seed.items():
        lines.append(f"| {name} | " + " | ".join(
            "stopped (error)" if r is None else
            f"{r['abs_rel']:.4f} / {r['cross_view']:.4f} / {r['cross_view_median']:.4f}" for r in rows) + " |")
    if failed:
        lines += ["", f"Runs that stopped with an error and are left out of the means: {', '.join(failed)}."]
    if speed:
        lines += ["", "Speed, one 6-camera forward pass on this CPU (random weights, same architectures):", "",
                  "| model | input | params (M) | s / surround set |", "|---|---|---|---|"]
        for name, shape, params, sec in speed:
            lines.append(f"| {name} | {shape} | {params:.1f} | {sec:.3f} |")
        lines.append(f"| ratio teacher / student | | | {speed[1][3] / speed[0][3]:.1f}x |")
    lines += ["", f"Total wall time {time.perf_counter() - t_all:.0f} s. Commands:", "", "```",
              *log, "```", ""]
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
