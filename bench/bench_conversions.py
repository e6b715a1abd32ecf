"""Benchmark of the message layer (fsmde_core.messages, fsmde_ros.conversions) and of rclpy uint8[] filling.

Prints a table (median and best of N runs, milliseconds). Numbers, not
pass/fail: run it on the target machine and quote ratios from one run.

    python bench/bench_conversions.py [--repeat 7]

Workload: one surround frame = six 640x384 images (float32 depth: 5.9 MB),
and a 100k-point coloured cloud. "default" rows use rclpy's default message
classes; "checked" rows construct them with ``check_fields=True``, the
behaviour under ``ROS_PYTHON_CHECK_FIELDS=1`` (debug setups, some CI).
"""

from __future__ import annotations

import argparse
import array
import io
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout, not installed
from fsmde_core.messages import declared_size
from fsmde_ros.conversions import (
    cloud_to_points,
    compressed_to_rgb,
    depth_to_image,
    image_to_depth,
    image_to_rgb,
    points_to_cloud,
)

N_CAM, H, W, N_POINTS = 6, 384, 640, 100_000


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(median, best) wall time of ``fn`` in milliseconds."""
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t) * 1e3)
    return statistics.median(runs), min(runs)


def assignment_rows(repeat: int) -> list[tuple[str, Callable[[], object], int]]:
    """Ways to put 5.9 MB of depth into ``Image.data`` (assigning a numpy array is the slow path, ~400 ms for 7 MB)."""
    depth = np.random.default_rng(0).uniform(0, 80, (N_CAM, H, W)).astype(np.float32)
    rows = []
    for check in (False, True):
        tag = "checked" if check else "default"

        def assign(value_fn: Callable[[], object], check: bool = check) -> None:
            Image(check_fields=check).data = value_fn()

        def via_frombytes() -> array.array:
            out = array.array("B")
            out.frombytes(depth.reshape(-1).view(np.uint8))
            return out

        slow = max(1, repeat // 4) if not check else 1  # element-wise paths take ~0.4-1 s per call
        rows += [
            (f"assign numpy ndarray ({tag})",
             lambda a=assign: a(lambda: depth.view(np.uint8).reshape(-1)), slow),
            (f"assign bytes ({tag})", lambda a=assign: a(depth.tobytes), repeat if not check else 1),
            (f"assign memoryview ({tag})", lambda a=assign: a(lambda: memoryview(depth).cast("B")), slow),
            (f"assign array.array via tobytes ({tag})",
             lambda a=assign: a(lambda: array.array("B", depth.tobytes())), repeat),
            (f"assign array.array via frombytes ({tag}, used)", lambda a=assign: a(via_frombytes), repeat),
        ]
    return rows


def conversion_rows(repeat: int) -> list[tuple[str, Callable[[], object], int]]:
    rng = np.random.default_rng(1)
    header = Header(frame_id="cam_front_optical")
    depths = [rng.uniform(0, 80, (H, W)).astype(np.float32) for _ in range(N_CAM)]
    depth_msgs = [depth_to_image(d, header) for d in depths]
    rgb = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(N_CAM)]
    rgb_msgs = [Image(header=header, height=H, width=W, encoding="rgb8", step=W * 3, data=x.tobytes())
                for x in rgb]
    bgr_msgs = [Image(header=header, height=H, width=W, encoding="bgr8", step=W * 3, data=x.tobytes())
                for x in rgb]
    jpegs = []
    from PIL import Image as PILImage

    for x in rgb:
        buf = io.BytesIO()
        PILImage.fromarray(x).save(buf, format="JPEG", quality=90)
        jpegs.append(CompressedImage(header=header, format="jpeg", data=buf.getvalue()))
    xyz = rng.normal(0, 30, (N_POINTS, 3)).astype(np.float32)
    colours = rng.integers(0, 256, (N_POINTS, 3), dtype=np.uint8)
    cloud = points_to_cloud(xyz, colours, header)
    n = f"{N_CAM}x{W}x{H}"
    return [
        (f"depth_to_image {n}", lambda: [depth_to_image(d, header) for d in depths], repeat),
        (f"image_to_depth {n} (view)", lambda: [image_to_depth(m) for m in depth_msgs], repeat),
        (f"image_to_depth {n} (copy)", lambda: [image_to_depth(m, copy=True) for m in depth_msgs], repeat),
        (f"image_to_rgb rgb8 {n} (view)", lambda: [image_to_rgb(m) for m in rgb_msgs], repeat),
        (f"image_to_rgb bgr8 {n}", lambda: [image_to_rgb(m) for m in bgr_msgs], repeat),
        (f"compressed_to_rgb jpeg {n}", lambda: [compressed_to_rgb(m) for m in jpegs], repeat),
        (f"declared_size jpeg {n} (its size guard)", lambda: [declared_size(m.data) for m in jpegs], repeat),
        (f"serialize_message depth {n} (reference)", lambda: [serialize_message(m) for m in depth_msgs],
         repeat),
        (f"points_to_cloud {N_POINTS // 1000}k xyz+rgb", lambda: points_to_cloud(xyz, colours, header),
         repeat),
        (f"cloud_to_points {N_POINTS // 1000}k xyz+rgb", lambda: cloud_to_points(cloud), repeat),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per row (median and best reported)")
    args = parser.parse_args()
    print(f"# {platform.platform()} | {platform.processor() or platform.machine()} | {os.cpu_count()} CPUs | "
          f"python {platform.python_version()} | numpy {np.__version__} | rclpy {metadata.version('rclpy')}")
    print(f"{'operation':<58} {'median ms':>10} {'best ms':>10} {'runs':>5}")
    for section, rows in (("uint8[] field assignment, 5.9 MB", assignment_rows(args.repeat)),
                          ("conversions", conversion_rows(args.repeat))):
        print(f"-- {section}")
        for name, fn, repeat in rows:
            try:
                fn()  # warm-up (imports, allocator)
            except AssertionError:  # ROS_PYTHON_CHECK_FIELDS mode refuses non-sequences
                print(f"{name:<58} {'rejected by the field check':>27}")
                continue
            median, best = timed(fn, repeat)
            print(f"{name:<58} {median:>10.2f} {best:>10.2f} {repeat:>5}")


if __name__ == "__main__":
    main()
