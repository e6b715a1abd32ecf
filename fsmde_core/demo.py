"""``fsmde demo``: the whole product end to end, on this machine, with pictures.

1. ``fsmde synth``   short training bags of several scenes and a held-out bag of
                     another (DDAD-like rig; the held-out one sweep-triggered,
                     cameras ~40 ms apart, at 12 m/s)
2. ``fsmde train``   the tiny CPU config (cross-interaction, dense metric and
                     view-relational KD) on all training bags
3. ``fsmde eval``    held-out metrics + report (depth mosaic, error maps, per-camera chart)
4. ``fsmde export``  ONNX with the six cameras as the batch, checked against torch
5. the ROS 2 node    ``python -m fsmde_ros.snapshot``: ``fsmde rig`` writes its calibration
                     and parameters from the held-out bag; ``surround_depth_node`` on the
                     exported model, fed by ``fsmde play`` replaying the held-out bag with
                     /clock, its outputs saved as the pictures RViz would show (skipped,
                     with a line saying so, where ROS 2 is not installed)

Many short scenes, not one long one: consecutive frames of one street are near
duplicates, so a single 40-frame bag taught the student one street by heart
(held-out AbsRel 0.51); the same 40 frames as eight streets generalise, as
twenty streets of two frames do better still (0.185 against 0.225 with the
distilled student, which fits its training streets closely and so gains most
from more of them: the measured choice of scenes and steps, :data:`DEMO_STEPS`,
bench/results/demo.md).

Each step is the same CLI a user runs, printed before it runs, so the demo is
also the tutorial. Steps whose outputs exist are skipped (re-running is cheap).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Training data and steps of the demo: fewer CPU minutes than the old 200 steps of the
#: ResNet-18 student on one 40-frame street, spent on the lighter default student and more
#: streets (measured: bench/results/demo.md).
DEMO_TRAIN_SCENES, DEMO_TRAIN_FRAMES, DEMO_STEPS = 20, 2, 400
TRAIN_SEED0, HELDOUT_SEED = 11, 2


def run_step(cmd: list[str], env: dict | None = None) -> None:
    """Print the command as a user would type it, then run it (the demo is also the tutorial)."""
    print(f"\n$ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    subprocess.run(cmd, check=True, env=env)


def _config_file(name: str) -> Path:
    """Config shipped with the package: the source tree, or share/fsmde_ros in a ROS install."""
    local = ROOT / "config" / name
    if local.is_file():
        return local
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("fsmde_ros")) / "config" / name
    except (ImportError, LookupError) as exc:
        raise FileNotFoundError(f"config/{name} not found next to the sources or in share/fsmde_ros") from exc


def _node_step(onnx: Path, bag: Path, out_dir: Path, names: list[str], domain_id: int) -> dict | None:
    """The ROS 2 step, run as ``python -m fsmde_ros.snapshot`` (fsmde_core never imports ROS);
    None, said in one line, when ROS 2's Python packages are not installed."""
    if importlib.util.find_spec("rclpy") is None:
        print("fsmde demo: skipping the node step: ROS 2's Python packages (rclpy) are not installed "
              "(pip install -r requirements-ros.txt, or source a ROS 2 install)", file=sys.stderr)
        return None
    run_step([sys.executable, "-m", "fsmde_ros.snapshot", "--model", str(onnx), "--bag", str(bag),
          "--out", str(out_dir), "--cameras", ",".join(names), "--params-file",
          str(_config_file("surround_depth.yaml")), "--domain-id", str(domain_id)])
    return json.loads((out_dir / "node_summary.json").read_text())


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="where everything goes")
    parser.add_argument("--train-scenes", type=int, default=DEMO_TRAIN_SCENES,
                        help=f"training bags, one synthetic street each (seeds {TRAIN_SEED0}, {TRAIN_SEED0 + 1}, ...)")
    parser.add_argument("--train-frames", type=int, default=DEMO_TRAIN_FRAMES, help="frames per training bag")
    parser.add_argument("--eval-frames", type=int, default=6, help="frames in the held-out bag")
    parser.add_argument("--steps", type=int, default=DEMO_STEPS, help="training steps (tiny CPU config)")
    parser.add_argument("--skip-node", action="store_true", help="stop after export (no ROS 2 node)")
    parser.add_argument("--domain-id", type=int, default=int(os.environ.get("ROS_DOMAIN_ID", "77")),
                        help="ROS_DOMAIN_ID for the node replay (DDS stays on localhost)")


