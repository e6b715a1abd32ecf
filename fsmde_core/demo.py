"""``fsmde demo``: the whole product end to end, on this machine, with pictures.

1. ``fsmde synth``   a training bag and a held-out bag (DDAD-like rig; the held-out
                     one sweep-triggered, cameras ~40 ms apart, at 12 m/s)
2. ``fsmde train``   the tiny CPU config (cross-interaction + view-relational KD)
3. ``fsmde eval``    held-out metrics + report (depth mosaic, error maps, per-camera chart)
4. ``fsmde export``  ONNX with the six cameras as the batch, checked against torch
5. the ROS 2 node    ``python -m fsmde_ros.snapshot``: ``fsmde rig`` writes its calibration
                     and parameters from the held-out bag; ``surround_depth_node`` on the
                     exported model, fed by ``fsmde play`` replaying the held-out bag with
                     /clock, its outputs saved as the pictures RViz would show (skipped,
                     with a line saying so, where ROS 2 is not installed)

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
    parser.add_argument("--train-frames", type=int, default=40, help="frames in the training bag")
    parser.add_argument("--eval-frames", type=int, default=6, help="frames in the held-out bag")
    parser.add_argument("--steps", type=int, default=200, help="training steps (tiny CPU config)")
    parser.add_argument("--skip-node", action="store_true", help="stop after export (no ROS 2 node)")
    parser.add_argument("--domain-id", type=int, default=int(os.environ.get("ROS_DOMAIN_ID", "77")),
                        help="ROS_DOMAIN_ID for the node replay (DDS stays on localhost)")


def run_demo(args: argparse.Namespace) -> int:
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    fsmde = [sys.executable, "-m", "fsmde_core.cli"]
    env = dict(os.environ, FSMDE_CACHE=str(out / "cache"))
    train_bag, eval_bag = out / "bags" / "train_seed1", out / "bags" / "heldout_seed2"
    run_dir, report, onnx = out / "run", out / "report", out / "run" / "student.onnx"
    t0 = time.perf_counter()
    if not (train_bag / "metadata.yaml").exists():
        run_step([*fsmde, "synth", "--preset", "ddad", "--frames", str(args.train_frames), "--seed", "1",
              "--out", str(train_bag)], env)
    if not (eval_bag / "metadata.yaml").exists():
        # held out: a sweep-triggered rig (cameras fired as the LiDAR passes, ~40 ms apart) at 12 m/s
        run_step([*fsmde, "synth", "--preset", "ddad", "--frames", str(args.eval_frames), "--seed", "2",
              "--camera-timing", "sweep", "--speed", "12", "--out", str(eval_bag)], env)
    run_step([*fsmde, "inspect", str(eval_bag)], env)
    if not (run_dir / "student.safetensors").exists():
        run_step([*fsmde, "train", "--config", str(_config_file("train_tiny.yaml")), "--bag", str(train_bag),
              "--out", str(run_dir), f"optim.max_steps={args.steps}", "optim.epochs=1000"], env)
    run_step([*fsmde, "eval", "--checkpoint", str(run_dir), "--bag", str(eval_bag), "--out", str(report),
          "--gt", "synthetic"], env)
    run_step([*fsmde, "eval", "--teacher", "synthetic", "--bag", str(eval_bag), "--out", str(report / "teacher"),
          "--gt", "synthetic", "--cap", "80"], env)
    run_step([*fsmde, "export", "--checkpoint", str(run_dir), "--onnx", str(onnx)], env)
    summary = {"bags": [str(train_bag), str(eval_bag)], "run": str(run_dir), "report": str(report / "report.md"),
               "onnx": str(onnx), "metrics": json.loads((report / "metrics.json").read_text())["mean"]}
    if not args.skip_node:
        names = json.loads((run_dir / "student.json").read_text())["camera_names"]
        summary["node"] = _node_step(onnx, eval_bag, out / "node", names, args.domain_id)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\n== fsmde demo: done ==")
    print(json.dumps(summary, indent=2))
    if summary.get("node") and summary["node"]["depth_sets"] == 0:
        print("fsmde demo: the node produced no depth output (see its log above)", file=sys.stderr)
        return 1
    return 0
