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
import torch
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


# ------------------------------------------------------------------ B, D: the cache and the dataset's neighbours
@pytest.fixture(scope="module")
def drive_cache(drive, tmp_path_factory):
    """One cache over both drives: the same stamps and images twice, from two bags."""
    return build_cache([drive["lidar"], drive["camera_only"]], DataConfig(**SYNC),
                       tmp_path_factory.mktemp("cache") / "c", progress=False)


def test_the_cache_stores_odometry_and_what_each_sample_has(drive, drive_cache) -> None:
    from fsmde_core.data import SurroundDataset

    assert len(drive_cache) == 2 * FRAMES
    assert [(e.has_lidar, e.has_odom) for e in drive_cache.entries] == [(True, True)] * FRAMES + \
        [(False, True)] * FRAMES
    ds = SurroundDataset(drive_cache)
    samples = list(BagSource([drive["lidar"], drive["camera_only"]], DataConfig(**SYNC)))
    for i, s in enumerate(samples):
        item = ds[i]
        assert item["T_odom_base"].dtype == torch.float64 and item["T_odom_base"].shape == (6, 4, 4)
        np.testing.assert_array_equal(item["T_odom_base"].numpy(), s.T_odom_base)  # float64 kept exactly
        assert bool(item["has_odom"]) and bool(item["has_lidar"]) == (i < FRAMES)
        assert bool(torch.isnan(item["sparse_depth"]).all()) == (i >= FRAMES)
        assert "prev_images" not in item, "neighbours are opt-in"


def test_samples_without_odometry_get_identity_poses(tmp_path) -> None:
    from fsmde_core.data import SurroundDataset

    bag = write_bag(tmp_path / "no_tf", BagSpec(n_frames=2)).path
    index = build_cache([bag], SMALL, tmp_path / "c", progress=False)
    assert [(e.has_lidar, e.has_odom) for e in index.entries] == [(True, False)] * 2
    item = SurroundDataset(index, neighbours=True)[0]
    assert not bool(item["has_odom"]) and bool(item["has_lidar"])
    want = torch.eye(4, dtype=torch.float64).expand(6, 4, 4)
    for key in ("T_odom_base", "prev_T_odom_base", "next_T_odom_base"):
        assert item[key].dtype == torch.float64 and torch.equal(item[key], want), key
    assert bool(item["has_next"]) and not bool(item["has_prev"])


def test_neighbours_are_the_adjacent_sets_of_the_same_bag(drive_cache) -> None:
    from fsmde_core.data import SurroundDataset

    plain = SurroundDataset(drive_cache)
    ds = SurroundDataset(drive_cache, neighbours=True)
    entries = drive_cache.entries
    for start in (0, FRAMES):  # each bag: its own first and last set; the two bags share their stamps
        assert [e.stamp_ns for e in entries[start:start + FRAMES]] == [e.stamp_ns for e in entries[:FRAMES]]
        for i in range(start, start + FRAMES):
            item = ds[i]
            for which, j, exists in (("prev", i - 1, i > start), ("next", i + 1, i < start + FRAMES - 1)):
                assert bool(item[f"has_{which}"]) == exists, (i, which)
                if not exists:
                    assert torch.equal(item[f"{which}_images"], torch.zeros(6, 3, 48, 80))
                    assert torch.equal(item[f"{which}_T_odom_base"], torch.eye(4, dtype=torch.float64).expand(6, 4, 4))
                    continue
                assert entries[j].bag == entries[i].bag
                gap = entries[j].stamp_ns - entries[i].stamp_ns
                assert (gap < 0) == (which == "prev") and 50e6 < abs(gap) < 150e6, "the adjacent 10 Hz set"
                assert torch.equal(item[f"{which}_images"], plain[j]["images"])
                assert torch.equal(item[f"{which}_T_odom_base"], plain[j]["T_odom_base"])
            assert torch.equal(item["images"], plain[i]["images"])
    # the neighbours are read from the same entries: one file per set, nothing else stored
    assert len(list(drive_cache.root.glob("*.safetensors"))) == len(drive_cache)


