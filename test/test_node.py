"""The surround depth node end to end: parameters, lifecycle start, outputs, bad input, replay.

The node always runs as a subprocess started with the very params file the
launch file uses (``config/surround_depth.yaml``) plus ``-p`` overrides, and
talks to this process over real DDS (loopback only, own domain IDs). The
student is a tiny random ResNet-18 (64x96) whose bin logits are sharpened so
its depth varies strongly across pixels: comparing the node's output with the
offline prediction of the same backend then checks every pixel's path
(decode -> resize -> batch order -> publish), not a constant.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip("rclpy", reason="rclpy (ros-kilted-rclpy wheels) is not installed")
torch = pytest.importorskip("torch", reason="torch is needed for the student")

from geometry_msgs.msg import TransformStamped  # noqa: E402
from node_harness import (  # noqa: E402
    DEADLINE_S,
    REPO,
    Driver,
    NodeProcess,
    header,
    image_msg,
    jpeg_msg,
    ros_env,
    run_node_to_exit,
    stamp_ns,
    start_node,
)
from PIL import Image as PILImage  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from tiny_students import save_textured_student  # noqa: E402

from fsmde_core.estimator import CameraFrame, CloudOptions, DepthResult, SurroundDepthEstimator  # noqa: E402
from fsmde_core.rig import Rig, matrix_to_quaternion, preset  # noqa: E402
from fsmde_core.runtime import build_backend, resize_batch, resize_depth_nearest  # noqa: E402
from fsmde_core.sync import suggest_tolerance_ms as suggest_slop_ms  # noqa: E402
from fsmde_ros.conversions import (  # noqa: E402
    cloud_to_points,
    compressed_to_rgb,
    image_to_depth,
    model_to_camera_info,
)
from fsmde_ros.diagnostics import CLOCK_HINT, pipeline_health  # noqa: E402
from fsmde_ros.node import Mailbox, SurroundDepthNode, Throttle, _Frame  # noqa: E402
from fsmde_ros.params import (  # noqa: E402
    DEFAULT_CAMERAS,
    PARAMETERS,
    ParameterError,
    known_parameter_names,
    settings_from_values,
)

# Three consecutive DDS domains of our own (main node, partial node, replay / exit checks);
# 10..138 stays clear of test_player's 140..229.
DOMAIN = 10 + 3 * (os.getpid() % 43)
H, W = 64, 96  # student input (depth output size)
IMG_H, IMG_W = 96, 160  # published camera images: other size and aspect than the model
CAMERAS = DEFAULT_CAMERAS
RIG_FILE = REPO / "config" / "rig_ddad.yaml"
LAUNCH_FILE = REPO / "launch" / "surround_depth.launch.py"
STRIDE, MAX_RANGE = 4, 80.0  # the params file's cloud defaults
T0 = 1_700_000_000 * 1_000_000_000
_ticks = itertools.count()


def next_tick() -> int:
    """Frame times increase across the whole module: the synchronizer drops stamps that go back."""
    return T0 + next(_ticks) * 100_000_000


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def ros_env_vars() -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        yield


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_textured_student(tmp_path_factory.mktemp("student"), CAMERAS, H, W)


@pytest.fixture(scope="module")
def backend(student_dir: Path):
    return build_backend("torch", student_dir)


@pytest.fixture(scope="module")
def rig() -> Rig:
    return Rig.load(RIG_FILE)


@pytest.fixture(scope="module")
def masked_calibration(tmp_path_factory: pytest.TempPathFactory, rig: Rig) -> tuple[Path, np.ndarray]:
    """rig_ddad.yaml + an ego mask (hood and a mirror strip) on the front camera."""
    out = tmp_path_factory.mktemp("calib")
    m = rig.camera("front").model
    mask = np.zeros((m.height, m.width), dtype=np.uint8)
    mask[int(0.8 * m.height):, :] = 255
    mask[:, : m.width // 10] = 255
    PILImage.fromarray(mask).save(out / "front_mask.png")
    masked = Rig.load(RIG_FILE)
    masked.camera("front").mask = "front_mask.png"  # relative to the YAML, as users write it
    masked.save(out / "rig_masked.yaml")
    return out / "rig_masked.yaml", mask != 0


def _start(params: dict[str, str], log: Path, domain: int, driver: Driver) -> NodeProcess:
    node = start_node(params, log, domain)
    if not driver.wait_until(driver.node_ready, DEADLINE_S):
        node.stop()
        driver.close()
        pytest.fail(f"node did not become ready; log:\n{node.log()}")
    return node


@pytest.fixture(scope="class")
def main_node(ros_env_vars, student_dir: Path, masked_calibration, tmp_path_factory):
    calib, _ = masked_calibration
    driver = Driver(DOMAIN, CAMERAS)
    node = _start({"model.path": str(student_dir), "extrinsics.source": "calibration",
                   "extrinsics.calibration_file": str(calib), "diagnostics.period_s": "0.5",
                   "diagnostics.cross_view_every_n": "1"},
                  tmp_path_factory.mktemp("main") / "node.log", DOMAIN, driver)
    yield node, driver
    driver.close()
    rc = node.stop()
    assert rc == 0, f"node did not exit cleanly on SIGINT (rc {rc}); log:\n{node.log()}"


@pytest.fixture(scope="class")
def partial_node(ros_env_vars, student_dir: Path, tmp_path_factory):
    driver = Driver(DOMAIN + 1, CAMERAS, compressed=True)
    node = _start({"model.path": str(student_dir), "extrinsics.source": "calibration",
                   "extrinsics.calibration_file": str(RIG_FILE), "image_transport": "compressed",
                   "sync.policy": "partial", "sync.timeout_ms": "100.0", "diagnostics.period_s": "0.5"},
                  tmp_path_factory.mktemp("partial") / "node.log", DOMAIN + 1, driver)
    yield node, driver
    driver.close()
    assert node.stop() == 0, node.log()


# ------------------------------------------------------------------ helpers
def make_images(tick: int) -> dict[str, np.ndarray]:
    """Textured, distinct images per camera and frame."""
    rng = np.random.default_rng(tick % 2**32)
    yy, xx = np.mgrid[0:IMG_H, 0:IMG_W].astype(np.float32)
    out = {}
    for k, name in enumerate(CAMERAS):
        base = np.stack([np.sin(xx / (5 + k) + c) * np.cos(yy / (7 + c) - k) for c in range(3)], axis=-1)
        noisy = 128 + 90 * base + rng.normal(0, 12, base.shape)
        out[name] = np.clip(noisy, 0, 255).astype(np.uint8)
    return out


def camera_stamps(tick: int, cameras: tuple[str, ...]) -> dict[str, int]:
    """Each camera triggered 3 ms after the previous one (spread 15 ms < slop 30 ms)."""
    return {c: tick + 3_000_000 * CAMERAS.index(c) for c in cameras}


def publish_set(driver: Driver, rig: Rig, images: dict[str, np.ndarray], stamps: dict[str, int], *,
                no_info: tuple[str, ...] = (), compressed: bool = False,
                bad: dict[str, str] | None = None) -> None:
    """Publish camera_info + image for every camera in ``stamps``; ``bad`` breaks a camera:
    "encoding" (Bayer), "size" (image smaller than camera_info) or "corrupt" (truncated jpeg)."""
    bad = bad or {}
    for name, ns in stamps.items():
        cam = rig.camera(name)
        hdr = header(ns, cam.frame_id)
        info = None if name in no_info else model_to_camera_info(cam.model.scaled_to(IMG_W, IMG_H), hdr)
        rgb = images[name]
        if compressed:
            msg = jpeg_msg(rgb, hdr, corrupt=bad.get(name) == "corrupt")
        elif bad.get(name) == "encoding":
            msg = image_msg(rgb[..., 0], hdr, encoding="bayer_rggb8")
        elif bad.get(name) == "size":
            msg = image_msg(np.ascontiguousarray(rgb[: IMG_H - 6, : IMG_W - 10]), hdr)
        else:
            msg = image_msg(rgb, hdr)
        driver.publish(name, msg, info)


def offline_depth(backend, images: list[np.ndarray]) -> np.ndarray:
    return backend.infer(resize_batch(images, (H, W)))


def expected_outputs(backend, rig: Rig, cameras: tuple[str, ...], images: dict[str, np.ndarray],
                     masks: dict[str, np.ndarray] | None = None) -> DepthResult:
    """What the node must publish for these images: the real estimator, with the calibration's
    extrinsics and its intrinsics rescaled to the image size (what the published camera_info says)."""
    masks = masks or {}
    frames = [CameraFrame(c, images[c], rig.camera(c).model.scaled_to(*images[c].shape[1::-1]),
                          extrinsic=rig.camera(c).T_base_cam, mask=masks.get(c)) for c in cameras]
    return SurroundDepthEstimator(backend).estimate(frames, CloudOptions(stride=STRIDE, max_range=MAX_RANGE))


def received_depth(driver: Driver, name: str, ns: int) -> np.ndarray:
    return image_to_depth(driver.depth[name][ns][0])


# ======================================================= pure (no ROS graph)
def test_settings_defaults_and_derived_topics(student_dir: Path) -> None:
    s = settings_from_values({"model.path": str(student_dir)})
    assert s.camera_names == CAMERAS and s.model.backend == "torch"  # auto: a run directory
    front = s.cameras[0]
    assert (front.image_topic, front.subscribe_topic) == ("/cameras/front/image_raw",) * 2
    assert (front.depth_topic, front.depth_info_topic) == ("/cameras/front/depth", "/cameras/front/depth/camera_info")
    s = settings_from_values({"model.path": str(student_dir), "image_transport": "compressed",
                              "outputs.depth_suffix": "surround/depth", "sync.slop_ms": 12.5})
    assert s.cameras[3].subscribe_topic == "/cameras/back/image_raw/compressed"
    assert s.cameras[3].depth_topic == "/cameras/back/surround/depth" and s.sync.slop_ns == 12_500_000


@pytest.mark.parametrize(("name", "value", "message"), [
    ("sync.policy", "foo", "expected one of: wait, partial"),
    ("cameras.names", [], "at least one camera"),
    ("cameras.names", ["front", "front"], "more than once"),
    ("cameras.names", ["front-left"], "letters, digits"),
    ("cloud.min_range", 90.0, "smaller than 'cloud.max_range'"),
    ("sync.min_cameras", 7, "only 6 cameras"),
    ("model.precision", "fp16", "needs CUDA"),
    ("model.device", "gpu", "'cpu', 'cuda' or 'cuda:<index>'"),
    ("model.path", "/nonexistent/run", "does not exist"),
    ("extrinsics.source", "calibration", "calibration_file' is required"),
    ("cameras.front.image_topic", "/cam//image", "not a valid ROS topic"),
    ("cloud.stride", 0, "integer in [1, 64]"),
    ("sync.slop_ms", "20", "must be a double"),
    ("cloud.motion_compensation", "yes", "expected one of: auto, on, off"),
    ("cloud.fixed_frame", "base_link", "same as cloud.frame_id"),
    ("diagnostics.cross_view_every_n", -1, "integer in [0, 1000000]"),
])
def test_invalid_values_are_refused_with_the_reason(student_dir: Path, name: str, value, message: str) -> None:
    values = {"model.path": str(student_dir), name: value}
    with pytest.raises(ParameterError, match=name.replace(".", r"\.")) as err:
        settings_from_values(values)
    assert message in str(err.value)


def test_suggested_slop_covers_the_observed_spread_with_margin() -> None:
    assert suggest_slop_ms(42_600_000) == 53.0  # sweep rig: 42.6 ms * 1.2 + 1 ms, rounded up
    assert suggest_slop_ms(0) == 1.0
    assert all(suggest_slop_ms(ns) * 1e6 > ns for ns in (1, 999_999, 30_000_000, 83_000_000))


def test_mailbox_keeps_only_the_newest_set() -> None:
    box = Mailbox()
    assert box.put("a") is False and box.put("b") is True  # "a" replaced while the worker was busy
    assert box.take(0.1) == "b" and box.take(0.01) is None
    box.put("c")
    box.close()
    assert box.take(0.01) is None  # closed: the worker stops even with an item waiting


def test_mailbox_with_a_queue_keeps_every_set_in_order_until_full() -> None:
    box = Mailbox(capacity=3)
    assert [box.put(x) for x in "abc"] == [False, False, False]
    assert box.put("d") is True  # full: the oldest ("a") makes room
    assert [box.take(0.01) for _ in range(4)] == ["b", "c", "d", None]
    with pytest.raises(ValueError, match="capacity"):
        Mailbox(capacity=0)


def test_throttle_is_per_key() -> None:
    throttle = Throttle(period_s=0.2)
    assert throttle(("front", "decode")) == 0 and throttle(("back", "decode")) == 0
    assert throttle(("front", "decode")) is None and throttle(("front", "decode")) is None
    time.sleep(0.25)
    assert throttle(("front", "decode")) == 2  # two suppressed messages are reported with the next one


@pytest.mark.parametrize(("out", "rates", "silent", "dropped", "replaced", "level", "words"), [
    (10.0, {"a": 10.0, "b": 10.0}, [], 0, 0, b"\x00", "10.0 Hz"),
    (0.0, {}, ["a", "b"], 0, 0, b"\x02", "no input images"),
    (0.0, {"a": 10.0, "b": 10.0}, [], 7, 0, b"\x02", "every set dropped"),
    (5.0, {"a": 10.0}, ["b"], 0, 0, b"\x01", "silent camera(s): b"),
    (3.0, {"a": 10.0, "b": 9.0}, [], 0, 6, b"\x01", "replaced while busy"),
    (3.0, {"a": 10.0, "b": 9.0}, [], 0, 0, b"\x01", "fail to synchronize"),
    (9.0, {"a": 10.0, "b": 10.0}, [], 1, 0, b"\x01", "1 set(s) dropped"),
])
def test_pipeline_health_levels(out, rates, silent, dropped, replaced, level: bytes, words: str) -> None:
    got_level, message = pipeline_health(out, rates, silent, dropped, replaced)
    assert got_level == level and words in message


class _StubTfBuffer:
    """Stands in for tf2_ros.Buffer (not installed here): only ``lookup_transform`` is used."""

    def __init__(self, T: np.ndarray | None) -> None:
        self.T, self.calls = T, 0

    def lookup_transform(self, target: str, source: str, when: object) -> TransformStamped:
        self.calls += 1
        if self.T is None:
            raise LookupError(f"{target} <- {source}: frame does not exist")
        q = matrix_to_quaternion(self.T[:3, :3])
        msg = TransformStamped()
        msg.header.frame_id, msg.child_frame_id = target, source
        msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = self.T[:3, 3]
        msg.transform.rotation.x, msg.transform.rotation.y, msg.transform.rotation.z, msg.transform.rotation.w = q
        return msg


@pytest.fixture
def ros_context(ros_env_vars):
    from rclpy.context import Context

    ctx = Context()
    rclpy.init(context=ctx, domain_id=DOMAIN + 2)
    yield ctx
    rclpy.shutdown(context=ctx)


def _in_process_node(ctx, name: str = "surround_depth_node_under_test", namespace: str | None = None,
                     **params) -> SurroundDepthNode:
    from rclpy.parameter import Parameter

    return SurroundDepthNode(name, namespace=namespace, context=ctx, use_global_arguments=False,
                             parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])


@pytest.mark.ros
def test_diagnostic_status_names_are_unique_per_node_across_namespaces(ros_context, student_dir: Path) -> None:
    """Two nodes of the same name in two namespaces share the global /diagnostics topic: every status
    name starts with the node's fully-qualified name, so an aggregator can tell them apart."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor

    params = {"model.path": str(student_dir), "autostart": False, "extrinsics.source": "calibration",
              "extrinsics.calibration_file": str(RIG_FILE), "diagnostics.period_s": 0.5}
    nodes = [_in_process_node(ros_context, "surround_depth_node", ns, **params) for ns in ("/robot1", "/robot2")]
    listener = rclpy.create_node("diagnostics_listener", context=ros_context, start_parameter_services=False)
    received: list[DiagnosticArray] = []
    listener.create_subscription(DiagnosticArray, "/diagnostics", received.append, 50)
    executor = SingleThreadedExecutor(context=ros_context)
    try:
        assert all(node.start() for node in nodes)
        for node in (*nodes, listener):
            executor.add_node(node)
        prefixes = {"/robot1/surround_depth_node", "/robot2/surround_depth_node"}

        def names() -> set[str]:
            return {status.name for array in received for status in array.status}

        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and not all(f"{p}: pipeline" in names() for p in prefixes):
            executor.spin_once(timeout_sec=0.1)
        got = names()
        assert {n.split(": ", 1)[0] for n in got} == prefixes, got
        per_node = [{n.split(": ", 1)[1] for n in got if n.startswith(p + ": ")} for p in sorted(prefixes)]
        want = {"pipeline", "calibration", *(f"camera {c}" for c in CAMERAS),
                *(f"image quality {c}" for c in CAMERAS)}  # image_quality.enabled is on by default
        assert per_node == [want, want]
    finally:
        executor.shutdown(timeout_sec=1.0)
        for node in nodes:
            node.release()
            node.destroy_node()
        listener.destroy_node()


