"""Folding BatchNorm into convolutions (fsmde_core/models/fusion.py): same depth, no BatchNorm left."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch", reason="the students are torch models")
from torch import nn  # noqa: E402

from fsmde_core.models.fusion import fold_batchnorm  # noqa: E402
from fsmde_core.models.student import StudentConfig, SurroundDepthStudent  # noqa: E402


def _trained_looking(preset: str) -> SurroundDepthStudent:
    """A student whose BatchNorms hold non-trivial running statistics and affine parameters,
    so a wrong fold (e.g. ignoring the running mean) changes the output."""
    torch.manual_seed(0)
    model = SurroundDepthStudent(StudentConfig(preset=preset, input_height=64, input_width=96))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("preset", ["lite", "base", "legacy"])
def test_folded_student_reads_the_same_depth_without_batchnorm(preset: str) -> None:
    model = _trained_looking(preset)
    folded = copy.deepcopy(model)
    count = fold_batchnorm(folded)
    assert count == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(2, 3, 64, 96)
    with torch.inference_mode():
        ref, out = model(x), folded(x)
    torch.testing.assert_close(out.depth, ref.depth, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-3, atol=1e-3)


def test_a_model_in_training_mode_is_refused() -> None:
    model = SurroundDepthStudent(StudentConfig(preset="lite", input_height=64, input_width=96)).train()
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        fold_batchnorm(model)
