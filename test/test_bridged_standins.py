"""bench/bridged_standins.py: the stand-in pre-trainings write models the teachers load, and the loss is SSI.

Tiny configs and two steps on a tiny ``fsmde synth`` bag: the point is the
real path (bag -> training -> ``save_pretrained`` -> the teachers' loaders),
not the quality, which the benchmark itself measures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # bench scripts are not a package
import bridged_standins as standins

from fsmde_core.models.teachers.bridged import BridgedTeacher
from fsmde_core.models.teachers.depth_anything_v2 import DepthAnythingV2Teacher
from fsmde_core.semantics import NUM_CLASSES, VOID

WIDTH, HEIGHT = 112, 56  # multiples of the 14 px patch, so the depth teacher runs at the bag's size


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> standins.Frames:
    from fsmde_core.synthetic.writer import generate_bag

    bag = tmp_path_factory.mktemp("standins") / "bag"
    generate_bag("nuscenes", frames=2, seed=5, out=bag, width=WIDTH, height=HEIGHT, progress=False, workers=1)
    return standins.load_frames([bag], WIDTH, HEIGHT, progress=False)


def test_frames_hold_every_camera_with_dense_depth_and_labels(frames) -> None:
    assert frames.images.shape == (12, HEIGHT, WIDTH, 3) and frames.images.dtype == np.uint8
    assert frames.gt_depth.shape == frames.labels.shape == frames.ego.shape == (12, HEIGHT, WIDTH)
    assert np.isposinf(frames.gt_depth).any()  # sky
    assert (frames.labels != VOID).all() and frames.labels.max() < NUM_CLASSES


def test_inverse_depth_target_sky_is_zero_unknown_and_ego_are_invalid() -> None:
    depth = torch.tensor([[[[2.0, float("inf"), float("nan"), 4.0]]]])
    ego = torch.tensor([[[[False, False, False, True]]]])
    inv, valid = standins.inverse_depth_target(depth, ego)
    assert inv[0, 0, 0, :2].tolist() == [0.5, 0.0]
    assert valid[0, 0, 0].tolist() == [True, True, False, False]


def test_ssi_loss_is_invariant_to_scale_and_shift_of_the_prediction() -> None:
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, 8, 10, generator=gen)
    pred = torch.rand(2, 1, 8, 10, generator=gen)
    valid = torch.rand(2, 1, 8, 10, generator=gen) > 0.2
    base = standins.ssi_loss(pred, target, valid)
    assert base > 0.1
    for scale, shift in ((3.0, -2.0), (0.01, 5.0), (250.0, 0.0)):
        assert standins.ssi_loss(scale * pred + shift, target, valid) == pytest.approx(float(base), rel=1e-4)
    assert standins.ssi_loss(4.0 * target + 1.0, target, valid) == pytest.approx(0.0, abs=1e-5)
    assert standins.ssi_loss(target.sqrt(), target, valid) > 1e-3  # a non-affine distortion is not forgiven
    assert standins.ssi_loss(-target, target, valid) > 1.0  # nor is a flipped depth order


def test_pretrain_depth_writes_a_model_the_depth_anything_teacher_loads(frames, tmp_path) -> None:
    out = tmp_path / "depth"
    result = standins.pretrain_depth(frames, out, size="tiny", steps=2, batch=2, seed=1, heldout=frames,
                                     progress=False)
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert json.loads((out / "metrics.json").read_text()) == result
    assert result["steps"] == 2 and np.isfinite(result["heldout_ssi"])
    teacher = DepthAnythingV2Teacher(out, input_size=(HEIGHT, WIDTH))
    images = torch.from_numpy(frames.images[:2]).permute(0, 3, 1, 2).float() / 255.0
    trained = teacher.predict(images).inv_depth
    assert trained.shape == (2, 1, HEIGHT, WIDTH) and torch.isfinite(trained).all()
    fresh = DepthAnythingV2Teacher(standins.init_depth_model(tmp_path / "init", "tiny", seed=1),
                                   input_size=(HEIGHT, WIDTH))
    assert fresh.identity != teacher.identity  # the saved weights are the trained ones, not the init
    assert not torch.allclose(fresh.predict(images).inv_depth, trained)


def test_pretrain_seg_writes_sam_the_bridged_teacher_loads_and_a_head(frames, tmp_path) -> None:
    depth = standins.init_depth_model(tmp_path / "depth", "tiny", seed=0)
    out = tmp_path / "seg"
    result = standins.pretrain_seg(frames, out, size="tiny", steps=2, batch=2, seed=0, heldout=frames,
                                   progress=False)
    assert {"model.safetensors", "config.json", standins.SEG_HEAD_WEIGHTS, standins.SEG_HEAD_CONFIG} <= {
        p.name for p in out.iterdir()}
    assert 0.0 <= result["heldout_miou"] <= 1.0 and 0.0 <= result["heldout_pixel_accuracy"] <= 1.0
    assert standins.evaluate_seg(out, frames)["heldout_miou"] == pytest.approx(result["heldout_miou"])
    teacher = BridgedTeacher(depth=depth, segmentation=out, input_size=(HEIGHT, WIDTH))
    images = torch.from_numpy(frames.images[:2]).permute(0, 3, 1, 2).float() / 255.0
    output = teacher.predict(images)
    assert output.inv_depth.shape == (2, 1, HEIGHT, WIDTH) and torch.isfinite(output.inv_depth).all()
    head = standins.load_seg_head(out)
    assert head.mlp[-1].out_features == NUM_CLASSES


def test_confusion_and_iou_known_answer() -> None:
    labels = np.array([[0, 0, 1, 1], [2, 2, VOID, VOID]], dtype=np.uint8)
    pred = np.array([[0, 1, 1, 1], [2, 0, 3, 3]], dtype=np.uint8)
    confusion = standins.confusion_matrix(pred, labels, num_classes=4)
    assert confusion.sum() == 6  # void pixels are not counted
    iou = standins.iou_per_class(confusion)
    np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 3, 1 / 2])
    assert np.isnan(iou[3])  # class 3 only predicted on void: absent, left out of the mean


def test_bag_seeds_must_be_disjoint(tmp_path) -> None:
    with pytest.raises(SystemExit, match="overlap"):
        standins.make_bags(tmp_path, [1, 2], [2, 3], 1, 1, WIDTH, HEIGHT)


def test_the_wall_time_guard_stops_training_and_still_saves(frames, tmp_path) -> None:
    result = standins.pretrain_seg(frames, tmp_path / "seg", size="tiny", steps=50, batch=2, progress=False,
                                   max_minutes=0.0)
    assert result["steps"] == 50 and result["steps_done"] == 0 and result["train_ce_last50"] is None
    assert (tmp_path / "seg" / "model.safetensors").is_file()
