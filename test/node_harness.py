"""Test helpers for test_node.py: the node as a subprocess, and a test-side ROS participant.

The node runs exactly as a user starts it (``python -m fsmde_ros.node --ros-args
--params-file config/surround_depth.yaml -p ...``), in its own process, so the
tests exercise real DDS transport, parameter files and process exit codes.
The :class:`Driver` lives in the test process with a private rclpy context:
it publishes camera sets and records every output of the node.
"""

from __future__ import annotations

import array
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header

REPO = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO / "config" / "surround_depth.yaml"
#: How long a test waits for something the node must do (an output, a diagnostic, a log line). A deadlock
#: guard, not a speed requirement: ``wait_until`` returns as soon as it happens, and CI cores may be busy.
DEADLINE_S = 120.0


def stamp_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def header(ns: int, frame: str) -> Header:
    return Header(stamp=Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000), frame_id=frame)


def ros_env(domain_id: int) -> dict[str, str]:
    return {**os.environ, "ROS_DOMAIN_ID": str(domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "PYTHONUNBUFFERED": "1", "RCUTILS_LOGGING_BUFFERED_STREAM": "0"}


def node_command(params: Mapping[str, str], params_file: Path = PARAMS_FILE) -> list[str]:
    cmd = [sys.executable, "-m", "fsmde_ros.node", "--ros-args", "--params-file", str(params_file)]
    for name, value in params.items():
        cmd += ["-p", f"{name}:={value}"]
    return cmd


@dataclass
class NodeProcess:
    """The node subprocess; stdout+stderr go to ``log_path`` (read it with :meth:`log`)."""

    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int:
        """SIGINT (what Ctrl-C and launch send), then wait; kill only if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"node ignored SIGINT for {timeout} s; log:\n{self.log()}") from None
        return self.proc.returncode


#: Tests feed the node bursts and replays in which every frame matters, as a bag replay does (README,
#: ``qos.input_reliability``): best-effort input lost the first frames published right after discovery
#: on a loaded machine (received 0 or 5 of 6), so test nodes take reliable input unless a test says otherwise.
REPLAY_INPUT_QOS = {"qos.input_reliability": "reliable", "qos.input_depth": "20"}


def start_node(params: Mapping[str, str], log_path: Path, domain_id: int,
               params_file: Path = PARAMS_FILE) -> NodeProcess:
    log = open(log_path, "w")  # noqa: SIM115 - the child process owns it until it exits
    params = {**REPLAY_INPUT_QOS, **params}
    proc = subprocess.Popen(node_command(params, params_file), cwd=REPO, env=ros_env(domain_id), stdout=log,
                            stderr=subprocess.STDOUT)
    log.close()
    return NodeProcess(proc, log_path)


def run_node_to_exit(params: Mapping[str, str], domain_id: int, timeout: float = 60.0) -> tuple[int, str]:
    """Run the node expecting it to exit by itself (refused parameters / model)."""
    done = subprocess.run(node_command(params), cwd=REPO, env=ros_env(domain_id), capture_output=True,
                          text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


def image_msg(rgb: np.ndarray, hdr: Header, encoding: str = "rgb8") -> Image:
    h, w = rgb.shape[:2]
    data = array.array("B")
    data.frombytes(np.ascontiguousarray(rgb).tobytes())
    channels = len(data) // (h * w)
    return Image(header=hdr, height=h, width=w, encoding=encoding, is_bigendian=0, step=w * channels, data=data)


def jpeg_msg(rgb: np.ndarray, hdr: Header, corrupt: bool = False) -> CompressedImage:
    import io

    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format="JPEG", quality=95)
    payload = buf.getvalue()
    if corrupt:
        payload = payload[: len(payload) // 3]  # truncated in transit
    data = array.array("B")
    data.frombytes(payload)
    return CompressedImage(header=hdr, format="rgb8; jpeg compressed bgr8", data=data)


class Driver:
    """Test-side participant: camera publishers and recorders of the node's outputs.

    Recorded messages are grouped by stamp (ns): ``depth[name][stamp]``,
    ``info[name][stamp]``, ``clouds[stamp]``; ``diagnostics`` keeps every array.
    ``depth_at[name][stamp]`` and ``cloud_at[stamp]``: ``time.perf_counter()`` when the
    first such message arrived (latency measurements, ``bench/bench_runtime.py``).
    """

    def __init__(self, domain_id: int, cameras: Sequence[str], *, publish: bool = True,
                 compressed: bool = False, cloud_topic: str = "/surround_depth/points") -> None:
        self.cameras = tuple(cameras)
        self.ctx = Context()
        rclpy.init(context=self.ctx, domain_id=domain_id)
        self.node = rclpy.create_node(f"node_test_driver_{domain_id}", context=self.ctx,
                                       start_parameter_services=False)
        self._lock = threading.Lock()
        self.depth: dict[str, dict[int, list[Image]]] = {c: defaultdict(list) for c in self.cameras}
        self.info: dict[str, dict[int, list[CameraInfo]]] = {c: defaultdict(list) for c in self.cameras}
        self.clouds: dict[int, list[PointCloud2]] = defaultdict(list)
        self.depth_at: dict[str, dict[int, float]] = {c: {} for c in self.cameras}
        self.cloud_at: dict[int, float] = {}
        self.diagnostics: list[DiagnosticArray] = []
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.image_pubs: dict[str, object] = {}
        self.info_pubs: dict[str, object] = {}
        if publish:
            for c in self.cameras:
                topic = f"/cameras/{c}/image_raw" + ("/compressed" if compressed else "")
                self.image_pubs[c] = self.node.create_publisher(
                    CompressedImage if compressed else Image, topic, reliable)
                self.info_pubs[c] = self.node.create_publisher(CameraInfo, f"/cameras/{c}/camera_info", reliable)
        self.subs = []
        for c in self.cameras:
            self.subs.append(self.node.create_subscription(
                Image, f"/cameras/{c}/depth", lambda m, c=c: self._keep(self.depth[c], m, self.depth_at[c]),
                reliable))
            self.subs.append(self.node.create_subscription(
                CameraInfo, f"/cameras/{c}/depth/camera_info", lambda m, c=c: self._keep(self.info[c], m),
                reliable))
        self.subs.append(self.node.create_subscription(
            PointCloud2, cloud_topic, lambda m: self._keep(self.clouds, m, self.cloud_at), reliable))
        self.diag_sub = self.node.create_subscription(
            DiagnosticArray, "/diagnostics", self._keep_diag, QoSProfile(depth=100))
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        with contextlib.suppress(Exception):  # the context is shut down by close()
            self.executor.spin()

    def _keep(self, store: dict[int, list], msg: object, arrivals: dict[int, float] | None = None) -> None:
        now = time.perf_counter()
        with self._lock:
            stamp = stamp_ns(msg.header.stamp)
            store[stamp].append(msg)
            if arrivals is not None:
                arrivals.setdefault(stamp, now)

    def _keep_diag(self, msg: DiagnosticArray) -> None:
        with self._lock:
            self.diagnostics.append(msg)

    # ----------------------------------------------------------- queries
    def wait_until(self, cond: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if cond():
                    return True
            time.sleep(0.02)
        with self._lock:
            return cond()

    def node_ready(self) -> bool:
        """The node subscribes to every camera and publishes every output we listen to."""
        return (all(p.get_subscription_count() > 0 for p in self.image_pubs.values())
                and all(p.get_subscription_count() > 0 for p in self.info_pubs.values())
                and all(s.get_publisher_count() > 0 for s in self.subs))

    def graph_has(self, topics: Sequence[str], subscribers: bool) -> bool:
        """Every topic has at least one subscriber (or publisher) somewhere in the graph."""
        count = self.node.count_subscribers if subscribers else self.node.count_publishers
        return all(count(t) > 0 for t in topics)

    def outputs_at(self, stamps: Mapping[str, int], reference: int) -> bool:
        """Every listed camera has depth + camera_info at its stamp and the cloud is in."""
        return (all(self.depth[c].get(s) and self.info[c].get(s) for c, s in stamps.items())
                and bool(self.clouds.get(reference)))

    def latest_status(self, name_suffix: str) -> object | None:
        for arr in reversed(self.diagnostics):
            for status in arr.status:
                if status.name.endswith(name_suffix):
                    return status
        return None

    # ---------------------------------------------------------- publishing
    def publish(self, camera: str, msg: object, info: CameraInfo | None) -> None:
        if info is not None:
            self.info_pubs[camera].publish(info)
        self.image_pubs[camera].publish(msg)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.ctx)
        self._thread.join(2.0)
