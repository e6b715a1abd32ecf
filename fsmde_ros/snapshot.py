"""Record what the node publishes and save it as pictures (what RViz would show).

For machines without RViz (CI, servers, this project's demo): subscribes to the
per-camera depth images and the fused cloud, keeps every set it receives, and
writes ``node_depth.png`` (the six depth images, tiled as seen from above the
car) and ``node_cloud_bev.png`` (bird's-eye view of the fused cloud).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, PointCloud2

from fsmde_ros.conversions import cloud_to_points, image_to_depth, stamp_to_ns


@dataclass
class Recorded:
    """What was received: per camera its depth images by stamp, clouds by stamp.

    Depth images keep their own camera's stamp (REP: same header as the input
    image), and cameras of one set fire a few ms apart, so sets are not keyed
    by one stamp: a set is the n-th image of every camera.
    """

    depth: dict[str, dict[int, np.ndarray]] = field(default_factory=lambda: defaultdict(dict))
    depth_frames: dict[str, str] = field(default_factory=dict)
    clouds: dict[int, tuple[np.ndarray, np.ndarray | None, str]] = field(default_factory=dict)

    def complete_sets(self, names: list[str]) -> int:
        return min((len(self.depth.get(n, {})) for n in names), default=0)

    def latest_depths(self, names: list[str]) -> list[np.ndarray] | None:
        if self.complete_sets(names) == 0:
            return None
        return [self.depth[n][max(self.depth[n])] for n in names]


class NodeOutputRecorder:
    """Subscribes to ``<depth_topic(name)>`` for each camera and to the cloud topic."""

    def __init__(self, node: Node, names: list[str], depth_topics: list[str], cloud_topic: str) -> None:
        self.node = node
        self.names = list(names)
        self.data = Recorded()
        self._lock = threading.Lock()
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self._subs = [
            node.create_subscription(Image, topic, self._depth_cb(name), qos)
            for name, topic in zip(self.names, depth_topics, strict=True)
        ]
        self._subs.append(node.create_subscription(PointCloud2, cloud_topic, self._cloud_cb, qos))

    def _depth_cb(self, name: str):
        def cb(msg: Image) -> None:
            depth = image_to_depth(msg, copy=True)
            with self._lock:
                self.data.depth[name][stamp_to_ns(msg.header.stamp)] = depth
                self.data.depth_frames[name] = msg.header.frame_id
        return cb

    def _cloud_cb(self, msg: PointCloud2) -> None:
        xyz, rgb = cloud_to_points(msg)
        with self._lock:
            self.data.clouds[stamp_to_ns(msg.header.stamp)] = (xyz, rgb, msg.header.frame_id)

    def counts(self) -> tuple[int, int]:
        """(complete depth sets, clouds) received so far."""
        with self._lock:
            return self.data.complete_sets(self.names), len(self.data.clouds)

    def save_pictures(self, out_dir: Path, ring: list[int], extent_m: float = 40.0) -> list[Path]:
        """Write the latest complete depth set and the latest cloud as PNGs."""
        from fsmde_core.viz import birds_eye_view, depth_mosaic, save_png

        out_dir = Path(out_dir)
        written = []
        with self._lock:
            latest_cloud = max(self.data.clouds) if self.data.clouds else None
            depths = self.data.latest_depths(self.names)
            cloud = self.data.clouds[latest_cloud] if latest_cloud is not None else None
        if depths is not None:
            written.append(save_png(out_dir / "node_depth.png", depth_mosaic(np.stack(depths), self.names, ring)))
        if cloud is not None:
            written.append(save_png(out_dir / "node_cloud_bev.png", birds_eye_view(cloud[0], cloud[1], extent_m)))
        return written
