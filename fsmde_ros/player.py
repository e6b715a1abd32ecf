"""Replay a rosbag2 recording (sqlite3 or MCAP) into ROS 2 without the ``ros2`` CLI.

Why: this environment (and many pip-only robot images) has rclpy but no
``ros2 bag play`` / ``rosbag2_py``. The ``rosbags`` library reads the bag's raw
CDR payloads and rclpy 9 publishes serialized bytes directly
(``Publisher.publish(bytes)`` -> ``rcl_publish_serialized_message``), so the
player never deserializes a message: a 7 MB image costs one memcpy.

Behaviour follows ``ros2 bag play`` where it matters to users:

* messages in log-time (receive) order, at the recorded rate scaled by
  ``rate`` on a steady clock, so wall-clock jumps do not distort playback;
* ``/clock`` (``rosgraph_msgs/Clock``) carries the bag time of every message
  and, between messages, is interpolated at ``clock_hz`` (``use_sim_time``
  timers keep ticking through gaps);
* ``/tf_static`` and topics recorded with TRANSIENT_LOCAL durability are
  re-published TRANSIENT_LOCAL + RELIABLE with enough history to hold every
  recorded message, so late joiners (RViz, tf listeners) still get them;
  everything else is RELIABLE, VOLATILE, KEEP_LAST(10) unless overridden
  (a reliable publisher serves best-effort subscribers as well);
* pause / resume / stop from another thread, SIGUSR1 or the keyboard (CLI).

Message classes come from the bag's type names (``sensor_msgs/msg/Image`` ->
``sensor_msgs.msg.Image``); a type that is not installed is an error naming
the bag, topic and type, unless ``skip_unknown_types`` (``--skip-unknown-types``)
is set, e.g. ``tf2_msgs`` here, which has no rclpy wheel.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from fsmde_core.data.layout import sibling_info_topic
from fsmde_core.messages.types import IMAGE_TYPES

__all__ = [
    "BagPlayer",
    "PlaybackStats",
    "PlayerError",
    "TopicPlan",
    "add_play_arguments",
    "load_qos_overrides",
    "main",
    "open_bag",
    "plan_topics",
    "resolve_msg_type",
    "run_play",
    "topic_qos",
]

LOG = logging.getLogger("fsmde_ros.player")
CLOCK_TOPIC = "/clock"
TF_STATIC_TOPIC = "/tf_static"
DEFAULT_DEPTH = 10
_MAX_LATCHED_DEPTH = 10_000  # cap for transient-local history (one slot per recorded message)


class PlayerError(RuntimeError):
    """The bag cannot be played; the message names the bag and what is wrong."""


# ---------------------------------------------------------------- bag access
def open_bag(bag_path: str | Path) -> Any:
    """Open ``bag_path`` (a rosbag2 directory or a ``.mcap`` file) with rosbags' ``AnyReader``.

    Every failure (missing path, bad metadata, corrupt storage, ROS 1 bag) is
    re-raised as :class:`PlayerError` naming the bag. The caller closes the reader.
    """
    from rosbags.highlevel import AnyReader

    path = Path(bag_path)
    if not path.exists():
        raise PlayerError(f"bag {str(path)!r} does not exist")
    if path.suffix == ".bag":
        raise PlayerError(f"bag {str(path)!r} is a ROS 1 bag; only rosbag2 (sqlite3 / MCAP) can be played")
    try:
        reader = AnyReader([path])
        reader.open()
    except Exception as err:  # rosbags raises several unrelated types (ReaderError, sqlite3, OSError...)
        raise PlayerError(f"cannot open bag {str(path)!r}: {type(err).__name__}: {err}") from err
    return reader


def resolve_msg_type(msgtype: str) -> type:
    """``pkg/msg/Name`` (as stored in bags) -> the installed rclpy message class.

    Raises ``LookupError`` when the package or the message is not installed.
    """
    parts = msgtype.split("/")
    if len(parts) == 2:  # ROS 1 style "pkg/Name"
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3 or not all(parts):
        raise LookupError(f"malformed message type {msgtype!r} (expected pkg/msg/Name)")
    pkg, kind, name = parts
    try:
        module = importlib.import_module(f"{pkg}.{kind}")
        cls = getattr(module, name)
    except (ImportError, AttributeError) as err:
        raise LookupError(f"message type {msgtype!r} is not installed ({err})") from err
    if not hasattr(cls, "_TYPE_SUPPORT"):
        raise LookupError(f"{pkg}.{kind}.{name} is not a ROS message class")
    return cls


# ----------------------------------------------------------------------- QoS
def _offered_transient_local(connections: Sequence[Any]) -> bool:
    """True when any recorded publisher of the topic offered TRANSIENT_LOCAL durability."""
    from rosbags.interfaces import ConnectionExtRosbag2, QosDurability

    for conn in connections:
        ext = conn.ext
        if isinstance(ext, ConnectionExtRosbag2) and any(
            q.durability == QosDurability.TRANSIENT_LOCAL for q in ext.offered_qos_profiles
        ):
            return True
    return False


def topic_qos(
    topic: str,
    transient_local: bool,
    msgcount: int,
    depth: int = DEFAULT_DEPTH,
    reliability: ReliabilityPolicy = ReliabilityPolicy.RELIABLE,
    override: QoSProfile | None = None,
) -> QoSProfile:
    """QoS the player offers on ``topic``.

    ``/tf_static`` is always latched (recorders often lose its offered QoS).
    Latched topics keep one history slot per recorded message so that a late
    subscriber gets every static transform, not only the last publisher's.
    """
    if override is not None:
        return override
    if transient_local or topic == TF_STATIC_TOPIC:
        return QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=max(depth, min(msgcount, _MAX_LATCHED_DEPTH)),
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=reliability,
        durability=DurabilityPolicy.VOLATILE,
    )


_POLICIES = {
    "reliability": {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT},
    "durability": {
        "volatile": DurabilityPolicy.VOLATILE, "transient_local": DurabilityPolicy.TRANSIENT_LOCAL,
    },
    "history": {"keep_last": HistoryPolicy.KEEP_LAST, "keep_all": HistoryPolicy.KEEP_ALL},
}


def load_qos_overrides(path: str | Path) -> dict[str, QoSProfile]:
    """Read a ``ros2 bag play --qos-profile-overrides-path`` style YAML file.

    Format: ``{topic: {reliability, durability, history, depth}}`` with the
    lower-case policy names ``ros2 bag`` uses. Unknown keys are errors.
    """
    from ruamel.yaml import YAML

    try:
        data = YAML(typ="safe").load(Path(path).read_text())
    except Exception as err:
        raise PlayerError(f"cannot read QoS overrides {str(path)!r}: {err}") from err
    if not isinstance(data, dict):
        raise PlayerError(f"QoS overrides {str(path)!r}: expected a mapping of topic -> policies")
    return {str(topic): _qos_from_dict(str(topic), spec or {}, path) for topic, spec in data.items()}


def _qos_from_dict(topic: str, spec: Mapping[str, Any], path: str | Path) -> QoSProfile:
    kwargs: dict[str, Any] = {"depth": DEFAULT_DEPTH}
    for key, value in spec.items():
        if key == "depth":
            kwargs["depth"] = int(value)
        elif key in _POLICIES and str(value).lower() in _POLICIES[key]:
            kwargs[key] = _POLICIES[key][str(value).lower()]
        else:
            raise PlayerError(f"QoS overrides {str(path)!r}, topic {topic!r}: bad entry {key}: {value!r}")
    return QoSProfile(**kwargs)


# ---------------------------------------------------------------- planning
@dataclass(frozen=True)
class TopicPlan:
    """One topic to replay: its recorded connections, message class and offered QoS."""

    topic: str
    msgtype: str
    msg_class: type
    connections: tuple[Any, ...]
    msgcount: int
    qos: QoSProfile
    type_hash: str = ""  # RIHS01 digest recorded in the bag ("" for old bags)


@dataclass
class PlaybackPlan:
    """Topics to publish and topics left out (with the reason)."""

    topics: dict[str, TopicPlan]
    skipped: dict[str, str] = field(default_factory=dict)


def plan_topics(
    reader: Any,
    bag_path: str | Path,
    topics: Sequence[str] | None = None,
    publish_clock: bool = True,
    skip_unknown_types: bool = False,
    depth: int = DEFAULT_DEPTH,
    reliability: ReliabilityPolicy = ReliabilityPolicy.RELIABLE,
    qos_overrides: Mapping[str, QoSProfile] | None = None,
) -> PlaybackPlan:
    """Decide what gets published and how, before any ROS entity exists (pure, testable)."""
    by_topic: dict[str, list[Any]] = {}
    for conn in reader.connections:
        by_topic.setdefault(conn.topic, []).append(conn)
    wanted = list(by_topic) if topics is None else list(dict.fromkeys(topics))
    if missing := [t for t in wanted if t not in by_topic]:
        raise PlayerError(
            f"bag {str(bag_path)!r} has no topic(s) {missing}; it has: {sorted(by_topic)}"
        )
    plan = PlaybackPlan(topics={})
    unknown: dict[str, str] = {}
    for topic in wanted:
        conns = by_topic[topic]
        msgtypes = {c.msgtype for c in conns}
        if len(msgtypes) != 1:
            raise PlayerError(
                f"bag {str(bag_path)!r}: topic {topic!r} was recorded with several types {msgtypes}"
            )
        msgtype = msgtypes.pop()
        if topic == CLOCK_TOPIC and publish_clock:
            plan.skipped[topic] = "replaced by the player's own clock (--no-clock replays the recorded one)"
            continue
        try:
            cls = resolve_msg_type(msgtype)
        except LookupError as err:
            unknown[topic] = str(err)
            continue
        msgcount = sum(c.msgcount for c in conns)
        override = (qos_overrides or {}).get(topic)
        qos = topic_qos(topic, _offered_transient_local(conns), msgcount, depth, reliability, override)
        digest = conns[0].digest or ""
        plan.topics[topic] = TopicPlan(topic, msgtype, cls, tuple(conns), msgcount, qos, digest)
    if unknown and not skip_unknown_types:
        details = "; ".join(f"{t}: {why}" for t, why in unknown.items())
        raise PlayerError(
            f"bag {str(bag_path)!r} has message types not installed here: {details}. "
            f"Install the message packages, leave the topics out (--topics), or --skip-unknown-types"
        )
    for topic, why in unknown.items():
        plan.skipped[topic] = why
    return plan


# ------------------------------------------------------------------ player
@dataclass
class PlaybackStats:
    """What a :meth:`BagPlayer.play` call did."""

    published: Counter = field(default_factory=Counter)  # topic -> messages
    loops: int = 0
    clock_messages: int = 0
    wall_s: float = 0.0
    stopped: bool = False


#: ``wait_for_subscribers`` entry meaning "every image topic played".
ALL_IMAGES = "<images>"


def image_topics(plan: Any) -> list[str]:
    """The played topics that carry camera images (raw or compressed), sorted.

    A camera is an image topic with a sibling ``camera_info`` (the ROS camera
    convention the data layer discovers cameras by): other Image topics, such as
    recorded depth or synthetic ground truth, have no consumer to wait for. A bag
    without any camera_info falls back to every image topic.
    """
    images = sorted(t for t, p in plan.topics.items() if p.msgtype in IMAGE_TYPES)
    cameras = [t for t in images if sibling_info_topic(t) in plan.topics]
    return cameras or images


class BagPlayer:
    """Publishes a rosbag2 recording with recorded timing (see module docstring).

    Construction opens the bag and validates topics and types (errors name the
    bag) before any ROS entity is created; :meth:`play` blocks until the end
    (or :meth:`stop`). Use as a context manager, or call :meth:`close`.

    Args:
        bag_path: rosbag2 directory or ``.mcap`` file.
        rate: playback speed factor (> 0).
        loop: start again at the end until stopped.
        publish_clock: publish ``/clock`` with the bag time.
        topics: topics to replay (default: all).
        start_paused: wait for :meth:`resume` before the first message.
        qos_depth, qos_reliability: QoS of volatile topics.
        qos_overrides: per-topic QoS, used as given.
        clock_hz: ``/clock`` rate between messages (0: only at messages).
        skip_unknown_types: warn and skip topics whose type is not installed.
        wait_for_subscribers: topics that must each have a subscriber before playback;
            :data:`ALL_IMAGES` (alone or among topics) stands for every image topic played,
            so a multi-camera consumer loses no camera's first set.
        wait_timeout: seconds to wait for them (then play anyway, with a warning naming
            every topic still without a subscriber).
        linger: seconds to keep the publishers alive after the end (late joiners of latched topics).
        node: publish through this node instead of a private context + node.
    """

    def __init__(
        self,
        bag_path: str | Path,
        rate: float = 1.0,
        loop: bool = False,
        publish_clock: bool = True,
        topics: Sequence[str] | None = None,
        start_paused: bool = False,
        qos_depth: int = DEFAULT_DEPTH,
        qos_reliability: ReliabilityPolicy = ReliabilityPolicy.RELIABLE,
        qos_overrides: Mapping[str, QoSProfile] | None = None,
        clock_hz: float = 40.0,
        skip_unknown_types: bool = False,
        wait_for_subscribers: Sequence[str] = (),
        wait_timeout: float = 10.0,
        linger: float = 0.0,
        node: Any = None,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        if clock_hz < 0 or qos_depth < 1 or linger < 0 or wait_timeout < 0:
            raise ValueError("clock_hz, linger and wait_timeout must be >= 0 and qos_depth >= 1")
        self.bag_path = Path(bag_path)
        self.rate, self.loop, self.publish_clock = float(rate), loop, publish_clock
        self.clock_hz, self.linger, self.wait_timeout = float(clock_hz), float(linger), float(wait_timeout)
        self._cond = threading.Condition()
        self._paused, self._stopped = start_paused, False
        self._pause_started = time.monotonic()
        self._wall_t0 = 0.0  # steady time at which bag time _bag_t0 is due
        self._bag_t0 = 0
        self._reader = open_bag(self.bag_path)
        try:
            self.plan = plan_topics(
                self._reader, self.bag_path, topics, publish_clock, skip_unknown_types,
                qos_depth, qos_reliability, qos_overrides,
            )
            for topic, why in self.plan.skipped.items():
                LOG.warning("bag %s: skipping %s: %s", self.bag_path, topic, why)
            self._wait_topics = self._topics_to_wait_for(wait_for_subscribers)
            self._ros = _RosEndpoints(self.plan, publish_clock, node)
        except BaseException:
            self._reader.close()
            raise
        self._check_type_hashes()

    def _topics_to_wait_for(self, requested: Sequence[str]) -> tuple[str, ...]:
        """Expand :data:`ALL_IMAGES`, refuse topics that are not played; order kept, duplicates dropped."""
        topics: list[str] = []
        for topic in requested:
            expanded = image_topics(self.plan) if topic == ALL_IMAGES else [topic]
            if topic == ALL_IMAGES and not expanded:
                raise PlayerError(f"bag {str(self.bag_path)!r}: --wait-for-subscribers without topics waits for "
                                  "image topics, but none is played")
            topics += [t for t in expanded if t not in topics]
        unknown = sorted(set(topics) - set(self.plan.topics) - {CLOCK_TOPIC})
        if unknown:
            raise PlayerError(f"bag {str(self.bag_path)!r}: cannot wait for topics that are not played: {unknown}")
        return tuple(topics)

    @property
    def wait_topics(self) -> tuple[str, ...]:
        """The topics :meth:`play` waits for (ALL_IMAGES expanded)."""
        return self._wait_topics

    # ----------------------------------------------------------- controls
    @property
    def is_paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """Hold playback; the schedule resumes where it stopped (time does not jump)."""
        with self._cond:
            if not self._paused:
                self._paused, self._pause_started = True, time.monotonic()
                self._cond.notify_all()

    def resume(self) -> None:
        with self._cond:
            if self._paused:
                self._wall_t0 += time.monotonic() - self._pause_started
                self._paused = False
                self._cond.notify_all()

    def toggle_pause(self) -> None:
        with self._cond:
            paused = self._paused
        self.resume() if paused else self.pause()

    def stop(self) -> None:
        """End :meth:`play` as soon as possible (safe from other threads and signal handlers)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    # ------------------------------------------------------------ playing
    def play(self) -> PlaybackStats:
        """Publish the bag (blocking). Returns counts; ``stats.stopped`` if :meth:`stop` ended it."""
        stats = PlaybackStats()
        started = time.monotonic()
        self._wait_for_subscribers()
        connections = [c for plan in self.plan.topics.values() for c in plan.connections]
        while not self._stopped and connections:
            stats.loops += 1
            if not self._play_once(connections, stats) or not self.loop:
                break
        if not self._stopped and self.linger > 0:
            self._sleep_until(time.monotonic() + self.linger)
        stats.stopped = self._stopped
        stats.wall_s = time.monotonic() - started
        return stats

    def _play_once(self, connections: list[Any], stats: PlaybackStats) -> bool:
        """One pass over the bag; False when stopped."""
        first = True
        for conn, log_ns, raw in self._messages(connections):
            if first:
                with self._cond:
                    self._bag_t0, first = log_ns, False
                    self._wall_t0 = time.monotonic()
                    if self._paused:
                        self._pause_started = self._wall_t0
            if not self._wait_for_bag_time(log_ns, stats):
                return False
            if self.publish_clock:
                self._ros.publish_clock(log_ns)
                stats.clock_messages += 1
            self._ros.publishers[conn.topic].publish(raw if isinstance(raw, bytes) else bytes(raw))
            stats.published[conn.topic] += 1
        return not self._stopped

    def _messages(self, connections: list[Any]) -> Iterator[tuple[Any, int, bytes]]:
        """Raw messages in log-time order; storage errors are reported with the bag name."""
        it = iter(self._reader.messages(connections=connections))
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            except Exception as err:
                raise PlayerError(
                    f"bag {str(self.bag_path)!r} is corrupt: {type(err).__name__}: {err}"
                ) from err
            yield item

    def _wait_for_bag_time(self, log_ns: int, stats: PlaybackStats) -> bool:
        """Sleep on the steady clock until ``log_ns`` is due, ticking /clock; False if stopped."""
        period = 1.0 / self.clock_hz if self.publish_clock and self.clock_hz > 0 else None
        with self._cond:
            while True:
                if self._stopped:
                    return False
                if self._paused:
                    self._cond.wait()
                    continue
                now = time.monotonic()
                due = self._wall_t0 + (log_ns - self._bag_t0) / 1e9 / self.rate
                if now >= due:
                    return True
                if period is None:
                    self._cond.wait(due - now)
                    continue
                self._cond.wait(min(due - now, period))
                now = time.monotonic()
                if not self._paused and not self._stopped and now < due:
                    bag_now = self._bag_t0 + int((now - self._wall_t0) * self.rate * 1e9)
                    self._ros.publish_clock(min(bag_now, log_ns))
                    stats.clock_messages += 1

    def _sleep_until(self, deadline: float) -> None:
        with self._cond:
            while not self._stopped and (remaining := deadline - time.monotonic()) > 0:
                self._cond.wait(remaining)

    def missing_subscribers(self) -> list[str]:
        """The waited-for topics that have no subscriber yet."""
        return [t for t in self._wait_topics if self._ros.subscription_count(t) == 0]

    def _wait_for_subscribers(self) -> None:
        """Wait until EVERY waited-for topic has a subscriber (one deadline for all of them)."""
        deadline = time.monotonic() + self.wait_timeout
        while (missing := self.missing_subscribers()) and not self._stopped:
            if time.monotonic() >= deadline:
                LOG.warning("no subscriber after %.1f s on %d topic(s): %s; playing anyway", self.wait_timeout,
                            len(missing), ", ".join(missing))
                return
            self._sleep_until(min(deadline, time.monotonic() + 0.02))

    def _check_type_hashes(self) -> None:
        """Warn when the bag's type definition differs from the installed one (bytes may not decode)."""
        for topic, plan in self.plan.topics.items():
            installed = self._ros.type_hash(topic)
            if plan.type_hash and installed and plan.type_hash != installed:
                LOG.warning(
                    "bag %s: %s (%s) was recorded with type hash %s but %s is installed; "
                    "subscribers may fail to decode it", self.bag_path, topic, plan.msgtype,
                    plan.type_hash, installed,
                )

    # ---------------------------------------------------------- lifetime
    def close(self) -> None:
        """Destroy publishers (and the private context) and close the bag. Idempotent."""
        self.stop()
        ros, self._ros = getattr(self, "_ros", None), None
        if ros is not None:
            ros.close()
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

    def __enter__(self) -> BagPlayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _RosEndpoints:
    """The rclpy side: (private) context, node, one publisher per topic and /clock."""

    def __init__(self, plan: PlaybackPlan, publish_clock: bool, node: Any = None) -> None:
        import rclpy
        from rclpy.context import Context

        self._context = None
        if node is None:
            self._context = Context()
            rclpy.init(context=self._context)  # private context: no global signal handlers installed
            node = rclpy.create_node("fsmde_bag_player", context=self._context,
                                     start_parameter_services=False)
            self._owns_node = True
        else:
            self._owns_node = False
        self.node = node
        try:
            self.publishers = {
                topic: node.create_publisher(tp.msg_class, topic, tp.qos) for topic, tp in plan.topics.items()
            }
            self._clock_pub = None
            if publish_clock:
                from rosgraph_msgs.msg import Clock

                self._clock_cls = Clock
                self._clock_pub = node.create_publisher(
                    Clock, CLOCK_TOPIC, QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
                )
        except BaseException:
            self.close()
            raise

    def publish_clock(self, bag_ns: int) -> None:
        from fsmde_ros.conversions import ns_to_stamp

        self._clock_pub.publish(self._clock_cls(clock=ns_to_stamp(bag_ns)))

    def subscription_count(self, topic: str) -> int:
        pub = self._clock_pub if topic == CLOCK_TOPIC else self.publishers[topic]
        return pub.get_subscription_count() if pub is not None else 0

    def type_hash(self, topic: str) -> str:
        """RIHS01 hash of the installed type, as the graph reports our own publisher."""
        for info in self.node.get_publishers_info_by_topic(self.publishers[topic].topic_name):
            if info.node_name == self.node.get_name() and info.node_namespace == self.node.get_namespace():
                return str(info.topic_type_hash)
        return ""

    def close(self) -> None:
        import rclpy

        for pub in list(getattr(self, "publishers", {}).values()):
            self.node.destroy_publisher(pub)
        if getattr(self, "_clock_pub", None) is not None:
            self.node.destroy_publisher(self._clock_pub)
        self.publishers, self._clock_pub = {}, None
        if self._owns_node:
            self.node.destroy_node()
        if self._context is not None and self._context.ok():
            rclpy.shutdown(context=self._context)
            self._context = None