@pytest.mark.ros
def test_lifecycle_transitions_release_and_recover(ros_context, student_dir: Path, tmp_path: Path) -> None:
    from rclpy.parameter import Parameter

    node = _in_process_node(ros_context, **{"model.path": str(student_dir), "autostart": False,
                                            "extrinsics.source": "calibration",
                                            "extrinsics.calibration_file": str(RIG_FILE)})
    try:
        def topics(entities) -> set[str]:
            return {e.topic_name for e in entities}

        assert "/cameras/front/depth" not in topics(node.publishers)  # autostart false: nothing yet
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert {"/cameras/back/depth", "/cameras/back/depth/camera_info", "/surround_depth/points",
                "/diagnostics"} <= topics(node.publishers)
        assert "/cameras/back/image_raw" not in topics(node.subscriptions)  # inactive: not subscribed
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert "/cameras/back/image_raw" in topics(node.subscriptions) and node._worker.is_alive()
        # live cloud limits: applied at once; a value that breaks the configuration is refused
        assert node.set_parameters([Parameter("cloud.stride", value=2)])[0].successful
        assert node._cloud_settings.stride == 2
        refused = node.set_parameters([Parameter("cloud.min_range", value=500.0)])[0]
        assert not refused.successful and "cloud.min_range" in refused.reason
        worker = node._worker
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert "/cameras/back/image_raw" not in topics(node.subscriptions) and not worker.is_alive()
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert "/cameras/back/depth" not in topics(node.publishers) and node.backend is None
        # a broken model fails configure cleanly; the node stays usable
        (tmp_path / "broken").mkdir()
        assert node.set_parameters([Parameter("model.path", value=str(tmp_path / "broken"))])[0].successful
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert "/cameras/back/depth" not in topics(node.publishers)
        assert node.set_parameters([Parameter("model.path", value=str(student_dir))])[0].successful
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    finally:
        node.release()
        node.destroy_node()


