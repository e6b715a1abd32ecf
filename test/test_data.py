"""Bag reading, synchronisation, LiDAR projection, the sample cache and ``fsmde inspect``.

Every bag is written here with :mod:`bagfactory` (rosbags Writer), small
(6 cameras at 64x48, a few frames), in both sqlite3 and MCAP storage.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from bagfactory import BagSpec, expected_gt, expected_image, point_for_pixel, storage_file, write_bag
from PIL import Image

from fsmde_core.data import (
    BagError,
    BagSource,
    CameraTopics,
    DataConfig,
    SurroundDataset,
    TensorStore,
    build_cache,
    inspect_bag,
    read_samples,
)
from fsmde_core.data.bag import Moment
from fsmde_core.data.inspect import add_inspect_arguments, run_inspect
from fsmde_core.data.layout import camera_name_from_topic, sibling_info_topic
from fsmde_core.data.sample import resize_nearest
from fsmde_core.data.store import StoreKeyError
from fsmde_core.data.tf import TfLookupError, TfTree
from fsmde_core.messages import UnsupportedEncodingError, cloud_xyz, header_stamp_ns
from fsmde_core.names import SURROUND_CAMERAS
from fsmde_core.rig import make_transform, optical_to_base_rotation

RING = list(SURROUND_CAMERAS)
SMALL = DataConfig(width=32, height=24)


@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> dict[str, object]:
    """Valid recordings shared by the read-only tests."""
    root = tmp_path_factory.mktemp("bags")
    return {
        "sqlite3": write_bag(root / "good_sqlite", BagSpec(storage="sqlite3", with_gt=True)),
        "mcap": write_bag(root / "good_mcap", BagSpec(
            storage="mcap", compressed={"front": "jpeg", "back": "png"}, encodings={"front_left": "bgr8",
                                                                                   "back_right": "mono8"},
            camera_latency_ms=[0.0, 130.0, 20.0, 250.0, 60.0, 10.0])),
    }


def _write(tmp_path: Path, name: str, **kw) -> Path:
    return write_bag(tmp_path / name, BagSpec(n_frames=kw.pop("n_frames", 2), **kw)).path


# ------------------------------------------------------------------ naming, TF, grouping
@pytest.mark.parametrize("topic, name, info", [
    ("/cameras/front/image_raw", "front", "/cameras/front/camera_info"),
    ("/cameras/front/image_raw/compressed", "front", "/cameras/front/camera_info"),
    ("/car/cam_left/image_rect_color", "cam_left", "/car/cam_left/camera_info"),
    ("/image_raw", "camera", "/camera_info"),
])
def test_camera_names_and_sibling_info(topic: str, name: str, info: str) -> None:
    assert camera_name_from_topic(topic) == name
    assert sibling_info_topic(topic) == info


def test_tf_tree_composes_chains_and_refuses_disconnected_frames() -> None:
    rng = np.random.default_rng(1)

    def rand_T() -> np.ndarray:
        return make_transform(optical_to_base_rotation(*rng.uniform(-90, 90, 3)), rng.normal(size=3))

    T_ab, T_bc, T_ad = rand_T(), rand_T(), rand_T()
    tree = TfTree()
    tree.add("/a", "b", T_ab)  # leading slash is normalised away, as tf2 does
    tree.add("b", "c", T_bc)
    tree.add("a", "d", T_ad)
    tree.add("x", "y", rand_T())
    np.testing.assert_allclose(tree.lookup("a", "c"), T_ab @ T_bc, atol=1e-12)
    np.testing.assert_allclose(tree.lookup("d", "c"), np.linalg.inv(T_ad) @ T_ab @ T_bc, atol=1e-12)
    np.testing.assert_allclose(tree.lookup("c", "c"), np.eye(4), atol=1e-12)
    with pytest.raises(TfLookupError, match="not connected"):
        tree.lookup("a", "y")
    with pytest.raises(TfLookupError, match="not in tf_static"):
        tree.lookup("a", "nowhere")


def test_reader_groups_despite_arrival_order_and_skips_stamps_going_back(tmp_path: Path) -> None:
    """Grouping is the node's synchronizer (fsmde_core.sync): a camera whose transport lags the
    others by 2.5 frames, a camera that misses a frame, trigger phases 0-14 ms."""
    wb = write_bag(tmp_path / "lag", BagSpec(n_frames=6, offsets_ms=[0, 7, 14, 3, 10, 5], drop={("back", 2)},
                                             camera_latency_ms=[0, 0, 250, 0, 0, 0]))
    src = BagSource([wb.path], SMALL)
    samples = list(src)
    assert [[int(t) for t in s.camera_stamps_ns] for s in samples] == [
        [wb.camera_stamps[n][f] for n in RING] for f in (0, 1, 3, 4, 5)]
    assert src.stats.incomplete_sets == 1 and src.stats.dropped_images == 5 and src.stats.out_of_order == 0


@pytest.mark.parametrize("horizon_s", [1.0, 0.2])
def test_reader_memory_is_bounded_when_a_camera_stops_and_it_recovers(tmp_path: Path, horizon_s: float) -> None:
    """A camera silent for 19 frames: the others wait in queues of horizon_s x 30 images (30, or
    6 which overflow), each lost instant is counted once, and sets resume when it is back."""
    from fsmde_core.data.bag import reader_queue_size

    gap = range(2, 21)
    wb = write_bag(tmp_path / "stop", BagSpec(n_frames=24, drop={("back", f) for f in gap}))
    config = DataConfig(width=32, height=24, horizon_s=horizon_s)
    assert reader_queue_size(config) == round(30 * horizon_s)
    src = BagSource([wb.path], config)
    samples = list(src)
    assert [int(s.camera_stamps_ns[0]) for s in samples] == [wb.camera_stamps[RING[0]][f] for f in (0, 1, 21, 22, 23)]
    assert src.stats.incomplete_sets == len(gap) and src.stats.dropped_images == 5 * len(gap)


def test_header_stamp_shortcut_matches_deserialised_stamp(bags) -> None:
    from fsmde_core.data.reader import iter_raw, open_bag

    wb = bags["mcap"]
    with open_bag(wb.path) as reader:
        for topic, msgtype, _, raw in iter_raw(reader, wb.path, ["/cameras/front/image_raw/compressed",
                                                                 "/lidar/points"]):
            st = reader.deserialize(raw, msgtype).header.stamp
            assert header_stamp_ns(raw) == st.sec * 10**9 + st.nanosec, topic


# ------------------------------------------------------------------ discovery and samples
@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_discovery_builds_rig_from_tf_chain(bags, storage: str) -> None:
    wb = bags[storage]
    layout = BagSource([wb.path], SMALL).layout(wb.path)
    assert layout.ok, layout.problems
    assert [c.name for c in layout.cameras] == RING  # ring order by yaw, not alphabetical
    assert layout.lidar_topic == "/lidar/points" and layout.lidar_frame == "lidar_top"
    front = layout.cameras[0]
    assert front.image_topic == ("/cameras/front/image_raw/compressed" if storage == "mcap"
                                 else "/cameras/front/image_raw")
    assert front.info_topic == "/cameras/front/camera_info"
    assert (storage == "sqlite3") == (front.gt_topic == "/synthetic_gt/front/depth")
    for cam in layout.cameras:
        truth = wb.rig.camera(cam.name)
        assert cam.frame_id == truth.frame_id
        # base_link -> roof_mount -> camera_X_link -> camera_X_optical_frame, composed
        np.testing.assert_allclose(cam.T_base_cam, truth.T_base_cam, atol=1e-9)
        np.testing.assert_allclose(cam.model.K, truth.model.K)
    np.testing.assert_allclose(layout.T_base_lidar, wb.rig.T_base_lidar, atol=1e-9)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_samples_pair_on_header_stamp(bags, storage: str) -> None:
    """MCAP bag: per-camera transport delays up to 2.5 periods, so log-time pairing would mix frames."""
    wb = bags[storage]
    src = BagSource([wb.path], SMALL)
    samples = list(src)
    assert len(samples) == wb.spec.n_frames and src.stats.samples == wb.spec.n_frames
    assert src.stats.incomplete_sets == 0
    for f, s in enumerate(samples):
        want = [wb.camera_stamps[n][f] for n in RING]
        assert s.camera_names == RING
        assert s.camera_stamps_ns.tolist() == want
        assert s.stamp_ns == max(want)  # the reference stamp is the latest camera stamp (as the node's)
        assert s.lidar_stamp_ns == wb.lidar_stamps[f]
        assert s.source.bag == wb.path and s.source.index == f
        assert s.images.shape == (6, 24, 32, 3) and s.images.dtype == np.uint8
        assert s.sparse_depth.shape == (6, 24, 32) and s.sparse_depth.dtype == np.float32
        assert s.masks.shape == (6, 24, 32) and not s.masks.any()
        assert all(m.width == 32 and m.height == 24 for m in s.models)
        np.testing.assert_allclose(s.K[0], wb.rig.camera("front").model.resized(32, 24).K)


def test_incomplete_sets_are_dropped_and_counted(tmp_path: Path) -> None:
    path = _write(tmp_path, "drop", n_frames=5, drop={("back", 1), ("front", 3), ("front_left", 3)})
    src = BagSource([path], SMALL)
    samples = list(src)
    assert [s.source.index for s in samples] == [0, 1, 2]
    assert src.stats.incomplete_sets == 2 and src.stats.dropped_images == 5 + 4
    assert src.stats.samples == 3


def test_images_decode_every_encoding_and_resize(bags) -> None:
    wb = bags["mcap"]  # front jpeg, back png, front_left bgr8, back_right mono8, others rgb8
    s = next(iter(read_samples([wb.path])))  # native size
    exp = {n: expected_image(wb.rig.names.index(n), 0, 64, 48) for n in RING}
    got = dict(zip(s.camera_names, s.images, strict=True))
    for n in ("front_left", "back_left", "front_right", "back"):  # lossless
        np.testing.assert_array_equal(got[n], exp[n], err_msg=n)
    np.testing.assert_array_equal(got["back_right"], np.repeat(exp["back_right"][..., 1:2], 3, axis=2))
    assert np.abs(got["front"].astype(int) - exp["front"]).mean() < 3.0  # jpeg
    small = next(iter(read_samples([wb.path], SMALL)))
    ref = np.asarray(Image.fromarray(exp["back_left"]).resize((32, 24), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(small.images[RING.index("back_left")], ref)


@pytest.mark.parametrize("size", [None, (32, 24), (40, 30)])
def test_lidar_sparse_depth_lands_on_the_known_pixel(tmp_path: Path, size) -> None:
    from bagfactory import make_rig

    rig = make_rig(64, 48)
    pts = np.stack([point_for_pixel(rig, "front", 20.0, 30.0, 12.5),
                    point_for_pixel(rig, "back", 50.0, 10.0, 4.0),
                    [np.nan, np.nan, np.nan]])
    path = write_bag(tmp_path / "lidar", BagSpec(n_frames=1, lidar_points=pts)).path
    cfg = DataConfig() if size is None else DataConfig(width=size[0], height=size[1])
    s = next(iter(read_samples([path], cfg)))
    for name, (u, v, d) in {"front": (20.0, 30.0, 12.5), "back": (50.0, 10.0, 4.0)}.items():
        k = s.camera_names.index(name)
        w, h = s.size
        m = rig.camera(name).model
        uu, vv = round((u + 0.5) * w / m.width - 0.5), round((v + 0.5) * h / m.height - 0.5)
        sd = s.sparse_depth[k]
        assert sd[vv, uu] == pytest.approx(d, abs=1e-4), name
        assert np.isfinite(sd).sum() == 1  # the NaN no-return and the other point land nowhere here


def test_gt_depth_is_resized_nearest_keeping_nan_and_inf(bags) -> None:
    wb = bags["sqlite3"]
    samples = list(read_samples([wb.path], SMALL))
    for f, s in enumerate(samples):
        assert s.gt_depth is not None and s.gt_depth.shape == (6, 24, 32)
        for k, name in enumerate(s.camera_names):
            want = resize_nearest(expected_gt(wb.rig.names.index(name), f, 64, 48), 32, 24)
            np.testing.assert_array_equal(s.gt_depth[k], want)
        assert np.isposinf(s.gt_depth).any() and np.isnan(s.gt_depth).any()
    assert next(iter(read_samples([bags["mcap"].path], SMALL))).gt_depth is None


def test_sets_without_a_lidar_sweep_in_tolerance(tmp_path: Path) -> None:
    # sweeps 80 ms after (120 ms before) each camera set: outside the 50 ms default tolerance
    path = _write(tmp_path, "late_lidar", n_frames=3, period_ms=200.0, lidar_offset_ms=80.0)
    src = BagSource([path], SMALL)
    assert list(src) == [] and src.stats.no_lidar == 3 and src.stats.sets == 3
    kept = list(read_samples([path], DataConfig(width=32, height=24, require_lidar=False)))
    assert len(kept) == 3 and all(s.lidar_stamp_ns is None and np.isnan(s.sparse_depth).all() for s in kept)
    wide = list(read_samples([path], DataConfig(width=32, height=24, lidar_tolerance_ms=100.0)))
    assert [s.lidar_stamp_ns - min(s.camera_stamps_ns) for s in wide] == [80_000_000] * 3  # earliest camera


def test_malformed_messages_are_skipped_and_counted(tmp_path: Path, caplog) -> None:
    path = _write(tmp_path, "corrupt", n_frames=4, compressed={"front": "jpeg"},
                  corrupt={("front", 1), ("back", 2)})
    src = BagSource([path], SMALL)
    with caplog.at_level(logging.WARNING, logger="fsmde_core.data.bag"):
        samples = list(src)
    assert [s.source.index for s in samples] == [0, 3]
    assert src.stats.skipped_messages == 2
    assert "/cameras/front/image_raw/compressed" in caplog.text and "/cameras/back/image_raw" in caplog.text


def test_rig_yaml_gives_extrinsics_intrinsics_and_ego_masks(tmp_path: Path) -> None:
    wb = write_bag(tmp_path / "notf", BagSpec(n_frames=2, omit_tf_static=True, omit_info={"back"}))
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[40:] = 255  # the hood
    Image.fromarray(mask).save(tmp_path / "front_mask.png")
    wb.rig.camera("front").mask = "front_mask.png"  # relative to the YAML
    wb.rig.save(tmp_path / "rig.yaml")
    with pytest.raises(BagError, match="/tf_static"):
        list(read_samples([wb.path], SMALL))
    s = next(iter(read_samples([wb.path], DataConfig(width=32, height=24, rig_yaml=tmp_path / "rig.yaml"))))
    for k, name in enumerate(s.camera_names):
        np.testing.assert_allclose(s.T_base_cam[k], wb.rig.camera(name).T_base_cam, atol=1e-8)
    np.testing.assert_array_equal(s.masks[0], resize_nearest(mask > 0, 32, 24))
    assert s.masks[0].any() and not s.masks[1:].any()
    np.testing.assert_allclose(s.K[RING.index("back")], wb.rig.camera("back").model.resized(32, 24).K)


def test_configured_cameras_and_multiple_bags(bags) -> None:
    cfg = DataConfig(width=32, height=24, cameras=[
        CameraTopics("rear", "/cameras/back/image_raw", "/cameras/back/camera_info",
                     gt_topic="/synthetic_gt/back/depth"),
        CameraTopics("nose", "/cameras/front/image_raw"),  # no /synthetic_gt/nose/depth
    ])
    samples = list(read_samples([bags["sqlite3"].path, bags["sqlite3"].path], cfg))
    assert len(samples) == 8 and samples[0].camera_names == ["rear", "nose"]
    assert [s.source.index for s in samples] == [0, 1, 2, 3] * 2
    gt = samples[0].gt_depth
    assert gt is not None and np.isfinite(gt[0]).any() and np.isnan(gt[1]).all()  # nose: NaN-filled


# ------------------------------------------------------------------ errors
def _truncated(tmp_path: Path, storage: str) -> Path:
    path = _write(tmp_path, f"trunc_{storage}", storage=storage)
    f = storage_file(path)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return path


BAD_CASES = {
    # name: (spec kwargs or builder, config kwargs, expected topic, text in message)
    # (a bag without any LiDAR topic is no longer an error: test_data_selfsup reads camera-only bags)
    "lidar_topic_missing": ({}, dict(lidar_topic="/velodyne_points"), "/velodyne_points", "not in the bag"),
    "no_images": (dict(omit_images=set(RING)), {}, None, "no camera image topics"),
    "camera_topic_missing": ({}, dict(cameras=[CameraTopics("front", "/cam/front/image")]),
                             "/cam/front/image", "not in the bag"),
    "no_tf_static": (dict(omit_tf_static=True), {}, "/tf_static", "no /tf_static"),
    "no_camera_info": (dict(omit_info={"back"}), {}, "/cameras/back/camera_info",
                       "camera back has no camera_info"),
    "frame_not_connected": (dict(disconnected={"back"}), {}, "/tf_static", "camera_back_optical_frame"),
    "raw_encoding": (dict(encodings={"front_left": "16UC1"}), {}, "/cameras/front_left/image_raw", "16UC1"),
    "compressed_format": (dict(compressed={"front": "h264"}), {}, "/cameras/front/image_raw/compressed",
                          "h264"),
    "info_size_mismatch": (dict(info_size_mismatch={"front"}), {}, "/cameras/front/image_raw", "128x96"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_bags_raise_bag_error_naming_bag_and_topic(tmp_path: Path, case: str) -> None:
    spec_kw, cfg_kw, topic, text = BAD_CASES[case]
    path = _write(tmp_path, case, storage="mcap" if "compressed" in case else "sqlite3", **spec_kw)
    with pytest.raises(BagError) as info:
        list(read_samples([path], DataConfig(**cfg_kw)))
    err = info.value
    assert err.bag == path and str(path) in str(err)
    assert err.topic == topic and (topic is None or topic in str(err))
    assert text in str(err)
    assert isinstance(err, ValueError)


def test_images_above_max_image_pixels_are_refused_naming_topic_size_and_limit(tmp_path: Path) -> None:
    """Offline the same size guard as the node: refused from the header (jpeg on front, raw elsewhere)."""
    path = _write(tmp_path, "big", storage="mcap", compressed={"front": "jpeg"})
    assert len(list(read_samples([path], DataConfig(max_image_pixels=64 * 48)))) == 2  # 64x48: inclusive
    with pytest.raises(BagError) as info:
        list(read_samples([path], DataConfig(max_image_pixels=100)))
    err = info.value
    assert err.topic is not None and err.topic.startswith("/cameras/") and err.topic in str(err)
    assert "64x48" in str(err) and "max_image_pixels" in str(err) and "above the limit of 100 pixels" in str(err)
    with pytest.raises(ValueError, match="max_image_pixels must be positive"):
        DataConfig(max_image_pixels=0)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_truncated_storage_file_is_a_clear_error(tmp_path: Path, storage: str) -> None:
    path = _truncated(tmp_path, storage)
    with pytest.raises(BagError, match="truncated or corrupt") as info:
        list(read_samples([path]))
    assert info.value.bag == path


def test_paths_that_are_not_bags(tmp_path: Path) -> None:
    with pytest.raises(BagError, match="does not exist"):
        BagSource([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagError, match=r"no metadata\.yaml"):
        BagSource([tmp_path / "empty"])
    (tmp_path / "old.bag").write_bytes(b"#ROSBAG V2.0\n")
    with pytest.raises(BagError, match="ROS 1"):
        BagSource([tmp_path / "old.bag"])


def test_cloud_without_float_xyz_is_unsupported() -> None:
    from bagfactory import TS

    PF = TS.types["sensor_msgs/msg/PointField"]
    msg = TS.types["sensor_msgs/msg/PointCloud2"](
        header=None, height=1, width=1, fields=[PF(name="x", offset=0, datatype=7, count=1)],
        is_bigendian=False, point_step=4, row_step=4, data=np.zeros(4, np.uint8), is_dense=True)
    with pytest.raises(UnsupportedEncodingError, match="y/z"):
        cloud_xyz(msg)


def test_data_config_validation() -> None:
    with pytest.raises(ValueError, match=r"^unknown data key .widht.; valid data keys: width, height, "):
        DataConfig.from_dict({"widht": 3})
    with pytest.raises(ValueError, match="both"):
        DataConfig(width=32)
    cfg = DataConfig.from_dict({"cameras": [{"name": "a", "image_topic": "/a/image_raw"}],
                                "width": 8, "height": 6})
    assert cfg.cameras[0] == CameraTopics("a", "/a/image_raw") and cfg.size == (8, 6)


# ------------------------------------------------------------------ tensor store and cache
def test_tensor_store_atomic_put_and_key_invalidation(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    (root / "notes.txt").write_text("not ours")
    store = TensorStore(root, {"teacher": "dav2-s", "v": 1})
    store.put(3, {"a": torch.arange(6).reshape(2, 3), "b": np.ones((2, 2), np.float32)}, {"m": "x"})
    assert store.has(3) and not store.has(0) and store.indices() == [3]
    got = store.get(3)
    assert got["a"].tolist() == [[0, 1, 2], [3, 4, 5]] and got["b"].dtype == torch.float32
    assert store.metadata(3) == {"m": "x"}
    assert not list(root.glob("*.tmp-*"))
    assert TensorStore(root, {"v": 1, "teacher": "dav2-s"}).has(3)  # same key, any dict order
    live = root / f"00000004.safetensors.tmp-{os.getpid()}-live"  # a concurrent writer's file
    live.write_bytes(b"in flight")
    with pytest.raises(StoreKeyError):  # readers never clear a store built for another key
        TensorStore(root, {"teacher": "dav2-b", "v": 1}, create=False)
    assert TensorStore(root, {"teacher": "dav2-s", "v": 1}).has(3) and live.exists()
    live.unlink()
    (root / "00000007.safetensors.tmp-999999999-dead").write_bytes(b"half")  # a killed writer's leftover
    other = TensorStore(root, {"teacher": "dav2-b", "v": 1})
    assert len(other) == 0 and not list(root.glob("*.tmp-*"))
    assert (root / "notes.txt").read_text() == "not ours"  # only the store's own files are deleted
    with pytest.raises(KeyError):
        other.get(3)


@pytest.fixture()
def cache_bag(tmp_path: Path) -> Path:
    return write_bag(tmp_path / "cachebag", BagSpec(n_frames=4, with_gt=True)).path


def _mtimes(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in root.glob("*.safetensors")}


def test_cache_build_reuse_resume_and_invalidate(tmp_path: Path, cache_bag: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    index = build_cache([cache_bag], SMALL, cache, progress=False)
    assert len(index) == 4 and index.complete and index.camera_names == RING
    assert (index.width, index.height) == (32, 24)
    saved = json.loads((cache / "index.json").read_text())
    assert saved["key_hash"] == index.key_hash == index.key_digest and len(saved["entries"]) == 4
    first = _mtimes(cache)
    assert len(first) == 4

    def boom(self):
        raise AssertionError("a valid cache must not read the bag")

    with monkeypatch.context() as mp:
        mp.setattr(BagSource, "moments", boom)
        again = build_cache([cache_bag], SMALL, cache, progress=False)
    assert again.key_hash == index.key_hash and _mtimes(cache) == first

    # a killed run: no index, one entry missing, one damaged, a temporary left behind
    (cache / "index.json").unlink()
    (cache / "00000001.safetensors").unlink()
    (cache / "00000002.safetensors").write_bytes(b"\x00" * 64)
    (cache / "00000003.safetensors.tmp-999999999-abcd").write_bytes(b"partial")
    assembled = []
    real = Moment.assemble

    def spy(self):
        assembled.append(self.source.index)
        return real(self)

    with monkeypatch.context() as mp:
        mp.setattr(Moment, "assemble", spy)
        resumed = build_cache([cache_bag], SMALL, cache, progress=False)
    assert sorted(assembled) == [1, 2] and resumed.stats["reused"] == 2
    assert len(resumed) == 4 and not list(cache.glob("*.tmp-*"))
    now = _mtimes(cache)
    assert now["00000000.safetensors"] == first["00000000.safetensors"]
    ds = SurroundDataset(cache)
    assert ds[2]["images"].shape == (6, 3, 24, 32)

    # a touched bag (new mtime) or a new config changes the key: rebuilt from scratch
    changed = build_cache([cache_bag], DataConfig(width=16, height=12), cache, progress=False)
    assert changed.key_hash != index.key_hash and (changed.width, changed.height) == (16, 12)
    assert SurroundDataset(cache)[0]["images"].shape == (6, 3, 12, 16)
    os.utime(storage_file(cache_bag), ns=(1, 1))
    assert build_cache([cache_bag], DataConfig(width=16, height=12), cache, progress=False).key_hash \
        != changed.key_hash


def test_dataset_tensors(tmp_path: Path, cache_bag: Path, bags) -> None:
    index = build_cache([cache_bag], SMALL, tmp_path / "c1", progress=True)
    ds = SurroundDataset(index)
    item = ds[1]
    assert item["images"].shape == (6, 3, 24, 32) and item["images"].dtype == torch.float32
    assert float(item["images"].min()) >= 0.0 and float(item["images"].max()) <= 1.0
    assert item["sparse_depth"].shape == (6, 1, 24, 32) and item["sparse_depth"].dtype == torch.float32
    assert item["gt_depth"].shape == (6, 1, 24, 32) and bool(item["has_gt"])
    assert item["masks"].shape == (6, 1, 24, 32) and item["masks"].dtype == torch.bool
    assert item["K"].shape == (6, 3, 3) and item["T_base_cam"].shape == (6, 4, 4) and item["index"] == 1
    s = list(read_samples([cache_bag], SMALL))[1]
    np.testing.assert_array_equal(item["sparse_depth"][:, 0].numpy(), s.sparse_depth)
    np.testing.assert_allclose(item["images"].permute(0, 2, 3, 1).numpy() * 255, s.images, atol=1e-3)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["images"].shape == (2, 6, 3, 24, 32) and batch["index"].tolist() == [0, 1]
    assert [ds.rig().cameras[i].name for i in ds.rig().ring_order()] == RING

    no_gt = SurroundDataset(build_cache([bags["mcap"].path], SMALL, tmp_path / "c2", progress=False))
    item = no_gt[0]
    assert not bool(item["has_gt"]) and torch.isnan(item["gt_depth"]).all()
    assert item["gt_depth"].shape == (6, 1, 24, 32)


def test_cache_refuses_bags_with_different_layouts(tmp_path: Path, bags) -> None:
    other = write_bag(tmp_path / "big", BagSpec(n_frames=1, width=80, height=60)).path
    with pytest.raises(BagError, match="differ from the earlier bags"):
        build_cache([bags["sqlite3"].path, other], DataConfig(), tmp_path / "c", progress=False)


# ------------------------------------------------------------------ inspect
def _inspect_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_inspect_arguments(parser)
    return run_inspect(parser.parse_args(list(argv)))


def test_inspect_reports_layout_and_missing_parts(tmp_path: Path, bags, capsys) -> None:
    good = inspect_bag(bags["mcap"].path)
    for text in ("storage: mcap", "/cameras/front/image_raw/compressed", "sensor_msgs/msg/CompressedImage",
                 "front_left", "+60.0 deg", "camera_back_optical_frame", "lidar: /lidar/points",
                 "roof_mount -> lidar_top", "status: OK", "64x48", "duration:"):
        assert text in good, text
    broken = _write(tmp_path, "broken", omit_info={"back"}, omit_tf_static=True)
    report = inspect_bag(broken)
    assert "camera back has no camera_info" in report and "no /tf_static" in report
    assert "NOT USABLE" in report
    assert _inspect_cli(str(bags["sqlite3"].path)) == 0
    assert _inspect_cli(str(bags["sqlite3"].path), str(broken)) == 1
    assert _inspect_cli(str(tmp_path / "nothing")) == 2
    out = capsys.readouterr().out
    assert "does not exist" in out and "camera back has no camera_info" in out


def test_inspect_with_rig_yaml_resolves_missing_tf(tmp_path: Path) -> None:
    wb = write_bag(tmp_path / "notf", BagSpec(n_frames=1, omit_tf_static=True))
    wb.rig.save(tmp_path / "rig.yaml")
    assert "no /tf_static" in inspect_bag(wb.path)
    assert _inspect_cli(str(wb.path), "--rig", str(tmp_path / "rig.yaml")) == 0



# ------------------------------------------------------------------ motion compensation (/tf, per-point times)
def _quat_z(yaw: float) -> np.ndarray:
    return np.array([0.0, 0.0, np.sin(yaw / 2), np.cos(yaw / 2)])


def _odom_buffer(stamps_ms: list[float], xs: list[float], yaws: list[float]):
    from fsmde_core.data.tf import TransformBuffer

    buf = TransformBuffer()
    for t, x, yaw in zip(stamps_ms, xs, yaws, strict=True):
        buf.add("odom", "base_link", T0 + round(t * 1e6), [x, 0.0, 0.0], _quat_z(yaw))
    return buf


T0 = 1_700_000_000 * 1_000_000_000


def test_transform_buffer_interpolates_translation_linearly_and_rotation_by_slerp() -> None:
    # added out of order, with a repeated stamp (the later sample wins, as in tf2)
    buf = _odom_buffer([20.0, 0.0, 40.0, 20.0], [5.0, 0.0, 99.0, 2.0], [0.3, 0.0, 0.0, np.pi / 2])
    track = buf.tracks[("odom", "base_link")]
    assert track.stamps.tolist() == [T0, T0 + 20_000_000, T0 + 40_000_000]
    T, ok = track.interpolate(np.array([T0 + 5_000_000, T0 + 20_000_000, T0 + 30_000_000]))
    assert ok.all()
    np.testing.assert_allclose(T[:, 0, 3], [0.5, 2.0, 2.0 + 0.5 * 97.0])
    yaw = np.arctan2(T[:, 1, 0], T[:, 0, 0])
    np.testing.assert_allclose(yaw, [np.pi / 8, np.pi / 2, np.pi / 4], atol=1e-12)  # constant angular rate
    np.testing.assert_allclose(T[:, :3, :3] @ T[:, :3, :3].transpose(0, 2, 1), np.tile(np.eye(3), (3, 1, 1)),
                               atol=1e-12)


def test_slerp_takes_the_short_way_and_handles_nearly_equal_rotations() -> None:
    from fsmde_core.data.tf import quaternion_slerp, quaternions_to_matrices

    q0, q1 = _quat_z(0.0), -_quat_z(np.radians(100.0))  # -q is the same rotation: go 50 deg, not 130
    mid = quaternions_to_matrices(quaternion_slerp(q0[None], q1[None], np.array([0.5])))[0]
    assert np.degrees(np.arctan2(mid[1, 0], mid[0, 0])) == pytest.approx(50.0)
    tiny = quaternion_slerp(q0[None], _quat_z(1e-9)[None], np.array([0.5]))
    assert np.isfinite(tiny).all() and np.linalg.norm(tiny) == pytest.approx(1.0)


def test_transform_buffer_clamps_near_its_span_and_refuses_far_outside_and_across_gaps() -> None:
    buf = _odom_buffer([0.0, 20.0, 1020.0], [0.0, 1.0, 2.0], [0.0, 0.0, 0.0])
    track = buf.tracks[("odom", "base_link")]
    ms = np.array([-10.0, -30.0, 1030.0, 1050.0, 10.0, 500.0])
    T, ok = track.interpolate(T0 + np.round(ms * 1e6).astype(np.int64), tolerance_ns=20_000_000,
                              max_gap_ns=500_000_000)
    assert ok.tolist() == [True, False, True, False, True, False]  # 1 s hole in /tf: not interpolated
    np.testing.assert_allclose(T[[0, 2, 4], 0, 3], [0.0, 2.0, 0.5])  # clamped to the first / last pose


def test_chain_to_fixed_frame_goes_through_static_hops() -> None:
    from fsmde_core.data.motion import EgoTrajectory

    buf = _odom_buffer([0.0, 100.0], [0.0, 1.0], [0.0, 0.0])
    static = TfTree()
    static.add("base_link", "base_footprint", make_transform(np.eye(3), [0.0, 0.0, -0.3]))
    assert buf.chain_to_fixed("base_footprint", static) == [("odom", "base_link", True),
                                                           ("base_link", "base_footprint", False)]
    T, ok = EgoTrajectory(buf, buf.chain_to_fixed("base_footprint", static), static).poses(
        np.array([T0 + 50_000_000]))
    np.testing.assert_allclose(T[0, :3, 3], [0.5, 0.0, -0.3])
    assert ok.all()
    assert buf.chain_to_fixed("camera_front", static) is None  # not connected to odom/map
    lonely = TfTree()
    lonely.add("odom", "base_link", np.eye(4))
    from fsmde_core.data.tf import TransformBuffer

    assert TransformBuffer().chain_to_fixed("base_link", lonely) is None  # nothing moves: nothing to compensate


def _time_cloud(datatype: int, values: np.ndarray, name: str = "t"):
    """A 2x2 organised cloud: x/y/z float32 then one time field of ``datatype`` at offset 16 (bagfactory types)."""
    from bagfactory import TS

    PF = TS.types["sensor_msgs/msg/PointField"]
    kind = {5: "<i4", 6: "<u4", 7: "<f4", 8: "<f8"}.get(datatype, "<u2")
    step = 24
    rec = np.zeros((4, step), dtype=np.uint8)
    rec[:, 0:12] = np.arange(12, dtype="<f4").view(np.uint8).reshape(4, 12)
    raw = np.asarray(values).astype(kind).view(np.uint8).reshape(4, -1)
    rec[:, 16:16 + raw.shape[1]] = raw
    fields = [PF(name=n, offset=o, datatype=7, count=1) for n, o in (("x", 0), ("y", 4), ("z", 8))]
    fields.append(PF(name=name, offset=16, datatype=datatype, count=1))
    hdr = TS.types["std_msgs/msg/Header"](stamp=TS.types["builtin_interfaces/msg/Time"](sec=0, nanosec=0),
                                          frame_id="lidar")
    return TS.types["sensor_msgs/msg/PointCloud2"](
        header=hdr, height=2, width=2, fields=fields, is_bigendian=False, point_step=step, row_step=2 * step,
        data=rec.reshape(-1), is_dense=True)


@pytest.mark.parametrize("datatype, name, values, offsets_ns", [
    (7, "t", [0.0, 0.0125, 0.025, 0.0499], [0, 12_500_000, 25_000_000, 49_900_000]),  # float32 s, relative
    (7, "time", [0.0, 0.0125, 0.025, 0.0499], [0, 12_500_000, 25_000_000, 49_900_000]),  # Velodyne
    (6, "t", [0, 12_500_000, 25_000_000, 49_900_000], [0, 12_500_000, 25_000_000, 49_900_000]),  # Ouster u32 ns
    (8, "timestamp", [1_700_000_000.0, 1_700_000_000.0125, 1_700_000_000.025, 1_700_000_000.0499],
     [0, 12_500_000, 25_000_000, 49_900_000]),  # Hesai: absolute epoch seconds
    (8, "timestamp", [1.7e18, 1.7e18 + 12_500_000, 1.7e18 + 25_000_000, 1.7e18 + 49_900_000],
     [0, 12_500_000, 25_000_000, 49_900_000]),  # Livox: absolute epoch nanoseconds as float64
    (8, "t", [0.0, 0.0125, 0.025, 0.0499], [0, 12_500_000, 25_000_000, 49_900_000]),  # float64 s, relative
])
def test_point_time_fields_of_common_drivers(datatype: int, name: str, values, offsets_ns) -> None:
    from fsmde_core.data.motion import decode_point_times

    got = decode_point_times(_time_cloud(datatype, np.array(values), name), T0)
    # float32 seconds are exact to ~4 ns at 50 ms; float64 epoch seconds to ~0.2 us
    np.testing.assert_allclose(got - T0, offsets_ns, atol=300 if datatype == 8 and values[0] > 1e6 else 10)


def test_point_time_fields_that_cannot_be_read() -> None:
    from fsmde_core.data.motion import decode_point_times

    assert decode_point_times(_time_cloud(7, np.zeros(4), name="intensity2"), T0) is None
    with pytest.raises(UnsupportedEncodingError, match="datatype 4"):
        decode_point_times(_time_cloud(4, np.zeros(4)), T0)  # uint16: no driver writes time like this
    with pytest.raises(UnsupportedEncodingError, match="FLOAT32"):
        decode_point_times(_time_cloud(7, np.full(4, 1.7e9)), T0)  # absolute seconds in float32: 2 min steps


def test_see_through_filter_removes_lidar_points_the_camera_cannot_see(synthetic_bag: Path) -> None:
    """On the synthetic street (dense GT = what each camera sees), LiDAR pixels that read >20 % farther
    than the camera's surface are points seen past a near object; the filter (on by default) removes
    most of them and keeps most of the rest."""
    def too_far(cfg: DataConfig) -> tuple[int, int]:
        bad = total = 0
        for s in read_samples([synthetic_bag], cfg):
            ok = np.isfinite(s.sparse_depth) & np.isfinite(s.gt_depth) & (s.gt_depth > 0)
            bad += int((s.sparse_depth[ok] > 1.2 * s.gt_depth[ok]).sum())
            total += int(ok.sum())
        return bad, total

    bad_off, total_off = too_far(DataConfig(see_through_filter=False))
    bad_on, total_on = too_far(DataConfig())
    assert bad_off > 50 and bad_on < 0.5 * bad_off
    assert total_on > 0.85 * total_off


@pytest.mark.parametrize("bad", [{"see_through_filter": "yes"}, {"see_through_window": 0.0},
                                 {"see_through_window": 0.5}, {"see_through_ratio": 1.0}])
def test_see_through_settings_are_validated(bad: dict) -> None:
    with pytest.raises(ValueError, match="see_through"):
        DataConfig(**bad)


def _sparse_vs_dense(samples) -> tuple[float, float, int]:
    """(median |sparse - dense| / dense, fraction beyond 5 %, pixels) over every camera and sample."""
    rel = []
    for s in samples:
        ok = np.isfinite(s.sparse_depth) & np.isfinite(s.gt_depth) & (s.gt_depth > 0)
        rel.append(np.abs(s.sparse_depth[ok] - s.gt_depth[ok]) / s.gt_depth[ok])
    r = np.concatenate(rel)
    return float(np.median(r)), float((r > 0.05).mean()), int(r.size)


@pytest.fixture(scope="module")
def motion_bags(tmp_path_factory) -> dict[str, Path]:
    """Small nuScenes-rig drives of one street: a parked synchronous rig, and a LiDAR-triggered rig at
    12 m/s with a raw rolling sweep and with a sweep deskewed to its stamp."""
    from fsmde_core.synthetic.writer import generate_bag

    root = tmp_path_factory.mktemp("motion")
    kinds = {"static": dict(speed=0.0), "raw": dict(camera_timing="sweep", speed=12.0),
             "deskewed": dict(camera_timing="sweep", speed=12.0, lidar_sweep="deskewed")}
    for name, kw in kinds.items():
        generate_bag("nuscenes", 3, seed=4, out=root / name, width=160, height=96, progress=False, workers=1, **kw)
    return {name: root / name for name in kinds}


def _read_motion(bag: Path, mode: str) -> tuple[list, BagSource]:
    src = BagSource([bag], DataConfig(sync_tolerance_ms=50.0, motion_compensation=mode))
    return list(src), src


def test_motion_compensated_lidar_matches_dense_gt_as_on_a_static_rig(motion_bags) -> None:
    """Sweep-triggered cameras at 12 m/s: the compensated sparse depth agrees with the depth rendered
    at each camera's stamp as well as a parked rig's does; ignoring the motion (or the points' own
    firing times) is clearly worse."""
    static, _ = _read_motion(motion_bags["static"], "auto")
    ref_med, ref_far, _ = _sparse_vs_dense(static)
    for kind, wrong_mode in (("raw", "stamp"), ("deskewed", "off")):
        good, src = _read_motion(motion_bags[kind], "auto")
        assert len(good) == 3 and all(s.motion_compensated for s in good) and src.stats.uncompensated == 0
        spread = max(int(np.ptp(s.camera_stamps_ns)) for s in good)
        assert 30e6 < spread < 50e6, "cameras fire as the beam passes them (~42 ms for six cameras)"
        med, far, n = _sparse_vs_dense(good)
        assert n > 50_000
        assert med <= 1.25 * ref_med + 5e-4, (kind, med, ref_med)
        assert far <= ref_far + 0.01, (kind, far, ref_far)
        bad, bad_src = _read_motion(motion_bags[kind], wrong_mode)
        bad_med, bad_far, _ = _sparse_vs_dense(bad)
        assert bad_med > 1.25 * med and bad_far > 1.4 * far, (kind, wrong_mode, med, bad_med, far, bad_far)
        assert all(s.motion_compensated == (wrong_mode == "stamp") for s in bad)
        assert bad_src.stats.uncompensated == (3 if wrong_mode == "off" else 0)


def test_bags_without_odometry_are_read_uncompensated_and_say_so(tmp_path: Path, caplog) -> None:
    path = _write(tmp_path, "no_tf", n_frames=2)
    src = BagSource([path])
    with caplog.at_level(logging.WARNING):
        samples = list(src)
    assert len(samples) == 2 and not any(s.motion_compensated for s in samples)
    assert src.stats.uncompensated == 2
    assert sum("NOT motion compensated" in r.getMessage() for r in caplog.records) == 1, "logged once per bag"
    assert "LiDAR ground truth is NOT motion compensated: no /tf" in inspect_bag(path)


def test_inspect_reports_the_odometry_used_for_compensation(motion_bags) -> None:
    report = inspect_bag(motion_bags["raw"], DataConfig(sync_tolerance_ms=50.0))
    assert "LiDAR ground truth is motion compensated (auto) with /tf: odom -> base_link" in report


def test_compensation_refuses_stamps_outside_the_odometry() -> None:
    from bagfactory import make_rig

    from fsmde_core.data.motion import EgoTrajectory, compensated_sparse_depth

    buf = _odom_buffer([0.0, 20.0, 40.0], [0.0, 0.24, 0.48], [0.0, 0.0, 0.0])
    motion = EgoTrajectory(buf, buf.chain_to_fixed("base_link"))
    rig = make_rig(64, 48)
    pts = np.array([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0]])
    cams = np.full(len(rig.cameras), T0 + 30_000_000, dtype=np.int64)
    inside = np.array([T0 + 10_000_000, T0 + 40_000_000])
    assert compensated_sparse_depth(pts, inside, cams, rig, np.eye(4), motion, 0.1, 80.0) is not None
    late = np.array([T0 + 10_000_000, T0 + 100_000_000])  # 60 ms after the last pose
    assert compensated_sparse_depth(pts, late, cams, rig, np.eye(4), motion, 0.1, 80.0) is None


# ------------------------------------------------------------------ cameras of different sizes
def test_cameras_of_different_sizes_are_a_layout_problem_unless_a_sample_size_is_set() -> None:
    """Found by a user: inspect said OK, then reading failed. Discovery now refuses it, naming the keys."""
    from fsmde_core.camera import CameraModel
    from fsmde_core.data.layout import BagLayout, CameraStream, check_one_sample_size

    def cam(name: str, w: int, h: int) -> CameraStream:
        model = CameraModel(width=w, height=h, K=np.array([[100.0, 0, w / 2], [0, 100.0, h / 2], [0, 0, 1]]))
        return CameraStream(name, f"/cameras/{name}/image_raw", "sensor_msgs/msg/Image",
                            f"/cameras/{name}/camera_info", model=model)

    cams = [cam("front", 640, 352), cam("back", 320, 176)]
    native = BagLayout(Path("b"), DataConfig(), {}, cameras=cams)
    check_one_sample_size(native)
    assert not native.ok and len(native.problems) == 1
    text = str(native.problems[0])
    assert "/cameras/back/image_raw" in text and "front 640x352, back 320x176" in text
    assert "data.width and data.height" in text
    resized = BagLayout(Path("b"), DataConfig(width=320, height=176), {}, cameras=cams)
    check_one_sample_size(resized)
    assert resized.ok
