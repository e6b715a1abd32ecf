"""Warn when another node publishes on this node's output topics.

Why: a second surround depth node started on the same cameras (two launch
files, a forgotten terminal) runs without any error, and every subscriber then
gets two interleaved depth streams and clouds. ROS allows several publishers
per topic, so only the node itself can say that this one is a mistake. The
graph is looked at periodically (discovery of the other node takes a moment),
and each change of which other nodes publish is logged once. DDS announces a
publisher before the name of its node: while a publisher's node is still
unnamed the warning waits (up to ``UNNAMED_PATIENCE`` checks), so it names the
node instead of ``_NODE_NAME_UNKNOWN_``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Sequence
from typing import Any

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType

from fsmde_ros.params import NodeSettings

TOPICS_NAMED = 3  # topics listed in the warning before "and N more"
#: rmw's node name for a publisher whose node has not been discovered yet.
UNKNOWN_NODE_NAME = "_NODE_NAME_UNKNOWN_"
#: Checks a warning waits for an unnamed publisher's node to be discovered before naming it "unnamed".
UNNAMED_PATIENCE = 3


def output_topics(settings: NodeSettings) -> list[str]:
    """The topics only this node should publish: each camera's depth (+ camera_info) and the cloud."""
    topics = [t for c in settings.cameras for t in (c.depth_topic, c.depth_info_topic)]
    return ([settings.cloud.topic] if settings.cloud.enabled else []) + topics


def foreign_publishers(endpoints: Iterable[Any], own_node: str) -> list[str]:
    """Fully qualified node names of the publishers in ``endpoints`` besides our own one.

    Ours is removed once (we have one publisher per output topic), so a second node that has
    the very same name and namespace (the same launch file started twice) still counts.
    """
    nodes = [posixpath.join(e.node_namespace or "/", e.node_name) for e in endpoints]
    if own_node in nodes:
        nodes.remove(own_node)
    return sorted(nodes)


def other_publishers_warning(others: dict[str, list[str]]) -> str:
    topics = list(others)
    named = ", ".join(topics[:TOPICS_NAMED]) + (f" and {len(topics) - TOPICS_NAMED} more"
                                                 if len(topics) > TOPICS_NAMED else "")
    nodes = sorted({n for names in others.values() for n in names})
    return (f"another publisher on this node's output topic(s) {named} (node(s) {', '.join(nodes)}): is a second "
            f"surround depth node running on the same cameras? Subscribers get both outputs interleaved")


class InstanceGuard:
    """Checks the graph for other publishers on ``topics``; logs when the set of other nodes changes
    (not per topic: discovery reveals a node's topics one by one)."""

    def __init__(self, node: Any, topics: Sequence[str]) -> None:
        self._node = node
        self._topics = list(topics)
        self._seen: set[str] = set()
        self._unnamed_checks = 0

    def check(self) -> dict[str, list[str]]:
        own = self._node.get_fully_qualified_name()
        others = {}
        for topic in self._topics:
            nodes = foreign_publishers(self._node.get_publishers_info_by_topic(topic), own)
            if nodes:
                others[topic] = nodes
        nodes = {n for names in others.values() for n in names}
        if any(UNKNOWN_NODE_NAME in n for n in nodes) and self._unnamed_checks < UNNAMED_PATIENCE:
            self._unnamed_checks += 1  # discovery has the publisher but not its node yet: look again later
            return others
        self._unnamed_checks = 0
        if nodes and nodes != self._seen:
            self._node.get_logger().warning(other_publishers_warning(others))
        elif self._seen and not nodes:
            self._node.get_logger().info("no other publisher on this node's output topics any more")
        self._seen = nodes
        return others


def guard_output_topics(node: Any, settings: NodeSettings) -> Any:
    """A steady-clock timer (the diagnostics period) running an :class:`InstanceGuard`; destroy it to stop."""
    guard = InstanceGuard(node, output_topics(settings))
    return node.create_timer(settings.diagnostics_period_s, guard.check, MutuallyExclusiveCallbackGroup(),
                             clock=Clock(clock_type=ClockType.STEADY_TIME))
