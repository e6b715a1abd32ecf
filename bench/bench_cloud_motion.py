"""Seams in the fused cloud of a sweep-triggered rig at speed, with and without motion compensation.

A nuScenes-style rig fires each camera as the spinning LiDAR passes it: the six
stamps of one set spread over ~43 ms, and the node fuses them into the vehicle
frame at the set's reference stamp (the latest camera). Without compensation
each camera's points stay in the vehicle frame of *its own* exposure, which at
12 m/s is up to 0.5 m away.

To isolate geometry, depth is the renderer's exact depth (no model), rendered
for each camera at its own stamp and pose from the synthetic World
(``World.ego_pose``; static scene, no traffic, so every point is a fixed world
point). For each fused point the error is the distance between where the cloud
puts it at the reference instant and where that surface point really is then.
"Seam" is the offset between two adjacent cameras' clouds (norm of the
difference of their mean error vectors): what one sees as a doubled wall.
Compensation uses the vehicle pose at each stamp either exactly or interpolated
from 50 Hz odometry (lerp + slerp between samples, as tf2 does with /tf).

    python bench/bench_cloud_motion.py [--speed 12] [--sets 8] [--size 320x192] [--no-record]
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))  # the tests' sweep phases
from bagfactory import SWEEP_OFFSETS_MS
from bench_synth import machine

from fsmde_core.geometry import CameraRays
from fsmde_core.motion import compensate_points
from fsmde_core.names import SURROUND_CAMERAS
from fsmde_core.rig import Rig, make_transform, matrix_to_quaternion, preset, quaternion_to_matrix
from fsmde_core.synthetic.raycast import RayGrid, cast
from fsmde_core.synthetic.world import make_world

RESULTS = Path(__file__).resolve().parent / "results" / "cloud_motion.md"
# Sweep trigger phases [ms] (the LiDAR passes the cameras in this order, 50 ms per turn)
SWEEP_ORDER = (SURROUND_CAMERAS[0], *reversed(SURROUND_CAMERAS[1:]))  # front, then clockwise
PHASES_MS = dict(zip(SWEEP_ORDER, SWEEP_OFFSETS_MS, strict=True))
ODOM_PERIOD_S = 0.02


def odom_pose(world, t: float) -> np.ndarray:
    """T_odom_base at ``t`` interpolated between 50 Hz odometry samples (lerp + slerp), like tf2."""
    t0 = np.floor(t / ODOM_PERIOD_S) * ODOM_PERIOD_S
    a, b = world.ego_pose(float(t0)), world.ego_pose(float(t0 + ODOM_PERIOD_S))
    w = (t - t0) / ODOM_PERIOD_S
    qa, qb = matrix_to_quaternion(a[:3, :3]), matrix_to_quaternion(b[:3, :3])
    if qa @ qb < 0:
        qb = -qb
    omega = np.arccos(np.clip(qa @ qb, -1.0, 1.0))
    q = qa if omega < 1e-12 else (np.sin((1 - w) * omega) * qa + np.sin(w * omega) * qb) / np.sin(omega)
    return make_transform(quaternion_to_matrix(q / np.linalg.norm(q)), (1 - w) * a[:3, 3] + w * b[:3, 3])


def camera_cloud(world, rig: Rig, k: int, t: float, stride: int) -> np.ndarray:
    """Exact depth of camera ``k`` rendered at its own instant -> points in the vehicle frame then."""
    cam = rig.cameras[k]
    s = float(world.ego.s(t))
    depth = cast(RayGrid.pinhole(cam.model), world.ego_pose(t) @ cam.T_base_cam,
                 world.static.near(s - 120.0, s + 120.0), world.road).t
    xyz, _ = CameraRays(cam.model, cam.T_base_cam, stride).points(depth, max_range=80.0)
    return xyz


def run(args: argparse.Namespace) -> dict[str, dict[str, list[np.ndarray]]]:
    width, height = (int(v) for v in args.size.split("x"))
    rig = preset("nuscenes", width, height)
    world = make_world(args.seed, 4.0 + args.sets)
    world = replace(world, ego=replace(world.ego, v0=args.speed, amp=0.0))  # constant speed
    modes = ("none", "exact poses", "50 Hz odometry")
    errors: dict[str, dict[str, list[np.ndarray]]] = {m: {c.name: [] for c in rig.cameras} for m in modes}
    for n in range(args.sets):
        t_first = 0.5 + 0.5 * n
        stamps = {c.name: t_first + PHASES_MS[c.name] / 1e3 for c in rig.cameras}
        t_ref = max(stamps.values())
        T_ref, T_ref_odom = world.ego_pose(t_ref), odom_pose(world, t_ref)
        for k, cam in enumerate(rig.cameras):
            t = stamps[cam.name]
            p = camera_cloud(world, rig, k, t, args.stride).astype(np.float64)
            T_cam = world.ego_pose(t)
            truth = p @ T_cam[:3, :3].T + T_cam[:3, 3]  # the surface points in odom (static world)
            claimed = {"none": p, "exact poses": compensate_points(p, T_cam, T_ref),
                       "50 Hz odometry": compensate_points(p, odom_pose(world, t), T_ref_odom)}
            for mode, q in claimed.items():
                where = q @ T_ref[:3, :3].T + T_ref[:3, 3]  # where the cloud puts them, in odom
                errors[mode][cam.name].append(where - truth)
    return errors


def table(errors: dict, rig_names: list[str], pairs: list[tuple[str, str]]) -> str:
    lines = ["| camera | phase [ms] | " + " | ".join(f"{m}: median / p95 [m]" for m in errors) + " |",
             "|---|---:|" + "---:|" * len(errors)]
    for name in rig_names:
        cells = []
        for mode in errors:
            d = np.linalg.norm(np.concatenate(errors[mode][name]), axis=1)
            cells.append(f"{np.median(d):.4f} / {np.percentile(d, 95):.4f}")
        lines.append(f"| {name} | {PHASES_MS[name]:.1f} | " + " | ".join(cells) + " |")
    lines += ["", "| seam (adjacent pair) | " + " | ".join(f"{m} [m]" for m in errors) + " |",
              "|---|" + "---:|" * len(errors)]
    for a, b in pairs:
        cells = [f"{np.linalg.norm(np.concatenate(errors[m][a]).mean(0) - np.concatenate(errors[m][b]).mean(0)):.4f}"
                 for m in errors]
        lines.append(f"| {a} - {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speed", type=float, default=12.0, help="ego speed [m/s] (default 12)")
    ap.add_argument("--sets", type=int, default=8, help="synchronized sets, 0.5 s apart (default 8)")
    ap.add_argument("--size", default="320x192", help="image size WxH (default 320x192)")
    ap.add_argument("--stride", type=int, default=2, help="cloud stride (default 2)")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--no-record", action="store_true", help=f"do not write {RESULTS.name}")
    args = ap.parse_args()
    rig = preset("nuscenes", 16, 10)
    names = rig.names
    pairs = [(names[i], names[j]) for i, j in rig.adjacent_pairs()]
    text = table(run(args), list(names), pairs)
    print(text)
    if not args.no_record:
        cmd = "python bench/bench_cloud_motion.py " + shlex.join(sys.argv[1:])
        RESULTS.write_text(
            "# Fused cloud at speed: motion compensation (bench/bench_cloud_motion.py)\n\n"
            f"{dt.date.today().isoformat()}; machine: {machine()}\n\n"
            f"Command: `{cmd.strip()}`\n\n"
            f"nuScenes preset at {args.size}, sweep-triggered phases (spread 42.6 ms), {args.speed:g} m/s constant, "
            f"{args.sets} sets, exact rendered depth (stride {args.stride}), static world. Error = distance between "
            f"a fused point and the true surface point at the set's reference stamp; seam = offset between "
            f"adjacent cameras' clouds. Modes: none (today's fusion), exact poses, poses interpolated from 50 Hz "
            f"odometry (what TF gives the node).\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
