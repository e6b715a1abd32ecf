"""The node process at its edges: bad command lines, interrupts, misspelt parameters, a second instance.

Every test runs the node exactly as a user does (``python -m fsmde_ros.node --ros-args ...``) in a
subprocess and talks to it over real DDS (loopback, domain IDs of this module's own), because the
faults live in the process around the node: rcl's argument parsing, signal handling and the order in
which the worker thread, the publishers and the rclpy context go away.
"""

from __future__ import annotations

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
from fsmde_ros.instance_guard import foreign_publishers  # noqa: E402
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
    (["--params-file", "<mixed>"], "mixed.yaml': parameter 'cameras.names' mixes types"),
])
def test_bad_command_line_is_one_clear_line_not_a_traceback(tmp_path: Path, extra_args: list[str],
                                                            named: str) -> None:
    (tmp_path / "broken.yaml").write_text("surround_depth_node:\n  ros__parameters: [oops\n")
    (tmp_path / "list.yaml").write_text("- just\n- a list\n")
    (tmp_path / "mixed.yaml").write_text("/**/surround_depth_node:\n  ros__parameters:\n    cameras:\n"
                                         "      names: [front, 2]\n")
    files = {"<broken>": "broken.yaml", "<not-a-mapping>": "list.yaml", "<mixed>": "mixed.yaml"}
    args = [str(tmp_path / files[a]) if a in files else a for a in extra_args]
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
        "parameter 'qos_overrides./x.publisher.depth' is not a parameter of /ns/surround_depth_node and is "
        "ignored",
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
    for bad in ("Traceback", "RCLError", "context is invalid", "[ERROR]", "another publisher"):
        assert bad not in log, log
    assert "shutting down" in log, log


@pytest.mark.ros
def test_misspelt_parameters_are_warned_and_shutdown_is_logged_by_the_namespaced_logger(
    tmp_path: Path, student_dir: Path
) -> None:
    """One node run for two log lines that must carry the node's own (namespaced) logger name: the
    typo warnings (params file and ``-p``) with the nearest real name, and the shutdown line."""
    import subprocess

    domain = DOMAIN + 2
    typo_file = tmp_path / "typo.yaml"
    typo_file.write_text("/**/surround_depth_node:\n  ros__parameters:\n    sync:\n      polcy: partial\n")
    cmd = [*node_command(_node_params(student_dir)), "--params-file", str(typo_file), "-p", "cloud.strid:=2",
           "-r", "__ns:=/fsmde_test"]
    driver = Driver(domain, CAMERAS, publish=False)
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
    logger = "[fsmde_test.surround_depth_node]"
    for typo, meant in (("sync.polcy", "sync.policy"), ("cloud.strid", "cloud.stride")):
        line = next((ln for ln in log.splitlines() if f"parameter {typo!r}" in ln), "")
        assert "[WARN]" in line and logger in line and f"did you mean {meant!r}?" in line, log
    shutdown = [line for line in log.splitlines() if "shutting down" in line]
    assert shutdown and all(logger in line for line in shutdown), log


# ------------------------------------------------------------ a second instance
def test_foreign_publishers_remove_only_our_own_endpoint() -> None:
    from rclpy.topic_endpoint_info import TopicEndpointInfo

    def endpoint(name: str, namespace: str) -> TopicEndpointInfo:
        return TopicEndpointInfo(node_name=name, node_namespace=namespace)

    ours = endpoint("surround_depth_node", "/")
    assert foreign_publishers([ours], "/surround_depth_node") == []
    # the same launch file started twice: same name, same namespace, still a second publisher
    assert foreign_publishers([ours, ours], "/surround_depth_node") == ["/surround_depth_node"]
    assert foreign_publishers([endpoint("surround_depth_node", "/car"), ours], "/surround_depth_node") == \
        ["/car/surround_depth_node"]


def test_an_unnamed_publisher_waits_for_its_node_name_before_the_warning() -> None:
    """DDS announces a publisher before its node's name: the guard looks again (up to UNNAMED_PATIENCE checks)
    so the warning names the node; a publisher that stays unnamed is still warned about after that."""
    import logging
    from types import SimpleNamespace

    from rclpy.topic_endpoint_info import TopicEndpointInfo

    from fsmde_ros.instance_guard import UNKNOWN_NODE_NAME, UNNAMED_PATIENCE, InstanceGuard

    ours = TopicEndpointInfo(node_name="surround_depth_node", node_namespace="/")
    unnamed = TopicEndpointInfo(node_name=UNKNOWN_NODE_NAME, node_namespace="_NODE_NAMESPACE_UNKNOWN_")
    other = TopicEndpointInfo(node_name="surround_depth_node", node_namespace="/")
    graph = {"/surround_depth/points": [ours, unnamed]}
    warnings: list[str] = []
    logger = SimpleNamespace(warning=warnings.append, info=logging.getLogger("guard").info)
    node = SimpleNamespace(get_fully_qualified_name=lambda: "/surround_depth_node",
                           get_publishers_info_by_topic=lambda t: graph.get(t, []), get_logger=lambda: logger)
    guard = InstanceGuard(node, ["/surround_depth/points"])
    guard.check()
    assert warnings == []  # not named yet: wait
    graph["/surround_depth/points"] = [ours, other]  # discovery named it
    guard.check()
    assert len(warnings) == 1 and "(node(s) /surround_depth_node)" in warnings[0]
    graph["/surround_depth/points"] = [ours]
    guard.check()
    graph["/surround_depth/points"] = [ours, unnamed]  # never named: warned about after the patience
    for _ in range(UNNAMED_PATIENCE):
        guard.check()
    assert len(warnings) == 1
    guard.check()
    assert len(warnings) == 2 and UNKNOWN_NODE_NAME in warnings[1]


@pytest.mark.ros
def test_a_second_node_on_the_same_topics_is_warned_about_by_both(tmp_path: Path, student_dir: Path) -> None:
    domain = DOMAIN
    driver = Driver(domain, CAMERAS, publish=False)
    params = _node_params(student_dir, **{"diagnostics.period_s": "0.5"})
    first = start_node(params, tmp_path / "first.log", domain, PARAMS_FILE)
    second = None
    try:
        assert driver.wait_until(lambda: driver.node.count_publishers("/surround_depth/points") == 1, 60.0), \
            first.log()
        second = start_node(params, tmp_path / "second.log", domain, PARAMS_FILE)
        def named_warning(node) -> str:
            # DDS may announce the publisher before its node's name; the warning that names it follows then
            return next((ln for ln in node.log().splitlines()
                         if "another publisher" in ln and "(node(s) /surround_depth_node)" in ln), "")

        for node in (first, second):
            deadline = time.monotonic() + 60.0
            while not named_warning(node) and time.monotonic() < deadline:
                time.sleep(0.2)
            line = named_warning(node)  # same name twice: still a second node
            named = ["/surround_depth/points", *(f"/cameras/{c}/depth" for c in CAMERAS)]
            assert "[WARN]" in line and any(f"topic(s) {t}" in line for t in named), node.log()
    finally:
        driver.close()
        codes = [n.stop() for n in (first, second) if n is not None]
    assert codes == [0, 0], first.log() + (second.log() if second else "")