@pytest.mark.ros
def test_tf_extrinsics_are_converted_cached_and_reported(ros_context, student_dir: Path, rig: Rig) -> None:
    node = _in_process_node(ros_context, **{"model.path": str(student_dir), "autostart": False})
    try:
        cam = rig.camera("front_left")
        frame = _Frame(name="front_left", header=header(T0, cam.frame_id), rgb=np.zeros((4, 4, 3), np.uint8),
                       model=cam.model)
        node._tf_buffer = _StubTfBuffer(cam.T_base_cam)
        np.testing.assert_allclose(node._extrinsic(frame), cam.T_base_cam, atol=1e-9)
        np.testing.assert_allclose(node._extrinsic(frame), cam.T_base_cam, atol=1e-9)
        assert node._tf_buffer.calls == 1  # camera mounts are static: looked up once
        node._tf_cache.clear()
        node._tf_buffer = _StubTfBuffer(None)
        assert node._extrinsic(frame) is None  # no transform yet: camera left out of the cloud
        assert node.stats.snapshot()["bad_input"]["front_left"] == {"tf": 1}
    finally:
        node.release()
        node.destroy_node()


class _MovingTfBuffer:
    """Stands in for tf2_ros.Buffer (not installed here): odom <- base_link of a car at constant
    speed along x, answered per stamp like a real buffer interpolating odometry."""

    def __init__(self, speed: float, t0_ns: int, known: bool = True) -> None:
        self.speed, self.t0_ns, self.known, self.asked = speed, t0_ns, known, []

    def lookup_transform(self, target: str, source: str, when, timeout=None) -> TransformStamped:
        self.asked.append((target, source, when.nanoseconds))
        if not self.known:
            raise LookupError(f"{target} <- {source}: frame does not exist")
        msg = TransformStamped()
        msg.header.frame_id, msg.child_frame_id = target, source
        msg.transform.translation.x = self.speed * (when.nanoseconds - self.t0_ns) / 1e9
        msg.transform.rotation.w = 1.0
        return msg


