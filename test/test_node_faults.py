"""The node process at its edges: bad command lines, interrupts, misspelt parameters, a second instance.

Every test runs the node exactly as a user does (``python -m fsmde_ros.node --ros-args ...``) in a
subprocess and talks to it over real DDS (loopback, domain IDs of this module's own), because the
faults live in the process around the node: rcl's argument parsing, signal handling and the order in
which the worker thread, the publishers and the rclpy context go away.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ros-kilted-rclpy wheels) is not installed")
torch = pytest.importorskip("torch", reason="torch is needed for the student")

from node_harness import (  # noqa: E402
    PARAMS_FILE,
    Driver,
    NodeProcess,
    header,
    image_msg,
    node_command,
    ros_env,
    start_node,
)

from fsmde_core.checkpoint import save_student  # noqa: E402
from fsmde_core.models.student import StudentConfig, SurroundDepthStudent  # noqa: E402
from fsmde_core.rig import Rig  # noqa: E402
from fsmde_ros.conversions import model_to_camera_info  # noqa: E402
from fsmde_ros.params import DEFAULT_CAMERAS, unknown_parameter_warnings  # noqa: E402

# Domains 230..232, the last ones Fast DDS can map to ports; test_node has 10..138, test_player 140..229.
DOMAIN = 230
REPO = Path(__file__).resolve().parents[1]
RIG_FILE = REPO / "config" / "rig_ddad.yaml"
CAMERAS = DEFAULT_CAMERAS
IMG_H, IMG_W = 48, 80
T0 = 1_700_000_000 * 1_000_000_000


@pytest.fixture(scope="module", autouse=True)
def _loopback_dds():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        yield


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = StudentConfig(encoder="resnet18", num_bins=8, min_depth=0.5, max_depth=80.0,
                        decoder_channels=(16, 8, 8, 8), input_height=32, input_width=64)
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("student")
    save_student(run, SurroundDepthStudent(cfg), {"student": cfg.to_dict(), "camera_names": list(CAMERAS),
                                                   "rig": "ddad"})
    return run


def _node_params(student_dir: Path, **extra: str) -> dict[str, str]:
    return {"model.path": str(student_dir), "extrinsics.source": "calibration",
            "extrinsics.calibration_file": str(RIG_FILE), **extra}


def _run_to_exit(cmd: list[str], domain: int) -> tuple[int, str, str]:
    import subprocess

    done = subprocess.run(cmd, cwd=REPO, env=ros_env(domain), capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


# ------------------------------------------------------- bad command lines
@pytest.mark.ros
@pytest.mark.parametrize(("extra_args", "named"), [
    (["-p", "model.path:="], "model.path"),
    (["--params-file", "/nonexistent/fsmde/params.yaml"], "/nonexistent/fsmde/params.yaml"),
    (["--params-file", "<broken>"], "broken.yaml"),
    (["--params-file", "<not-a-mapping>"], "list.yaml"),
])
def test_bad_command_line_is_one_clear_line_not_a_traceback(tmp_path: Path, extra_args: list[str],
                                                            named: str) -> None:
    (tmp_path / "broken.yaml").write_text("surround_depth_node:\n  ros__parameters: [oops\n")
    (tmp_path / "list.yaml").write_text("- just\n- a list\n")
    args = [{"<broken>": str(tmp_path / "broken.yaml"), "<not-a-mapping>": str(tmp_path / "list.yaml")}.get(a, a)
            for a in extra_args]
    cmd = node_command({})[:-2] + args  # python -m fsmde_ros.node --ros-args <args>
    rc, out, err = _run_to_exit(cmd, DOMAIN)
    assert rc == 2, out + err
    assert "Traceback" not in out + err and "RCLError" not in out + err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and named in lines[0], err


def test_unknown_parameter_warnings_suggest_the_nearest_name() -> None:
    known = {"cloud.stride", "sync.policy", "model.path", "cameras.front.image_topic", "use_sim_time"}
    warnings = unknown_parameter_warnings(
        ["cloud.strid", "sync.polcy", "model.path", "use_sim_time", "qos_overrides./x.publisher.depth",
         "totally_unrelated_thing"], known, node_name="/ns/surround_depth_node")
    assert warnings == [
        "parameter 'cloud.strid' is not a parameter of /ns/surround_depth_node and is ignored; "
        "did you mean 'cloud.stride'?",
        "parameter 'sync.polcy' is not a parameter of /ns/surround_depth_node and is ignored; "
        "did you mean 'sync.policy'?",
        "parameter 'totally_unrelated_thing' is not a parameter of /ns/surround_depth_node and is ignored",
    ]


# ------------------------------------------------------------- images
def _publish_sets(driver: Driver, rig: Rig, stop: threading.Event, first_tick: int) -> None:
    """Publish camera sets back to back (10 Hz of stamps, as fast as the loop runs) until ``stop``."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (IMG_H, IMG_W, 3), dtype=np.uint8)
    k = first_tick
    while not stop.is_set():
        ns = T0 + k * 100_000_000
        for name in CAMERAS:
            cam = rig.camera(name)
            hdr = header(ns, cam.frame_id)
            driver.publish(name, image_msg(rgb, hdr), model_to_camera_info(cam.model.scaled_to(IMG_W, IMG_H), hdr))
        k += 1
        time.sleep(0.02)


