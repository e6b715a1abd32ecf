"""``fsmde inspect BAG``: what a recording holds and whether it can be trained on.

Reads the bag's metadata, ``/tf_static`` and the first message of each camera,
camera_info and LiDAR topic (never the whole bag), and reports topics, the
camera layout as the reader will see it, and every problem that would stop
:func:`fsmde_core.data.bag.read_samples` — all at once, so a user fixes the
recording or the config in one go. Exit status: 0 usable, 1 problems, 2 the
bag cannot be opened.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from fsmde_core.data.config import DataConfig
from fsmde_core.data.errors import BagError
from fsmde_core.data.layout import BagLayout, discover_layout
from fsmde_core.data.reader import check_bag_path, open_bag


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _bag_bytes(path: Path) -> int:
    files = [p for p in path.iterdir() if p.is_file()] if path.is_dir() else [path]
    return sum(p.stat().st_size for p in files)


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _topic_lines(layout: BagLayout, duration_s: float) -> list[str]:
    rows = [["topic", "type", "count", "rate"]]
    for name, t in layout.topics.items():
        latched = name == layout.config.tf_static_topic  # published once per publisher: no rate
        rate = "-"
        if t.count > 1 and duration_s > 0 and not latched:
            rate = f"~{(t.count - 1) / duration_s:.1f} Hz"
        rows.append([name, t.msgtype, str(t.count), rate])
    return _table(rows)


def _camera_lines(layout: BagLayout) -> list[str]:
    rows = [["name", "topic", "size", "yaw", "frame", "intrinsics", "gt"]]
    for c in layout.cameras:
        size = f"{c.model.width}x{c.model.height}" if c.model is not None else (
            f"{c.image_size[0]}x{c.image_size[1]}?" if c.image_size else "?")
        yaw = f"{c.yaw_deg:+.1f} deg" if c.yaw_deg is not None else "?"
        rows.append([c.name, c.image_topic, size, yaw, c.frame_id or "?", c.intrinsics_from or "missing",
                     "yes" if c.gt_topic else "no"])
    return _table(rows)


def _tf_lines(layout: BagLayout) -> list[str]:
    tf = layout.tf
    if tf is None:
        return [f"tf_static: none on {layout.config.tf_static_topic}"]
    roots = sorted(tf.frames - {c for _, c in tf.edges})
    lines = [f"tf_static: {len(tf.frames)} frames, root(s) {', '.join(roots)}"]
    lines += [f"  {p} -> {c}" for p, c in tf.edges]
    return lines


def format_layout(layout: BagLayout, storage: str, size_bytes: int, start_ns: int, duration_ns: int,
                  message_count: int) -> str:
    """The human report for one discovered bag."""
    duration_s = duration_ns / 1e9
    start = "-"
    if message_count:
        start = datetime.fromtimestamp(start_ns / 1e9, tz=UTC).isoformat(timespec="milliseconds")
    lines = [
        f"bag: {layout.bag}",
        f"storage: {storage}, {_human_bytes(size_bytes)}, {message_count} messages",
        f"duration: {duration_s:.2f} s (start {start})",
        "topics:",
        *_topic_lines(layout, duration_s),
        f"cameras: {len(layout.cameras)}"
        + (f" (extrinsics from {layout.extrinsics_from}, base frame {layout.config.base_frame})"
           if layout.extrinsics_from else ""),
    ]
    if layout.cameras:
        lines += _camera_lines(layout)
    if layout.lidar_topic:
        count = layout.topics[layout.lidar_topic].count
        lines.append(f"lidar: {layout.lidar_topic} ({count} sweeps), frame {layout.lidar_frame or '?'}")
    else:
        lines.append("lidar: none")
    lines += _tf_lines(layout)
    if layout.notes:
        lines += ["notes:", *[f"  - {n}" for n in layout.notes]]
    if layout.problems:
        lines += [f"missing / problems ({len(layout.problems)}):", *[f"  - {p}" for p in layout.problems]]
        lines.append("status: NOT USABLE for training as configured")
    else:
        lines.append("status: OK")
    return "\n".join(lines)


def inspect_layout(path: str | Path, config: DataConfig | None = None) -> tuple[str, bool]:
    """(report, usable) for one bag; BagError if it cannot be opened at all."""
    path = Path(path)
    storage = check_bag_path(path)
    with open_bag(path) as reader:
        layout = discover_layout(reader, path, config or DataConfig())
        count = reader.message_count
        start, duration = (reader.start_time, reader.duration) if count else (0, 0)
    text = format_layout(layout, storage, _bag_bytes(path), start, duration, count)
    return text, layout.ok


def inspect_bag(path: str | Path, config: DataConfig | None = None) -> str:
    """Human-readable report of a bag: topics, camera layout, LiDAR, TF, what is missing."""
    return inspect_layout(path, config)[0]


def add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``fsmde inspect`` (the CLI entry point owns the parser)."""
    parser.add_argument("bags", nargs="+", type=Path, metavar="BAG",
                        help="rosbag2 directory or .mcap/.db3 file")
    parser.add_argument("--rig", type=Path, default=None,
                        help="rig calibration YAML (extrinsics without /tf_static, ego masks)")
    parser.add_argument("--base-frame", default="base_link", help="vehicle frame (default: base_link)")
    parser.add_argument("--lidar-topic", default=None, help="PointCloud2 topic (default: the only one)")
    parser.add_argument("--tf-static-topic", default="/tf_static")


def run_inspect(args: argparse.Namespace) -> int:
    """Print a report per bag; 0 if all are usable, 1 if any has problems, 2 if one cannot be opened."""
    try:
        config = DataConfig(rig_yaml=args.rig, base_frame=args.base_frame, lidar_topic=args.lidar_topic,
                            tf_static_topic=args.tf_static_topic)
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    status = 0
    for i, bag in enumerate(args.bags):
        if i:
            print()
        try:
            text, ok = inspect_layout(bag, config)
        except BagError as exc:
            print(f"error: {exc}")
            status = 2
            continue
        print(text)
        if not ok:
            status = max(status, 1)
    return status