@pytest.mark.ros
def test_cloud_points_are_moved_to_the_reference_stamp_with_the_ego_motion(ros_context, student_dir: Path,
                                                                           rig: Rig) -> None:
    node = _in_process_node(ros_context, **{"model.path": str(student_dir), "autostart": False,
                                            "extrinsics.source": "calibration",
                                            "extrinsics.calibration_file": str(RIG_FILE)})
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        # tf2_ros is missing here: auto says so instead of silently fusing uncompensated clouds
        if importlib.util.find_spec("tf2_ros") is None:
            assert node._motion_note == "off (tf2_ros is not installed: no ego motion from TF)"
        stamps = {"front": T0, "back": T0 + 40_000_000}  # exposed 40 ms apart; reference = back's stamp
        frames = [_Frame(name=n, header=header(ns, rig.camera(n).frame_id), rgb=np.zeros((4, 4, 3), np.uint8),
                         model=rig.camera(n).model) for n, ns in stamps.items()]
        node._tf_buffer = _MovingTfBuffer(12.0, T0)
        T_ref, at_cams = node._ego_poses(stamps["back"], frames, node._cloud_settings)
        assert node._motion_note == "on (odom->base_link)"
        assert {(a[0], a[1]) for a in node._tf_buffer.asked} == {("odom", "base_link")}
        # a point 10 m ahead of the car seen by the front camera at T0 is 0.48 m closer at the reference
        p = np.array([[10.0, 0.0, 1.0]], dtype=np.float32)
        from fsmde_core.motion import compensate_points
        np.testing.assert_allclose(compensate_points(p, at_cams[0], T_ref), [[9.52, 0.0, 1.0]], atol=1e-5)
        node._tf_buffer = _MovingTfBuffer(12.0, T0, known=False)
        assert node._ego_poses(stamps["back"], frames, node._cloud_settings) is None
        assert node._motion_note.startswith("off (no odom->base_link in TF at the set's stamps")
    finally:
        node.release()
        node.destroy_node()


@pytest.mark.ros
def test_motion_compensation_with_a_real_tf2_buffer(ros_context, student_dir: Path, rig: Rig) -> None:
    tf2_ros = pytest.importorskip("tf2_ros", reason="tf2_ros (ros-<distro>-tf2-ros-py) is not installable here")
    node = _in_process_node(ros_context, **{"model.path": str(student_dir), "autostart": False,
                                            "extrinsics.source": "calibration",
                                            "extrinsics.calibration_file": str(RIG_FILE),
                                            "cloud.motion_compensation": "on"})
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert isinstance(node._tf_buffer, tf2_ros.Buffer)
        for k in range(3):  # odometry at 0, 50, 100 ms: 12 m/s along x
            tf = TransformStamped()
            tf.header = header(T0 + k * 50_000_000, "odom")
            tf.child_frame_id = "base_link"
            tf.transform.translation.x = 12.0 * 0.05 * k
            tf.transform.rotation.w = 1.0
            node._tf_buffer.set_transform(tf, "test")
        frames = [_Frame(name=n, header=header(T0 + 40_000_000 * k, rig.camera(n).frame_id),
                         rgb=np.zeros((4, 4, 3), np.uint8), model=rig.camera(n).model)
                  for k, n in enumerate(("front", "back"))]
        T_ref, at_cams = node._ego_poses(T0 + 40_000_000, frames, node._cloud_settings)
        np.testing.assert_allclose((np.linalg.inv(T_ref) @ at_cams[0])[:3, 3], [-0.48, 0.0, 0.0], atol=1e-6)
    finally:
        node.release()
        node.destroy_node()


