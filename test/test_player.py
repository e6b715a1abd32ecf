"""Tests of fsmde_ros.player: bag validation, QoS planning, in-process playback, and a
real two-process replay (player subprocess -> rclpy subscribers in this process)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ros-kilted-rclpy wheels) is not installed")
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from rosbags.interfaces import (  # noqa: E402
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: E402
from rosbags.typesys import Stores, get_types_from_msg, get_typestore  # noqa: E402

from fsmde_ros.player import (  # noqa: E402
    BagPlayer,
    PlayerError,
    load_qos_overrides,
    open_bag,
    plan_topics,
    resolve_msg_type,
    topic_qos,
)

REPO = Path(__file__).resolve().parents[1]
DOMAIN_ID = 140 + os.getpid() % 90  # own DDS domain: parallel test runs must not hear each other
T0 = 1_700_000_000_000_000_000  # bag start (ns); log time == header stamp in these bags
PERIOD = 100_000_000  # 10 Hz images
N_IMAGES = 5
H, W = 4, 6
HAVE_TF2 = importlib.util.find_spec("tf2_msgs") is not None


@pytest.fixture(autouse=True)
def _ros_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROS_DOMAIN_ID", str(DOMAIN_ID))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


# ------------------------------------------------------------------ bag fixtures
def _qos(durability: QosDurability, reliability: QosReliability = QosReliability.RELIABLE) -> Qos:
    zero = QosTime(0, 0)
    return Qos(QosHistory.KEEP_LAST, 1, reliability, durability, zero, zero,
               QosLiveliness.AUTOMATIC, zero, False)


def _image_pixels(i: int) -> np.ndarray:
    return ((np.arange(H * W * 3) + 17 * i) % 256).astype(np.uint8)


def write_bag(path: Path, storage: StoragePlugin = StoragePlugin.SQLITE3, extra_type: bool = False) -> Path:
    """Images on /cam/image, a latched String on /rig/description, a /tf_static with no offered QoS."""
    ts = get_typestore(Stores.ROS2_KILTED)
    if extra_type:
        ts.register(get_types_from_msg("int32 value", "fsmde_nonexistent_msgs/msg/Thing"))
    T = ts.types
    Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]

    def header(ns: int, frame: str) -> object:
        return Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id=frame)

    with Writer(path, version=9, storage_plugin=storage) as w:
        sensor_qos = _qos(QosDurability.VOLATILE, QosReliability.BEST_EFFORT)
        img = w.add_connection("/cam/image", "sensor_msgs/msg/Image", typestore=ts,
                               offered_qos_profiles=[sensor_qos])
        desc = w.add_connection("/rig/description", "std_msgs/msg/String", typestore=ts,
                                offered_qos_profiles=[_qos(QosDurability.TRANSIENT_LOCAL)])
        tf = w.add_connection("/tf_static", "tf2_msgs/msg/TFMessage", typestore=ts)
        tfm = T["tf2_msgs/msg/TFMessage"](transforms=[T["geometry_msgs/msg/TransformStamped"](
            header=header(T0, "base_link"), child_frame_id="cam_front",
            transform=T["geometry_msgs/msg/Transform"](
                translation=T["geometry_msgs/msg/Vector3"](x=1.5, y=0.0, z=1.2),
                rotation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)))])
        w.write(tf, T0, ts.serialize_cdr(tfm, "tf2_msgs/msg/TFMessage"))
        text = T["std_msgs/msg/String"](data="six-camera rig")
        w.write(desc, T0, ts.serialize_cdr(text, "std_msgs/msg/String"))
        if extra_type:
            thing = w.add_connection("/thing", "fsmde_nonexistent_msgs/msg/Thing", typestore=ts)
            w.write(thing, T0, ts.serialize_cdr(T["fsmde_nonexistent_msgs/msg/Thing"](value=3),
                                                "fsmde_nonexistent_msgs/msg/Thing"))
        for i in range(N_IMAGES):
            ns = T0 + i * PERIOD
            msg = T["sensor_msgs/msg/Image"](
                header=header(ns, "cam_front_optical"), height=H, width=W,
                encoding="rgb8", is_bigendian=0, step=W * 3, data=_image_pixels(i),
            )
            w.write(img, ns, ts.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    return path


@pytest.fixture(scope="module")
def bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bag(tmp_path_factory.mktemp("bags") / "rig_sqlite")


# ------------------------------------------------------------- validation / plan
def test_missing_bag_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(PlayerError, match="no_such_bag"):
        BagPlayer(tmp_path / "no_such_bag")


def test_corrupt_metadata_names_the_bag(tmp_path: Path) -> None:
    broken = tmp_path / "broken_bag"
    broken.mkdir()
    (broken / "metadata.yaml").write_text("rosbag2_bagfile_information: [unclosed\n")
    with pytest.raises(PlayerError, match="broken_bag"):
        open_bag(broken)


def test_corrupt_storage_names_the_bag(tmp_path: Path) -> None:
    path = write_bag(tmp_path / "junk_mcap", StoragePlugin.MCAP)
    for f in path.glob("*.mcap"):
        f.write_bytes(b"\x89MCAP0\r\n" + b"garbage" * 50)
    with pytest.raises(PlayerError, match="junk_mcap"):
        open_bag(path)


def test_ros1_bag_is_refused(tmp_path: Path) -> None:
    old = tmp_path / "old.bag"
    old.write_bytes(b"#ROSBAG V2.0\n")
    with pytest.raises(PlayerError, match="ROS 1"):
        open_bag(old)


def test_resolve_msg_type() -> None:
    from sensor_msgs.msg import Image

    assert resolve_msg_type("sensor_msgs/msg/Image") is Image
    assert resolve_msg_type("sensor_msgs/Image") is Image
    for bad in ("fsmde_nonexistent_msgs/msg/Thing", "sensor_msgs/msg/NoSuchThing", "garbage"):
        with pytest.raises(LookupError):
            resolve_msg_type(bad)


def test_unknown_type_is_an_error_naming_bag_topic_and_type(tmp_path: Path) -> None:
    path = write_bag(tmp_path / "odd_types", extra_type=True)
    reader = open_bag(path)
    try:
        with pytest.raises(PlayerError) as exc:
            plan_topics(reader, path)
        text = str(exc.value)
        assert "odd_types" in text and "/thing" in text and "fsmde_nonexistent_msgs/msg/Thing" in text
        plan = plan_topics(reader, path, skip_unknown_types=True)
        assert "/thing" in plan.skipped and "/cam/image" in plan.topics
        assert "/thing" not in plan.topics
        # leaving the unknown topics out with a topic list works without the skip flag
        only = plan_topics(reader, path, topics=["/cam/image", "/rig/description"])
        assert set(only.topics) == {"/cam/image", "/rig/description"}
        with pytest.raises(PlayerError, match=r"/not_recorded.*/cam/image"):
            plan_topics(reader, path, topics=["/not_recorded"])
    finally:
        reader.close()


def test_plan_qos_latched_topics_and_overrides(bag: Path) -> None:
    reader = open_bag(bag)
    try:
        override = QoSProfile(depth=3, reliability=ReliabilityPolicy.BEST_EFFORT)
        plan = plan_topics(reader, bag, topics=["/cam/image", "/rig/description"],
                           qos_overrides={"/rig/description": override})
        image_qos = plan.topics["/cam/image"].qos
        assert image_qos.reliability == ReliabilityPolicy.RELIABLE  # reliable even if recorded best-effort
        assert image_qos.durability == DurabilityPolicy.VOLATILE and image_qos.depth == 10
        assert plan.topics["/rig/description"].qos is override
        assert plan.topics["/cam/image"].type_hash.startswith("RIHS01_")
        plan = plan_topics(reader, bag, topics=["/rig/description"])
        assert plan.topics["/rig/description"].qos.durability == DurabilityPolicy.TRANSIENT_LOCAL
    finally:
        reader.close()
    # /tf_static is latched even when the bag lost its offered QoS; history holds every message
    tf = topic_qos("/tf_static", transient_local=False, msgcount=42)
    assert tf.durability == DurabilityPolicy.TRANSIENT_LOCAL and tf.reliability == ReliabilityPolicy.RELIABLE
    assert tf.depth == 42 and tf.history == HistoryPolicy.KEEP_LAST
    assert topic_qos("/cam", False, 5, reliability=ReliabilityPolicy.BEST_EFFORT).reliability \
        == ReliabilityPolicy.BEST_EFFORT


def test_load_qos_overrides(tmp_path: Path) -> None:
    good = tmp_path / "qos.yaml"
    good.write_text(
        "/cam/image:\n  reliability: best_effort\n  depth: 2\n/map:\n  durability: transient_local\n"
    )
    got = load_qos_overrides(good)
    assert got["/cam/image"].reliability == ReliabilityPolicy.BEST_EFFORT and got["/cam/image"].depth == 2
    assert got["/map"].durability == DurabilityPolicy.TRANSIENT_LOCAL
    bad = tmp_path / "bad.yaml"
    bad.write_text("/cam/image:\n  reliability: sometimes\n")
    with pytest.raises(PlayerError, match="sometimes"):
        load_qos_overrides(bad)


# --------------------------------------------------------- in-process playback
@pytest.mark.ros
@pytest.mark.parametrize("storage", [StoragePlugin.SQLITE3, StoragePlugin.MCAP], ids=["sqlite3", "mcap"])
def test_play_counts_every_message(tmp_path: Path, storage: StoragePlugin) -> None:
    path = write_bag(tmp_path / f"bag_{storage.name.lower()}", storage)
    with BagPlayer(path, rate=20.0, topics=["/cam/image", "/rig/description"]) as player:
        stats = player.play()
    assert stats.published == {"/cam/image": N_IMAGES, "/rig/description": 1}
    assert stats.loops == 1 and not stats.stopped
    assert stats.clock_messages >= N_IMAGES + 1  # at least one per message
    assert stats.wall_s >= (N_IMAGES - 1) * PERIOD / 1e9 / 20.0  # never faster than the schedule


@pytest.mark.ros
def test_type_definition_mismatch_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A bag recorded with another definition of a type: bytes would not decode -> warn with both hashes."""
    ts = get_typestore(Stores.EMPTY)
    ts.register(get_types_from_msg("string data\nint32 revision", "std_msgs/msg/String"))
    path = tmp_path / "old_definitions"
    with Writer(path, version=9, storage_plugin=StoragePlugin.SQLITE3) as w:
        conn = w.add_connection("/note", "std_msgs/msg/String", typestore=ts)
        w.write(conn, T0, ts.serialize_cdr(ts.types["std_msgs/msg/String"](data="x", revision=2),
                                           "std_msgs/msg/String"))
    with caplog.at_level("WARNING", logger="fsmde_ros.player"), BagPlayer(path, publish_clock=False):
        pass
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "/note" in warning and ts.hash_rihs01("std_msgs/msg/String") in warning