def test_neighbours_beyond_max_gap_do_not_count(drive_cache) -> None:
    from fsmde_core.data import SurroundDataset

    tight = SurroundDataset(drive_cache, neighbours=True, max_gap_ms=50.0)  # below the 100 ms frame period
    assert not any(bool(tight[i]["has_prev"]) or bool(tight[i]["has_next"]) for i in range(len(tight)))
    with pytest.raises(ValueError, match="max_gap_ms must be > 0"):
        SurroundDataset(drive_cache, neighbours=True, max_gap_ms=0.0)


def test_a_dropped_set_leaves_a_gap_that_max_gap_ms_decides(tmp_path) -> None:
    from fsmde_core.data import SurroundDataset

    bag = write_bag(tmp_path / "gap", BagSpec(n_frames=4, drop={("front", 1)})).path  # set 1 is incomplete
    index = build_cache([bag], SMALL, tmp_path / "c", progress=False)
    assert [e.bag_index for e in index.entries] == [0, 1, 2]  # frames 0, 2, 3: 200 ms, then 100 ms apart
    narrow = SurroundDataset(index, neighbours=True, max_gap_ms=150.0)
    assert [(narrow.neighbour(i, "prev"), narrow.neighbour(i, "next")) for i in range(3)] == \
        [(None, None), (None, 2), (1, None)]
    wide = SurroundDataset(index, neighbours=True)  # the default 250 ms bridges one lost set
    assert [(wide.neighbour(i, "prev"), wide.neighbour(i, "next")) for i in range(3)] == \
        [(None, 1), (0, 2), (1, None)]


def test_the_default_collate_batches_neighbour_items(drive_cache) -> None:
    from fsmde_core.data import SurroundDataset

    batch = next(iter(torch.utils.data.DataLoader(SurroundDataset(drive_cache, neighbours=True), batch_size=3)))
    assert batch["prev_images"].shape == batch["next_images"].shape == batch["images"].shape == (3, 6, 3, 48, 80)
    assert batch["prev_T_odom_base"].shape == (3, 6, 4, 4) and batch["prev_T_odom_base"].dtype == torch.float64
    assert batch["has_prev"].tolist() == [False, True, True] and batch["has_next"].tolist() == [True] * 3
    assert batch["has_lidar"].dtype == torch.bool and batch["has_odom"].all()


def test_take_reorders_every_per_camera_field(reflective_bag, drive) -> None:
    from dataclasses import fields

    from fsmde_core.data.sample import PER_CAMERA_ARRAYS, SurroundSample

    shiny = next(iter(BagSource([reflective_bag[1]], SMALL)))
    moving = next(iter(BagSource([drive["lidar"]], DataConfig(**SYNC))))
    idx = [3, 0, 5]
    for s in (shiny, moving):
        t = s.take(idx)
        assert t.camera_names == [s.camera_names[k] for k in idx]
        assert [m.K.tolist() for m in t.models] == [s.models[k].K.tolist() for k in idx]
        for name in PER_CAMERA_ARRAYS:
            before, after = getattr(s, name), getattr(t, name)
            assert (before is None) == (after is None), name
            if before is not None:
                np.testing.assert_array_equal(after, before[idx])
        assert (t.stamp_ns, t.source, t.lidar_stamp_ns) == (s.stamp_ns, s.source, s.lidar_stamp_ns)
    assert shiny.gt_reflective is not None and moving.T_odom_base is not None
    # every array field with a camera axis is listed (a field added later must join the list)
    arrays = {f.name for f in fields(SurroundSample)} - {"stamp_ns", "camera_names", "models", "source",
                                                        "lidar_stamp_ns", "base_frame", "motion_compensated"}
    assert arrays == set(PER_CAMERA_ARRAYS)