# =========================================================== running node
@pytest.mark.ros
class TestRunningNode:
    """One node process (raw images, policy wait, masked calibration) for these tests; it is stopped
    with SIGINT when the class is done and must exit 0."""

    def test_every_set_gives_six_depths_and_one_cloud_equal_to_offline(
        self, main_node, backend, rig: Rig, masked_calibration
    ) -> None:
        _, driver = main_node
        _, mask_full = masked_calibration
        mask = resize_depth_nearest(mask_full, (H, W))
        for _ in range(3):
            tick = next_tick()
            images, stamps = make_images(tick), camera_stamps(tick, CAMERAS)
            reference = max(stamps.values())
            publish_set(driver, rig, images, stamps)
            assert driver.wait_until(lambda s=stamps, r=reference: driver.outputs_at(s, r), DEADLINE_S), \
                f"no complete output for set {tick}; log:\n{main_node[0].log()}\n{_diagnostics_text(driver)}"
            time.sleep(0.1)  # any duplicate would arrive now
            offline = offline_depth(backend, [images[c] for c in CAMERAS])
            depth = np.stack([received_depth(driver, c, stamps[c]) for c in CAMERAS])
            for k, name in enumerate(CAMERAS):
                msgs, infos = driver.depth[name][stamps[name]], driver.info[name][stamps[name]]
                assert len(msgs) == 1 and len(infos) == 1
                d, info = msgs[0], infos[0]
                assert (d.header.frame_id, stamp_ns(d.header.stamp)) == (rig.camera(name).frame_id, stamps[name])
                assert (d.encoding, d.height, d.width) == ("32FC1", H, W)
                # camera_info: same header, K/P for the depth size (pixel-centre exact rescale)
                assert info.header == d.header and (info.width, info.height) == (W, H)
                m = rig.camera(name).model.scaled_to(IMG_W, IMG_H)
                sx, sy = W / IMG_W, H / IMG_H
                K = np.array([[m.fx * sx, 0, (m.cx + 0.5) * sx - 0.5], [0, m.fy * sy, (m.cy + 0.5) * sy - 0.5],
                              [0, 0, 1]])
                np.testing.assert_allclose(np.reshape(info.k, (3, 3)), K, rtol=1e-12)
                np.testing.assert_allclose(np.reshape(info.p, (3, 4))[:, :3], K, rtol=1e-12)
                valid = ~mask if name == "front" else np.ones((H, W), dtype=bool)
                np.testing.assert_allclose(depth[k][valid], offline[k][valid], rtol=0, atol=1e-4)
                assert np.isnan(depth[k][~valid]).all()  # ego mask -> NaN (REP 117: never 0)
            # one cloud, base_link, the set's reference stamp (= latest camera stamp)
            clouds = driver.clouds[reference]
            assert len(clouds) == 1 and clouds[0].header.frame_id == "base_link" and clouds[0].height == 1
            assert [f.name for f in clouds[0].fields] == ["x", "y", "z", "rgb"]
            xyz, rgb = cloud_to_points(clouds[0])
            want = expected_outputs(backend, rig, CAMERAS, images, masks={"front": mask_full})
            np.testing.assert_array_equal(np.isnan(depth), np.isnan(want.depth))  # NaN exactly where expected
            np.testing.assert_allclose(depth, want.depth, rtol=0, atol=1e-4)
            assert xyz.shape == want.xyz.shape and want.xyz.shape[0] > 0
            np.testing.assert_allclose(xyz, want.xyz, atol=2e-3)
            np.testing.assert_array_equal(rgb, want.rgb)
            unmasked = expected_outputs(backend, rig, CAMERAS[:1], images).xyz.shape[0]
            masked = expected_outputs(backend, rig, CAMERAS[:1], images, masks={"front": mask_full}).xyz.shape[0]
            assert masked < unmasked  # masked pixels are absent from the cloud


    def test_bad_input_is_reported_and_the_node_keeps_producing(self, main_node, rig: Rig) -> None:
        node, driver = main_node
        broken = []
        for bad in ({"back": "encoding"}, {"front_left": "size"}):
            tick = next_tick()
            stamps = camera_stamps(tick, CAMERAS)
            publish_set(driver, rig, make_images(tick), stamps, bad=bad)
            broken.append(stamps)
            time.sleep(0.6)  # the worker has seen (and dropped) it
        tick = next_tick()
        stamps = camera_stamps(tick, CAMERAS)
        publish_set(driver, rig, make_images(tick), stamps)
        assert driver.wait_until(lambda: driver.outputs_at(stamps, max(stamps.values())), DEADLINE_S), node.log()
        for dropped in broken:  # a bad camera drops its whole set under policy "wait"
            assert not any(driver.depth[c].get(s) for c, s in dropped.items())
            assert not driver.clouds.get(max(dropped.values()))
        assert node.alive()
        log = node.log()
        assert "camera 'back'" in log and "bayer_rggb8" in log
        assert "camera 'front_left'" in log and f"camera_info says {IMG_W}x{IMG_H}" in log

        def reported() -> bool:
            back, pipeline = driver.latest_status("camera back"), driver.latest_status("pipeline")
            values = {kv.key: kv.value for kv in back.values} if back else {}
            p_values = {kv.key: kv.value for kv in pipeline.values} if pipeline else {}
            return values.get("bad_input_decode") == "1" and int(p_values.get("sets_dropped", 0)) >= 2

        assert driver.wait_until(reported, DEADLINE_S), "diagnostics do not count the bad input"


    def test_diagnostics_report_rate_latency_model_and_skew(self, main_node, rig: Rig) -> None:
        node, driver = main_node
        tick = next_tick()
        stamps = camera_stamps(tick, CAMERAS)
        publish_set(driver, rig, make_images(tick), stamps)
        assert driver.wait_until(lambda: driver.outputs_at(stamps, max(stamps.values())), DEADLINE_S), node.log()
        n_before = len(driver.diagnostics)
        assert driver.wait_until(lambda: len(driver.diagnostics) > n_before, DEADLINE_S)
        status = driver.latest_status("pipeline")
        values = {kv.key: kv.value for kv in status.values}
        for key in ("output_rate_hz", "latency_mean_ms", "latency_max_ms", "model_time_mean_ms",
                    "sets_replaced_while_busy", "sync_skew_max_ms", "outputs_total"):
            assert key in values
        assert json.loads(values["backend"])["backend"] == "torch"
        assert float(values["sync_skew_max_ms"]) == pytest.approx(15.0)  # our 3 ms trigger offsets
        assert int(values["outputs_total"]) >= 1
        cameras = [s for s in driver.diagnostics[-1].status if "camera " in s.name]
        assert sorted(s.name.rsplit(" ", 1)[-1] for s in cameras) == sorted(CAMERAS)
        for key in ("sync_attempt_skew_last_ms", "sync_attempt_skew_max_ms", "sync_phases_ms", "sync_phase_resets",
                    "stamp_jump_resets", "stamp_clock_offset_s"):
            assert key in values
        # calibration from a file and no tf2_ros: the cloud is not motion compensated, and it says so
        assert values["cloud_motion_compensation"].startswith("off (")

    def test_stamps_from_another_clock_are_named_not_reported_as_latency(self, main_node, rig: Rig) -> None:
        """The stamps here are from 2023 and the node runs on wall time without use_sim_time: the
        gap is years, which is a clock mismatch (a bag without --clock), not a latency."""
        node, driver = main_node
        tick = next_tick()
        stamps = camera_stamps(tick, CAMERAS)
        publish_set(driver, rig, make_images(tick), stamps)
        assert driver.wait_until(lambda: driver.outputs_at(stamps, max(stamps.values())), DEADLINE_S), node.log()

        def named() -> bool:
            status = driver.latest_status("pipeline")
            values = {kv.key: kv.value for kv in status.values} if status else {}
            return CLOCK_HINT in status.message and values.get("latency_mean_ms") == f"n/a ({CLOCK_HINT})"

        assert driver.wait_until(named, DEADLINE_S), _diagnostics_text(driver)
        status = driver.latest_status("pipeline")
        offset = float({kv.key: kv.value for kv in status.values}["stamp_clock_offset_s"])
        assert offset == pytest.approx(time.time() - max(stamps.values()) / 1e9, abs=30.0)
        assert CLOCK_HINT in node.log()

    def test_cross_view_consistency_is_reported_per_adjacent_pair(self, main_node, rig: Rig) -> None:
        node, driver = main_node
        for _ in range(2):
            tick = next_tick()
            stamps = camera_stamps(tick, CAMERAS)
            publish_set(driver, rig, make_images(tick), stamps)
            assert driver.wait_until(lambda s=stamps: driver.outputs_at(s, max(s.values())), DEADLINE_S), node.log()
        names = rig.names
        keys = [f"cross_view_{names[i]}-{names[j]}" for i, j in rig.adjacent_pairs()]
        assert len(keys) == 6

        def reported() -> bool:
            status = driver.latest_status("calibration")
            values = {kv.key: kv.value for kv in status.values} if status else {}
            return all(k in values for k in keys) and int(values.get(f"{keys[0]}_sets", 0)) >= 2

        assert driver.wait_until(reported, DEADLINE_S), _diagnostics_text(driver)
        values = {kv.key: kv.value for kv in driver.latest_status("calibration").values}
        finite = [float(values[k]) for k in keys if values[k] != "n/a"]
        assert finite and all(0 <= v < 1 for v in finite)
        assert "cross_view_suspects" in values

    def test_short_loop_replayed_without_clock_resumes(self, main_node, rig: Rig) -> None:
        """Three sets (0.2 s of stamps, shorter than any clock-jump threshold) played twice with the
        same stamps and no /clock: the second pass goes back in time and must still give outputs."""
        node, driver = main_node
        loop = [next_tick() for _ in range(3)]
        for attempt in range(2):
            for tick in loop:
                stamps = camera_stamps(tick, CAMERAS)
                publish_set(driver, rig, make_images(tick), stamps)
                assert driver.wait_until(
                    lambda s=stamps, n=attempt + 1: all(len(driver.depth[c].get(t, [])) >= n for c, t in s.items()),
                    DEADLINE_S), f"pass {attempt + 1}, set {tick}: no output; log:\n{node.log()}"
        assert "stamps jumped back by 0.2" in node.log()

        def counted() -> bool:
            status = driver.latest_status("pipeline")
            values = {kv.key: kv.value for kv in status.values} if status else {}
            return int(values.get("stamp_jump_resets", 0)) >= 1

        assert driver.wait_until(counted, DEADLINE_S)

    def test_silent_camera_under_wait_is_explained_in_the_log(self, main_node, rig: Rig) -> None:
        """Policy wait with one camera silent: no set can form; the log says which camera and which
        setting helps, not only /diagnostics. (Last in the class: it leaves incomplete queues.)"""
        node, driver = main_node
        alive = tuple(c for c in CAMERAS if c != "back_right")
        deadline = time.monotonic() + 20.0
        while "images fail to synchronize" not in node.log() and time.monotonic() < deadline:
            tick = next_tick()
            publish_set(driver, rig, make_images(tick), camera_stamps(tick, alive))
            time.sleep(0.1)
        log = node.log()
        assert "images fail to synchronize" in log, log
        # the silent camera is named; under load a camera whose messages lag may be named with it
        silent = re.search(r"camera\(s\) ([\w, ]+) send nothing", log)
        assert silent and "back_right" in silent.group(1).split(", "), log
        assert "sync.policy:=partial" in log


