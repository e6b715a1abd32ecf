"""The data layer for training without LiDAR: reflective masks, odometry poses, camera-only bags, neighbours.

Bags are real rosbag2 recordings: :mod:`bagfactory` bags and ``fsmde synth``
bags, rewritten here message by message (rosbags Reader -> Writer) to add
mask topics or to remove the LiDAR, so these tests do not depend on the
synthetic world's own ``--reflective`` / ``--no-lidar`` switches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
from bagfactory import TS, BagSpec, WrittenBag, write_bag
from rosbags.rosbag2 import Reader, Writer

from fsmde_core.data import BagSource, DataConfig, build_cache
from fsmde_core.data.sample import resize_nearest

SMALL = DataConfig(width=32, height=24)
NS = 1_000_000_000

Extra = tuple[int, str, str, object]  # (log time ns, topic, msgtype, message)


def rewrite_bag(src: Path, dst: Path, keep: Callable[[str], bool] = lambda topic: True,
                extra: Iterable[Extra] = ()) -> Path:
    """Copy a bag's raw messages (topics for which ``keep`` is true) plus ``extra`` messages, in log-time order."""
    added = [(t, topic, typ, TS.serialize_cdr(msg, typ)) for t, topic, typ, msg in extra]
    with Reader(src) as reader:
        copied = [(t, c.topic, c.msgtype, bytes(raw)) for c, t, raw in reader.messages() if keep(c.topic)]
    rows = sorted(copied + added, key=lambda m: m[0])
    with Writer(dst, version=9) as writer:
        conns = {}
        for t, topic, typ, raw in rows:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, typ, typestore=TS)
            writer.write(conns[topic], t, raw)
    return dst