def run_demo(args: argparse.Namespace) -> int:
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    fsmde = [sys.executable, "-m", "fsmde_core.cli"]
    env = dict(os.environ, FSMDE_CACHE=str(out / "cache"))
    if args.train_scenes < 1 or args.train_frames < 1 or args.eval_frames < 1 or args.steps < 1:
        print("fsmde demo: --train-scenes, --train-frames, --eval-frames and --steps must be >= 1", file=sys.stderr)
        return 2
    seeds = range(TRAIN_SEED0, TRAIN_SEED0 + args.train_scenes)
    train_bags = [out / "bags" / f"train_seed{seed}" for seed in seeds]
    eval_bag = out / "bags" / f"heldout_seed{HELDOUT_SEED}"
    run_dir, report, onnx = out / "run", out / "report", out / "run" / "student.onnx"
    t0 = time.perf_counter()
    for seed, bag in zip(seeds, train_bags, strict=True):
        if not (bag / "metadata.yaml").exists():
            run_step([*fsmde, "synth", "--preset", "ddad", "--frames", str(args.train_frames), "--seed", str(seed),
                  "--out", str(bag)], env)
    if not (eval_bag / "metadata.yaml").exists():
        # held out: a sweep-triggered rig (cameras fired as the LiDAR passes, ~40 ms apart) at 12 m/s
        run_step([*fsmde, "synth", "--preset", "ddad", "--frames", str(args.eval_frames), "--seed", str(HELDOUT_SEED),
              "--camera-timing", "sweep", "--speed", "12", "--out", str(eval_bag)], env)
    run_step([*fsmde, "inspect", str(eval_bag)], env)
    if not (run_dir / "student.safetensors").exists():
        bag_args = [arg for bag in train_bags for arg in ("--bag", str(bag))]
        run_step([*fsmde, "train", "--config", str(_config_file("train_tiny.yaml")), *bag_args,
              "--out", str(run_dir), f"optim.max_steps={args.steps}", "optim.epochs=1000"], env)
    run_step([*fsmde, "eval", "--checkpoint", str(run_dir), "--bag", str(eval_bag), "--out", str(report),
          "--gt", "synthetic"], env)
    run_step([*fsmde, "eval", "--teacher", "synthetic", "--bag", str(eval_bag), "--out", str(report / "teacher"),
          "--gt", "synthetic", "--cap", "80"], env)
    run_step([*fsmde, "export", "--checkpoint", str(run_dir), "--onnx", str(onnx)], env)
    student = json.loads((run_dir / "student.json").read_text())
    metrics = json.loads((report / "metrics.json").read_text())["mean"]
    teacher = json.loads((report / "teacher" / "metrics.json").read_text())["mean"]
    summary = {"bags": [*map(str, train_bags), str(eval_bag)], "run": str(run_dir), "report": str(report / "report.md"),
               "onnx": str(onnx), "student": student["student"]["preset"],
               "steps": args.steps, "heldout_abs_rel": round(metrics["abs_rel"], 4),
               "teacher_affine_abs_rel": round(teacher["abs_rel"], 4), "metrics": metrics}
    if not args.skip_node:
        summary["node"] = _node_step(onnx, eval_bag, out / "node", student["camera_names"], args.domain_id)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\n== fsmde demo: done ==")
    print(json.dumps(summary, indent=2))
    print(f"\nheld-out metric AbsRel of the {summary['student']} student after {args.steps} steps: "
          f"{summary['heldout_abs_rel']:.3f} (the teacher it learnt from, affine-aligned: "
          f"{summary['teacher_affine_abs_rel']:.3f}); report: {summary['report']}")
    if summary.get("node") and summary["node"]["depth_sets"] == 0:
        print("fsmde demo: no depth output from the node reached the viewer (see the node's log above)",
              file=sys.stderr)
        return 1
    return 0