# --------------------------------------------------------------------- CLI
def wait_topics_argument(value: Sequence[str] | None) -> tuple[str, ...]:
    """``--wait-for-subscribers``: absent -> none; given without topics -> every image topic."""
    if value is None:
        return ()
    return tuple(value) if value else (ALL_IMAGES,)


def add_play_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``fsmde play`` (mirrors the common ``ros2 bag play`` options)."""
    parser.add_argument("bag", help="rosbag2 directory (sqlite3 or MCAP) or .mcap file")
    parser.add_argument("--rate", "-r", type=float, default=1.0, help="playback speed factor (default 1.0)")
    parser.add_argument("--loop", "-l", action="store_true", help="loop until interrupted")
    parser.add_argument("--no-clock", dest="clock", action="store_false",
                        help="do not publish /clock (default: publish the bag time)")
    parser.add_argument("--clock-hz", type=float, default=40.0,
                        help="/clock rate between messages, 0 = only at messages (default 40)")
    parser.add_argument("--topics", nargs="+", default=None, metavar="TOPIC", help="topics to replay")
    parser.add_argument("--start-paused", "-p", action="store_true",
                        help="start paused; Enter (on a terminal) or SIGUSR1 toggles pause")
    parser.add_argument("--qos-depth", type=int, default=DEFAULT_DEPTH, help="history depth (default 10)")
    parser.add_argument("--qos-reliability", choices=("reliable", "best_effort"), default="reliable",
                        help="reliability of volatile topics (default reliable)")
    parser.add_argument("--qos-profile-overrides-path", default=None,
                        help="YAML {topic: {reliability, durability, history, depth}}")
    parser.add_argument("--skip-unknown-types", action="store_true",
                        help="skip topics whose message type is not installed instead of failing")
    parser.add_argument("--wait-for-subscribers", nargs="*", default=None, metavar="TOPIC",
                        help="before playing, wait until each TOPIC has a subscriber; without TOPIC: every "
                             "image topic played (all cameras), so no camera misses the first set")
    parser.add_argument("--wait-timeout", type=float, default=10.0, help="seconds for --wait-for-subscribers")
    parser.add_argument("--linger", type=float, default=0.0,
                        help="seconds to stay up after the last message (for late latched subscribers)")


def run_play(args: argparse.Namespace) -> int:
    """Run playback for parsed :func:`add_play_arguments`; 0 on success or Ctrl-C, 1 on errors."""
    try:
        overrides_path = args.qos_profile_overrides_path
        overrides = load_qos_overrides(overrides_path) if overrides_path else None
        player = BagPlayer(
            args.bag, rate=args.rate, loop=args.loop, publish_clock=args.clock, topics=args.topics,
            start_paused=args.start_paused, qos_depth=args.qos_depth,
            qos_reliability=_POLICIES["reliability"][args.qos_reliability], qos_overrides=overrides,
            clock_hz=args.clock_hz, skip_unknown_types=args.skip_unknown_types,
            wait_for_subscribers=wait_topics_argument(args.wait_for_subscribers), wait_timeout=args.wait_timeout,
            linger=args.linger,
        )
    except (PlayerError, ValueError) as err:
        print(f"fsmde play: error: {err}", file=sys.stderr)
        return 1
    with player:
        restore = _install_signal_handlers(player)
        _start_keyboard_control(player)
        try:
            stats = player.play()
        except PlayerError as err:
            print(f"fsmde play: error: {err}", file=sys.stderr)
            return 1
        finally:
            restore()
    total = sum(stats.published.values())
    print(f"fsmde play: published {total} messages on {len(stats.published)} topics in "
          f"{stats.wall_s:.2f} s ({stats.loops} pass(es)){' - interrupted' if stats.stopped else ''}",
          file=sys.stderr)
    return 0


def _install_signal_handlers(player: BagPlayer) -> Any:
    """SIGINT/SIGTERM stop, SIGUSR1 toggles pause; returns a function restoring the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    wanted = {signal.SIGINT: player.stop, signal.SIGTERM: player.stop}
    if hasattr(signal, "SIGUSR1"):
        wanted[signal.SIGUSR1] = player.toggle_pause
    old = {sig: signal.signal(sig, lambda _s, _f, fn=fn: fn()) for sig, fn in wanted.items()}

    def restore() -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)

    return restore


def _start_keyboard_control(player: BagPlayer) -> None:
    """On a terminal: Enter toggles pause, 'q' + Enter stops (daemon thread; no raw tty mode)."""
    if not sys.stdin or not sys.stdin.isatty():
        return

    def loop() -> None:
        for line in sys.stdin:
            if line.strip().lower() in ("q", "quit"):
                player.stop()
                return
            player.toggle_pause()
            print("paused" if player.is_paused else "playing", file=sys.stderr)

    print("fsmde play: Enter toggles pause, q + Enter quits", file=sys.stderr)
    threading.Thread(target=loop, name="fsmde-play-keys", daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fsmde_ros.player BAG [options]`` (same options as ``fsmde play``)."""
    parser = argparse.ArgumentParser(prog="fsmde play", description="Replay a rosbag2 into ROS 2.")
    add_play_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(name)s: %(message)s")
    return run_play(args)


if __name__ == "__main__":
    sys.exit(main())
