"""The node's per-camera image-quality diagnostic, end to end over DDS.

The node runs as a user starts it (a subprocess with the params file, see node_harness.py); the
test publishes real camera sets in which one camera sees a dark scene and reads /diagnostics. It
waits on conditions (an output, a status) with a generous deadline, never on a duration.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ros-kilted-rclpy wheels) is not installed")
torch = pytest.importorskip("torch", reason="torch is needed for the student")

from node_harness import DEADLINE_S, PARAMS_FILE, Driver, header, image_msg, start_node  # noqa: E402
from quality_images import dark, dead_leaves, to_uint8  # noqa: E402
from tiny_students import save_tiny_student  # noqa: E402

from fsmde_core.models.student import StudentConfig  # noqa: E402
from fsmde_core.rig import Rig  # noqa: E402
from fsmde_ros.conversions import model_to_camera_info  # noqa: E402
from fsmde_ros.params import DEFAULT_CAMERAS  # noqa: E402

DOMAIN = 8  # test_node_confidence has 6 and 7, test_node 10..138, test_player 140..229, test_node_faults 230+
REPO = Path(__file__).resolve().parents[1]
RIG_FILE = REPO / "config" / "rig_ddad.yaml"
CAMERAS = DEFAULT_CAMERAS
IMG_H, IMG_W = 48, 80
T0 = 1_700_000_000 * 1_000_000_000
DARK_CAMERA = "front"


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = StudentConfig(encoder="resnet18", num_bins=8, min_depth=0.5, max_depth=80.0,
                        decoder_channels=(16, 8, 8, 8), input_height=32, input_width=64)
    return save_tiny_student(tmp_path_factory.mktemp("student"), cfg, CAMERAS, rig="ddad")


def _images() -> dict[str, np.ndarray]:
    """A sharp textured scene per camera; the dark camera's at a tenth of the light."""
    images = {c: to_uint8(dead_leaves(IMG_H, IMG_W, seed=k)) for k, c in enumerate(CAMERAS)}
    images[DARK_CAMERA] = dark(dead_leaves(IMG_H, IMG_W, seed=CAMERAS.index(DARK_CAMERA)), 0.1)
    return images


def _publish_set(driver: Driver, rig: Rig, images: dict[str, np.ndarray], tick: int) -> dict[str, int]:
    stamps = {c: T0 + tick * 100_000_000 + 3_000_000 * k for k, c in enumerate(CAMERAS)}
    for c, ns in stamps.items():
        cam = rig.camera(c)
        hdr = header(ns, cam.frame_id)
        driver.publish(c, image_msg(images[c], hdr), model_to_camera_info(cam.model.scaled_to(IMG_W, IMG_H), hdr))
    return stamps


def _quality(driver: Driver, camera: str) -> tuple[object, dict[str, str]]:
    status = driver.latest_status(f": image quality {camera}")
    return status, ({kv.key: kv.value for kv in status.values} if status is not None else {})


def _checked_at_least(driver: Driver, n: int) -> bool:
    return all(int(_quality(driver, c)[1].get("checked_images", 0)) >= n for c in CAMERAS)


def _set_parameters(driver: Driver, values: dict[str, float]) -> list[bool]:
    """``ros2 param set`` from the test's participant: the node's set_parameters service."""
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    client = driver.node.create_client(SetParameters, "/surround_depth_node/set_parameters")
    assert client.wait_for_service(timeout_sec=DEADLINE_S), "no set_parameters service"
    request = SetParameters.Request(parameters=[
        Parameter(name=k, value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=v))
        for k, v in values.items()])
    future = client.call_async(request)  # the driver's executor thread completes it
    assert driver.wait_until(future.done, DEADLINE_S), "set_parameters did not answer"
    return [r.successful for r in future.result().results]


@pytest.mark.ros
def test_a_dark_camera_is_named_in_its_image_quality_warning_while_the_others_stay_ok(
    tmp_path: Path, student_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # this process's participant: loopback only
    rig = Rig.load(RIG_FILE)
    images = _images()
    driver = Driver(DOMAIN, CAMERAS)
    node = start_node({"model.path": str(student_dir), "extrinsics.source": "calibration",
                       "extrinsics.calibration_file": str(RIG_FILE), "diagnostics.period_s": "0.5",
                       "image_quality.every_n_sets": "1"}, tmp_path / "node.log", DOMAIN, PARAMS_FILE)
    try:
        assert driver.wait_until(driver.node_ready, DEADLINE_S), f"node not ready; log:\n{node.log()}"
        stamps = _publish_set(driver, rig, images, 0)
        # the dark camera still gets its depth and the cloud: the diagnostic reports, it stops nothing
        assert driver.wait_until(lambda: driver.outputs_at(stamps, max(stamps.values())), DEADLINE_S), node.log()
        assert driver.wait_until(lambda: _checked_at_least(driver, 1), DEADLINE_S), node.log()

        status, values = _quality(driver, DARK_CAMERA)
        assert status.level == status.WARN, status.message
        assert status.message.startswith(f"{DARK_CAMERA}: too dark (mean "), status.message
        assert status.hardware_id == DARK_CAMERA and status.name == f"/surround_depth_node: image quality {DARK_CAMERA}"
        assert float(values["mean_luma"]) < 20 and values["analysis_size"] == f"{IMG_W}x{IMG_H}"
        assert values["checked_stamp_s"] == f"{stamps[DARK_CAMERA] / 1e9:.3f}"
        for camera in CAMERAS:
            if camera != DARK_CAMERA:
                other, _ = _quality(driver, camera)
                assert other.level == other.OK and other.message == f"{camera}: OK", other.message

        # thresholds apply live (ros2 param set): a dark_mean below this scene's mean clears the warning
        assert _set_parameters(driver, {"image_quality.dark_mean": 5.0, "image_quality.blocked_fraction": 1.0,
                                        "image_quality.low_contrast_std": 1.0}) == [True, True, True]
        stamps = _publish_set(driver, rig, images, 1)
        assert driver.wait_until(lambda: driver.outputs_at(stamps, max(stamps.values())), DEADLINE_S), node.log()

        def cleared() -> bool:
            status, values = _quality(driver, DARK_CAMERA)
            return int(values.get("checked_images", 0)) >= 2 and status.level == status.OK

        assert driver.wait_until(cleared, DEADLINE_S), _quality(driver, DARK_CAMERA)[0].message
    finally:
        driver.close()
        rc = node.stop()
    log = node.log()
    assert rc == 0, log
    assert "Traceback" not in log and "[ERROR]" not in log, log
