"""The bridged teacher (BriGeS): Depth Anything V2 + Segment Anything through Bridging Gates.

Real transformers models with tiny configs, written with ``save_pretrained``
and loaded back through the teachers' real loading paths; nothing downloaded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fsmde_core.models.teachers import Teacher, TeacherOptionError, build_teacher
from fsmde_core.models.teachers.bridged import (
    GATES_CONFIG,
    GATES_WEIGHTS,
    BridgedDepthModel,
    BridgedTeacher,
    GatesError,
    build_tiny_sam_vision,
    load_sam_vision_encoder,
    sam_preprocess,
    tap_indices,
)
from fsmde_core.models.teachers.bridging import BridgingGate, TemperedAttention
from fsmde_core.models.teachers.depth_anything_v2 import (
    DepthAnythingV2Teacher,
    build_tiny_depth_anything_v2,
    small_depth_anything_v2_config,
)

INPUT = 56  # depth input short side: a 4 x 7 patch grid for the 48 x 80 test images


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bridged_models")
    return build_tiny_depth_anything_v2(root / "da", seed=0), build_tiny_sam_vision(root / "sam", seed=0)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(6, 3, 48, 80, generator=torch.Generator().manual_seed(1))


def _randomise_gates(model: BridgedDepthModel, seed: int) -> None:
    """Give every gate and the projection random weights (trained gates, without the training)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.gate_parameters():
            if param.ndim == 2:
                param.copy_(torch.randn(param.shape, generator=gen) / math.sqrt(param.shape[1]))


def _trained_gates_dir(models: tuple[Path, Path], directory: Path, seed: int = 3, **gate_kwargs) -> Path:
    teacher = BridgedTeacher(*models, input_size=INPUT)
    if gate_kwargs:
        teacher.model.build_gates(**gate_kwargs)
    _randomise_gates(teacher.model, seed)
    return teacher.model.save_gates(directory)


# ------------------------------------------------------------ transformers facts


def test_depth_taps_are_layer_outputs_at_out_indices(models: tuple[Path, Path], images: torch.Tensor) -> None:
    """hidden_states[i] is encoder layer i-1's output (entry 0 = embeddings), so out_indices [3, 6, 9, 12]
    of V2-Small are layers 2, 5, 8, 11 (0-based); the neck receives LayerNorm(hidden_states[i])."""
    teacher = DepthAnythingV2Teacher(models[0], input_size=INPUT)
    backbone = teacher.model.backbone
    layer_outputs: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: layer_outputs.append(out)) for layer in
             backbone.encoder.layer]
    x = teacher.preprocess(images)
    with torch.no_grad():
        out = backbone(x, output_hidden_states=True, return_dict=True)
    for hook in hooks:
        hook.remove()
    taps = tap_indices(teacher.config)
    assert taps == [1, 2, 3, 4] and len(out.hidden_states) == len(backbone.encoder.layer) + 1
    for k, tap in enumerate(taps):
        layer_out = layer_outputs[tap - 1]
        layer_out = layer_out[0] if isinstance(layer_out, tuple) else layer_out
        torch.testing.assert_close(out.hidden_states[tap], layer_out, rtol=0, atol=0)
        torch.testing.assert_close(out.feature_maps[k], backbone.layernorm(out.hidden_states[tap]))
    assert tap_indices(small_depth_anything_v2_config()) == [3, 6, 9, 12]


def test_sam_pre_neck_features_are_the_last_hidden_state_entry(models: tuple[Path, Path]) -> None:
    encoder, local = load_sam_vision_encoder(str(models[1]))
    assert local == models[1] and type(encoder).__name__ == "SamVisionEncoder"
    captured: list[torch.Tensor] = []
    encoder.layers[-1].register_forward_hook(lambda _m, _i, out: captured.append(out))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = encoder(x, output_hidden_states=True)
    last_block = captured[0][0] if isinstance(captured[0], tuple) else captured[0]
    torch.testing.assert_close(out.hidden_states[-1], last_block, rtol=0, atol=0)
    assert out.hidden_states[-1].shape == (2, 8, 8, 32)  # channels last, hidden_size wide
    assert out.last_hidden_state.shape == (2, 16, 8, 8)  # after the neck: output_channels, channels first