@pytest.mark.ros
class TestPartialPolicy:
    """A second node: compressed transport, policy partial, plain rig_ddad.yaml calibration."""

    def test_dead_camera_compressed_input_and_fallback_intrinsics(self, partial_node, backend, rig: Rig) -> None:
        node, driver = partial_node
        alive = tuple(c for c in CAMERAS if c != "back")
        for _ in range(2):
            tick = next_tick()
            images, stamps = make_images(tick), camera_stamps(tick, alive)
            # back is dead; front_right sends no camera_info: intrinsics come from the calibration file
            publish_set(driver, rig, images, stamps, compressed=True, no_info=("front_right",))
            reference = max(stamps.values())
            assert driver.wait_until(lambda s=stamps, r=reference: driver.outputs_at(s, r), DEADLINE_S), node.log()
        time.sleep(0.3)
        assert not driver.depth["back"] and not driver.info["back"]  # missing camera: no output
        decoded = [compressed_to_rgb(jpeg_msg(images[c], header(0, ""))) for c in alive]
        offline = offline_depth(backend, decoded)
        for k, name in enumerate(alive):
            np.testing.assert_allclose(received_depth(driver, name, stamps[name]), offline[k], rtol=0, atol=1e-4)
        K = rig.camera("front_right").model.scaled_to(IMG_W, IMG_H).scaled_to(W, H).K
        np.testing.assert_allclose(np.reshape(driver.info["front_right"][stamps["front_right"]][0].k, (3, 3)), K)
        cloud = driver.clouds[reference][0]
        assert stamp_ns(cloud.header.stamp) == reference
        xyz, rgb = cloud_to_points(cloud)
        want = expected_outputs(backend, rig, alive, dict(zip(alive, decoded, strict=True)))
        np.testing.assert_allclose(xyz, want.xyz, atol=2e-3)  # the five present cameras, nothing else
        np.testing.assert_array_equal(rgb, want.rgb)

        # a corrupt jpeg drops only that camera under "partial"
        tick = next_tick()
        stamps = camera_stamps(tick, alive)
        publish_set(driver, rig, make_images(tick), stamps, compressed=True, bad={"front": "corrupt"})
        rest = {c: s for c, s in stamps.items() if c != "front"}
        assert driver.wait_until(lambda: driver.outputs_at(rest, max(stamps.values())), DEADLINE_S), node.log()
        assert not driver.depth["front"].get(stamps["front"])
        assert "camera 'front'" in node.log() and "cannot decode CompressedImage" in node.log()

        def back_silent() -> bool:
            status = driver.latest_status("camera back")
            return status is not None and status.level == b"\x01" and "silent" in status.message

        assert driver.wait_until(back_silent, DEADLINE_S)

    def test_oversized_png_drops_only_that_camera(self, partial_node, rig: Rig) -> None:
        """A 16000x12000 PNG used to raise PIL's DecompressionBombError, which escaped the per-camera
        handling: the whole set was dropped as an inference error. Now it is front_left's input problem
        (refused from the header against input.max_image_pixels) and the other cameras get depth."""
        import struct
        import zlib

        from sensor_msgs.msg import CompressedImage

        def chunk(kind: bytes, body: bytes) -> bytes:
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

        ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 16000, 12000, 8, 2, 0, 0, 0))
        huge_png = b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IEND", b"")  # header only: 57 bytes on the wire
        node, driver = partial_node
        alive = tuple(c for c in CAMERAS if c != "back")
        tick = next_tick()
        stamps = camera_stamps(tick, alive)
        images = make_images(tick)
        publish_set(driver, rig, images, {c: s for c, s in stamps.items() if c != "front_left"}, compressed=True)
        cam = rig.camera("front_left")
        hdr = header(stamps["front_left"], cam.frame_id)
        driver.publish("front_left", CompressedImage(header=hdr, format="png", data=huge_png),
                       model_to_camera_info(cam.model.scaled_to(IMG_W, IMG_H), hdr))
        rest = {c: s for c, s in stamps.items() if c != "front_left"}
        assert driver.wait_until(lambda: driver.outputs_at(rest, max(stamps.values())), DEADLINE_S), node.log()
        assert not driver.depth["front_left"].get(stamps["front_left"])
        assert driver.wait_until(lambda: "16000x12000" in node.log(), DEADLINE_S), node.log()
        line = next(row for row in node.log().splitlines() if "16000x12000" in row)
        assert "camera 'front_left'" in line and "max_image_pixels" in line and "16000000" in line
        assert "inference" not in line.lower()


@pytest.mark.ros
@pytest.mark.parametrize(("overrides", "code", "message"), [
    ({"sync.policy": "foo"}, 2, "parameter 'sync.policy' is 'foo'; expected one of: wait, partial"),
    ({}, 2, "parameter 'model.path' is required"),
    ({"cloud.stride": "0"}, 2, "cloud.stride"),
    ({"model.path": "<empty>", "extrinsics.source": "calibration",
      "extrinsics.calibration_file": str(RIG_FILE)}, 1, "cannot load model"),
    ({"model.path": "<student>"}, 1, "use the rig calibration instead"),  # tf2_ros missing here
])
def test_bad_parameters_or_model_refuse_to_start(
    ros_env_vars, tmp_path: Path, student_dir: Path, overrides: dict, code: int, message: str
) -> None:
    if overrides.get("model.path") == "<student>" and importlib.util.find_spec("tf2_ros") is not None:
        pytest.skip("tf2_ros is installed: the TF path is available")
    (tmp_path / "empty").mkdir()
    params = {k: {"<empty>": str(tmp_path / "empty"), "<student>": str(student_dir)}.get(v, v)
              for k, v in overrides.items()}
    rc, output = run_node_to_exit(params, DOMAIN + 2)
    assert rc == code, output
    assert message in output


# ====================================================== real bag replay
def _read_bag(path: Path) -> tuple[dict, dict]:
    """Per camera: {stamp: rgb} and {stamp: ground-truth depth} from the synthetic bag."""
    from rosbags.highlevel import AnyReader

    images: dict[str, dict[int, np.ndarray]] = {c: {} for c in CAMERAS}
    gt: dict[str, dict[int, np.ndarray]] = {c: {} for c in CAMERAS}
    with AnyReader([path]) as reader:
        wanted = [c for c in reader.connections
                  if c.topic.endswith("/image_raw")
                  or (c.topic.startswith("/synthetic_gt/") and c.topic.endswith("/depth"))]  # not /labels
        for conn, _, raw in reader.messages(connections=wanted):
            msg = reader.deserialize(raw, conn.msgtype)
            name = conn.topic.split("/")[2]
            ns = stamp_ns(msg.header.stamp)
            if conn.topic.endswith("/image_raw"):
                images[name][ns] = np.asarray(msg.data, np.uint8).reshape(msg.height, msg.width, 3)
            else:
                gt[name][ns] = np.frombuffer(bytes(msg.data), "<f4").reshape(msg.height, msg.width)
    return images, gt


