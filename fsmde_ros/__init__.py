"""Thin rclpy layer of fsmde_ros: message conversions, the surround depth node, bag replay."""