def test_sam_preprocess_keeps_aspect_and_pads(images: torch.Tensor) -> None:
    pixels, (h, w) = sam_preprocess(images, 64)
    assert pixels.shape == (6, 3, 64, 64) and (h, w) == (38, 64)
    assert torch.all(pixels[:, :, h:] == 0) and pixels[:, :, :h].abs().sum() > 0


# ------------------------------------------------------------ the teacher


def test_identity_gates_reproduce_depth_anything_alone(models: tuple[Path, Path], images: torch.Tensor) -> None:
    bridged = BridgedTeacher(*models, input_size=INPUT)
    plain = DepthAnythingV2Teacher(models[0], input_size=INPUT)
    out, ref = bridged.predict(images), plain.predict(images)
    assert isinstance(bridged, Teacher)
    assert out.inv_depth.shape == ref.inv_depth.shape == (6, 1, 56, 98)
    assert out.features.shape == ref.features.shape == (6, 32, 4, 7)
    assert ref.inv_depth.std() > 0.1  # a non-degenerate map, so equality means something
    torch.testing.assert_close(out.inv_depth, ref.inv_depth)
    torch.testing.assert_close(out.features, ref.features)
    assert torch.isfinite(out.inv_depth).all()


def test_trained_gates_change_the_output_and_round_trip(models: tuple[Path, Path], images: torch.Tensor,
                                                        tmp_path: Path) -> None:
    gates = _trained_gates_dir(models, tmp_path / "gates")
    assert sorted(p.name for p in gates.iterdir()) == sorted([GATES_CONFIG, GATES_WEIGHTS])
    config = json.loads((gates / GATES_CONFIG).read_text())
    assert config["tap_indices"] == [1, 2, 3, 4] and config["segmentation_model"] == str(models[1])
    assert config["tau_mode"] == "learnable" and config["segmentation_width"] == 32
    loaded = BridgedTeacher(*models, gates=gates, input_size=INPUT)
    again = BridgedTeacher(*models, gates=gates, input_size=INPUT)
    plain = DepthAnythingV2Teacher(models[0], input_size=INPUT).predict(images)
    out = loaded.predict(images)
    torch.testing.assert_close(out.inv_depth, again.predict(images).inv_depth, rtol=0, atol=0)
    assert (out.inv_depth - plain.inv_depth).abs().max() > 1e-3
    fused = BridgedTeacher(*models, gates=gates, input_size=INPUT, features="fused").predict(images)
    assert (fused.features - plain.features).abs().max() > 1e-3


def test_save_load_round_trip_reproduces_the_model(models: tuple[Path, Path], images: torch.Tensor,
                                                   tmp_path: Path) -> None:
    source = BridgedTeacher(*models, input_size=INPUT)
    source.model.build_gates("fixed", 3.0, 4.0)
    _randomise_gates(source.model, 5)
    source.model.save_gates(tmp_path / "g")
    loaded = BridgedTeacher(*models, gates=tmp_path / "g", input_size=INPUT)
    assert loaded.model.taus() == [3.0] * 4 and loaded.model.tau_mode == "fixed"
    torch.testing.assert_close(loaded.predict(images).inv_depth, source.predict(images).inv_depth, rtol=0, atol=0)


