"""Tests of the combined objective and its configuration (fsmde_core.distill.objective)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from fsmde_core.config import ConfigError, TrainConfig, load_config
from fsmde_core.distill.ckd import ckd_centre_loss
from fsmde_core.distill.objective import TARGET_ONLY_KEYS, DistillLossConfig, compute_losses
from fsmde_core.distill.supervised import silog_loss
from fsmde_core.models.student import bin_expectation
from fsmde_core.models.teachers.base import TeacherOutput

NAN = float("nan")
CONFIGS = sorted((Path(__file__).resolve().parents[1] / "config").glob("train_*.yaml"))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _student_like(b: int = 4, k: int = 8, h: int = 16, w: int = 24, seed: int = 11) -> SimpleNamespace:
    g = _gen(seed)
    logits = torch.randn(b, k, h, w, generator=g, requires_grad=True)
    centres = torch.sort(1 + 50 * torch.rand(b, k, generator=g), dim=1).values.requires_grad_()
    depth = bin_expectation(torch.softmax(logits, 1), centres)
    feats = torch.randn(b, 6, h // 4, w // 4, generator=g, requires_grad=True)
    return SimpleNamespace(depth=depth, logits=logits, centres=centres, features=feats)


def _batch(b: int = 4, h: int = 16, w: int = 24, seed: int = 12):
    g = _gen(seed)
    gt = 1 + 40 * torch.rand(b, 1, h, w, generator=g)
    gt[torch.rand(gt.shape, generator=g) < 0.7] = NAN
    teacher = TeacherOutput(inv_depth=torch.rand(b, 1, h // 2, w // 2, generator=g),
                            features=torch.randn(b, 10, 3, 5, generator=g))
    pairs = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0]])
    return gt, teacher, pairs


def test_compute_losses_all_terms_and_total() -> None:
    out = _student_like()
    gt, teacher, pairs = _batch()
    cfg = DistillLossConfig(w_silog=2.0, w_bins=0.5, w_ckd=3.0, w_vrkd=4.0, vrkd_grid=(2, 3), ckd_target="linear")
    losses = compute_losses(out, gt, None, teacher, pairs, cfg, readout="log")
    assert set(losses) == {"silog", "bins", "ckd", "vrkd", "total"}  # the rank target adds ckd_centres
    expected = 2 * losses["silog"] + 0.5 * losses["bins"] + 3 * losses["ckd"] + 4 * losses["vrkd"]
    torch.testing.assert_close(losses["total"], expected)
    assert losses["silog"].item() == pytest.approx(silog_loss(out.depth, gt).item())
    losses["total"].backward()
    for t in (out.logits, out.centres, out.features):
        assert t.grad is not None and torch.isfinite(t.grad).all()


def test_compute_losses_switches_skip_terms(monkeypatch: pytest.MonkeyPatch) -> None:
    import fsmde_core.distill.objective as mod

    def boom(*_a: object, **_k: object) -> torch.Tensor:
        raise AssertionError("a switched-off term was computed")

    for name in ("ckd_loss", "ckd_centre_loss", "ablation_ckd_loss", "vrkd_loss"):
        monkeypatch.setattr(mod, name, boom)
    out = _student_like()
    gt, _, _ = _batch()
    losses = compute_losses(out, gt, cfg=DistillLossConfig(use_ckd=False, use_vrkd=False), readout="log")
    assert set(losses) == {"silog", "bins", "total"}
    only_bins = compute_losses(out, gt, cfg=DistillLossConfig(use_silog=False, use_ckd=False, use_vrkd=False),
                               readout="log")
    torch.testing.assert_close(only_bins["total"], 0.1 * only_bins["bins"])


def test_compute_losses_requires_teacher_and_pairs() -> None:
    out = _student_like()
    gt, teacher, _ = _batch()
    with pytest.raises(ValueError, match="teacher"):
        compute_losses(out, gt, cfg=DistillLossConfig(use_vrkd=False), readout="log")
    with pytest.raises(ValueError, match="pairs"):
        compute_losses(out, gt, teacher=teacher, cfg=DistillLossConfig(use_ckd=False), readout="log")


def test_compute_losses_upsamples_low_res_depth_for_silog() -> None:
    out = _student_like(h=8, w=12)
    gt, teacher, pairs = _batch(h=16, w=24)
    mask = torch.ones_like(gt, dtype=torch.bool)
    losses = compute_losses(out, gt, mask, teacher, pairs, DistillLossConfig(), readout="log")
    assert all(torch.isfinite(v) for v in losses.values())


def test_config_validation_and_typed_loss_section() -> None:
    with pytest.raises(ValueError, match="switched off"):
        DistillLossConfig(use_silog=False, use_bins=False, use_ckd=False, use_vrkd=False)
    with pytest.raises(ValueError, match="tau_ckd"):
        DistillLossConfig(tau_ckd=0.0)
    with pytest.raises(ValueError, match="vrkd_region"):
        DistillLossConfig(vrkd_region="band")
    with pytest.raises(ValueError, match="ckd_target"):
        DistillLossConfig(ckd_target="hat")
    with pytest.raises(ValueError, match="ckd_anchor"):
        DistillLossConfig(ckd_target="linear", ckd_anchor="median")
    with pytest.raises(ConfigError, match=r"unknown key 'loss\.w_silgo'"):
        load_config(None, ["loss.w_silgo=1.0"])
    cfg = TrainConfig.from_dict(load_config(None, ["loss.vrkd_grid=[3, 6]", "loss.use_vrkd=false"])).loss
    assert cfg.vrkd_grid == (3, 6) and cfg.needs_teacher


def test_compute_losses_rank_target_adds_the_centre_term() -> None:
    out = _student_like()
    gt, teacher, pairs = _batch()
    cfg = DistillLossConfig(w_ckd=2.0, w_ckd_centres=3.0, ckd_target="rank", vrkd_grid=(2, 3))
    losses = compute_losses(out, gt, None, teacher, pairs, cfg, readout="log")
    assert set(losses) == {"silog", "bins", "ckd", "ckd_centres", "vrkd", "total"}
    expected = (10 * losses["silog"] + 0.1 * losses["bins"] + 2 * losses["ckd"] + 6 * losses["ckd_centres"]
                + losses["vrkd"])
    torch.testing.assert_close(losses["total"], expected)
    with pytest.raises(ValueError, match="w_ckd_centres"):
        DistillLossConfig(w_ckd_centres=-1.0)


@pytest.mark.parametrize(("target", "key", "value"), [
    ("rank", "ckd_sigma", 0.1),
    ("rank", "ckd_anchor", "student"),
    ("linear", "ckd_sigma", 1.0),
    ("linear", "w_ckd_centres", 3.0),
    ("kernel", "ckd_centres_variance_focus", 0.85),
])
def test_config_refuses_a_key_the_chosen_target_ignores(target: str, key: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"loss\.{key}=.* no effect with loss\.ckd_target='{target}'"):
        DistillLossConfig(ckd_target=target, **{key: value})


def test_config_accepts_target_keys_for_their_target_and_ignored_keys_at_their_default() -> None:
    assert DistillLossConfig(ckd_target="kernel", ckd_sigma=0.2, ckd_anchor="gt").ckd_sigma == 0.2
    assert DistillLossConfig(ckd_target="linear", ckd_anchor="student").ckd_anchor == "student"
    assert DistillLossConfig(ckd_target="rank", w_ckd_centres=3.0, ckd_centres_variance_focus=0.5).w_ckd_centres == 3
    # the trainer overrides ckd_target on a shipped config (bench ablations): defaults must pass
    assert DistillLossConfig(ckd_target="kernel", w_ckd_centres=10.0).ckd_target == "kernel"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_set_no_loss_key_their_target_ignores(path: Path) -> None:
    loss = yaml.safe_load(path.read_text())["loss"]
    cfg = TrainConfig.from_dict(load_config(path), str(path)).loss
    ignored = sorted(k for k, readers in TARGET_ONLY_KEYS.items() if k in loss and cfg.ckd_target not in readers)
    assert ignored == [], f"{path.name} sets {ignored}, which ckd_target {cfg.ckd_target!r} does not read"


def test_config_files_exist() -> None:
    assert {p.name for p in CONFIGS} >= {"train_tiny.yaml", "train_ddad.yaml", "train_nuscenes.yaml"}


def _linear_readout_student(b: int = 4, k: int = 8, h: int = 16, w: int = 24, seed: int = 11) -> SimpleNamespace:
    out = _student_like(b, k, h, w, seed)
    out.depth = bin_expectation(torch.softmax(out.logits, 1), out.centres, log_space=False)
    return out


def test_compute_losses_reads_the_centre_term_out_with_the_students_readout() -> None:
    """A student with ``readout: linear`` gets the linear cross depth, not the log one."""
    out = _linear_readout_student()
    gt, teacher, pairs = _batch()
    cfg = DistillLossConfig(use_vrkd=False)
    linear = compute_losses(out, gt, None, teacher, pairs, cfg, readout="linear")
    log = compute_losses(out, gt, None, teacher, pairs, cfg, readout="log")
    torch.testing.assert_close(linear["ckd_centres"], ckd_centre_loss(out.centres, teacher.inv_depth, gt,
                                                                       readout="linear"))
    torch.testing.assert_close(log["ckd_centres"], ckd_centre_loss(out.centres, teacher.inv_depth, gt))
    assert abs(linear["ckd_centres"].item() - log["ckd_centres"].item()) > 1e-3
    with pytest.raises(ValueError, match="readout"):
        compute_losses(out, gt, None, teacher, pairs, cfg, readout="median")


@pytest.mark.parametrize("target", ["kernel", "linear"])
def test_compute_losses_ablation_targets_with_low_res_logits(target: str) -> None:
    """Ablation targets run at the logits' resolution, the LiDAR anchor resampled nearest to it."""
    out = _student_like(h=8, w=12)
    gt, teacher, pairs = _batch(h=16, w=24)
    cfg = DistillLossConfig(ckd_target=target, w_ckd_centres=10.0, use_vrkd=False)
    losses = compute_losses(out, gt, torch.ones_like(gt, dtype=torch.bool), teacher, pairs, cfg, readout="log")
    assert set(losses) == {"silog", "bins", "ckd", "total"}
    assert torch.isfinite(losses["ckd"]) and losses["ckd"].item() > 0
    torch.testing.assert_close(losses["total"], 10 * losses["silog"] + 0.1 * losses["bins"] + losses["ckd"])
