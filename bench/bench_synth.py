"""Benchmark of ``fsmde synth``: time to write a surround bag, per preset and image format.

Each run generates a fresh bag (default 100 frames at the preset's native
size: six cameras + GT depth + LiDAR + TF) into a temporary directory,
prints a table and appends it, with the machine and command, to
``bench/results/synth.md``. Numbers, not pass/fail: quote ratios from one
run, absolute times only with the hardware.

    python bench/bench_synth.py [--frames 100] [--presets ddad nuscenes] [--formats raw jpeg]
                                [--workers N] [--storage mcap] [--no-record]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
import tempfile
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout, not installed
from fsmde_core.synthetic.writer import default_workers, generate_bag

RESULTS = Path(__file__).resolve().parent / "results" / "synth.md"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> str:
    """One line naming the hardware and software the numbers were taken on."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 0
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{platform.machine()}, {cpu}, {cores} usable cores (load average at start: {load}), "
        f"Python {platform.python_version()}, numpy {_version('numpy')}, torch {_version('torch')}, "
        f"rosbags {_version('rosbags')}"
    )


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_synth_") as tmp:
        for preset in args.presets:
            for fmt in args.formats:
                out = Path(tmp) / f"{preset}_{fmt}"
                s = generate_bag(
                    preset,
                    args.frames,
                    seed=args.seed,
                    out=out,
                    storage=args.storage,
                    image_format=fmt,
                    progress=not args.quiet,
                    workers=args.workers,
                )
                rows.append(s)
                print(f"  {preset:<9} {fmt:<5} {s['frames_per_s']:6.2f} frames/s", file=sys.stderr)
    return rows


def table(rows: list[dict]) -> str:
    head = "| preset | image | size | frames | workers | seconds | frames/s | bag MB |\n"
    head += "|---|---|---|---:|---:|---:|---:|---:|\n"
    body = "".join(
        f"| {r['preset']} | {r['image_format']} | {r['width']}x{r['height']} | {r['frames']} | {r['workers']} "
        f"| {r['seconds']:.1f} | {r['frames_per_s']:.2f} | {r['bytes'] / 1e6:.0f} |\n"
        for r in rows
    )
    return head + body


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--presets", nargs="+", default=["ddad", "nuscenes"], choices=["ddad", "nuscenes"])
    p.add_argument("--formats", nargs="+", default=["raw", "jpeg"], choices=["raw", "jpeg"])
    p.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3"])
    p.add_argument("--workers", type=int, default=None, help=f"default: {default_workers()} here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-record", action="store_true", help=f"do not append to {RESULTS}")
    args = p.parse_args(argv)

    where = machine()  # before the runs: the load average says whether the machine was shared
    rows = run(args)
    text = table(rows)
    print(text)
    if not args.no_record:
        command = "python bench/bench_synth.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        new = not RESULTS.exists()
        with RESULTS.open("a") as f:
            if new:
                f.write(
                    "# `fsmde synth` benchmark\n\n"
                    "Time to write a synthetic surround bag (six cameras + CameraInfo + dense GT depth, "
                    "32-beam LiDAR, /tf, /tf_static), appended by `bench/bench_synth.py`. The time "
                    "includes world generation, worker start-up, rendering, encoding and writing to disk.\n"
                )
            f.write(f"\n## {stamp}\n\n- machine: {where}\n- command: `{command.strip()}`\n\n{text}")
        print(f"appended to {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
