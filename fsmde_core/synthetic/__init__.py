"""Procedural surround world rendered into rosbag2 recordings (tests, demo, benchmarks)."""