def _mono8(values: np.ndarray, stamp_ns: int, frame: str):
    h, w = values.shape
    Time = TS.types["builtin_interfaces/msg/Time"]
    header = TS.types["std_msgs/msg/Header"](stamp=Time(sec=stamp_ns // NS, nanosec=stamp_ns % NS), frame_id=frame)
    return TS.types["sensor_msgs/msg/Image"](header=header, height=h, width=w, encoding="mono8", is_bigendian=0,
                                             step=w, data=np.ascontiguousarray(values, dtype=np.uint8).reshape(-1))


def reflective_values(cam_index: int, frame: int, width: int, height: int) -> np.ndarray:
    """A mono8 mask with blocks of 0 (matte), 255 (reflective) and 1 (also reflective: any non-zero)."""
    vv, uu = np.mgrid[0:height, 0:width]
    v = ((uu // 5 + vv // 3 + cam_index + frame) % 3).astype(np.uint8)
    return np.where(v == 2, 255, v).astype(np.uint8)


# ------------------------------------------------------------------ A: reflective mask topic
@pytest.fixture(scope="module")
def reflective_bag(tmp_path_factory) -> tuple[WrittenBag, Path, tuple[str, int]]:
    """The factory's bag plus ``/synthetic_gt/{name}/reflective`` at every camera stamp but one."""
    root = tmp_path_factory.mktemp("reflective")
    wb = write_bag(root / "plain", BagSpec(n_frames=3, with_gt=True))
    missing = ("back_left", 1)
    extra = []
    for k, cam in enumerate(wb.rig.cameras):
        for f, stamp in enumerate(wb.camera_stamps[cam.name]):
            if (cam.name, f) != missing:
                values = reflective_values(k, f, wb.spec.width, wb.spec.height)
                extra.append((stamp + 5_000_000, f"/synthetic_gt/{cam.name}/reflective", "sensor_msgs/msg/Image",
                              _mono8(values, stamp, cam.frame_id)))
    return wb, rewrite_bag(wb.path, root / "reflective", extra=extra), missing


def test_reflective_masks_are_read_resized_nearest_with_missing_cameras_all_false(reflective_bag) -> None:
    wb, bag, (missing_cam, missing_frame) = reflective_bag
    src = BagSource([bag], SMALL)
    samples = list(src)
    assert len(samples) == 3 and missing_cam in samples[0].camera_names
    for f, s in enumerate(samples):
        assert s.gt_reflective is not None and s.gt_reflective.shape == (6, 24, 32)
        assert s.gt_reflective.dtype == np.bool_
        for k, name in enumerate(s.camera_names):
            ring = [c.name for c in wb.rig.cameras].index(name)  # factory order -> sample (ring) order
            if (name, f) == (missing_cam, missing_frame):
                assert not s.gt_reflective[k].any(), "a missing mask is all False, not a failed sample"
                continue
            want = resize_nearest(reflective_values(ring, f, wb.spec.width, wb.spec.height), 32, 24) > 0
            np.testing.assert_array_equal(s.gt_reflective[k], want)
            assert 0.2 < want.mean() < 0.9, "the test mask mixes both classes"
    assert src.stats.missing_reflective == 1


def test_reflective_masks_are_optional_configurable_and_not_in_the_cache_key(reflective_bag, tmp_path) -> None:
    wb, bag, _ = reflective_bag
    assert next(iter(BagSource([wb.path], SMALL))).gt_reflective is None, "a bag without the topic has no mask"
    elsewhere = DataConfig(width=32, height=24, reflective_topic_pattern="/elsewhere/{name}/reflective")
    assert next(iter(BagSource([bag], elsewhere))).gt_reflective is None
    with pytest.raises(ValueError, match="reflective_topic_pattern must contain"):
        DataConfig(reflective_topic_pattern="/synthetic_gt/reflective")
    assert "reflective_topic_pattern" not in DataConfig().to_key()
    index = build_cache([bag], SMALL, tmp_path / "cache", progress=False)
    assert index.key == build_cache([bag], elsewhere, tmp_path / "cache", progress=False).key
    assert "gt_reflective" not in index.store.get(index.entries[0].ordinal), "the training cache stores no masks"


def test_a_reflective_topic_of_the_wrong_type_names_the_topic(tmp_path) -> None:
    from fsmde_core.data import BagError

    wb = write_bag(tmp_path / "plain", BagSpec(n_frames=1))
    stamp = wb.camera_stamps["front"][0]
    bad = TS.types["std_msgs/msg/String"](data="shiny")
    bag = rewrite_bag(wb.path, tmp_path / "bad", extra=[(stamp, "/synthetic_gt/front/reflective",
                                                         "std_msgs/msg/String", bad)])
    with pytest.raises(BagError, match=r"/synthetic_gt/front/reflective.*reflective masks must be sensor_msgs"):
        list(BagSource([bag], SMALL))


# ------------------------------------------------------------------ B, C: odometry poses, camera-only bags
FRAMES = 4
SPEED = 12.0  # m/s: the sweep-triggered rig's cameras fire tens of ms apart = decimetres of travel per set
SYNC = dict(width=80, height=48, sync_tolerance_ms=50.0)


@pytest.fixture(scope="module")
def drive(tmp_path_factory) -> dict[str, Path]:
    """``fsmde synth``'s nuScenes rig driving at 12 m/s (with /tf odom), and the same bag without its LiDAR."""
    from fsmde_core.synthetic.writer import generate_bag

    root = tmp_path_factory.mktemp("drive")
    generate_bag("nuscenes", FRAMES, seed=5, out=root / "lidar", width=160, height=96, progress=False, workers=1,
                 camera_timing="sweep", speed=SPEED)
    no_cloud = rewrite_bag(root / "lidar", root / "camera_only", keep=lambda topic: topic != "/lidar/points")
    return {"lidar": root / "lidar", "camera_only": no_cloud}


def _world_pose(stamp_ns: int) -> np.ndarray:
    """The synthetic world's own ego pose at a stamp (what the bag's /tf samples at 50 Hz)."""
    from fsmde_core.synthetic.world import FRAME_PERIOD_S, make_world
    from fsmde_core.synthetic.writer import seconds

    return make_world(5, FRAMES * FRAME_PERIOD_S + 0.5, SPEED).ego_pose(seconds(stamp_ns))


def test_samples_carry_the_odometry_pose_at_each_camera_stamp(drive) -> None:
    samples = list(BagSource([drive["lidar"]], DataConfig(**SYNC)))
    assert len(samples) == FRAMES
    for s in samples:
        assert s.T_odom_base is not None and s.T_odom_base.shape == (6, 4, 4) and s.T_odom_base.dtype == np.float64
        for k, stamp in enumerate(s.camera_stamps_ns):
            want = _world_pose(int(stamp))
            # /tf is sampled at 50 Hz and interpolated: millimetres off the world's smooth path
            np.testing.assert_allclose(s.T_odom_base[k, :3, 3], want[:3, 3], atol=5e-3)
            np.testing.assert_allclose(s.T_odom_base[k, :3, :3], want[:3, :3], atol=1e-3)
        first, last = int(np.argmin(s.camera_stamps_ns)), int(np.argmax(s.camera_stamps_ns))
        travel = np.linalg.norm(s.T_odom_base[last, :3, 3] - s.T_odom_base[first, :3, 3])
        spread_s = int(np.ptp(s.camera_stamps_ns)) / 1e9
        assert travel > 0.2 and travel == pytest.approx(SPEED * spread_s, rel=0.05), \
            "a pose per camera stamp, not one per set: the rig drives on while its cameras fire"


def test_bags_without_odometry_give_no_poses(tmp_path) -> None:
    src = BagSource([write_bag(tmp_path / "no_tf", BagSpec(n_frames=2)).path], SMALL)
    samples = list(src)
    assert len(samples) == 2 and all(s.T_odom_base is None for s in samples)
    assert src.stats.no_odometry == 2


def test_camera_only_bags_are_read_with_empty_sparse_depth(drive) -> None:
    with_lidar = list(BagSource([drive["lidar"]], DataConfig(**SYNC)))
    src = BagSource([drive["camera_only"]], DataConfig(**SYNC))  # require_lidar stays at its default: True
    samples = list(src)
    assert len(samples) == len(with_lidar) == FRAMES, "no set is dropped for want of a sweep"
    assert src.stats.camera_only == FRAMES and src.stats.no_lidar == 0
    for s, ref in zip(samples, with_lidar, strict=True):
        assert s.lidar_stamp_ns is None and np.isnan(s.sparse_depth).all()
        assert ref.lidar_stamp_ns is not None and np.isfinite(ref.sparse_depth).sum() > 1000
        np.testing.assert_array_equal(s.images, ref.images)
        np.testing.assert_array_equal(s.T_odom_base, ref.T_odom_base)


def test_a_bag_with_a_lidar_topic_still_drops_sets_without_a_sweep(tmp_path) -> None:
    late = write_bag(tmp_path / "late", BagSpec(n_frames=3, period_ms=200.0, lidar_offset_ms=80.0)).path
    src = BagSource([late], SMALL)
    assert list(src) == [] and src.stats.no_lidar == 3 and src.stats.camera_only == 0


def test_a_named_lidar_topic_missing_from_a_camera_only_bag_is_an_error_naming_it(drive) -> None:
    from fsmde_core.data import BagError

    with pytest.raises(BagError, match="/velodyne_points: LiDAR topic is not in the bag") as info:
        list(BagSource([drive["camera_only"]], DataConfig(lidar_topic="/velodyne_points", **SYNC)))
    assert info.value.topic == "/velodyne_points"


def test_inspect_says_what_a_camera_only_bag_is_for(drive) -> None:
    from fsmde_core.data import inspect_bag
    from fsmde_core.data.inspect import CAMERA_ONLY_LINE

    report = inspect_bag(drive["camera_only"], DataConfig(sync_tolerance_ms=50.0))
    want = "LiDAR: none (camera-only bag; train with loss.use_photometric, README 'Training without LiDAR')"
    assert want == CAMERA_ONLY_LINE and want in report
    assert "odometry poses from /tf: odom -> base_link" in report
    assert report.rstrip().endswith("status: OK"), report
    assert CAMERA_ONLY_LINE not in inspect_bag(drive["lidar"], DataConfig(sync_tolerance_ms=50.0))
