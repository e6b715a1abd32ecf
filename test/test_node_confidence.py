"""The node's confidence output over real DDS: ``<ns>/depth/confidence`` and ``cloud.min_confidence``.

As in ``test_node.py``, the node is a subprocess started with the launch file's
params file plus ``-p`` overrides; the model is the tiny textured student exported
to ONNX with ``--confidence``, and what the node publishes is compared with the
very estimator it runs (:class:`fsmde_core.estimator.SurroundDepthEstimator`) on
the same images in this process.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ros-kilted-rclpy wheels) is not installed")
torch = pytest.importorskip("torch", reason="torch is needed for the student")
pytest.importorskip("onnxruntime", reason="onnxruntime runs the exported student")

from node_harness import DEADLINE_S, REPO, Driver, header, image_msg, run_node_to_exit, start_node  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from tiny_students import save_textured_student  # noqa: E402

from fsmde_core.estimator import CameraFrame, CloudOptions, DepthResult, SurroundDepthEstimator  # noqa: E402
from fsmde_core.export import export_onnx  # noqa: E402
from fsmde_core.rig import Rig  # noqa: E402
from fsmde_core.runtime import build_backend  # noqa: E402
from fsmde_ros.conversions import cloud_to_points, image_to_depth, model_to_camera_info  # noqa: E402
from fsmde_ros.params import DEFAULT_CAMERAS, ParameterError, settings_from_values  # noqa: E402

DOMAIN = 6  # and 7; test_node uses 10..138, test_player 140..229, test_node_faults 230+
H, W = 64, 96
IMG_H, IMG_W = 96, 160
CAMERAS = DEFAULT_CAMERAS
RIG_FILE = REPO / "config" / "rig_ddad.yaml"
STRIDE, MAX_RANGE = 4, 80.0  # the params file's cloud defaults
T0 = 1_700_000_000 * 1_000_000_000


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    run = save_textured_student(tmp_path_factory.mktemp("student"), CAMERAS, H, W)
    out = tmp_path_factory.mktemp("onnx")
    assert export_onnx(run, out / "confidence.onnx", confidence=True)["passed"]
    assert export_onnx(run, out / "depth_only.onnx")["passed"]
    return {"confidence": out / "confidence.onnx", "depth_only": out / "depth_only.onnx"}


def make_images(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:IMG_H, 0:IMG_W].astype(np.float32)
    return {name: np.clip(128 + 90 * np.sin(xx / (5 + k) + yy / (8 + k))[..., None]
                          + rng.normal(0, 15, (IMG_H, IMG_W, 3)), 0, 255).astype(np.uint8)
            for k, name in enumerate(CAMERAS)}


def offline(model: Path, rig: Rig, images: dict[str, np.ndarray], min_confidence: float) -> DepthResult:
    """What the node must publish: its estimator with confidence, the calibration's extrinsics."""
    frames = [CameraFrame(c, images[c], rig.camera(c).model.scaled_to(IMG_W, IMG_H), rig.camera(c).T_base_cam)
              for c in CAMERAS]
    estimator = SurroundDepthEstimator(build_backend("onnxruntime", model), confidence=True)
    options = CloudOptions(stride=STRIDE, max_range=MAX_RANGE, min_confidence=min_confidence)
    return estimator.estimate(frames, options)


def test_settings_derive_the_confidence_topic_and_check_the_threshold(models) -> None:
    s = settings_from_values({"model.path": str(models["confidence"])})
    assert not s.confidence and s.cloud.min_confidence == 0.0 and not s.needs_confidence  # off by default
    assert s.cameras[0].confidence_topic == "/cameras/front/depth/confidence"
    s = settings_from_values({"model.path": str(models["confidence"]), "cloud.min_confidence": 0.4})
    assert s.needs_confidence and not s.confidence
    with pytest.raises(ParameterError, match=r"cloud\.min_confidence"):
        settings_from_values({"model.path": str(models["confidence"]), "cloud.min_confidence": 1.5})


