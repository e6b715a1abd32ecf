"""Tests of the surround rig: REP 103 frames, presets, ring order, YAML (fsmde_core.rig)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from fsmde_core.camera import CameraModel
from fsmde_core.rig import (
    PRESET_NAMES,
    Rig,
    RigCamera,
    RigError,
    make_transform,
    matrix_to_quaternion,
    optical_to_base_rotation,
    preset,
    quaternion_to_matrix,
)

REPO = Path(__file__).resolve().parents[1]
EX, EY, EZ = np.eye(3)


def assert_proper_rotation(R: np.ndarray) -> None:
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-12)


def camera(name: str, yaw: float, pitch: float = 0.0, pos=(0.0, 0.0, 1.5)) -> RigCamera:
    T = make_transform(optical_to_base_rotation(yaw, pitch), np.asarray(pos, dtype=float))
    return RigCamera(name, f"camera_{name}_optical_frame", CameraModel.pinhole(64, 48, 90.0), T)


def assert_rigs_close(a: Rig, b: Rig, tol: float = 1e-9) -> None:
    assert (a.name, a.base_frame, a.lidar_frame, a.lidar_topic) == (b.name, b.base_frame, b.lidar_frame,
                                                                   b.lidar_topic)
    assert a.max_depth == pytest.approx(b.max_depth)
    np.testing.assert_allclose(a.T_base_lidar, b.T_base_lidar, atol=tol)
    assert a.names == b.names
    for ca, cb in zip(a.cameras, b.cameras, strict=True):
        assert (ca.frame_id, ca.image_topic, ca.info_topic, ca.mask) == (cb.frame_id, cb.image_topic,
                                                                         cb.info_topic, cb.mask)
        assert (ca.model.width, ca.model.height) == (cb.model.width, cb.model.height)
        np.testing.assert_allclose(ca.model.K, cb.model.K, rtol=1e-12)
        np.testing.assert_allclose(ca.model.D, cb.model.D, atol=1e-15)
        np.testing.assert_allclose(ca.T_base_cam, cb.T_base_cam, atol=tol)


# ------------------------------------------------------------ REP 103 frames
def test_forward_camera_axes_follow_rep103():
    R = optical_to_base_rotation(0.0)
    np.testing.assert_allclose(R @ EZ, [1, 0, 0], atol=1e-15)  # optical z (forward) -> base +x
    np.testing.assert_allclose(R @ EX, [0, -1, 0], atol=1e-15)  # optical x (right) -> base -y
    np.testing.assert_allclose(R @ EY, [0, 0, -1], atol=1e-15)  # optical y (down) -> base -z
    assert_proper_rotation(R)


def test_yaw_90_looks_left():
    R = optical_to_base_rotation(90.0)
    np.testing.assert_allclose(R @ EZ, [0, 1, 0], atol=1e-15)  # looks along +y (left)
    np.testing.assert_allclose(R @ EX, [1, 0, 0], atol=1e-15)  # its right is the car's front
    np.testing.assert_allclose(R @ EY, [0, 0, -1], atol=1e-15)
    assert camera("left", 90.0).yaw_deg == pytest.approx(90.0)


def test_positive_pitch_tilts_down_and_roll_keeps_the_axis():
    z = optical_to_base_rotation(0.0, 10.0) @ EZ
    np.testing.assert_allclose(z, [np.cos(np.radians(10)), 0, -np.sin(np.radians(10))], atol=1e-15)
    R0, Rr = optical_to_base_rotation(30.0, 5.0), optical_to_base_rotation(30.0, 5.0, 20.0)
    np.testing.assert_allclose(Rr @ EZ, R0 @ EZ, atol=1e-15)
    assert np.degrees(np.arccos(np.clip((R0 @ EX) @ (Rr @ EX), -1, 1))) == pytest.approx(20.0)


@settings(max_examples=150, deadline=None, database=None)
@given(st.floats(-180, 180), st.floats(-60, 60), st.floats(-180, 180))
def test_optical_to_base_is_a_proper_rotation(yaw, pitch, roll):
    R = optical_to_base_rotation(yaw, pitch, roll)
    assert_proper_rotation(R)


@settings(max_examples=150, deadline=None, database=None)
@given(st.floats(-179.9, 180.0), st.floats(-30, 30))
def test_camera_yaw_is_recovered_from_extrinsics(yaw, pitch):
    assert camera("c", yaw, pitch).yaw_deg == pytest.approx(yaw, abs=1e-9)


# ------------------------------------------------------------ quaternions
unit_quaternions = st.lists(st.floats(-1, 1), min_size=4, max_size=4).map(np.array).filter(
    lambda q: np.linalg.norm(q) > 1e-3).map(lambda q: q / np.linalg.norm(q))


@settings(max_examples=300, deadline=None, database=None)
@given(unit_quaternions)
def test_quaternion_matrix_round_trip(q):
    R = quaternion_to_matrix(q)
    assert_proper_rotation(R)
    q2 = matrix_to_quaternion(R)
    assert q2[3] >= 0.0  # canonical sign
    assert min(np.abs(q2 - q).max(), np.abs(q2 + q).max()) < 1e-9  # q and -q: same rotation
    np.testing.assert_allclose(quaternion_to_matrix(q2), R, atol=1e-12)


@pytest.mark.parametrize("axis", [EX, EY, EZ, np.array([1.0, 1.0, 0.0]), np.array([1.0, -2.0, 3.0])])
def test_half_turns_round_trip(axis):
    """180 deg rotations (trace -1) take the non-trace branches of matrix_to_quaternion."""
    a = axis / np.linalg.norm(axis)
    R = 2 * np.outer(a, a) - np.eye(3)  # Rodrigues at theta = pi
    q = matrix_to_quaternion(R)
    assert abs(q[3]) < 1e-12
    np.testing.assert_allclose(np.abs(q[:3]), np.abs(a), atol=1e-12)
    np.testing.assert_allclose(quaternion_to_matrix(q), R, atol=1e-12)


def test_quaternion_known_answers():
    np.testing.assert_allclose(matrix_to_quaternion(np.eye(3)), [0, 0, 0, 1])
    s = np.sqrt(0.5)
    Rz90 = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    np.testing.assert_allclose(matrix_to_quaternion(Rz90), [0, 0, s, s], atol=1e-15)
    np.testing.assert_allclose(quaternion_to_matrix([0, 0, s, s]), Rz90, atol=1e-15)
    np.testing.assert_allclose(matrix_to_quaternion(optical_to_base_rotation(0)), [-0.5, 0.5, -0.5, 0.5])


# ------------------------------------------------------------ presets
@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_has_six_cameras_in_ccw_ring(name, camera_names):
    rig = preset(name)
    assert len(rig) == 6
    assert [rig.cameras[i].name for i in rig.ring_order()] == camera_names
    yaws = [rig.cameras[i].yaw_deg for i in rig.ring_order()]
    assert yaws[0] == pytest.approx(0.0, abs=1e-9)
    ccw = np.mod(yaws, 360.0)
    assert np.all(np.diff(ccw) > 0)  # counter-clockwise from the front


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_adjacent_pairs_form_a_ring_whose_fovs_overlap(name):
    rig = preset(name)
    pairs = rig.adjacent_pairs()
    assert len(pairs) == 6
    assert sorted(i for p in pairs for i in p) == sorted(list(range(6)) * 2)  # each camera twice
    for (_, b), (c, _) in zip(pairs, pairs[1:] + pairs[:1], strict=True):
        assert b == c  # a closed chain
    for i, j in pairs:
        ci, cj = rig.cameras[i], rig.cameras[j]
        dyaw = np.mod(cj.yaw_deg - ci.yaw_deg, 360.0)
        assert 0 < dyaw < (ci.model.hfov_deg + cj.model.hfov_deg) / 2, (ci.name, cj.name)


@pytest.mark.parametrize("name, size, cap", [("ddad", (640, 384), 200.0), ("nuscenes", (640, 352), 80.0)])
def test_preset_sizes_caps_and_geometry(name, size, cap):
    rig = preset(name)
    assert rig.max_depth == cap
    for c in rig.cameras:
        assert (c.model.width, c.model.height) == size
        assert c.frame_id == f"camera_{c.name}_optical_frame"
        assert c.T_base_cam[2, 3] > 1.0  # mounted above the ground
        assert (c.T_base_cam[:3, :3] @ EZ)[2] < 0  # slight downward pitch
    small = preset(name, 160, 96)
    assert all((c.model.width, c.model.height) == (160, 96) for c in small.cameras)
    np.testing.assert_array_equal(small.cameras[2].T_base_cam, rig.cameras[2].T_base_cam)


def test_preset_errors():
    with pytest.raises(RigError, match="unknown rig preset 'kitti'"):
        preset("kitti")
    with pytest.raises(RigError, match="both width and height"):
        preset("ddad", width=320)


# ------------------------------------------------------------ ring order
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("name", PRESET_NAMES)
def test_ring_order_does_not_depend_on_listing_order(name, seed, camera_names):
    rig = preset(name)
    cams = list(rig.cameras)
    random.Random(seed).shuffle(cams)
    shuffled = Rig(rig.name, cams)
    assert [shuffled.cameras[i].name for i in shuffled.ring_order()] == camera_names
    pair_names = {(shuffled.cameras[i].name, shuffled.cameras[j].name) for i, j in shuffled.adjacent_pairs()}
    assert pair_names == set(zip(camera_names, camera_names[1:] + camera_names[:1], strict=True))


def test_ring_starts_at_front_camera_mounted_slightly_right():
    """A front camera at -0.3 deg yaw is still the start of the ring (not the end)."""
    rig = Rig("r", [camera("left", 90), camera("front", -0.3), camera("back", 180), camera("right", -90)])
    assert [rig.cameras[i].name for i in rig.ring_order()] == ["front", "left", "back", "right"]


def test_ring_ties_are_broken_by_name():
    a = Rig("r", [camera("b", 0), camera("a", 0), camera("c", 120)])
    b = Rig("r", [camera("a", 0), camera("c", 120), camera("b", 0)])
    assert [a.cameras[i].name for i in a.ring_order()] == ["a", "b", "c"]
    assert [b.cameras[i].name for i in b.ring_order()] == ["a", "b", "c"]


def test_adjacent_pairs_of_small_rigs():
    assert Rig("one", [camera("a", 0)]).adjacent_pairs() == []
    two = Rig("two", [camera("back", 180), camera("front", 0)])
    assert two.adjacent_pairs() == [(1, 0)]


# ------------------------------------------------------------ rig object
def test_rig_queries_and_equality(camera_names):
    rig = preset("ddad")
    assert rig.names == camera_names  # listed in ring order in the preset
    assert rig.camera("back").name == "back" and rig.index("back") == 3
    with pytest.raises(KeyError, match="no camera 'roof'"):
        rig.camera("roof")
    assert rig == preset("ddad") and rig != preset("nuscenes")
    assert rig.cameras[3] in preset("ddad").cameras
    np.testing.assert_allclose(rig.cameras[1].T_cam_base @ rig.cameras[1].T_base_cam, np.eye(4), atol=1e-12)
    assert rig.cameras[0].image_topic == "/cameras/front/image_raw"
    assert rig.cameras[0].info_topic == "/cameras/front/camera_info"


def test_invalid_transforms_are_refused():
    T = np.diag([2.0, 1.0, 1.0, 1.0])  # scaling, not a rotation
    with pytest.raises(RigError, match="not a proper rotation"):
        RigCamera("c", "f", CameraModel.pinhole(64, 48, 90), T)
    with pytest.raises(RigError, match="4x4"):
        RigCamera("c", "f", CameraModel.pinhole(64, 48, 90), np.eye(3))
    with pytest.raises(RigError, match="T_base_lidar"):
        Rig("r", [camera("a", 0)], T_base_lidar=np.diag([1.0, 1.0, -1.0, 1.0]))  # reflection
    with pytest.raises(RigError, match="duplicate camera names"):
        Rig("r", [camera("a", 0), camera("a", 90)])
    with pytest.raises(RigError, match="no cameras"):
        Rig("r", [])


# ------------------------------------------------------------ YAML
@pytest.mark.parametrize("name", PRESET_NAMES)
def test_yaml_save_load_round_trip(tmp_path, name):
    rig = preset(name)
    rig.cameras[1].model = CameraModel(rig.cameras[1].model.width, rig.cameras[1].model.height,
                                       rig.cameras[1].model.K, np.array([-0.1, 0.01, 1e-4, -2e-4, 0.0]))
    rig.T_base_lidar = make_transform(optical_to_base_rotation(10, 3, 1), np.array([0.1, 0.2, 1.9]))
    path = tmp_path / "sub" / "rig.yaml"
    rig.save(path)
    loaded = Rig.load(path)
    assert_rigs_close(loaded, rig)
    assert_rigs_close(Rig.from_dict(rig.to_dict()), rig)
    assert not (tmp_path / "sub" / "rig.yaml.tmp").exists()


def test_saved_yaml_is_plain_and_readable(tmp_path):
    preset("ddad").save(tmp_path / "r.yaml")
    text = (tmp_path / "r.yaml").read_text()
    assert "K: [" in text and "rotation_xyzw: [" in text  # numeric lists inline
    assert "!!" not in text  # no Python-specific tags
    assert yaml.safe_load(text)["cameras"][0]["name"] == "front"


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_shipped_yaml_loads_and_equals_preset(name):
    path = REPO / "config" / f"rig_{name}.yaml"
    text = path.read_text()
    assert text.startswith("#") and "REP 103" in text and "mask" in text
    assert_rigs_close(Rig.load(path), preset(name))


def _yaml_rig(tmp_path: Path, mutate, name: str = "rig.yaml") -> Path:
    data = preset("ddad").to_dict()
    mutate(data)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("mutate, pattern", [
    (lambda d: d["cameras"][2].pop("K"), r"missing 'K' in camera 'back_left'"),
    (lambda d: d["cameras"][0].pop("name"), r"missing 'name' in cameras\[0\]"),
    (lambda d: d["cameras"][1].pop("T_base_cam"), r"missing 'T_base_cam' in camera 'front_left'"),
    (lambda d: d["cameras"][1]["T_base_cam"].pop("translation"),
     r"missing 'translation' in camera 'front_left'.T_base_cam"),
    (lambda d: d.pop("cameras"), r"missing 'cameras' in the top level"),
    (lambda d: d.update(cameras=[]), r"'cameras' must be a non-empty list"),
    (lambda d: d["cameras"][3]["T_base_cam"].update(rotation_xyzw=[0.0, 0.0, 0.0, 0.9]),
     r"camera 'back'.T_base_cam.rotation_xyzw is not a unit quaternion \(norm 0.9000\)"),
    (lambda d: d["lidar"]["T_base_lidar"].update(rotation_xyzw=[0.0, 0.0, 0.0, 2.0]),
     r"lidar.T_base_lidar.rotation_xyzw is not a unit quaternion"),
    (lambda d: d["cameras"][3]["T_base_cam"].update(translation=[1.0, 2.0]),
     r"camera 'back'.T_base_cam needs translation \[x,y,z\]"),
    (lambda d: d["cameras"][4].update(name="front"), r"duplicate camera names \['front'\]"),
    (lambda d: d["cameras"][0].update(K=[1.0, 2.0, 3.0]), r"camera 'front': CameraInfo.k must have 9"),
    (lambda d: d["cameras"][0].update(width=None), r"camera 'front'"),
    (lambda d: d["cameras"][0].update(height=0), r"camera 'front': camera size must be positive"),
    (lambda d: d["cameras"][5].update(distortion_model="equidistant"),
     r"camera 'front_right': distortion model 'equidistant' is not supported"),
    (lambda d: d["cameras"][5].update(D=[0.1, "x", 0, 0]), r"camera 'front_right'.*not numeric"),
    (lambda d: d["cameras"][5].update(mask=3), r"camera 'front_right': mask must be a path"),
    (lambda d: d.update(max_depth="far"), r"max_depth must be a number"),
    (lambda d: d.update(max_depth=-5.0), r"max_depth must be a positive number"),
    (lambda d: d.update(lidar=[1, 2]), r"'lidar' must be a mapping"),
    (lambda d: d["cameras"].__setitem__(1, "front_left"), r"cameras\[1\] must be a mapping"),
])
def test_validation_errors_name_file_and_field(tmp_path, mutate, pattern):
    path = _yaml_rig(tmp_path, mutate)
    with pytest.raises(RigError, match=pattern) as info:
        Rig.load(path)
    assert str(info.value).startswith(str(path))


def test_missing_file_invalid_yaml_and_non_mapping(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(RigError, match=f"not found: {missing}"):
        Rig.load(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("cameras: [name: front\n  - : :\n")
    with pytest.raises(RigError, match=f"{bad}: not valid YAML"):
        Rig.load(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(RigError, match=f"{listed}: expected a mapping"):
        Rig.load(listed)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(RigError, match="expected a mapping"):
        Rig.load(empty)


def test_minimal_yaml_gets_defaults(tmp_path):
    path = tmp_path / "mini.yaml"
    path.write_text(
        "cameras:\n"
        "  - name: cam0\n"
        "    width: 64\n    height: 48\n"
        "    K: [50, 0, 31.5, 0, 50, 23.5, 0, 0, 1]\n"
        "    T_base_cam: {translation: [1, 0, 1.5], rotation_xyzw: [-0.5, 0.5, -0.5, 0.5]}\n"
    )
    rig = Rig.load(path)
    assert rig.name == "mini" and rig.base_frame == "base_link" and rig.max_depth == 80.0
    c = rig.cameras[0]
    assert c.frame_id == "camera_cam0_optical_frame" and c.mask is None
    np.testing.assert_array_equal(c.model.D, np.zeros(5))
    np.testing.assert_allclose(c.T_base_cam[:3, :3], optical_to_base_rotation(0.0), atol=1e-15)
    np.testing.assert_array_equal(rig.T_base_lidar, np.eye(4))


def test_ego_mask_paths_resolve_relative_to_the_yaml(tmp_path, monkeypatch):
    def add_masks(d):
        d["cameras"][0]["mask"] = "masks/front.png"
        d["cameras"][1]["mask"] = str(tmp_path / "abs" / "fl.png")

    calib_dir = tmp_path / "calib"
    calib_dir.mkdir()
    path = _yaml_rig(calib_dir, add_masks)
    monkeypatch.chdir(tmp_path)  # a cwd that differs from the YAML's folder
    rig = Rig.load(path)
    assert rig.cameras[0].mask == str((calib_dir / "masks" / "front.png").resolve())
    assert rig.cameras[1].mask == str(tmp_path / "abs" / "fl.png")
    assert rig.cameras[2].mask is None
    # Saved elsewhere, the (now absolute) mask path still points at the same file.
    rig.save(tmp_path / "elsewhere" / "rig.yaml")
    again = Rig.load(tmp_path / "elsewhere" / "rig.yaml")
    assert again.cameras[0].mask == rig.cameras[0].mask


@pytest.mark.parametrize("seed", range(3))
def test_yaml_listing_order_does_not_change_the_ring(tmp_path, seed, camera_names):
    path = _yaml_rig(tmp_path, lambda d: random.Random(seed).shuffle(d["cameras"]))
    rig = Rig.load(path)
    assert [rig.cameras[i].name for i in rig.ring_order()] == camera_names
