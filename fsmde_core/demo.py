"""``fsmde demo``: the whole product end to end, on this machine, with pictures.

1. ``fsmde synth``   a training bag and a held-out bag (DDAD-like rig; the held-out
                     one sweep-triggered, cameras ~40 ms apart, at 12 m/s)
2. ``fsmde train``   the tiny CPU config (cross-interaction + view-relational KD)
3. ``fsmde eval``    held-out metrics + report (depth mosaic, error maps, per-camera chart)
4. ``fsmde export``  ONNX with the six cameras as the batch, checked against torch
5. the ROS 2 node    ``fsmde rig`` writes its calibration and parameters from the
                     held-out bag; ``surround_depth_node`` on the exported model, fed by
                     ``fsmde play`` replaying the held-out bag with /clock, its
                     outputs saved as the pictures RViz would show

Each step is the same CLI a user runs, printed before it runs, so the demo is
also the tutorial. Steps whose outputs exist are skipped (re-running is cheap).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], env: dict | None = None) -> None:
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


def run_node_replay(model: Path, bag: Path, out_dir: Path, names: list[str], domain_id: int,
                    timeout_s: float = 240.0) -> dict:
    """Start the node on ``model``, replay ``bag`` into it, save pictures of its outputs."""
    import rclpy

    from fsmde_core.rig import Rig
    from fsmde_ros.snapshot import NodeOutputRecorder

    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    os.environ.update({"ROS_DOMAIN_ID": str(domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"})
    # the node is configured from the bag itself, as a user does with their own recording
    rig_yaml, node_params = out_dir / "rig.yaml", out_dir / "node_params.yaml"
    out_dir.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "fsmde_core.cli", "rig", "--bag", str(bag), "--out", str(rig_yaml),
          "--params", str(node_params), "--force"], env)
    node_cmd = [sys.executable, "-m", "fsmde_ros.node", "--ros-args",
                "--params-file", str(_config_file("surround_depth.yaml")), "--params-file", str(node_params),
                "-p", f"model.path:={model}", "-p", "model.backend:=onnxruntime",
                "-p", "pipeline.queue_size:=100",  # a replay: keep every set even on a loaded machine
                "-p", "use_sim_time:=true"]
    print(f"\n$ {' '.join(shlex.quote(c) for c in node_cmd)} &", flush=True)
    node_proc = subprocess.Popen(node_cmd, env=env)
    depth_topics = [f"/cameras/{n}/depth" for n in names]
    rclpy.init()
    node = rclpy.create_node("fsmde_demo_viewer")
    recorder = NodeOutputRecorder(node, names, depth_topics, "/surround_depth/points")
    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(node)
    play_cmd = [sys.executable, "-m", "fsmde_ros.player", str(bag), "--skip-unknown-types", "--rate", "0.5",
                "--wait-for-subscribers", "--wait-timeout", "120"]  # waits for every camera topic
    try:
        print(f"\n$ {' '.join(shlex.quote(c) for c in play_cmd)}", flush=True)
        player = subprocess.Popen(play_cmd, env=env)
        deadline = time.monotonic() + timeout_s
        while player.poll() is None and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        settle = time.monotonic() + 10.0  # let the node finish the last set
        while time.monotonic() < settle:
            executor.spin_once(timeout_sec=0.1)
        if player.poll() is None:
            player.terminate()
        ring = Rig.load(rig_yaml).ring_order()
        pictures = recorder.save_pictures(out_dir, ring)
        sets, clouds = recorder.counts()
    finally:
        node_proc.terminate()
        try:
            node_proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            node_proc.kill()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return {"depth_sets": sets, "clouds": clouds, "pictures": [str(p) for p in pictures]}


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
        _run([*fsmde, "synth", "--preset", "ddad", "--frames", str(args.train_frames), "--seed", "1",
              "--out", str(train_bag)], env)
    if not (eval_bag / "metadata.yaml").exists():
        # held out: a sweep-triggered rig (cameras fired as the LiDAR passes, ~40 ms apart) at 12 m/s
        _run([*fsmde, "synth", "--preset", "ddad", "--frames", str(args.eval_frames), "--seed", "2",
              "--camera-timing", "sweep", "--speed", "12", "--out", str(eval_bag)], env)
    _run([*fsmde, "inspect", str(eval_bag)], env)
    if not (run_dir / "student.safetensors").exists():
        _run([*fsmde, "train", "--config", str(_config_file("train_tiny.yaml")), "--bag", str(train_bag),
              "--out", str(run_dir), f"optim.max_steps={args.steps}", "optim.epochs=1000"], env)
    _run([*fsmde, "eval", "--checkpoint", str(run_dir), "--bag", str(eval_bag), "--out", str(report),
          "--gt", "synthetic"], env)
    _run([*fsmde, "eval", "--teacher", "synthetic", "--bag", str(eval_bag), "--out", str(report / "teacher"),
          "--gt", "synthetic", "--cap", "80"], env)
    _run([*fsmde, "export", "--checkpoint", str(run_dir), "--onnx", str(onnx)], env)
    summary = {"bags": [str(train_bag), str(eval_bag)], "run": str(run_dir), "report": str(report / "report.md"),
               "onnx": str(onnx), "metrics": json.loads((report / "metrics.json").read_text())["mean"]}
    if not args.skip_node:
        names = json.loads((run_dir / "student.json").read_text())["camera_names"]
        summary["node"] = run_node_replay(onnx, eval_bag, out / "node", names, args.domain_id)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\n== fsmde demo: done ==")
    print(json.dumps(summary, indent=2))
    if not args.skip_node and summary["node"]["depth_sets"] == 0:
        print("fsmde demo: the node produced no depth output (see its log above)", file=sys.stderr)
        return 1
    return 0
