"""Pictures of node outputs: bird's-eye view orientation (REP 103) and depth mosaic."""

from __future__ import annotations

import numpy as np

from fsmde_core.viz import birds_eye_view, depth_mosaic


def _cell(img_pixels: int, extent: float, x: float, y: float) -> tuple[int, int]:
    scale = img_pixels / (2 * extent)
    return int(-x * scale + img_pixels / 2), int(-y * scale + img_pixels / 2)


def test_birds_eye_view_orientation_and_highest_point_wins():
    xyz = np.array([[10.0, 0.0, 1.0],      # ahead -> above the centre
                    [0.0, 10.0, 1.0],      # left (y > 0) -> left of the centre
                    [-10.0, -10.0, 0.0],   # behind right, low ...
                    [-10.0, -10.0, 3.0],   # ... and high in the same cell: high wins
                    [np.nan, 0.0, 0.0]], dtype=np.float32)
    rgb = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [9, 9, 9]], dtype=np.uint8)
    img = birds_eye_view(xyz, rgb, extent_m=20.0, pixels=200)
    r, c = _cell(200, 20.0, 10.0, 0.0)
    assert r < 100 and c == 100 and tuple(img[r, c]) == (255, 0, 0)
    r, c = _cell(200, 20.0, 0.0, 10.0)
    assert c < 100 and tuple(img[r, c]) == (0, 255, 0)
    r, c = _cell(200, 20.0, -10.0, -10.0)
    assert r > 100 and c > 100 and tuple(img[r, c]) == (255, 255, 0)
    assert not np.any(np.all(img == 9, axis=-1))


def test_birds_eye_view_without_colour_uses_height():
    xyz = np.array([[5.0, 5.0, 0.0], [5.0, -5.0, 5.0]], dtype=np.float32)
    img = birds_eye_view(xyz, None, extent_m=10.0, pixels=100)
    low, high = img[_cell(100, 10.0, 5.0, 5.0)], img[_cell(100, 10.0, 5.0, -5.0)]
    assert tuple(low) != tuple(high)


def test_depth_mosaic_tiles_six_cameras():
    depths = np.stack([np.full((24, 32), 5.0 * (k + 1), np.float32) for k in range(6)])
    depths[0, 0, 0] = np.nan
    mosaic = depth_mosaic(depths, [f"c{k}" for k in range(6)], ring=list(range(6)))
    assert mosaic.dtype == np.uint8 and mosaic.shape == (2 * 24 + 2, 3 * 32 + 4, 3)
    # Top row: ring[1], ring[0], ring[5]; nearer cameras are brighter (inverse-depth colours).
    centre = lambda r, c: mosaic[r * 26 + 16, c * 34 + 20].astype(int).sum()  # noqa: E731
    assert centre(0, 1) > centre(0, 0) > centre(0, 2)


def test_recorder_groups_depth_sets_per_camera_not_by_one_stamp():
    """Cameras of one set fire ms apart; each depth keeps its camera's stamp."""
    from fsmde_ros.snapshot import Recorded

    rec = Recorded()
    names = ["front", "back"]
    rec.depth["front"][1_000] = np.zeros((2, 2))
    assert rec.complete_sets(names) == 0 and rec.latest_depths(names) is None
    rec.depth["back"][1_004] = np.ones((2, 2))
    rec.depth["front"][101_000] = np.full((2, 2), 5.0)
    assert rec.complete_sets(names) == 1
    latest = rec.latest_depths(names)
    assert latest[0][0, 0] == 5.0 and latest[1][0, 0] == 1.0


def test_the_demo_viewer_replays_only_once_it_sees_the_node_outputs():
    """A volatile output published before the viewer discovered its publisher is lost (0 of 6 sets once)."""
    rclpy = __import__("pytest").importorskip("rclpy")
    from sensor_msgs.msg import Image

    from fsmde_ros.snapshot import outputs_discovered

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=9)  # node_confidence 6-7, image_quality 8, test_node 10+: 9 is free
    try:
        node = rclpy.create_node("viewer_check", context=ctx)
        assert not outputs_discovered(node, ["/cameras/front/depth"])
        node.create_publisher(Image, "/cameras/front/depth", 1)
        assert outputs_discovered(node, ["/cameras/front/depth"])
        assert not outputs_discovered(node, ["/cameras/front/depth", "/surround_depth/points"])
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)
