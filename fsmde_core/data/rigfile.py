"""``fsmde rig --bag BAG --out rig.yaml [--params node.yaml]``: calibration files from a recording.

The data layer already resolves everything the node needs from a bag — the
cameras in ring order, intrinsics from camera_info, extrinsics from
``/tf_static``, frames, topics, the image transport and the LiDAR
(:func:`fsmde_core.data.layout.discover_layout`). Writing that out as a rig
YAML (the format :meth:`fsmde_core.rig.Rig.load` reads) and a matching node
parameters file (the format of ``config/surround_depth.yaml``, extrinsics from
that rig file) lets the node run on a user's own recording with no hand editing.
Existing files are never overwritten without ``--force``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from fsmde_core.data.config import DataConfig
from fsmde_core.data.errors import BagError
from fsmde_core.data.layout import BagLayout, discover_layout
from fsmde_core.data.reader import open_bag
from fsmde_core.messages.types import COMPRESSED_TYPE
from fsmde_core.rig import Rig, RigError

#: Node name the parameters file addresses (any namespace), as in config/surround_depth.yaml.
NODE_KEY = "/**/surround_depth_node"


class RigFileError(ValueError):
    """The bag cannot give a complete calibration, or a file would be overwritten; one line says which."""


def bag_layout(bag: Path, config: DataConfig) -> BagLayout:
    """The bag's resolved layout; every problem discovery found, at once, as one RigFileError."""
    with open_bag(bag) as reader:
        layout = discover_layout(reader, bag, config)
    if not layout.ok:
        raise RigFileError(f"bag {bag}: " + "; ".join(str(p) for p in layout.problems))
    return layout


def image_transport(layout: BagLayout) -> str:
    """``raw`` or ``compressed``: the node takes one transport for all cameras."""
    kinds = {c.name: "compressed" if c.image_type == COMPRESSED_TYPE else "raw" for c in layout.cameras}
    if len(set(kinds.values())) > 1:
        raise RigFileError(f"bag {layout.bag}: cameras mix raw and compressed images {kinds}; the node takes "
                           "one image_transport for all cameras")
    return next(iter(kinds.values()))


def _base_image_topic(topic: str, transport: str) -> str:
    """The node subscribes to ``<image_topic>/compressed`` itself: give it the base topic."""
    suffix = "/compressed"
    return topic[: -len(suffix)] if transport == "compressed" and topic.endswith(suffix) else topic


def node_params(rig: Rig, rig_file: Path, transport: str) -> dict[str, Any]:
    """The node parameters (``config/surround_depth.yaml`` layout) for ``rig``; the rest keep their defaults."""
    cameras: dict[str, Any] = {"names": rig.names}
    for cam in rig.cameras:
        cameras[cam.name] = {"image_topic": _base_image_topic(cam.image_topic, transport),
                             "info_topic": cam.info_topic}
    return {NODE_KEY: {"ros__parameters": {
        "cameras": cameras,
        "image_transport": transport,
        "extrinsics": {"source": "calibration", "calibration_file": str(rig_file.resolve())},
        "cloud": {"frame_id": rig.base_frame, "max_range": float(rig.max_depth)},
    }}}


def _check_writable(paths: list[Path], force: bool) -> None:
    for p in paths:
        if p.exists() and not force:
            raise RigFileError(f"{p} exists; pass --force to overwrite it")
        if p.is_dir():
            raise RigFileError(f"{p} is a directory")


def write_rig_files(bag: Path, out: Path, params: Path | None = None, config: DataConfig | None = None,
                    force: bool = False) -> Rig:
    """Write the bag's rig YAML (and node parameters); returns the rig as written."""
    _check_writable([out] + ([params] if params is not None else []), force)
    layout = bag_layout(bag, config or DataConfig())
    transport = image_transport(layout)
    rig = layout.rig()
    rig.name = bag.name or rig.name
    rig.save(out)
    if params is not None:
        params.parent.mkdir(parents=True, exist_ok=True)
        header = (f"# Node parameters for {bag} (written by fsmde rig). Run:\n"
                  f"#   surround_depth_node --ros-args --params-file {params} -p model.path:=RUN\n")
        params.write_text(header + yaml.safe_dump(node_params(rig, out, transport), sort_keys=False))
    return rig


def add_rig_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``fsmde rig``."""
    parser.add_argument("--bag", type=Path, required=True, help="rosbag2 recording with /tf_static + camera_info")
    parser.add_argument("--out", type=Path, required=True, help="rig calibration YAML to write")
    parser.add_argument("--params", type=Path, default=None, help="also write node parameters using the rig file")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    parser.add_argument("--base-frame", default="base_link", help="vehicle frame (default: base_link)")
    parser.add_argument("--lidar-topic", default=None, help="PointCloud2 topic (default: the only one)")


def run_rig(args: argparse.Namespace) -> int:
    """0 written, 2 the bag cannot give a calibration or a file exists (one line on stderr)."""
    try:
        config = DataConfig(base_frame=args.base_frame, lidar_topic=args.lidar_topic, extrinsics="tf")
        rig = write_rig_files(args.bag, args.out, args.params, config, args.force)
    except (RigFileError, BagError, RigError, ValueError, OSError) as exc:
        print(f"fsmde rig: error: {exc}", file=sys.stderr)
        return 2
    ring = ", ".join(rig.cameras[i].name for i in rig.ring_order())
    print(f"fsmde rig: wrote {args.out} ({len(rig.cameras)} cameras: {ring})"
          + (f" and {args.params}" if args.params else ""))
    return 0