@pytest.mark.ros
def test_node_publishes_confidence_with_the_depth_header_and_filters_the_cloud(
    models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # this process's participant: loopback only
    rig = Rig.load(RIG_FILE)
    images = make_images(0)
    # The threshold: the median confidence of this very set, so the filter visibly removes about half.
    threshold = float(np.float32(np.nanmedian(offline(models["confidence"], rig, images, 0.0).confidence)))
    want = offline(models["confidence"], rig, images, threshold)
    driver = Driver(DOMAIN, CAMERAS)
    confidence: dict[str, dict[int, list[Image]]] = {c: defaultdict(list) for c in CAMERAS}
    for c in CAMERAS:  # before the node starts, so node_ready also waits for these publishers
        driver.subs.append(driver.node.create_subscription(
            Image, f"/cameras/{c}/depth/confidence", lambda m, c=c: driver._keep(confidence[c], m),
            QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)))
    node = start_node({"model.path": str(models["confidence"]), "extrinsics.source": "calibration",
                       "extrinsics.calibration_file": str(RIG_FILE), "outputs.confidence": "true",
                       "cloud.min_confidence": repr(threshold)}, tmp_path / "node.log", DOMAIN)
    try:
        assert driver.wait_until(driver.node_ready, DEADLINE_S), f"node not ready; log:\n{node.log()}"
        # Sets keep coming, as from real cameras: the synchronizer may hold a set until the next one
        # shows that no closer match can arrive. Every set carries the same images.
        sets = []
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline and not any(_complete(driver, confidence, s) for s in sets):
            tick = T0 + 100_000_000 * len(sets)
            stamps = {c: tick + 3_000_000 * k for k, c in enumerate(CAMERAS)}
            for name, ns in stamps.items():
                hdr = header(ns, rig.camera(name).frame_id)
                driver.publish(name, image_msg(images[name], hdr),
                               model_to_camera_info(rig.camera(name).model.scaled_to(IMG_W, IMG_H), hdr))
            sets.append(stamps)
            driver.wait_until(lambda: any(_complete(driver, confidence, s) for s in sets), 1.0)
        stamps = next((s for s in sets if _complete(driver, confidence, s)), None)
        assert stamps is not None, f"no complete output; log:\n{node.log()}"
        reference = max(stamps.values())
        time.sleep(0.1)  # any duplicate would arrive now
        for k, name in enumerate(CAMERAS):
            (msg,), (depth_msg,) = confidence[name][stamps[name]], driver.depth[name][stamps[name]]
            assert msg.header == depth_msg.header  # same stamp and frame as the depth image
            assert (msg.encoding, msg.height, msg.width) == ("32FC1", H, W)
            conf, depth = image_to_depth(msg), image_to_depth(depth_msg)
            np.testing.assert_array_equal(np.isnan(conf), np.isnan(depth))
            finite = conf[np.isfinite(conf)]
            assert finite.size > 0 and finite.min() >= 0.0 and finite.max() <= 1.0 and finite.std() > 0.01
            np.testing.assert_allclose(conf, want.confidence[k], atol=1e-5)
        (cloud,) = driver.clouds[reference]
        xyz, _ = cloud_to_points(cloud)
        every = offline(models["confidence"], rig, images, 0.0).xyz.shape[0]
        assert 0 < xyz.shape[0] == want.xyz.shape[0] < every  # cloud.min_confidence removed the unsure pixels
        np.testing.assert_allclose(xyz, want.xyz, atol=2e-3)
    finally:
        driver.close()
        rc = node.stop()
    assert rc == 0, f"node did not exit cleanly on SIGINT (rc {rc}); log:\n{node.log()}"


def _complete(driver: Driver, confidence: dict[str, dict[int, list[Image]]], stamps: dict[str, int]) -> bool:
    """Depth, camera_info and confidence of every camera and the cloud of this set have arrived."""
    return driver.outputs_at(stamps, max(stamps.values())) and all(confidence[c].get(s) for c, s in stamps.items())


@pytest.mark.ros
@pytest.mark.parametrize("override", [{"outputs.confidence": "true"}, {"cloud.min_confidence": "0.5"}])
def test_a_model_without_confidence_refuses_to_configure_naming_model_and_flag(
    models, override: dict[str, str]
) -> None:
    model = str(models["depth_only"])
    rc, output = run_node_to_exit({"model.path": model, "extrinsics.source": "calibration",
                                   "extrinsics.calibration_file": str(RIG_FILE), **override}, DOMAIN + 1)
    assert rc == 1, output
    lines = [row for row in output.splitlines() if "no confidence output" in row]
    assert len(lines) == 1, output
    assert model in lines[0] and "fsmde export --confidence" in lines[0]
    assert "Traceback" not in output