def _assign_to_pixels(xyz: np.ndarray, rgb: np.ndarray, rig: Rig, images: list[np.ndarray]):
    """Find, for every cloud point, the camera pixel whose ray it lies on (independent geometry:
    plain pinhole projection with T_cam_base). Returns (camera index, v, u) per point."""
    best = np.full(xyz.shape[0], np.inf)
    cam_of = np.full(xyz.shape[0], -1)
    uv = np.zeros((xyz.shape[0], 2), dtype=np.int64)
    for k, name in enumerate(CAMERAS):
        cam = rig.camera(name)
        T = np.linalg.inv(cam.T_base_cam)
        q = xyz.astype(np.float64) @ T[:3, :3].T + T[:3, 3]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = cam.model.fx * q[:, 0] / q[:, 2] + cam.model.cx
            v = cam.model.fy * q[:, 1] / q[:, 2] + cam.model.cy
        ui, vi = np.rint(u), np.rint(v)
        resid = np.abs(u - ui) + np.abs(v - vi)
        inside = (q[:, 2] > 0) & (ui >= 0) & (ui < W) & (vi >= 0) & (vi < H)
        ok = inside & (resid < 0.02) & (resid < best)
        ok[ok] &= (ui[ok] % STRIDE == 0) & (vi[ok] % STRIDE == 0)
        ok[ok] &= (images[k][vi[ok].astype(int), ui[ok].astype(int)] == rgb[ok]).all(axis=1)
        best[ok], cam_of[ok] = resid[ok], k
        uv[ok] = np.stack([vi[ok], ui[ok]], axis=1).astype(np.int64)
    return cam_of, uv[:, 0], uv[:, 1]


def _diagnostics_text(driver: Driver) -> str:
    if not driver.diagnostics:
        return "none"
    return "; ".join(f"{s.name} [{s.message}] " + ", ".join(f"{kv.key}={kv.value}" for kv in s.values
                                                            if kv.key != "backend")
                     for s in driver.diagnostics[-1].status)


@pytest.mark.ros
def test_sweep_rig_without_phase_correction_is_explained_with_its_spread_and_the_fix(
    ros_env_vars, tmp_path: Path, student_dir: Path, rig: Rig
) -> None:
    """Phase correction switched off on a sweep-triggered rig (cameras 8.5 ms apart, spread 42.5 ms):
    no set can form within the 10 ms slop. The log names the refused spread (the rig's, not 0 or the slop)
    and the setting that fixes it; /diagnostics shows the attempted spread too."""
    driver = Driver(DOMAIN + 2, CAMERAS)
    node = _start({"model.path": str(student_dir), "extrinsics.source": "calibration",
                   "extrinsics.calibration_file": str(RIG_FILE), "sync.phase_correction": "false",
                   "sync.slop_ms": "10.0", "diagnostics.period_s": "0.5"}, tmp_path / "node.log", DOMAIN + 2, driver)
    try:
        deadline = time.monotonic() + 30.0
        while "images fail to synchronize" not in node.log() and time.monotonic() < deadline:
            tick = next_tick()
            publish_set(driver, rig, make_images(tick), {c: tick + 8_500_000 * i for i, c in enumerate(CAMERAS)})
            time.sleep(0.1)
        log = node.log()
        assert "images fail to synchronize" in log and "sync.phase_correction:=true" in log, log
        spread_ms = float(log.split("refused sets: smallest ")[1].split(",")[0])
        assert 42.0 < spread_ms < 43.0, log  # exactly the rig's spread: the slop that would work

        def attempted_spread_reported() -> bool:
            status = driver.latest_status("pipeline")
            values = {kv.key: kv.value for kv in status.values} if status else {}
            return float(values.get("sync_attempt_skew_max_ms", "0") or 0) > 30.0

        assert driver.wait_until(attempted_spread_reported, DEADLINE_S), _diagnostics_text(driver)
    finally:
        driver.close()
        assert node.stop() == 0, node.log()


def _replay_until_every_set_is_out(bag: Path, frames: list[dict[str, int]], driver: Driver, node: NodeProcess,
                                   tmp_path: Path, then: Callable[[], bool] | None = None) -> None:
    """``fsmde play`` the bag into the node; wait until each frame's depth images and cloud are out (and
    ``then`` holds); stop.

    ``--wait-for-subscribers`` (every camera topic): the player's writers have matched the node's readers,
    so no best-effort image is lost to discovery (the node subscribes best effort by default).
    """
    image_topics = [f"/cameras/{c}/image_raw" for c in CAMERAS]
    player = None
    try:
        assert driver.wait_until(lambda: driver.node_ready() and driver.graph_has(image_topics, True), DEADLINE_S), \
            node.log()
        with open(tmp_path / "player.log", "w") as player_log:
            player = subprocess.Popen(
                [sys.executable, "-m", "fsmde_ros.player", str(bag), "--skip-unknown-types", "--rate", "0.5",
                 "--wait-for-subscribers", "--wait-timeout", "60"],
                cwd=REPO, env=ros_env(DOMAIN + 2), stdout=player_log, stderr=subprocess.STDOUT)
        assert driver.wait_until(lambda: all(driver.outputs_at(f, max(f.values())) for f in frames), DEADLINE_S), \
            f"outputs per frame: {[sum(bool(driver.depth[c].get(t)) for c, t in f.items()) for f in frames]}; " \
            f"diagnostics: {_diagnostics_text(driver)}\nnode log:\n{node.log()}\n" \
            f"player log:\n{(tmp_path / 'player.log').read_text()}"
        assert player.wait(30) == 0
        if then is not None:
            assert driver.wait_until(then, DEADLINE_S), _diagnostics_text(driver)
    finally:
        if player is not None and player.poll() is None:
            player.kill()
        driver.close()
        rc = node.stop()
    assert rc == 0, node.log()


@pytest.mark.ros
def test_replayed_bag_cloud_lies_on_ground_truth_within_model_error(
    ros_env_vars, tmp_path: Path, student_dir: Path, backend
) -> None:
    from fsmde_core.synthetic.writer import generate_bag

    bag = tmp_path / "drive"
    generate_bag("ddad", frames=4, seed=3, out=bag, storage="sqlite3", width=W, height=H, progress=False,
                 workers=1)
    rig = preset("ddad", W, H)  # the bag's rig (generate_bag renders the preset at this size)
    rig.save(tmp_path / "rig.yaml")
    images, gt = _read_bag(bag)
    frames = list(zip(*[sorted(images[c]) for c in CAMERAS], strict=True))  # per frame: six stamps
    assert len(frames) == 4

    driver = Driver(DOMAIN + 2, CAMERAS, publish=False)
    node = start_node({"model.path": str(student_dir), "extrinsics.source": "calibration",
                       "extrinsics.calibration_file": str(tmp_path / "rig.yaml"), "use_sim_time": "true",
                       "pipeline.queue_size": "16"},  # every set must come out, however loaded the machine
                      tmp_path / "node.log", DOMAIN + 2)
    stamps = [dict(zip(CAMERAS, f, strict=True)) for f in frames]
    _replay_until_every_set_is_out(bag, stamps, driver, node, tmp_path)

    for frame in stamps:
        for name, ns in frame.items():
            d = driver.depth[name][ns]
            assert len(d) == 1 and d[0].header.frame_id == rig.camera(name).frame_id
        cloud = driver.clouds[max(frame.values())][0]
        assert cloud.header.frame_id == "base_link"
        rgb_in = [images[c][frame[c]] for c in CAMERAS]
        offline = backend.infer(np.stack(rgb_in))
        truth = np.stack([gt[c][frame[c]] for c in CAMERAS])
        with np.errstate(invalid="ignore"):
            rel_err_offline = offline / truth - 1.0  # the model's measured error per pixel (NaN: sky)
        xyz, rgb = cloud_to_points(cloud)
        cam, v, u = _assign_to_pixels(xyz, rgb, rig, rgb_in)
        assert (cam >= 0).all(), f"{(cam < 0).sum()} cloud points lie on no camera ray"
        # complete: one point per stride pixel whose predicted range is within the cloud limits
        norms = [np.linalg.norm(rig.camera(c).model.pixel_rays(), axis=-1) for c in CAMERAS]
        expected = sum(int((offline[k] * norms[k] <= MAX_RANGE)[::STRIDE, ::STRIDE].sum()) for k in range(6))
        assert xyz.shape[0] == expected
        # each point's range error against the ground truth along its ray = the model's error there
        T = [np.linalg.inv(rig.camera(c).T_base_cam) for c in CAMERAS]
        z = np.array([(T[k][:3, :3] @ p + T[k][:3, 3])[2] for k, p in zip(cam, xyz.astype(np.float64),
                                                                             strict=True)])
        z_true = truth[cam, v, u]
        on_surface = np.isfinite(z_true)
        assert on_surface.mean() > 0.5
        rel_err_cloud = z[on_surface] / z_true[on_surface] - 1.0
        want = rel_err_offline[cam, v, u][on_surface]
        assert np.abs(rel_err_cloud - want).max() < 1e-4 * (1 + np.abs(want).max()), (
            f"cloud vs ground truth differs from the model's own error (offline AbsRel "
            f"{np.nanmean(np.abs(rel_err_offline)):.3f})"
        )


