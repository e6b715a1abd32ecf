"""ament_python setup for fsmde_ros: one ROS 2 package holding the ROS-free
core (``fsmde_core``) and the rclpy layer (``fsmde_ros``).

Works both under ``colcon build`` (data files land in share/fsmde_ros) and with
``pip install -e .`` in a plain virtual environment.
"""

from glob import glob

from setuptools import find_packages, setup

package_name = "fsmde_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=["fsmde_core", "fsmde_core.*", "fsmde_ros", "fsmde_ros.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.rviz") + glob("config/*.xml")),
    ],
    package_data={"fsmde_core": ["presets/*.yaml"]},
    install_requires=["setuptools", "numpy", "pyyaml"],
    zip_safe=True,
    maintainer="fsmde_ros maintainers",
    maintainer_email="fsmde@example.com",
    description="Full-surround metric monocular depth distilled from a depth foundation model, for ROS 2.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "fsmde = fsmde_core.cli:main",
            "surround_depth_node = fsmde_ros.node:main",
        ],
        # commands of the ROS layer for `fsmde` (fsmde_core.cli.plugin_commands; fsmde_core never imports ROS)
        "fsmde.commands": [
            "play = fsmde_ros.commands:PLAY",
        ],
    },
)
