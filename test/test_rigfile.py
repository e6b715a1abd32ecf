"""``fsmde rig``: the rig YAML and node parameters written from a real bag round-trip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from bagfactory import BagSpec, WrittenBag, write_bag

from fsmde_core.data.config import DataConfig
from fsmde_core.data.rigfile import NODE_KEY, RigFileError, bag_layout, write_rig_files
from fsmde_core.rig import Rig
from fsmde_ros.params import known_parameter_names, settings_from_values

ROOT = Path(__file__).resolve().parents[1]


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat: dict = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _rig(bag: Path, tmp: Path, **spec) -> tuple[Rig, Rig, dict]:
    out, params = tmp / "rig.yaml", tmp / "node.yaml"
    res = subprocess.run([sys.executable, "-m", "fsmde_core.cli", "rig", "--bag", str(bag), "--out", str(out),
                          "--params", str(params)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    loaded = Rig.load(out)
    expected = bag_layout(bag, DataConfig(extrinsics="tf")).rig()
    flat = _flatten(yaml.safe_load(params.read_text())[NODE_KEY]["ros__parameters"])
    return loaded, expected, flat


def _assert_same_rig(a: Rig, b: Rig) -> None:
    assert a.names == b.names and a.base_frame == b.base_frame and a.lidar_frame == b.lidar_frame
    assert a.lidar_topic == b.lidar_topic and a.max_depth == b.max_depth
    np.testing.assert_allclose(a.T_base_lidar, b.T_base_lidar, atol=1e-9)
    for ca, cb in zip(a.cameras, b.cameras, strict=True):
        assert (ca.frame_id, ca.image_topic, ca.info_topic) == (cb.frame_id, cb.image_topic, cb.info_topic)
        assert (ca.model.width, ca.model.height) == (cb.model.width, cb.model.height)
        np.testing.assert_allclose(ca.model.K, cb.model.K, atol=1e-9)
        np.testing.assert_allclose(ca.model.D, cb.model.D, atol=1e-9)
        np.testing.assert_allclose(ca.T_base_cam, cb.T_base_cam, atol=1e-9)


def test_rig_and_params_round_trip(tmp_path: Path, small_bag: WrittenBag, camera_names: list[str]) -> None:
    written = small_bag
    loaded, expected, flat = _rig(written.path, tmp_path)
    _assert_same_rig(loaded, expected)
    # the bag's calibration, as the bag factory wrote it, cameras in ring order (front first, CCW)
    assert loaded.names == camera_names
    for cam in loaded.cameras:
        np.testing.assert_allclose(cam.T_base_cam, written.rig.camera(cam.name).T_base_cam, atol=1e-9)
        np.testing.assert_allclose(cam.model.K, written.rig.camera(cam.name).model.K, atol=1e-9)
    # node parameters: only known names, valid, extrinsics from the rig file, cloud in the base frame
    assert set(flat) <= known_parameter_names(flat["cameras.names"])
    model = tmp_path / "student.onnx"
    model.write_bytes(b"")  # the node validates the path exists; no model is loaded here
    settings = settings_from_values({**flat, "model.path": str(model)})
    assert [c.name for c in settings.cameras] == camera_names
    assert settings.extrinsics.source == "calibration"
    assert Path(settings.extrinsics.calibration_file) == (tmp_path / "rig.yaml").resolve()
    assert settings.cloud.frame_id == loaded.base_frame and settings.image_transport == "raw"
    assert [c.image_topic for c in settings.cameras] == [f"/cameras/{n}/image_raw" for n in camera_names]


def test_compressed_cameras_give_the_compressed_transport(tmp_path: Path, camera_names: list[str]) -> None:
    bag = write_bag(tmp_path / "bag", BagSpec(n_frames=2, compressed={n: "jpeg" for n in camera_names})).path
    loaded, expected, flat = _rig(bag, tmp_path)
    _assert_same_rig(loaded, expected)
    model = tmp_path / "student.onnx"
    model.write_bytes(b"")
    settings = settings_from_values({**flat, "model.path": str(model)})
    assert settings.image_transport == "compressed"
    for cam, c in zip(settings.cameras, loaded.cameras, strict=True):
        assert cam.subscribe_topic == c.image_topic  # the node's <image_topic>/compressed is the bag's topic


def test_refusals_are_one_line(tmp_path: Path, small_bag: WrittenBag, camera_names: list[str]) -> None:
    bag = small_bag.path
    out = tmp_path / "rig.yaml"
    out.write_text("keep me")
    with pytest.raises(RigFileError, match="exists; pass --force"):
        write_rig_files(bag, out)
    assert out.read_text() == "keep me"
    write_rig_files(bag, out, force=True)
    assert Rig.load(out).names == camera_names
    mixed = write_bag(tmp_path / "mixed", BagSpec(n_frames=2, compressed={"front": "jpeg"})).path
    with pytest.raises(RigFileError, match="mix raw and compressed"):
        write_rig_files(mixed, tmp_path / "m.yaml")
    no_tf = write_bag(tmp_path / "notf", BagSpec(n_frames=2, omit_tf_static=True)).path
    res = subprocess.run([sys.executable, "-m", "fsmde_core.cli", "rig", "--bag", str(no_tf), "--out",
                          str(tmp_path / "n.yaml")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "/tf_static" in res.stderr
    assert not (tmp_path / "n.yaml").exists()
