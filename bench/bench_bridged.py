"""Does bridging a segmentation model into the depth teacher help? (issue 10, BriGeS)

Measured with stand-ins (``bench/bridged_standins.py``: small Depth Anything V2
and SAM with the real transformers architectures, pre-trained here on synthetic
bags; no foundation-model weights can be downloaded on these machines):

1. the gates are fitted with ``fsmde teacher fit`` on training scenes, once per
   attention-temperature setting (``none``: tau = 1, ``fixed``: tau = 2,
   ``learnable``: tau from 2);
2. the depth stand-in alone and each bridged teacher are scored on held-out
   scenes with ``fsmde eval --gt synthetic`` in affine mode: AbsRel overall and
   near object boundaries (where BriGeS claims its gain) vs elsewhere;
3. students are distilled from the depth stand-in and from the best bridged
   teacher (``fsmde train``, same data, steps and seeds) and scored in metric
   mode; the paired difference over seeds comes with its 95 % t-interval.

Every command is printed and recorded in the results file; finished fits,
trainings and reports are reused, so an interrupted run continues.

    python bench/bench_bridged.py --depth /tmp/standins/depth --segmentation /tmp/standins/seg \\
        --work /tmp/bridged --fit-bags /tmp/standins/bags/train_s{1..8} --heldout /tmp/standins/bags/heldout_s10{1,2}
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_distill, paired_stats, beside this script
from bench_distill import finished_steps, metrics, run
from paired_stats import paired_difference

#: Attention-temperature settings of the gates: name -> ``fsmde teacher fit`` overrides.
TAU_VARIANTS: dict[str, list[str]] = {
    "tau_none": ["gates.tau_mode=none"],
    "tau_fixed2": ["gates.tau_mode=fixed", "gates.tau=2.0"],
    "tau_learnable": ["gates.tau_mode=learnable", "gates.tau=2.0"],
}
RESULTS = Path(__file__).resolve().parent / "results" / "bridged.md"


def fsmde(*args: str) -> list[str]:
    return [sys.executable, "-m", "fsmde_core.cli", *args]


def bag_args(bags: list[Path]) -> list[str]:
    return [a for b in bags for a in ("--bag", str(b))]


def fit_overrides(args: argparse.Namespace, name: str) -> list[str]:
    """``fsmde teacher fit`` overrides of one tau variant: the stand-ins, the sample size, the schedule."""
    return [f"models.depth={args.depth}", f"models.segmentation={args.segmentation}",
            f"models.input_size={args.input_size}", f"data.width={args.width}", f"data.height={args.height}",
            f"optim.max_steps={args.fit_steps}", f"optim.lr={args.fit_lr}", *TAU_VARIANTS[name]]


def fit_gates(args: argparse.Namespace, name: str, log: list[str]) -> Path:
    out = args.work / "gates" / name
    if not (out / "gates.safetensors").is_file():
        run(fsmde("teacher", "fit", "--config", str(args.fit_config), *bag_args(args.fit_bags), "--out", str(out),
                  "--no-progress", *fit_overrides(args, name)), log)
    return out


def teacher_options(args: argparse.Namespace, gates: Path | None) -> list[str]:
    """``fsmde eval --teacher-option`` list: the depth stand-in alone (gates None) or bridged."""
    if gates is None:
        return ["--teacher", "depth_anything_v2", "--teacher-option", f"path_or_id={args.depth}",
                "--teacher-option", f"input_size={args.input_size}"]
    return ["--teacher", "bridged", "--teacher-option", f"depth={args.depth}",
            "--teacher-option", f"segmentation={args.segmentation}", "--teacher-option", f"gates={gates}",
            "--teacher-option", f"input_size={args.input_size}"]


def score_teacher(args: argparse.Namespace, name: str, gates: Path | None, log: list[str]) -> dict:
    out = args.work / "reports" / f"teacher_{name}"
    if not (out / "metrics.json").is_file():
        run(fsmde("eval", *teacher_options(args, gates), *bag_args(args.heldout), "--out", str(out),
                  "--gt", "synthetic", "--mode", "affine", "--cap", "80", "--no-progress"), log)
    return metrics(out)["mean"]


def student_overrides(args: argparse.Namespace, gates: Path | None) -> list[str]:
    if gates is None:
        teacher = ["teacher.kind=depth_anything_v2", f"teacher.options.path_or_id={args.depth}"]
    else:
        teacher = ["teacher.kind=bridged", f"teacher.options.depth={args.depth}",
                   f"teacher.options.segmentation={args.segmentation}", f"teacher.options.gates={gates}"]
    teacher.append(f"teacher.options.input_size={args.input_size}")
    return [*teacher, f"data.width={args.student_width}", f"data.height={args.student_height}",
            f"optim.max_steps={args.student_steps}", "optim.epochs=1000"]


def student_score(args: argparse.Namespace, name: str, gates: Path | None, seed: int, log: list[str]) -> dict:
    run_dir = args.work / "students" / f"{name}_seed{seed}"
    if finished_steps(run_dir) != args.student_steps:
        run(fsmde("train", "--config", str(args.student_config), *bag_args(args.fit_bags), "--out", str(run_dir),
                  "--no-progress", f"seed={seed}", *student_overrides(args, gates)), log)
    scores = {}
    for mode, suffix in (("metric", ""), ("median", "_median")):  # median: the structure without the scale
        out = args.work / "reports" / f"student_{name}_seed{seed}{suffix}"
        if not (out / "metrics.json").is_file():
            run(fsmde("eval", "--checkpoint", str(run_dir), *bag_args(args.heldout), "--out", str(out),
                      "--gt", "synthetic", "--mode", mode, "--no-progress"), log)
        scores[mode] = metrics(out)["mean"]
    return {**scores["metric"], "abs_rel_median": scores["median"]["abs_rel"]}


def fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def teacher_table(rows: dict[str, dict]) -> list[str]:
    base = rows["depth_alone"]
    lines = ["| teacher | AbsRel | AbsRel near boundaries | AbsRel elsewhere | δ<1.25 "
             "| vs depth alone (AbsRel / boundary) |", "|---|---|---|---|---|---|"]
    for name, m in rows.items():
        change = ("" if name == "depth_alone" else
                  f"{100 * (m['abs_rel'] / base['abs_rel'] - 1):+.1f} % / "
                  f"{100 * (m['abs_rel_boundary'] / base['abs_rel_boundary'] - 1):+.1f} %")
        lines.append(f"| {name} | {fmt(m['abs_rel'])} | {fmt(m.get('abs_rel_boundary'))} | "
                     f"{fmt(m.get('abs_rel_interior'))} | {fmt(m['a1'], 3)} | {change} |")
    return lines


def student_table(students: dict[str, list[dict]], seeds: list[int]) -> list[str]:
    lines = ["| student distilled from | AbsRel (mean ± sd) | near boundaries | median-mode AbsRel | per seed |",
             "|---|---|---|---|---|"]
    for name, rows in students.items():
        values = [r["abs_rel"] for r in rows]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(f"| {name} | {statistics.fmean(values):.4f} ± {sd:.4f} | "
                     f"{statistics.fmean(r['abs_rel_boundary'] for r in rows):.4f} | "
                     f"{statistics.fmean(r['abs_rel_median'] for r in rows):.4f} | "
                     f"{' / '.join(f'{v:.4f}' for v in values)} (seeds {', '.join(map(str, seeds))}) |")
    names = list(students)
    if len(names) == 2 and len(seeds) > 1:
        d = paired_difference([r["abs_rel"] for r in students[names[1]]], [r["abs_rel"] for r in students[names[0]]])
        lines += ["", f"Paired difference {names[1]} − {names[0]} (AbsRel, {len(seeds)} seeds): "
                      f"{d.mean:+.4f} [{d.low:+.4f}, {d.high:+.4f}] (95 % t-interval)."]
    return lines


def parse_args() -> argparse.Namespace:
    here = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=Path, required=True, help="Depth Anything V2 (stand-in) directory")
    ap.add_argument("--segmentation", type=Path, required=True, help="SAM (stand-in) directory")
    ap.add_argument("--fit-bags", type=Path, nargs="+", required=True, help="training scenes (gates and students)")
    ap.add_argument("--heldout", type=Path, nargs="+", required=True, help="held-out scenes")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fsmde_bridged"))
    ap.add_argument("--fit-config", type=Path, default=here / "config" / "teacher_bridged.yaml")
    ap.add_argument("--student-config", type=Path, default=here / "config" / "train_tiny.yaml")
    ap.add_argument("--input-size", default="[126,224]",
                    help="the depth model's input: short side or [height,width] (the stand-ins': [126,224])")
    ap.add_argument("--width", type=int, default=224, help="sample width the gates are fitted at")
    ap.add_argument("--height", type=int, default=126)
    ap.add_argument("--fit-steps", type=int, default=300)
    ap.add_argument("--fit-lr", type=float, default=5e-4)
    ap.add_argument("--tau", nargs="+", default=list(TAU_VARIANTS), choices=list(TAU_VARIANTS))
    ap.add_argument("--student-seeds", type=lambda v: [int(x) for x in v.split(",")], default=[0, 1])
    ap.add_argument("--student-steps", type=int, default=300)
    ap.add_argument("--student-width", type=int, default=224)
    ap.add_argument("--student-height", type=int, default=128)
    ap.add_argument("--no-students", action="store_true", help="teachers only")
    ap.add_argument("--no-record", action="store_true", help=f"do not append to {RESULTS}")
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    started = time.time()
    gates = {name: fit_gates(args, name, log) for name in args.tau}
    teachers = {"depth_alone": score_teacher(args, "depth_alone", None, log)}
    teachers.update({f"bridged_{name}": score_teacher(args, name, g, log) for name, g in gates.items()})
    best = min(gates, key=lambda n: teachers[f"bridged_{n}"]["abs_rel"])
    students: dict[str, list[dict]] = {}
    if not args.no_students:
        students["depth_alone"] = [student_score(args, "depth_alone", None, s, log) for s in args.student_seeds]
        students[f"bridged_{best}"] = [student_score(args, f"bridged_{best}", gates[best], s, log)
                                       for s in args.student_seeds]
    lines = [f"## Bridged teacher (BriGeS) with stand-ins — {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
             "", f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, Python "
             f"{platform.python_version()}, torch {torch.__version__}. Stand-ins: depth `{args.depth}`, segmentation "
             f"`{args.segmentation}` (bench/bridged_standins.py, results/bridged_standins.md). Gates fitted on "
             f"{len(args.fit_bags)} scenes for {args.fit_steps} steps (lr {args.fit_lr}); held-out: "
             f"{', '.join(p.name for p in args.heldout)}; affine mode vs dense synthetic GT, cap 80 m.", "",
             *teacher_table(teachers), ""]
    if students:
        lines += [f"Students ({args.student_steps} steps, {args.student_width}x{args.student_height}, metric mode, "
                  f"the bridged teacher with the lowest held-out AbsRel: `{best}`):", "",
                  *student_table(students, args.student_seeds), ""]
    lines += [f"Wall time {time.time() - started:.0f} s. Commands:", "", "```", *log, "```", ""]
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        with open(RESULTS, "a") as fh:
            fh.write(("\n" if RESULTS.exists() else "") + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
