"""Texture-robust augmentation (``augment:``): reproducible, student-only, and a run with it resumes exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from bagfactory import BagSpec, write_bag
from robust_training import TINY, max_weight_difference, tiny_config, train_stop_resume, weights_changed

import fsmde_core.train as train_module
from fsmde_core.augment import AugmentConfig, RobustAugment
from fsmde_core.config import ConfigError, TrainConfig, load_config
from fsmde_core.corruptions import CORRUPTIONS

N_CAMS = 6


def _batch(samples: int = 2, seed: int = 0) -> torch.Tensor:
    """(samples x 6, 3, 32, 48) images as the cache gives them: uint8 values / 255."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(20, 235, size=(samples * N_CAMS, 3, 32, 48), dtype=np.uint8)
    return torch.from_numpy(pixels).float() / 255.0


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal, NaN (no LiDAR return, no teacher opinion) included."""
    return torch.equal(torch.nan_to_num(a, nan=-1.0), torch.nan_to_num(b, nan=-1.0))


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bags") / "tiny"
    write_bag(path, BagSpec(width=64, height=48, n_frames=4, with_gt=True))
    return path


def test_off_by_default_and_bad_settings_are_one_line_naming_the_key() -> None:
    assert load_config(TINY)["augment"]["enabled"] is False
    with pytest.raises(ConfigError, match=r"augment.corruptions: unknown corruption\(s\) 'fgo'.*fog"):
        load_config(TINY, ["augment.enabled=true", "augment.corruptions=[fgo]"])
    with pytest.raises(ConfigError, match=r"augment.severities: \[7\]"):
        load_config(TINY, ["augment.enabled=true", "augment.severities=[1, 7]"])
    with pytest.raises(ConfigError, match=r"augment.p must be a probability"):
        load_config(TINY, ["augment.p=1.5"])
    with pytest.raises(ConfigError, match=r"unknown key 'augment.prob'"):
        load_config(TINY, ["augment.prob=0.5"])


def test_same_seed_and_step_give_the_same_corruptions_and_another_step_others() -> None:
    cfg = AugmentConfig(enabled=True, p=0.5)
    images = _batch()
    a, plan_a = RobustAugment(cfg, seed=3)(images, [5, 9], N_CAMS, step=7)
    b, plan_b = RobustAugment(cfg, seed=3)(images, [5, 9], N_CAMS, step=7)
    assert plan_a == plan_b and 0 < len(plan_a) < 2 * N_CAMS
    assert torch.equal(a, b)
    _, plan_c = RobustAugment(cfg, seed=3)(images, [5, 9], N_CAMS, step=8)
    _, plan_d = RobustAugment(cfg, seed=4)(images, [5, 9], N_CAMS, step=7)
    assert plan_c != plan_a and plan_d != plan_a
    # a sample's draw does not depend on its position in the batch (nor on its batch mates)
    _, alone = RobustAugment(cfg, seed=3)(images[N_CAMS:], [9], N_CAMS, step=7)
    assert [(p.name, p.severity) for p in alone] == [(p.name, p.severity) for p in plan_a if p.row >= N_CAMS]


def test_only_the_planned_images_change_and_the_input_stays_clean() -> None:
    images = _batch()
    clean = images.clone()
    out, plan = RobustAugment(AugmentConfig(enabled=True, p=0.5), seed=0)(images, [0, 1], N_CAMS, step=0)
    assert torch.equal(images, clean)  # the caller's batch (what the teacher saw) is untouched
    rows = {p.row for p in plan}
    for r in range(images.shape[0]):
        changed = not torch.equal(out[r], images[r])
        assert changed == (r in rows), (r, plan)
    assert out.dtype == images.dtype and out.shape == images.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_p_zero_is_a_no_op_and_p_one_corrupts_every_camera_from_the_chosen_list() -> None:
    images = _batch(1)
    out, plan = RobustAugment(AugmentConfig(enabled=True, p=0.0), seed=0)(images, [0], N_CAMS, step=0)
    assert plan == [] and out is images
    cfg = AugmentConfig(enabled=True, p=1.0, corruptions=["fog", "gaussian_noise"], severities=[5])
    out, plan = RobustAugment(cfg, seed=0)(images, [0], N_CAMS, step=0)
    assert [p.row for p in plan] == list(range(N_CAMS))
    assert {p.name for p in plan} <= {"fog", "gaussian_noise"} and {p.severity for p in plan} == {5}
    assert all(not torch.equal(out[r], images[r]) for r in range(N_CAMS))
    assert AugmentConfig(enabled=True).names() == CORRUPTIONS


def test_training_with_augmentation_corrupts_only_the_students_input_and_resumes_exactly(bag, tmp_path,
                                                                                       monkeypatch) -> None:
    """The student gets corrupted pixels; teacher outputs, LiDAR and masks are what the clean sample gives."""
    seen: list[dict] = []
    real_compute_losses = train_module.compute_losses

    def spy(out, gt, mask, teacher, *args, **kwargs):
        seen.append({"gt": gt.detach().clone(), "mask": mask.detach().clone(), "teacher": teacher})
        return real_compute_losses(out, gt, mask, teacher, *args, **kwargs)

    monkeypatch.setattr(train_module, "compute_losses", spy)
    inputs: list[torch.Tensor] = []
    real_forward = train_module.SurroundDepthStudent.forward

    def forward_spy(self, images, *args, **kwargs):
        inputs.append(images.detach().clone())
        return real_forward(self, images, *args, **kwargs)

    monkeypatch.setattr(train_module.SurroundDepthStudent, "forward", forward_spy)
    indices: list[list[int]] = []
    real_step = train_module.Trainer.step

    def step_spy(self, batch):
        indices.append(batch["index"].tolist())
        return real_step(self, batch)

    monkeypatch.setattr(train_module.Trainer, "step", step_spy)
    cfg = tiny_config(bag, tmp_path / "cache", "augment.enabled=true", "augment.p=1.0", "optim.batch_size=1")
    ref, resumed, trainer = train_stop_resume(cfg, tmp_path)

    # 4 + 2 + 2 steps; the last 2 belong to the resumed run, whose dataset and store we can read
    assert len(inputs) == len(seen) == len(indices) == 8
    dataset, store = trainer.dataset, trainer.store
    for step_inputs, losses_in, (index,) in zip(inputs[-2:], seen[-2:], indices[-2:], strict=True):
        item = dataset[index]
        assert _same(losses_in["gt"], item["sparse_depth"])
        assert torch.equal(losses_in["mask"], ~item["masks"])
        cached = store.get(index)
        assert _same(losses_in["teacher"].inv_depth, cached["inv_depth"].float())
        # every camera image the student saw was corrupted (p = 1)
        for cam in range(N_CAMS):
            assert not torch.equal(step_inputs[cam], item["images"][cam])

    # the teacher cache is the one a run without augmentation reads: augmentation is not part of its key
    clean = TrainConfig.from_dict(tiny_config(bag, tmp_path / "cache"))
    clean_store = train_module.teacher_cache(clean, dataset, dataset.index.key_digest, tmp_path / "cache",
                                             train_module.DistInfo(), progress=False)
    assert clean_store.root == store.root

    assert max_weight_difference(ref, resumed) < 1e-5, "the resumed run drew other corruptions"
    assert weights_changed(ref, cfg)
