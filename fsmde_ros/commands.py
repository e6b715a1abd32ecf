"""The ``fsmde`` commands of the ROS layer, registered through setup.py's ``fsmde.commands`` entry points.

Why a module of its own: ``fsmde --help`` loads every entry point to list its
help, so this module holds only names (no rclpy); the command's own module is
imported when the command is chosen.
"""

from fsmde_core.cli import Command

PLAY = Command("fsmde_ros.player", "add_play_arguments", "run_play",
               "replay a rosbag2 into ROS 2 at recorded rate with /clock")
