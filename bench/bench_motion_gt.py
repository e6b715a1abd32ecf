"""How well the LiDAR ground truth fits the dense rendered depth, with and without ego-motion compensation.

Writes small synthetic drives of one street (seed) with ``fsmde synth``'s
generator, reads them with :class:`fsmde_core.data.BagSource` in several
``DataConfig.motion_compensation`` modes and compares each camera's sparse
depth with the dense depth rendered at that camera's stamp
(``/synthetic_gt/<cam>/depth``): median ``|sparse - dense| / dense`` over the
pixels with both, and the fraction beyond 5 %. Rigs:

* ``static``: the synchronous rig parked (speed 0): the floor set by
  projection and pixel discretisation alone;
* ``sync``: the synchronous rig (cameras 0-8 ms after a deskewed 10 Hz sweep);
* ``sweep-raw``: cameras triggered by a 20 Hz LiDAR's beam, raw rolling sweep;
* ``sweep-deskewed``: the same rig, sweep deskewed to its stamp (nuScenes-like).

Prints a table and appends it, with the machine and command, to
``bench/results/motion.md``.

    python bench/bench_motion_gt.py [--seeds 0 1] [--frames 4] [--speed 12] [--size 320 192] [--no-record]
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout, not installed
from bench.bench_synth import machine
from fsmde_core.data import BagSource, DataConfig
from fsmde_core.synthetic.writer import generate_bag

RESULTS = Path(__file__).resolve().parent / "results" / "motion.md"
# rig -> (generate_bag keywords given the speed, modes to read it with)
RIGS = {
    "static": (lambda v: {"speed": 0.0}, ("auto",)),
    "sync": (lambda v: {"speed": v}, ("auto", "off")),
    "sweep-raw": (lambda v: {"camera_timing": "sweep", "speed": v}, ("auto", "stamp", "off")),
    "sweep-deskewed": (lambda v: {"camera_timing": "sweep", "speed": v, "lidar_sweep": "deskewed"}, ("auto", "off")),
}


def errors(bag: Path, mode: str) -> tuple[dict[str, np.ndarray], int]:
    """Per camera, relative errors of every pixel with sparse and dense depth; and uncompensated samples."""
    src = BagSource([bag], DataConfig(sync_tolerance_ms=50.0, motion_compensation=mode))
    out: dict[str, list[np.ndarray]] = {}
    for s in src:
        for k, name in enumerate(s.camera_names):
            sp, gt = s.sparse_depth[k], s.gt_depth[k]
            ok = np.isfinite(sp) & np.isfinite(gt) & (gt > 0)
            out.setdefault(name, []).append(np.abs(sp[ok] - gt[ok]) / gt[ok])
    return {k: np.concatenate(v) for k, v in out.items()}, src.stats.uncompensated


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_motion_") as tmp:
        for rig, (kw, modes) in RIGS.items():
            if args.rigs and rig not in args.rigs:
                continue
            bags = []
            for seed in args.seeds:
                bag = Path(tmp) / f"{rig}_{seed}"
                generate_bag(args.preset, args.frames, seed, bag, width=args.size[0], height=args.size[1],
                             progress=False, **kw(args.speed))
                bags.append(bag)
            for mode in modes:
                per_cam: dict[str, list[np.ndarray]] = {}
                unc = 0
                for bag in bags:
                    e, u = errors(bag, mode)
                    unc += u
                    for k, v in e.items():
                        per_cam.setdefault(k, []).append(v)
                cams = {k: np.concatenate(v) for k, v in per_cam.items()}
                allp = np.concatenate(list(cams.values()))
                rows.append({"rig": rig, "mode": mode, "uncompensated": unc,
                             "cams": {k: (float(np.median(v)), float((v > 0.05).mean())) for k, v in cams.items()},
                             "all": (float(np.median(allp)), float((allp > 0.05).mean()))})
                if not args.quiet:
                    print(f"{rig} {mode}: median {rows[-1]['all'][0]:.4f}, >5% {rows[-1]['all'][1]:.3f}",
                          file=sys.stderr)
    return rows


def table(rows: list[dict]) -> str:
    cams = list(rows[0]["cams"])
    head = "| rig | compensation | " + " | ".join(cams) + " | all |"
    lines = [head, "|---|---|" + "---:|" * (len(cams) + 1)]
    for r in rows:
        mode = r["mode"] + (f" ({r['uncompensated']} uncomp.)" if r["mode"] != "off" and r["uncompensated"] else "")
        cells = [f"{r['cams'][c][0] * 100:.2f} / {r['cams'][c][1] * 100:.1f}" for c in cams]
        lines.append(f"| {r['rig']} | {mode} | " + " | ".join(cells) + f" | {r['all'][0] * 100:.2f} / "
                     f"{r['all'][1] * 100:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="nuscenes")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--speed", type=float, default=12.0, help="ego speed of the moving rigs (m/s)")
    p.add_argument("--size", type=int, nargs=2, default=[320, 192], metavar=("W", "H"))
    p.add_argument("--rigs", nargs="*", default=None, choices=list(RIGS))
    p.add_argument("--no-record", action="store_true", help="do not append to bench/results/motion.md")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    host = machine()
    rows = run(args)
    text = table(rows)
    print(text)
    if not args.no_record:
        if not RESULTS.exists():
            RESULTS.write_text(
                "# LiDAR ground truth vs dense rendered depth, with and without ego-motion compensation\n\n"
                "Appended by `bench/bench_motion_gt.py`. Cells: median |sparse - dense| / dense (%) / share of "
                "pixels beyond 5 % (%), over every pixel with both depths. Compensation modes are "
                "`DataConfig.motion_compensation`: `auto` = each point at its own time (sweep stamp + `t`), "
                "`stamp` = every point at the sweep stamp, `off` = the rig treated as standing still.\n")
        cmd = "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
        when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        with RESULTS.open("a") as f:
            f.write(f"\n## {when}\n\n- machine: {host}\n- command: `{cmd}`\n- preset {args.preset}, seeds "
                    f"{args.seeds}, {args.frames} frames, {args.size[0]}x{args.size[1]}, moving rigs at "
                    f"{args.speed:g} m/s\n\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
