"""ROS-free core of fsmde_ros: rig geometry, synthetic world, bag reading,
student/teacher models, distillation losses, training, evaluation, export and
inference backends. Nothing in here imports rclpy, so it can be tested and
used offline on any machine."""

__version__ = "0.1.0"
