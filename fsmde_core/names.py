"""The default camera names of a six-camera surround rig, in ring order.

nuScenes- and DDAD-style rigs, the synthetic presets, the ROS node's default
``cameras`` parameter and the exporter's default batch all use these six names;
written out once so they cannot drift apart. The order walks the ring
counter-clockwise seen from above (yaw increasing), starting at the front.
"""

from __future__ import annotations

SURROUND_CAMERAS: tuple[str, ...] = ("front", "front_left", "back_left", "back", "back_right", "front_right")
