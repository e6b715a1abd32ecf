"""The Retinex input layer (``student.retinex``): illumination invariance, an unchanged state dict, ONNX export."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from fsmde_core.export import export_onnx
from fsmde_core.models.retinex import RetinexInput
from fsmde_core.models.student import StudentConfig, SurroundDepthStudent

H, W = 64, 96


def _scene(seed: int = 0) -> torch.Tensor:
    """(2, 3, H, W) reflectance-like images: blocky texture in [0.15, 0.9] (a scene under flat light)."""
    rng = np.random.default_rng(seed)
    blocks = rng.uniform(0.15, 0.9, size=(2, 3, H // 8, W // 8)).astype(np.float32)
    return torch.from_numpy(blocks).repeat_interleave(8, 2).repeat_interleave(8, 3)


def _mean_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean())


def test_a_global_gain_leaves_the_reflectance_unchanged() -> None:
    layer = RetinexInput(H)
    scene = _scene()
    dark = scene * 0.25  # a 4x darker exposure (dusk)
    assert _mean_abs(scene, dark) > 0.3  # the raw RGB changes a lot ...
    assert _mean_abs(layer(scene), layer(dark)) < 0.01  # ... the layer's output does not


def test_a_smooth_illumination_gradient_is_removed() -> None:
    """A street light's falloff: 3x brighter on the left than on the right, smoothly."""
    layer = RetinexInput(H)
    scene = _scene(1)
    ramp = torch.exp(torch.linspace(0.0, -np.log(3.0), W)).view(1, 1, 1, W)
    lit = scene * ramp
    raw_change = _mean_abs(scene, lit)
    out_change = _mean_abs(layer(scene), layer(lit))
    assert raw_change > 0.15
    assert out_change < 0.03, (raw_change, out_change)
    # the texture survives: the output is not a constant
    assert float(layer(scene).std()) > 0.05


def test_the_layer_is_parameter_free_and_keeps_the_students_state_dict(student_config: Callable[..., StudentConfig],
                                                                       ) -> None:
    """Pretrained encoders and a student trained without the layer load into one with it (strict)."""
    plain = SurroundDepthStudent(student_config(H, W))
    with_layer = SurroundDepthStudent(student_config(H, W, retinex=True))
    assert sum(p.numel() for p in with_layer.retinex.parameters()) == 0
    assert plain.state_dict().keys() == with_layer.state_dict().keys()
    with_layer.load_state_dict(plain.state_dict(), strict=True)
    images = _scene()
    out = with_layer(images)
    assert out.depth.shape == (2, 1, H, W) and torch.isfinite(out.depth).all()
    # the switch changes what the encoder sees
    assert not torch.allclose(out.depth, plain(images).depth)
    out.depth.mean().backward()
    assert with_layer.encoder.conv1.weight.grad is not None


def test_retinex_must_be_a_boolean(student_config: Callable[..., StudentConfig]) -> None:
    with pytest.raises(ValueError, match="retinex must be true or false"):
        student_config(H, W, retinex="yes")


def test_a_student_with_the_layer_exports_to_onnx_and_matches_torch(saved_student: Callable[..., Path]) -> None:
    run = saved_student(H, W, retinex=True)
    report = export_onnx(run, run / "export" / "student.onnx")
    assert report["passed"] and report["max_abs_diff_m"] < 1e-3
    assert report["student"]["retinex"] is True


def test_training_with_the_layer_trains_checkpoints_and_resumes(tmp_path: Path) -> None:
    from bagfactory import BagSpec, write_bag
    from robust_training import max_weight_difference, tiny_config, train_stop_resume, weights_changed

    from fsmde_core.checkpoint import load_student

    bag = write_bag(tmp_path / "bag", BagSpec(width=64, height=48, n_frames=3, with_gt=True)).path
    cfg = tiny_config(bag, tmp_path / "cache", "student.retinex=true")
    ref, resumed, _ = train_stop_resume(cfg, tmp_path)
    assert max_weight_difference(ref, resumed) < 1e-5
    assert weights_changed(ref, cfg)
    model, student_cfg, _ = load_student(resumed)
    assert student_cfg.retinex is True and model.retinex is not None