def test_mismatched_gates_are_refused_in_one_line(models: tuple[Path, Path], tmp_path: Path) -> None:
    gates = _trained_gates_dir(models, tmp_path / "gates")
    config = json.loads((gates / GATES_CONFIG).read_text())
    config["segmentation_width"] = 768
    (gates / GATES_CONFIG).write_text(json.dumps(config))
    with pytest.raises(GatesError, match=r"do not fit these models \(segmentation_width 768 != 32\)") as err:
        BridgedTeacher(*models, gates=gates, input_size=INPUT)
    assert "\n" not in str(err.value) and str(gates) in str(err.value)
    with pytest.raises(GatesError, match="gates directory does not exist"):
        BridgedTeacher(*models, gates=tmp_path / "nowhere", input_size=INPUT)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GatesError, match=r"gates config not found: .*empty/gates\.json"):
        BridgedTeacher(*models, gates=tmp_path / "empty", input_size=INPUT)


def test_gates_from_another_depth_model_are_refused(models: tuple[Path, Path], tmp_path: Path) -> None:
    """Real structural mismatch: gates saved for a 3-tap depth model cannot load into a 4-tap one."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation

    from fsmde_core.models.teachers.depth_anything_v2 import tiny_depth_anything_v2_config

    cfg = tiny_depth_anything_v2_config().to_dict()
    backbone = {k: v for k, v in cfg.pop("backbone_config").items() if k not in ("out_features", "stage_names")}
    backbone.update(num_hidden_layers=5, out_indices=[2, 3, 4, 5])
    other_depth = DepthAnythingForDepthEstimation(DepthAnythingConfig(backbone_config=backbone, **{
        k: cfg[k] for k in ("patch_size", "reassemble_hidden_size", "neck_hidden_sizes", "fusion_hidden_size",
                            "head_hidden_size", "depth_estimation_type")}))
    sam, _ = load_sam_vision_encoder(str(models[1]))
    BridgedDepthModel(other_depth, sam).save_gates(tmp_path / "other")
    with pytest.raises(GatesError, match=r"tap_indices \[2, 3, 4, 5\] != \[1, 2, 3, 4\]"):
        BridgedTeacher(*models, gates=tmp_path / "other", input_size=INPUT)


def test_identity_changes_with_tau_and_gates(models: tuple[Path, Path], tmp_path: Path) -> None:
    fresh = BridgedTeacher(*models, input_size=INPUT).identity
    assert fresh == BridgedTeacher(*models, input_size=INPUT).identity
    assert "DepthAnythingV2Teacher" in fresh and "sam=" in fresh and "gates=identity" in fresh
    assert BridgedTeacher(*models, tau=3.0, input_size=INPUT).identity != fresh
    gates_a = _trained_gates_dir(models, tmp_path / "a", seed=3)
    gates_b = _trained_gates_dir(models, tmp_path / "b", seed=4)
    with_a = BridgedTeacher(*models, gates=gates_a, input_size=INPUT).identity
    with_b = BridgedTeacher(*models, gates=gates_b, input_size=INPUT).identity
    assert len({fresh, with_a, with_b}) == 3
    assert BridgedTeacher(*models, gates=gates_a, tau=4.0, input_size=INPUT).identity != with_a
    other_sam = build_tiny_sam_vision(tmp_path / "sam1", seed=1)
    assert BridgedTeacher(models[0], other_sam, input_size=INPUT).identity != fresh


def test_tau_override_changes_trained_gates_output(models: tuple[Path, Path], images: torch.Tensor,
                                                   tmp_path: Path) -> None:
    gates = _trained_gates_dir(models, tmp_path / "g")
    own = BridgedTeacher(*models, gates=gates, input_size=INPUT)
    hot = BridgedTeacher(*models, gates=gates, tau=5.0, input_size=INPUT)
    assert own.model.taus() == pytest.approx([2.0] * 4) and hot.model.taus() == [5.0] * 4
    assert (own.predict(images).inv_depth - hot.predict(images).inv_depth).abs().max() > 1e-4


def test_only_gate_parameters_train(models: tuple[Path, Path], images: torch.Tensor) -> None:
    teacher = BridgedTeacher(*models, input_size=INPUT)
    model = teacher.model
    model.train()
    assert model.gates.training and not model.depth.training and not model.segmentation.training
    trainable = {id(p) for p in model.gate_parameters()}
    assert trainable == {id(p) for p in model.parameters() if p.requires_grad}
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if id(p) not in trainable}
    gate_before = [p.detach().clone() for p in model.gate_parameters()]
    x = teacher.depth_teacher.preprocess(images)
    seg, valid = sam_preprocess(images, teacher.sam_image_size)
    target = torch.rand(6, 56, 98, generator=torch.Generator().manual_seed(2))
    optimiser = torch.optim.AdamW(model.gate_parameters(), lr=1e-2)
    for _ in range(2):
        optimiser.zero_grad()
        loss = (model(x, seg, valid).predicted_depth - target).abs().mean()
        loss.backward()
        optimiser.step()
    assert all(p.grad is None for name, p in model.named_parameters() if name in frozen)
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name
    changed = [not torch.equal(a, b.detach()) for a, b in zip(gate_before, model.gate_parameters(), strict=True)]
    assert sum(changed) > len(changed) // 2  # after two steps most gate tensors moved (incl. the projection)
    assert not torch.equal(model.projection.weight, gate_before[0])


def test_forward_takes_a_six_camera_batch(models: tuple[Path, Path]) -> None:
    teacher = BridgedTeacher(*models, input_size=(42, 70))
    out = teacher.predict(torch.rand(6, 3, 90, 160))
    assert out.inv_depth.shape == (6, 1, 42, 70) and out.features.shape == (6, 32, 3, 5)
    assert out.inv_depth.dtype == torch.float32 and torch.isfinite(out.inv_depth).all()


# ------------------------------------------------------------ gates and temperature


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * probs.clamp_min(1e-30).log()).sum(-1).mean()


def test_temperature_scaling_softens_attention() -> None:
    torch.manual_seed(0)
    attention = TemperedAttention(32, 2, context_dim=16)
    x, context = torch.randn(2, 10, 32) * 3, torch.randn(2, 24, 16) * 3
    with torch.no_grad():
        p1, p2, p_inf = (attention.probabilities(x, context, tau) for tau in (1.0, 2.0, 1e6))
        # tau = 1 is plain scaled dot-product attention
        q, k = attention._heads(attention.query(x)), attention._heads(attention.key(context))
        torch.testing.assert_close(p1, torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(16), dim=-1))
        # the forward pass uses exactly these probabilities
        v = attention._heads(attention.value(context))
        manual = attention.out((p2 @ v).transpose(1, 2).reshape(2, 10, 32))
        torch.testing.assert_close(attention(x, context, 2.0), manual, rtol=1e-5, atol=1e-5)
    assert _entropy(p2) > _entropy(p1) + 0.05
    torch.testing.assert_close(p_inf, torch.full_like(p_inf, 1 / 24), rtol=0, atol=1e-5)  # tau -> inf: uniform


def test_tau_modes() -> None:
    none = BridgingGate(32, 2, tau_mode="none", tau=5.0)
    fixed = BridgingGate(32, 2, tau_mode="fixed", tau=2.5)
    learnable = BridgingGate(32, 2, tau_mode="learnable", tau=3.0)
    assert none.temperature.value() == 1.0 and fixed.temperature.value() == 2.5
    assert learnable.temperature.value() == pytest.approx(3.0, rel=1e-5)
    assert [p for p in none.parameters() if p.ndim == 0] == []
    fixed.set_tau(4.0)
    assert fixed.temperature.value() == 4.0
    fixed.set_tau(None)
    assert fixed.temperature.value() == 2.5
    with pytest.raises(ValueError, match="tau must be a positive"):
        fixed.set_tau(0.0)
    with pytest.raises(ValueError, match="tau mode 'hot' is not one of none, fixed, learnable"):
        BridgingGate(32, 2, tau_mode="hot")


def test_learnable_tau_stays_positive() -> None:
    gate = BridgingGate(32, 2, tau_mode="learnable", tau=1.0)
    optimiser = torch.optim.SGD([gate.temperature.raw], lr=100.0)
    for _ in range(5):  # drive tau down as hard as possible
        optimiser.zero_grad()
        tau = gate.temperature()
        tau.backward()
        optimiser.step()
        assert gate.temperature.value() > 0
    assert gate.temperature.raw < -50 and 0 < gate.temperature.value() < 1e-5


def test_fresh_gate_is_identity_and_gradients_reach_tau() -> None:
    torch.manual_seed(0)
    gate = BridgingGate(32, 2, context_dim=32, tau_mode="learnable", tau=2.0)
    tokens, context = torch.randn(2, 9, 32), torch.randn(2, 12, 32)
    assert torch.equal(gate(tokens, context), tokens)
    with torch.no_grad():
        for p in gate.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape) / math.sqrt(p.shape[1]))
    gate(tokens, context).square().sum().backward()
    assert gate.temperature.raw.grad is not None and gate.temperature.raw.grad.abs() > 0


@pytest.mark.parametrize(("width", "heads"), [(384, 6), (768, 12), (1024, 16)], ids=["vit-s", "vit-b", "vit-l"])
def test_gate_shapes_for_real_vit_widths(width: int, heads: int) -> None:
    gate = BridgingGate(width, heads, tau_mode="fixed", tau=2.0)
    tokens, context = torch.randn(1, 1 + 6, width), torch.randn(1, 6, width)
    with torch.no_grad():
        assert gate(tokens, context).shape == (1, 7, width)
    assert gate.cross_mlp[0].out_features == 4 * width  # DINOv2's MLP ratio


# ------------------------------------------------------------ registry and configs


def test_registry_builds_bridged_from_options(models: tuple[Path, Path], tmp_path: Path) -> None:
    gates = _trained_gates_dir(models, tmp_path / "g")
    teacher = build_teacher("bridged", depth=str(models[0]), segmentation=str(models[1]), gates=str(gates),
                            tau=2.5, input_size=INPUT)
    assert isinstance(teacher, BridgedTeacher) and teacher.model.taus() == [2.5] * 4
    with pytest.raises(TeacherOptionError, match="teacher kind 'bridged' needs option 'segmentation'"):
        build_teacher("bridged", depth=str(models[0]))
    with pytest.raises(TeacherOptionError, match="'bridged' has no option 'path_or_id'"):
        build_teacher("bridged", path_or_id=str(models[0]), segmentation=str(models[1]))


def test_eval_cli_options_and_training_yaml_build_it(models: tuple[Path, Path], tmp_path: Path) -> None:
    from fsmde_core.config import TrainConfig, load_config
    from fsmde_core.predictors import build_eval_teacher, parse_teacher_options

    gates = _trained_gates_dir(models, tmp_path / "g")
    options = parse_teacher_options([f"depth={models[0]}", f"segmentation={models[1]}", f"gates={gates}",
                                     "tau=3", f"input_size={INPUT}"])
    teacher = build_eval_teacher("bridged", options, "cpu")
    assert isinstance(teacher, BridgedTeacher) and teacher.model.taus() == [3.0] * 4
    yaml_path = tmp_path / "train.yaml"
    yaml_path.write_text(f"teacher:\n  kind: bridged\n  options:\n    depth: {models[0]}\n"
                         f"    segmentation: {models[1]}\n    gates: {gates}\n")
    cfg = TrainConfig.from_dict(load_config(yaml_path, [f"teacher.options.input_size={INPUT}"]))
    assert cfg.teacher.options["fp16"] is False  # the kind's own defaults, not the synthetic teacher's
    from_yaml = build_teacher(cfg.teacher.kind, **cfg.teacher.options)
    assert from_yaml.identity == BridgedTeacher(*models, gates=gates, input_size=INPUT).identity


def test_bad_segmentation_dir_is_one_clear_line(models: tuple[Path, Path], tmp_path: Path) -> None:
    from fsmde_core.models.teachers.depth_anything_v2 import TeacherWeightsError

    with pytest.raises(TeacherWeightsError, match="Segment Anything weights directory does not exist"):
        BridgedTeacher(models[0], tmp_path / "missing", input_size=INPUT)
    with pytest.raises(TeacherWeightsError, match=r"holds a 'depth_anything' model, not Segment Anything"):
        BridgedTeacher(models[0], models[0], input_size=INPUT)


def test_training_teacher_cache_is_rebuilt_when_the_gates_change(models: tuple[Path, Path], tmp_path: Path) -> None:
    """fsmde train caches teacher outputs keyed by the teacher's identity: new gates (or a new tau) must give a
    new store with the new gates' outputs, never the old gates' cached ones."""
    from bagfactory import BagSpec, write_bag

    from fsmde_core.config import load_config
    from fsmde_core.train import Trainer

    bag = write_bag(tmp_path / "bag", BagSpec(width=64, height=48, n_frames=2, with_gt=True, seed=1)).path
    root = Path(__file__).resolve().parents[1]

    def cached_inv_depth(gates: Path | None, run: str, extra: tuple[str, ...] = ()) -> tuple[set[str], torch.Tensor]:
        options = [f"teacher.options.depth={models[0]}", f"teacher.options.segmentation={models[1]}",
                   f"teacher.options.input_size={INPUT}", *([f"teacher.options.gates={gates}"] if gates else []),
                   *extra]
        cfg = load_config(root / "config" / "train_tiny.yaml",
                          ["data.width=64", "data.height=32", "optim.max_steps=1", "log.tensorboard=false",
                           f"data.cache_dir={tmp_path / 'cache'}", "teacher.kind=bridged", *options])
        cfg["data"]["bags"] = [str(bag)]
        trainer = Trainer(cfg, tmp_path / run, False, "cpu")
        trainer.setup()
        stores = {p.name for p in (tmp_path / "cache").rglob("teacher/*") if p.is_dir()}
        return stores, trainer.store.get(0)["inv_depth"].float()

    fresh_stores, fresh = cached_inv_depth(None, "fresh")
    gates = _trained_gates_dir(models, tmp_path / "gates")
    gated_stores, gated = cached_inv_depth(gates, "gated")
    tau_stores, _ = cached_inv_depth(gates, "tau", ("teacher.options.tau=4.0",))
    assert len(fresh_stores) == 1 and len(gated_stores) == 2 and len(tau_stores) == 3
    assert (gated - fresh).abs().max() > 1e-3  # the new store holds the new gates' outputs
    again_stores, again = cached_inv_depth(gates, "again")
    assert again_stores == tau_stores  # the same gates again: the store is reused, not rebuilt
    torch.testing.assert_close(again, gated, rtol=0, atol=0)


def test_vrkd_features_come_from_the_depth_model_or_the_gates(models: tuple[Path, Path], images: torch.Tensor,
                                                               tmp_path: Path) -> None:
    """features="depth" (default): VRKD sees Depth Anything's own last-tap tokens even with trained gates,
    while the depth is the bridged one; "fused": the gated tokens. Different identities; typos refused."""
    gates = _trained_gates_dir(models, tmp_path / "gates")
    plain = DepthAnythingV2Teacher(models[0], input_size=INPUT).predict(images)
    own = BridgedTeacher(*models, gates=gates, input_size=INPUT)
    fused = BridgedTeacher(*models, gates=gates, input_size=INPUT, features="fused")
    out_own, out_fused = own.predict(images), fused.predict(images)
    torch.testing.assert_close(out_own.features, plain.features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_own.inv_depth, out_fused.inv_depth, rtol=0, atol=0)
    assert (out_own.inv_depth - plain.inv_depth).abs().max() > 1e-3
    assert (out_fused.features - plain.features).abs().max() > 1e-3
    assert own.identity != fused.identity
    with pytest.raises(ValueError, match="features must be one of"):
        BridgedTeacher(*models, input_size=INPUT, features="gated")