@pytest.mark.ros
def test_start_paused_then_stop_publishes_nothing(bag: Path) -> None:
    with BagPlayer(bag, topics=["/cam/image"], start_paused=True, loop=True) as player:
        threading.Timer(0.3, player.stop).start()
        stats = player.play()
    assert stats.stopped and sum(stats.published.values()) == 0


@pytest.mark.ros
def test_pause_resume_and_loop(bag: Path) -> None:
    with BagPlayer(bag, rate=10.0, topics=["/cam/image"], loop=True, start_paused=True) as player:
        threading.Timer(0.1, player.resume).start()
        threading.Timer(0.6, player.stop).start()  # one pass takes 0.04 s at 10x: several loops
        stats = player.play()
    assert stats.stopped and stats.loops >= 2
    assert stats.published["/cam/image"] >= 2 * N_IMAGES


# ------------------------------------------------------- two-process replay
def _spin_until(executor: object, cond: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
    return cond()


@pytest.mark.ros
def test_replay_to_subscribers_in_another_process(bag: Path) -> None:
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    ctx = Context()
    rclpy.init(context=ctx, domain_id=DOMAIN_ID)
    node = rclpy.create_node("player_test_listener", context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    images: list[tuple[Image, float]] = []
    clocks: list[int] = []
    node.create_subscription(Image, "/cam/image", lambda m: images.append((m, time.monotonic())),
                             QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
    node.create_subscription(Clock, "/clock", lambda m: clocks.append(m.clock.sec * 10**9 + m.clock.nanosec),
                             QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE))
    cmd = [sys.executable, "-m", "fsmde_ros.player", str(bag), "--rate", "2",
           "--wait-for-subscribers", "/cam/image", "/clock", "--linger", "30"]
    if not HAVE_TF2:
        cmd.append("--skip-unknown-types")  # tf2_msgs has no rclpy wheel here
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert _spin_until(executor, lambda: len(images) >= N_IMAGES, 20.0), \
            f"got {len(images)} images; player stderr: {_stderr_if_dead(proc)}"
        # late joiners: subscribe only now, after everything has been published
        late: dict[str, list] = {"/rig/description": []}
        latched = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        node.create_subscription(String, "/rig/description", late["/rig/description"].append, latched)
        if HAVE_TF2:
            from tf2_msgs.msg import TFMessage

            late["/tf_static"] = []
            node.create_subscription(TFMessage, "/tf_static", late["/tf_static"].append, latched)
        assert _spin_until(executor, lambda: all(late.values()), 10.0), f"late joiners got {late}"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, stderr = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=ctx)

    assert proc.returncode == 0, stderr
    assert "interrupted" in stderr  # stopped by SIGINT while lingering, cleanly
    if not HAVE_TF2:
        assert "/tf_static" in stderr and "tf2_msgs/msg/TFMessage" in stderr  # the skip is reported

    # images: all, in order, right stamps, frame and bytes
    got = [m for m, _ in images[:N_IMAGES]]
    assert [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in got] == \
        [T0 + i * PERIOD for i in range(N_IMAGES)]
    for i, m in enumerate(got):
        assert (m.height, m.width, m.encoding, m.header.frame_id) == (H, W, "rgb8", "cam_front_optical")
        np.testing.assert_array_equal(np.frombuffer(m.data, np.uint8), _image_pixels(i))
    # recorded 0.4 s at rate 2 -> at least ~0.2 s between first and last arrival (lower bound only)
    assert images[N_IMAGES - 1][1] - images[0][1] >= 0.8 * (N_IMAGES - 1) * PERIOD / 1e9 / 2
    assert late["/rig/description"][0].data == "six-camera rig"
    if HAVE_TF2:
        assert late["/tf_static"][0].transforms[0].child_frame_id == "cam_front"

    # /clock: bag time, never backwards, covering every image stamp
    assert clocks == sorted(clocks)
    assert clocks[0] >= T0 and clocks[-1] <= T0 + (N_IMAGES - 1) * PERIOD
    assert {T0 + i * PERIOD for i in range(1, N_IMAGES)} <= set(clocks)


def _stderr_if_dead(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        return "(still running)"
    return proc.stderr.read() if proc.stderr else ""


@pytest.mark.skipif(HAVE_TF2, reason="tf2_msgs is installed: /tf_static is played, not skipped")
def test_tf_static_needs_tf2_msgs(bag: Path) -> None:
    """Documents this environment: without tf2_msgs the player refuses /tf_static unless told to skip."""
    with pytest.raises(PlayerError, match=r"tf2_msgs/msg/TFMessage.*--skip-unknown-types"):
        BagPlayer(bag)


# ---------------------------------------------------- waiting for every camera
CAMS = ("back", "front", "front_left")


@pytest.fixture(scope="module")
def camera_bag(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], dict[str, list[int]]]:
    """A six-camera bag (bagfactory, 8x6 px: the player only moves bytes), three of whose image topics are
    played: (bag, those topics, each played topic's recorded stamps)."""
    from bagfactory import BagSpec, write_bag

    written = write_bag(tmp_path_factory.mktemp("cams") / "bag", BagSpec(width=8, height=6, n_frames=3))
    topics = [f"/cameras/{n}/image_raw" for n in CAMS]
    return written.path, topics, {t: written.camera_stamps[n] for t, n in zip(topics, CAMS, strict=True)}


def test_wait_for_subscribers_without_topics_means_every_image_topic(camera_bag) -> None:
    from fsmde_ros.player import ALL_IMAGES, wait_topics_argument

    assert wait_topics_argument(None) == () and wait_topics_argument([]) == (ALL_IMAGES,)
    assert wait_topics_argument(["/a", "/b"]) == ("/a", "/b")
    bag, cams, _ = camera_bag
    with BagPlayer(bag, topics=cams, wait_for_subscribers=[ALL_IMAGES, "/clock"]) as player:
        assert player.wait_topics == (*cams, "/clock")
    with pytest.raises(PlayerError, match="not played"):
        BagPlayer(bag, topics=cams[:1], wait_for_subscribers=[cams[1]])


@pytest.mark.ros
def test_playback_waits_for_every_camera_then_delivers_each_first_image(camera_bag) -> None:
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image

    from fsmde_ros.player import ALL_IMAGES

    bag, cams, recorded = camera_bag
    ctx = Context()
    rclpy.init(context=ctx, domain_id=DOMAIN_ID)
    node = rclpy.create_node("player_wait_listener", context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    got: dict[str, list[Image]] = {t: [] for t in cams}
    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    player = BagPlayer(bag, topics=cams, publish_clock=False, wait_for_subscribers=[ALL_IMAGES],
                       wait_timeout=120.0)  # a deadlock guard only
    result: dict[str, object] = {}
    thread = threading.Thread(target=lambda: result.update(stats=player.play()), daemon=True)
    try:
        for topic in cams[:2]:
            node.create_subscription(Image, topic, got[topic].append, qos)
        thread.start()
        # two of three cameras subscribed: the player holds back, naming the third
        assert _spin_until(executor, lambda: player.missing_subscribers() == [cams[2]], 30.0), \
            player.missing_subscribers()
        executor.spin_once(timeout_sec=0.2)
        assert thread.is_alive() and not any(got.values())  # nothing published while one camera is missing
        node.create_subscription(Image, cams[2], got[cams[2]].append, qos)
        assert _spin_until(executor, lambda: all(len(v) == 3 for v in got.values()), 30.0), \
            {t: len(v) for t, v in got.items()}
    finally:
        player.stop()
        thread.join(timeout=30)
        player.close()
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
    assert result["stats"].published == {t: 3 for t in cams}
    for topic, msgs in got.items():  # every camera's first image arrived: the first set is whole
        assert [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in msgs] == recorded[topic]


@pytest.mark.ros
def test_wait_timeout_names_every_topic_still_without_a_subscriber(camera_bag,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    from fsmde_ros.player import ALL_IMAGES

    bag, cams, _ = camera_bag
    with BagPlayer(bag, topics=cams, publish_clock=False, wait_for_subscribers=[ALL_IMAGES],
                   wait_timeout=0.3) as player, caplog.at_level("WARNING"):
        stats = player.play()
    assert stats.published == {t: 3 for t in cams}  # plays anyway after the timeout
    line = next(r.getMessage() for r in caplog.records if "no subscriber" in r.getMessage())
    assert "3 topic(s)" in line and all(t in line for t in cams)


def test_waiting_for_every_image_topic_means_the_cameras_not_recorded_depth(synthetic_bag: Path,
                                                                           camera_names: list[str]) -> None:
    """Recorded depth / synthetic GT are Image topics without a camera_info: nobody consumes them, so
    ``--wait-for-subscribers`` must not wait for them (it did, for the whole timeout, on every synthetic bag)."""
    from fsmde_ros.player import ALL_IMAGES

    with BagPlayer(synthetic_bag, skip_unknown_types=True, wait_for_subscribers=[ALL_IMAGES]) as player:
        assert player.wait_topics == tuple(sorted(f"/cameras/{n}/image_raw" for n in camera_names))
        assert "/synthetic_gt/front/depth" in player.plan.topics  # still played, just not waited for
