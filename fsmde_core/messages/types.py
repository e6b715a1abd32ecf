"""ROS 2 type names of the messages this project reads (as rosbag2 metadata and rosbags spell them)."""

from __future__ import annotations

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
INFO_TYPE = "sensor_msgs/msg/CameraInfo"
CLOUD_TYPE = "sensor_msgs/msg/PointCloud2"
TF_TYPE = "tf2_msgs/msg/TFMessage"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