@pytest.mark.ros
def test_sweep_triggered_moving_rig_keeps_every_set_with_params_from_fsmde_rig(
    ros_env_vars, tmp_path: Path, student_dir: Path
) -> None:
    """The issue's acceptance path for a user's own recording: a nuScenes-style rig (cameras fired as the
    LiDAR sweeps past, stamps of one instant spread ~40 ms) on a car at 12 m/s, the node configured only
    by the files ``fsmde rig`` writes, replayed by ``fsmde play --wait-for-subscribers``: every set out,
    each from one capture instant, with the phases reported on /diagnostics."""
    from fsmde_core.synthetic.writer import generate_bag

    bag = tmp_path / "sweep"
    generate_bag("nuscenes", frames=6, seed=4, out=bag, storage="sqlite3", width=W, height=H, progress=False,
                 workers=1, camera_timing="sweep", speed=12.0)
    images, _ = _read_bag(bag)
    frames = [dict(zip(CAMERAS, f, strict=True)) for f in zip(*[sorted(images[c]) for c in CAMERAS], strict=True)]
    spreads = [max(f.values()) - min(f.values()) for f in frames]
    assert len(frames) == 6 and min(spreads) > 30_000_000  # really sweep-triggered: beyond the old 30 ms slop
    rig_file, params_file = tmp_path / "rig.yaml", tmp_path / "node.yaml"
    done = subprocess.run([sys.executable, "-m", "fsmde_core.cli", "rig", "--bag", str(bag), "--out", str(rig_file),
                           "--params", str(params_file)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr

    driver = Driver(DOMAIN + 2, CAMERAS, publish=False)
    node = start_node({"model.path": str(student_dir), "use_sim_time": "true", "pipeline.queue_size": "16"},
                      tmp_path / "node.log", DOMAIN + 2, params_file=params_file)

    def phases_reported() -> bool:  # the learnt trigger phases of all six cameras are on /diagnostics
        values = [kv.value for a in driver.diagnostics for st in a.status for kv in st.values
                  if kv.key == "sync_phases_ms"]
        return bool(values) and all(c in values[-1] for c in CAMERAS)

    _replay_until_every_set_is_out(bag, frames, driver, node, tmp_path, then=phases_reported)
    for f in frames:  # one depth image per camera per instant: nothing mixed, nothing twice
        assert all(len(driver.depth[c][t]) == 1 for c, t in f.items())
    assert "no subscriber after" not in (tmp_path / "player.log").read_text()  # it waited for the cameras only


# ============================================================ launch files
def _launch_constants() -> tuple[ast.Module, dict]:
    tree = ast.parse(LAUNCH_FILE.read_text())
    consts = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            with contextlib.suppress(ValueError):  # not a literal
                consts[stmt.targets[0].id] = ast.literal_eval(stmt.value)
    return tree, consts


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


LAUNCH_ARGUMENTS = {"params_file", "model", "backend", "device", "extrinsics_source", "calibration_file", "bag",
                    "use_sim_time", "rviz", "namespace"}


def test_launch_defaults_point_to_a_valid_params_file_and_rviz_config(student_dir: Path) -> None:
    tree, consts = _launch_constants()
    assert "get_package_share_directory" in LAUNCH_FILE.read_text() and consts["PACKAGE"] == "fsmde_ros"
    declared = {node.args[0].value for node in ast.walk(tree) if isinstance(node, ast.Call)
                and getattr(node.func, "id", "") == "DeclareLaunchArgument"}
    assert declared == LAUNCH_ARGUMENTS
    params_file = REPO.joinpath(*consts["PARAMS_FILE"])
    data = yaml.safe_load(params_file.read_text())
    (key,) = data
    assert key.rsplit("/", 1)[-1] == consts["NODE_NAME"] == "surround_depth_node"
    flat = _flatten(data[key]["ros__parameters"])
    known = known_parameter_names(flat["cameras.names"])
    assert set(flat) == known  # every parameter is in the file, and nothing unknown
    with pytest.raises(ParameterError, match=r"model\.path' is required"):
        settings_from_values(flat)  # the model is given per launch (model:=...)
    settings = settings_from_values({**flat, "model.path": str(student_dir)})
    # every default in the file equals the node's own default: the file documents the node
    for spec in PARAMETERS:
        if spec.name != "model.path":
            assert flat[spec.name] == spec.default, spec.name
    # RViz config: base_link, the cloud in RGB8, one image display per depth topic
    rviz = yaml.safe_load(REPO.joinpath(*consts["RVIZ_FILE"]).read_text())["Visualization Manager"]
    assert rviz["Global Options"]["Fixed Frame"] == settings.cloud.frame_id
    displays = rviz["Displays"]
    clouds = [d for d in displays if d["Class"] == "rviz_default_plugins/PointCloud2"]
    assert clouds[0]["Topic"]["Value"] == settings.cloud.topic and clouds[0]["Color Transformer"] == "RGB8"
    images = {d["Topic"]["Value"] for d in displays if d["Class"] == "rviz_default_plugins/Image"}
    assert images == {c.depth_topic for c in settings.cameras}
    assert any(d["Class"] == "rviz_default_plugins/TF" for d in displays)
    setup = (REPO / "setup.py").read_text()
    assert 'glob("config/*.rviz")' in setup and 'glob("launch/*.launch.py")' in setup


def test_launch_description_builds() -> None:
    pytest.importorskip("launch_ros", reason="launch_ros is not installed (no ROS 2 launch stack here)")
    spec = importlib.util.spec_from_file_location("surround_depth_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert {a.name for a in description.get_launch_arguments()} == LAUNCH_ARGUMENTS