def _interrupt_while_publishing(node: NodeProcess, driver: Driver, signals: list[int]) -> int:
    """Feed the node until it has published, keep feeding, interrupt it mid-stream; its exit code."""
    rig = Rig.load(RIG_FILE)
    stop = threading.Event()
    feeder = threading.Thread(target=_publish_sets, args=(driver, rig, stop, 0), daemon=True)
    try:
        assert driver.wait_until(driver.node_ready, 60.0), node.log()
        feeder.start()
        assert driver.wait_until(lambda: len(driver.clouds) >= 3, 90.0), node.log()
        for sig in signals:
            node.proc.send_signal(sig)
            time.sleep(0.05)
        return node.proc.wait(60)
    finally:
        stop.set()
        if feeder.is_alive():
            feeder.join(5.0)
        driver.close()
        if node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait()


@pytest.mark.ros
@pytest.mark.parametrize("signals", [[signal.SIGINT], [signal.SIGTERM], [signal.SIGINT, signal.SIGINT]],
                         ids=["sigint", "sigterm", "double-sigint"])
def test_interrupt_mid_inference_stops_the_worker_first_and_exits_zero(
    tmp_path: Path, student_dir: Path, signals: list[int]
) -> None:
    """A backlog of sets (``pipeline.queue_size`` 100) keeps the worker busy when the signal comes:
    the worker must be stopped before the context goes, and a second interrupt must not break that."""
    domain = DOMAIN + 1
    driver = Driver(domain, CAMERAS)
    node = start_node(_node_params(student_dir, **{"pipeline.queue_size": "100"}), tmp_path / "node.log",
                      domain, PARAMS_FILE)
    rc = _interrupt_while_publishing(node, driver, signals)
    log = node.log()
    assert rc == 0, log
    for bad in ("Traceback", "RCLError", "context is invalid", "[ERROR]"):
        assert bad not in log, log
    assert "shutting down" in log, log


@pytest.mark.ros
def test_shutdown_is_logged_by_the_namespaced_node_logger(tmp_path: Path, student_dir: Path) -> None:
    domain = DOMAIN + 2
    driver = Driver(domain, CAMERAS, publish=False)
    import subprocess

    cmd = [*node_command(_node_params(student_dir)), "-r", "__ns:=/fsmde_test"]
    with open(tmp_path / "node.log", "w") as log_file:
        proc = subprocess.Popen(cmd, cwd=REPO, env=ros_env(domain), stdout=log_file, stderr=subprocess.STDOUT)
    node = NodeProcess(proc, tmp_path / "node.log")
    try:
        # the node is up once it publishes the (namespace-independent, absolute) cloud topic
        assert driver.wait_until(lambda: driver.node.count_publishers("/surround_depth/points") > 0, 60.0), \
            node.log()
    finally:
        driver.close()
        rc = node.stop()
    log = node.log()
    assert rc == 0, log
    shutdown = [line for line in log.splitlines() if "shutting down" in line]
    assert shutdown and all("[fsmde_test.surround_depth_node]" in line for line in shutdown), log
