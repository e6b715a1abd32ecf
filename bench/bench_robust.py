"""Robustness benchmark (issue 11): does structure-centric training keep depth at night, in fog and rain?

Same student, same clear training data, same steps and seeds, trained four ways:

  (a) today            the shipped objective (config/train_tiny.yaml)
  (b) + augment        texture-robust augmentation: the student's input corrupted, teacher and GT clean
  (c) + semgraph       semantic-structural KD (region affinity graph of a semantic teacher)
  (d) both

evaluated, in metric mode against the dense synthetic ground truth, on

* held-out CLEAR scenes (the distillation benchmark's set A, seeds 101-104);
* the SAME scenes rendered at night, in fog and in rain (``fsmde synth
  --condition``): geometry, cars and LiDAR placement are identical, so a
  difference to the clear score is the condition's alone, never another street;
* the corruption suite (``fsmde eval --corruption``) on the clear scenes at
  severity ``--severity`` (default 3) for all 18 corruptions: RoboDepth's mDEE
  and resilience rate (mRR) over them. All five severities cost 5x the
  evaluation time; ``--severity all`` runs them.

The training data never contains an adverse condition: what (b)-(d) learn is
robustness from the corruptions and the semantic structure, tested on night,
fog and rain renderings they never saw (a stricter test than training on the
conditions themselves).

**The claim** (issue 11): the robust student's mean AbsRel over the adverse
conditions at least 20 % lower than today's, its clear AbsRel no more than 2 %
worse. As in ``bench_distill.py``, every claim is the PAIRED difference to
(a) over the same seeds (same initialisation and data order), mean and 95 %
t-interval (``bench/paired_stats.py``).

Reuses bench_distill's training and bag set-up (the same 24 clear training
scenes), so ``--work`` may be the distillation benchmark's work directory: its
bags, caches and finished runs are reused.

    python bench/bench_robust.py --work /tmp/fsmde_robust [--seeds 0,1,2] [--steps 300]
    python bench/bench_robust.py --variants a_today,b_augment --add-variant 'e_retinex=student.retinex=true'

Time on the 2-core CPU machine: each training as in bench_distill (2-6 min
for 300 steps, depending on load), each evaluation of 16 sets ~10-60 s, the
18-corruption pass ~18 evaluations. Results go to ``bench/results/robust.md``.
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
    FIRST_TRAIN_SEED,
    HELDOUT_SETS,
    Context,
    bag_args,
    finished_steps,
    finite_mean,
    fmt,
    fmt_interval,
    heldout_bags,
    make_bags,
    metrics,
    parse_added_variant,
    report_is_current,
    run,
    train,
)
from paired_stats import PairedDifference, claim_table_lines, paired_rows

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "robust.md"
BASELINE = "a_today"
CONDITIONS = ("night", "fog", "rain")
#: The clear held-out scenes, re-rendered under each condition.
SCENE_SET = "A"
VARIANTS = {
    "a_today": [],
    "b_augment": ["augment.enabled=true"],
    "c_semgraph": ["loss.use_semgraph=true"],
    "d_both": ["augment.enabled=true", "loss.use_semgraph=true"],
}
EXTRA_VARIANTS = {
    "b_augment_light": ["augment.enabled=true", "augment.p=0.25", "augment.severities=[1,2,3]"],
    "e_retinex": ["student.retinex=true"],
    "f_augment_retinex": ["augment.enabled=true", "student.retinex=true"],
}
#: A (variant, seed) that ``--no-train`` found no finished run for: left out of every statistic.
NOT_RUN: dict = {"not_run": True}
#: Row keys compared with the baseline: (key, label, digits).
PAIRED_KEYS = (("adverse_abs_rel", "adverse AbsRel", 4), ("clear_abs_rel", "clear AbsRel", 4),
               ("corruption_mdee", "corruption mDEE", 4))


def condition_bags(ctx: Context, condition: str) -> list[Path]:
    """The held-out scenes of set A rendered under ``condition`` (synthesised when missing)."""
    bags = []
    for seed in HELDOUT_SETS[SCENE_SET]:
        bag = ctx.work / f"heldout_f{ctx.eval_frames}_seed{seed}_{condition}"
        if not (bag / "metadata.yaml").exists():
            run([*ctx.fsmde, "synth", "--preset", "ddad", "--frames", str(ctx.eval_frames), "--seed", str(seed),
                 "--condition", condition, "--out", str(bag), "--no-progress"], ctx.log)
        bags.append(bag)
    return bags


def corruption_spec(severity: str) -> str:
    """``all`` (every severity) or every corruption at one severity, in ``--corruption`` syntax."""
    if severity == "all":
        return "all"
    from fsmde_core.corruptions import CORRUPTIONS

    return ",".join(f"{name}@{int(severity)}" for name in CORRUPTIONS)


def evaluate(ctx: Context, run_dir: Path, bags: list[Path], out: Path, extra: list[str] = ()) -> dict:
    """One metric-mode evaluation (reused when its report is newer than the checkpoint)."""
    if not report_is_current(out, run_dir / "student.safetensors"):
        run([*ctx.fsmde, "eval", "--checkpoint", str(run_dir), *bag_args(bags), "--out", str(out), "--gt",
             "synthetic", "--mode", "metric", "--no-progress", *extra], ctx.log)
    return metrics(out)


def evaluate_variant(ctx: Context, run_dir: Path, tag: str, args: argparse.Namespace) -> dict:
    """Clear, per-condition and corruption scores of one checkpoint -> one row."""
    reports = ctx.work / "reports" / "robust"
    clear = evaluate(ctx, run_dir, heldout_bags(ctx, SCENE_SET), reports / f"{tag}_clear")
    row = {"clear_abs_rel": clear["mean"]["abs_rel"], "clear_a1": clear["mean"]["a1"]}
    for condition in CONDITIONS:
        m = evaluate(ctx, run_dir, condition_bags(ctx, condition), reports / f"{tag}_{condition}")
        row[f"{condition}_abs_rel"] = m["mean"]["abs_rel"]
        row[f"{condition}_a1"] = m["mean"]["a1"]
    row["adverse_abs_rel"] = finite_mean(row[f"{c}_abs_rel"] for c in CONDITIONS)
    corrupted = evaluate(ctx, run_dir, heldout_bags(ctx, SCENE_SET)[: args.corruption_bags],
                         reports / f"{tag}_corrupt_s{args.severity}",
                         ["--corruption", corruption_spec(args.severity), "--max-frames",
                          str(args.corruption_frames)])
    robust = corrupted.get("robustness", {})
    row["corruption_mdee"] = robust.get("mdee", math.nan)
    row["corruption_mrr"] = robust.get("mrr", math.nan)
    per = corrupted.get("corruptions", {})
    row["corruption_abs_rel"] = {name: finite_mean(s["abs_rel"] for s in sev.values()) for name, sev in per.items()}
    return row


def paired(rows: dict[str, list[dict | None]]) -> dict[str, dict[str, PairedDifference]]:
    return paired_rows(rows, BASELINE, [key for key, _, _ in PAIRED_KEYS])


def claim_lines(diffs: dict[str, dict[str, PairedDifference]]) -> list[str]:
    return claim_table_lines(diffs, BASELINE, PAIRED_KEYS, (("adverse_abs_rel", "adverse"), ("clear_abs_rel", "clear")),
                             fmt_interval)


def summary_lines(rows: dict[str, list[dict | None]]) -> list[str]:
    cols = ["clear_abs_rel", *(f"{c}_abs_rel" for c in CONDITIONS), "adverse_abs_rel", "corruption_mdee",
            "corruption_mrr"]
    lines = ["| run | seeds | clear AbsRel | " + " | ".join(f"{c} AbsRel" for c in CONDITIONS)
             + " | adverse mean | corruption mDEE | corruption mRR |", "|---|---|" + "---|" * len(cols)]
    for name, seed_rows in rows.items():
        done = [r for r in seed_rows if r is not None and not r.get("not_run")]
        cells = []
        for key in cols:
            vals = [r[key] for r in done if r.get(key) is not None and math.isfinite(r[key])]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{fmt(finite_mean(vals), 4)} ± {fmt(sd, 4)}" if vals else "n/a")
        lines.append(f"| {name} | {len(done)} | " + " | ".join(cells) + " |")
    return lines


def corruption_lines(rows: dict[str, list[dict | None]]) -> list[str]:
    """AbsRel per corruption (mean over seeds and the evaluated severities), one column per variant."""
    names = sorted({c for seed_rows in rows.values() for r in seed_rows if r and not r.get("not_run")
                    for c in r["corruption_abs_rel"]})
    if not names:
        return []
    lines = ["| corruption | " + " | ".join(rows) + " |", "|---|" + "---|" * len(rows)]
    for c in names:
        cells = [fmt(finite_mean(r["corruption_abs_rel"].get(c) for r in seed_rows if r and not r.get("not_run")), 4)
                 for seed_rows in rows.values()]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return lines


def per_seed_lines(rows: dict[str, list[dict | None]], seeds: list[int]) -> list[str]:
    lines = ["| run | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for name, seed_rows in rows.items():
        lines.append(f"| {name} | " + " | ".join(
            "stopped (error)" if r is None else "not run" if r.get("not_run") else
            f"{fmt(r['clear_abs_rel'], 4)} / {fmt(r['adverse_abs_rel'], 4)} / {fmt(r['corruption_mdee'], 4)}"
            for r in seed_rows) + " |")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/fsmde_robust"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--train-scenes", type=int, default=24)
    ap.add_argument("--train-frames", type=int, default=4)
    ap.add_argument("--eval-frames", type=int, default=4, help="frames per held-out scene")
    ap.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[0, 1, 2])
    ap.add_argument("--variants", type=lambda v: v.split(","), default=list(VARIANTS),
                    help=f"default {','.join(VARIANTS)}; more: {','.join(EXTRA_VARIANTS)}")
    ap.add_argument("--add-variant", type=parse_added_variant, action="append", default=[],
                    metavar="NAME=KEY=VALUE[ KEY=VALUE...]")
    ap.add_argument("--severity", default="3", choices=["1", "2", "3", "4", "5", "all"],
                    help="corruption severity of the suite (default 3; all = the five, 5x the time)")
    ap.add_argument("--corruption-bags", type=int, default=2, help="clear held-out scenes under the corruptions")
    ap.add_argument("--corruption-frames", type=int, default=4, help="surround sets under the corruptions")
    ap.add_argument("--no-record", action="store_true", help=f"do not append to {RESULTS.relative_to(ROOT)}")
    ap.add_argument("--no-train", action="store_true",
                    help="report only the (variant, seed) runs already finished in --work; train nothing")
    args = ap.parse_args(argv)
    known = {**VARIANTS, **EXTRA_VARIANTS}
    unknown = [v for v in args.variants if v not in known]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(known)}")
    args.table = {v: known[v] for v in args.variants} | dict(args.add_variant)
    return args


def main() -> int:
    args = parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FSMDE_CACHE", str(args.work / "cache"))
    ctx = Context(args.work, args.eval_frames, [sys.executable, "-m", "fsmde_core.cli"], [])
    t0 = time.perf_counter()
    train_seeds = list(range(FIRST_TRAIN_SEED, FIRST_TRAIN_SEED + args.train_scenes))
    train_bags = make_bags(ctx, train_seeds, args.train_frames)
    rows: dict[str, list[dict | None]] = {}
    for name, overrides in args.table.items():
        for seed in args.seeds:
            tag = f"{name}_seed{seed}"
            run_dir = args.work / "runs" / tag
            if args.no_train and finished_steps(run_dir) != args.steps:
                rows.setdefault(name, []).append(NOT_RUN)
                continue
            ok = train(ctx, run_dir, train_bags, args.steps, seed, overrides)
            rows.setdefault(name, []).append(evaluate_variant(ctx, run_dir, tag, args) if ok else None)
    text = "\n".join(report(args, rows, ctx.log, time.perf_counter() - t0))
    print(text)
    if not args.no_record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as fh:
            fh.write(text + "\n")
    return 0


def report(args: argparse.Namespace, rows: dict[str, list[dict | None]], log: list[str], wall_s: float) -> list[str]:
    scenes = ", ".join(map(str, HELDOUT_SETS[SCENE_SET]))
    return [
        f"## Robustness benchmark (issue 11) — {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} (CPU), load average "
        f"at the end {os.getloadavg()[0]:.1f}. Student: config/train_tiny.yaml, {args.steps} steps, seeds "
        f"{', '.join(map(str, args.seeds))}; trained on {args.train_scenes} clear ddad scenes. Held-out scenes "
        f"(seeds {scenes}, {args.eval_frames} frames) clear and rendered {', '.join(CONDITIONS)}; corruptions at "
        f"severity {args.severity} on the first {args.corruption_frames} surround sets read from the first "
        f"{args.corruption_bags} clear scenes (bags are read in order). Metric AbsRel "
        "vs dense synthetic GT; DEE = (AbsRel - δ1 + 1) / 2, mDEE its mean over corruptions, mRR the resilience "
        "rate (RoboDepth).", "",
        "Paired difference to a_today (mean [95 % t-interval]; **\\*** = excludes 0; negative = lower error):", "",
        *claim_lines(paired(rows)), "", "Mean ± sd over seeds:", "", *summary_lines(rows), "",
        "AbsRel per corruption (mean over seeds):", "", *corruption_lines(rows), "",
        "Per seed (clear AbsRel / adverse AbsRel / corruption mDEE):", "", *per_seed_lines(rows, args.seeds), "",
        f"Total wall time {wall_s:.0f} s. Commands:", "", "```", *log, "```", ""]


if __name__ == "__main__":
    sys.exit(main())
