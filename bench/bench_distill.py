"""The experiment that proves the method (issue: distillation trainer).

Same student, same data, same steps, trained three ways on synthetic bags:

  (a) supervised only      SILog + bin-centre Chamfer on sparse LiDAR
  (b) + CKD                cross-interaction KD of the teacher's scale-invariant bins
  (c) + CKD + VRKD         plus view-relational KD between adjacent cameras

evaluated on HELD-OUT bags (other seeds: other scenes) against the dense
synthetic ground truth in metric mode, with the teacher's own affine-aligned
score for reference; then the speed of the student vs the real Depth Anything
V2-Small architecture on the same 6-camera input, side by side.

Every step is a ``fsmde`` CLI command, printed and recorded with the results in
``bench/results/distill.md`` so anyone can re-run them.

    python bench/bench_distill.py [--work /tmp/fsmde_distill] [--steps 300]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "distill.md"

VARIANTS = {
    "a_supervised": ["loss.use_ckd=false", "loss.use_vrkd=false", "teacher.kind=none"],
    "b_ckd": ["loss.use_vrkd=false"],
    "c_ckd_vrkd": [],
}


def run(cmd: list[str], log: list[str]) -> None:
    line = " ".join(shlex.quote(c) for c in cmd)
    print(f"$ {line}", flush=True)
    log.append(line)
    subprocess.run(cmd, check=True)


def metrics(path: Path) -> dict:
    return json.loads((path / "metrics.json").read_text())


def time_forward(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        model(x)  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            model(x)
    return (time.perf_counter() - t0) / repeats


def speed_table(repeats: int) -> list[tuple[str, str, float, float]]:
    """Student (deployment size 384x640) vs DA-V2-Small (518-class input 378x644), 6 cameras."""
    from transformers import DepthAnythingForDepthEstimation

    from fsmde_core.models.student import StudentConfig, SurroundDepthStudent
    from fsmde_core.models.teachers.depth_anything_v2 import small_depth_anything_v2_config

    torch.manual_seed(0)
    student = SurroundDepthStudent(StudentConfig(input_height=384, input_width=640)).eval()
    teacher = DepthAnythingForDepthEstimation(small_depth_anything_v2_config()).eval()
    rows = []
    for name, model, shape in (("student ResNet-18 + bins", student, (6, 3, 384, 640)),
                               ("teacher Depth Anything V2-Small", teacher, (6, 3, 378, 644))):
        params = sum(p.numel() for p in model.parameters()) / 1e6
        sec = time_forward(model, torch.rand(shape), repeats)
        rows.append((name, "x".join(map(str, shape)), params, sec))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/fsmde_distill"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--train-frames", type=int, default=40)
    ap.add_argument("--eval-frames", type=int, default=8)
    ap.add_argument("--speed-repeats", type=int, default=2)
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/results/distill.md")
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FSMDE_CACHE", str(work / "cache"))
    fsmde = [sys.executable, "-m", "fsmde_core.cli"]
    log: list[str] = []
    t_all = time.perf_counter()

    train_bags = [work / f"train_seed{s}" for s in (11, 12)]
    eval_bags = [work / f"heldout_seed{s}" for s in (101, 102)]
    for bag, frames, seed in [(b, args.train_frames, s) for b, s in zip(train_bags, (11, 12), strict=True)] + \
            [(b, args.eval_frames, s) for b, s in zip(eval_bags, (101, 102), strict=True)]:
        if not (bag / "metadata.yaml").exists():
            run([*fsmde, "synth", "--preset", "ddad", "--frames", str(frames), "--seed", str(seed), "--out", str(bag)],
                log)

    results: dict[str, dict] = {}
    for name, overrides in VARIANTS.items():
        run_dir = work / "runs" / name
        bag_args = [a for b in train_bags for a in ("--bag", str(b))]
        run([*fsmde, "train", "--config", str(ROOT / "config" / "train_tiny.yaml"), *bag_args, "--out", str(run_dir),
             "--no-progress", f"optim.max_steps={args.steps}", "optim.epochs=1000", *overrides], log)
        rep = work / "reports" / name
        eval_bag_args = [a for b in eval_bags for a in ("--bag", str(b))]
        run([*fsmde, "eval", "--checkpoint", str(run_dir), *eval_bag_args, "--out", str(rep), "--gt", "synthetic",
             "--mode", "metric"], log)
        results[name] = metrics(rep)

    rep = work / "reports" / "teacher"
    run([*fsmde, "eval", "--teacher", "synthetic", *[a for b in eval_bags for a in ("--bag", str(b))], "--out",
         str(rep), "--gt", "synthetic", "--mode", "affine", "--cap", "80"], log)
    results["teacher_affine"] = metrics(rep)

    speed = speed_table(args.speed_repeats)
    base = results["a_supervised"]["mean"]["abs_rel"]
    lines = [
        f"## Distillation experiment — {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"torch {torch.__version__} (CPU). Student: ResNet-18 + 32 metric bins at 192x320, "
        f"{args.steps} steps, batch 1 surround set (6 cameras), synthetic teacher quality 0.7. "
        f"Train bags: ddad preset seeds 11, 12 ({args.train_frames} frames each); held-out: seeds 101, 102 "
        f"({args.eval_frames} frames each). Metric mode vs dense synthetic GT, cap 80 m.",
        "",
        "| run | AbsRel | vs (a) | SqRel | RMSE | RMSElog | δ<1.25 | cross-view |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        m = res["mean"]
        rel = "" if name == "teacher_affine" else f"{100 * (m['abs_rel'] - base) / base:+.1f} %"
        label = "teacher (affine-aligned, reference)" if name == "teacher_affine" else name
        lines.append(f"| {label} | {m['abs_rel']:.4f} | {rel} | {m['sq_rel']:.4f} | {m['rmse']:.3f} | "
                     f"{m['rmse_log']:.4f} | {m['a1']:.4f} | {m['cross_view']:.4f} |")
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
