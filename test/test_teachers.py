"""Teachers: Depth Anything V2 (real architecture, tiny random weights, real
save/load path), ONNX Runtime teacher, and the factory."""

from __future__ import annotations

import inspect
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as nnf

from fsmde_core.models.teachers import TEACHER_KINDS, Teacher, TeacherOutput, build_teacher

pytest.importorskip("transformers")

from fsmde_core.models.teachers.depth_anything_v2 import (
    DepthAnythingV2Teacher,
    TeacherWeightsError,
    build_tiny_depth_anything_v2,
    resize_target,
)
from fsmde_core.models.teachers.onnx_teacher import OnnxTeacher

# The legacy (TorchScript) ONNX exporter is used because onnxscript is not installed;
# it announces its own deprecation on every export.
legacy_onnx_export = pytest.mark.filterwarnings("ignore::DeprecationWarning")

H, W = 64, 96


@pytest.fixture(scope="module")
def da_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_depth_anything_v2(tmp_path_factory.mktemp("da2_seed0"), seed=0)


@pytest.fixture(scope="module")
def da_teacher(da_dir: Path) -> DepthAnythingV2Teacher:
    return DepthAnythingV2Teacher(da_dir, input_size=56)


# ------------------------------------------------------------ Depth Anything V2


def test_tiny_model_is_saved_as_a_real_checkpoint(da_dir: Path) -> None:
    cfg = json.loads((da_dir / "config.json").read_text())
    assert cfg["model_type"] == "depth_anything" and cfg["backbone_config"]["model_type"] == "dinov2"
    assert (da_dir / "model.safetensors").stat().st_size > 100_000


def test_depth_anything_shapes_and_values(da_teacher: DepthAnythingV2Teacher) -> None:
    out = da_teacher.predict(torch.rand(3, 3, H, W))
    assert isinstance(out, TeacherOutput)
    # short side 64 -> 56, long side 96 * 56/64 = 84 (a multiple of 14)
    assert out.inv_depth.shape == (3, 1, 56, 84)
    assert out.features.shape == (3, 32, 4, 6)
    assert out.inv_depth.dtype == torch.float32 and out.features.dtype == torch.float32
    assert torch.isfinite(out.inv_depth).all() and torch.isfinite(out.features).all()
    assert (out.inv_depth >= 0).all() and out.inv_depth.std() > 0, "random tiny model must not be degenerate"


def test_depth_anything_features_are_last_patch_tokens(da_teacher: DepthAnythingV2Teacher) -> None:
    """Features = final-LayerNormed last hidden state, CLS dropped, row-major patch grid."""
    images = torch.rand(2, 3, H, W)
    feats = da_teacher.predict(images).features
    with torch.no_grad():
        x = da_teacher.preprocess(images)
        backbone = da_teacher.model.backbone
        hidden = backbone(x, output_hidden_states=True).hidden_states[-1]
        tokens = backbone.layernorm(hidden)
    assert tokens.shape[1] == 1 + 4 * 6  # CLS + patch grid
    grid_w = 6
    for b, i, j in [(0, 0, 0), (1, 2, 5), (0, 3, 1)]:
        torch.testing.assert_close(feats[b, :, i, j], tokens[b, 1 + i * grid_w + j])


def test_depth_anything_matches_direct_model_call(da_teacher: DepthAnythingV2Teacher) -> None:
    images = torch.rand(2, 3, H, W)
    with torch.no_grad():
        x = da_teacher.preprocess(images)
        direct = da_teacher.model(pixel_values=x).predicted_depth
    # preprocessing: resized to (56, 84) and ImageNet-normalised
    assert x.shape == (2, 3, 56, 84)
    resized = nnf.interpolate(images, size=(56, 84), mode="bicubic", antialias=True).clamp(0, 1)
    torch.testing.assert_close(x[:, 0], (resized[:, 0] - 0.485) / 0.229)
    torch.testing.assert_close(da_teacher.predict(images).inv_depth[:, 0], direct)


def test_depth_anything_explicit_size_and_batch_consistency(da_dir: Path) -> None:
    teacher = DepthAnythingV2Teacher(da_dir, input_size=(42, 70))
    images = torch.rand(3, 3, H, W)
    out = teacher.predict(images)
    assert out.inv_depth.shape == (3, 1, 42, 70) and out.features.shape == (3, 32, 3, 5)
    single = teacher.predict(images[1:2])
    torch.testing.assert_close(out.inv_depth[1:2], single.inv_depth, atol=1e-4, rtol=1e-4)


def test_identity_tracks_weights_and_settings(
    da_dir: Path, da_teacher: DepthAnythingV2Teacher, tmp_path: Path
) -> None:
    again = DepthAnythingV2Teacher(da_dir, input_size=56)
    assert again.identity == da_teacher.identity
    assert da_teacher.identity.startswith("DepthAnythingV2Teacher|")
    assert DepthAnythingV2Teacher(da_dir, input_size=70).identity != da_teacher.identity
    other = DepthAnythingV2Teacher(build_tiny_depth_anything_v2(tmp_path / "seed1", seed=1), input_size=56)
    assert other.identity != da_teacher.identity
    # a copy of the same weights elsewhere is the same teacher (cache is shareable)
    copy = shutil.copytree(da_dir, tmp_path / "copy")
    assert DepthAnythingV2Teacher(copy, input_size=56).identity == da_teacher.identity


def test_tiny_random_is_deterministic(tmp_path: Path, da_teacher: DepthAnythingV2Teacher) -> None:
    teacher = DepthAnythingV2Teacher.tiny_random(tmp_path / "again", seed=0, input_size=56)
    assert teacher.identity == da_teacher.identity


def test_metric_variant_is_inverted(da_dir: Path, tmp_path: Path) -> None:
    metric_dir = shutil.copytree(da_dir, tmp_path / "metric")
    cfg = json.loads((metric_dir / "config.json").read_text())
    cfg.update(depth_estimation_type="metric", max_depth=80)
    (metric_dir / "config.json").write_text(json.dumps(cfg))
    teacher = DepthAnythingV2Teacher(metric_dir, input_size=56)
    images = torch.rand(2, 3, H, W)
    with torch.no_grad():
        depth = teacher.model(pixel_values=teacher.preprocess(images)).predicted_depth
    assert (depth > 0).all()
    torch.testing.assert_close(teacher.predict(images).inv_depth[:, 0], 1.0 / depth)


def test_missing_weights_raise_clear_errors(
    da_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TeacherWeightsError, match=r"no config\.json"):
        DepthAnythingV2Teacher(empty)
    config_only = tmp_path / "config_only"
    config_only.mkdir()
    shutil.copy(da_dir / "config.json", config_only)
    with pytest.raises(TeacherWeightsError, match="no weights"):
        DepthAnythingV2Teacher(config_only)
    with pytest.raises(TeacherWeightsError, match="does not exist"):
        DepthAnythingV2Teacher(str(tmp_path / "not_there"))
    with pytest.raises(TeacherWeightsError, match="is a file"):
        DepthAnythingV2Teacher(da_dir / "config.json")
    # a hub id with no hub: fail fast and say what to do
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TeacherWeightsError, match="local directory"):
        DepthAnythingV2Teacher("nobody-here/no-such-depth-model")


def test_bad_settings_rejected(da_dir: Path) -> None:
    with pytest.raises(ValueError, match="multiples"):
        DepthAnythingV2Teacher(da_dir, input_size=(50, 84))
    with pytest.raises(ValueError, match="fp16"):
        DepthAnythingV2Teacher(da_dir, fp16=True, device="cpu")


def test_resize_target_keeps_aspect_on_patch_grid() -> None:
    assert resize_target(1080, 1920, 518, 14) == (518, 924)
    assert resize_target(384, 640, 518, 14) == (518, 868)
    assert resize_target(100, 100, (28, 42), 14) == (28, 42)


# ------------------------------------------------------------------------- ONNX


class TinyDepthNet(nn.Module):
    """Two outputs: a positive map (inverse depth or depth) and a feature map."""

    def __init__(self, final: str = "softplus") -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))
        self.final = final
        self.proj = nn.Conv2d(3, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.body(x)
        y = nnf.softplus(y) if self.final == "softplus" else nnf.relu(y)
        return y.squeeze(1), self.proj(x)  # (B, H, W) like MiDaS exports


def _export(net: nn.Module, path: Path, dynamic_batch: bool = True) -> Path:
    torch.onnx.export(
        net.eval(),
        (torch.rand(2 if dynamic_batch else 1, 3, 32, 48),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["disp", "feat"],
        dynamic_axes={"image": {0: "b"}, "disp": {0: "b"}, "feat": {0: "b"}} if dynamic_batch else None,
    )
    return path


@pytest.fixture(scope="module")
def onnx_net(tmp_path_factory: pytest.TempPathFactory) -> tuple[TinyDepthNet, Path]:
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = TinyDepthNet().eval()
    return net, _export(net, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


def _reference(
    net: nn.Module, images: torch.Tensor, mean: tuple, std: tuple
) -> tuple[torch.Tensor, torch.Tensor]:
    x = nnf.interpolate(images, size=(32, 48), mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        disp, feat = net(x)
    return disp.unsqueeze(1), feat


@legacy_onnx_export
def test_onnx_teacher_matches_torch(onnx_net: tuple[TinyDepthNet, Path]) -> None:
    net, path = onnx_net
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    teacher = OnnxTeacher(path, input_size=(32, 48), mean=mean, std=std, feature_output="feat")
    images = torch.rand(3, 3, H, W)
    out = teacher.predict(images)
    disp, feat = _reference(net, images, mean, std)
    assert out.inv_depth.shape == (3, 1, 32, 48) and out.features.shape == (3, 4, 16, 24)
    torch.testing.assert_close(out.inv_depth, disp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.features, feat, atol=1e-5, rtol=1e-5)


@legacy_onnx_export
def test_onnx_teacher_pooled_features_without_feature_output(onnx_net: tuple[TinyDepthNet, Path]) -> None:
    _, path = onnx_net
    teacher = OnnxTeacher(path, input_size=(32, 48), feature_stride=8)
    out = teacher.predict(torch.rand(2, 3, H, W))
    assert out.features.shape == (2, 1, 4, 6)
    torch.testing.assert_close(out.features, nnf.avg_pool2d(out.inv_depth, 8))


@legacy_onnx_export
def test_onnx_teacher_depth_output_is_inverted(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    torch.manual_seed(1)
    net = TinyDepthNet(final="relu").eval()
    path = _export(net, tmp_path / "depth.onnx")
    teacher = OnnxTeacher(path, input_size=(32, 48), output_kind="depth", feature_stride=16)
    images = torch.rand(2, 3, H, W)
    out = teacher.predict(images)
    depth, _ = _reference(net, images, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    # Compare in depth space and away from 0, where 1/d amplifies float noise
    # and torch/ORT may land on different sides of the ReLU.
    clear = depth > 1e-3
    assert clear.any() and (depth == 0).any(), "test net should produce some zero depth"
    torch.testing.assert_close(1.0 / out.inv_depth[clear], depth[clear], atol=1e-5, rtol=1e-5)
    nan = torch.isnan(out.inv_depth)
    assert nan.any() and (depth[nan] < 1e-4).all(), "only (near-)zero depth becomes NaN"
    assert not torch.isinf(out.inv_depth).any(), "zero depth has no inverse: NaN, not Inf"
    assert torch.isfinite(out.features).all(), "NaNs must not leak into pooled features"


@legacy_onnx_export
def test_onnx_teacher_fixed_batch_one_model(onnx_net: tuple[TinyDepthNet, Path], tmp_path: Path) -> None:
    net, dynamic_path = onnx_net
    fixed = OnnxTeacher(_export(net, tmp_path / "fixed.onnx", dynamic_batch=False), input_size=(32, 48))
    assert fixed.fixed_batch_one
    images = torch.rand(3, 3, H, W)
    want = OnnxTeacher(dynamic_path, input_size=(32, 48)).predict(images).inv_depth
    torch.testing.assert_close(fixed.predict(images).inv_depth, want)


@legacy_onnx_export
def test_onnx_teacher_identity_and_errors(onnx_net: tuple[TinyDepthNet, Path], tmp_path: Path) -> None:
    _, path = onnx_net
    a = OnnxTeacher(path, input_size=(32, 48))
    assert a.identity == OnnxTeacher(path, input_size=(32, 48)).identity
    assert a.identity != OnnxTeacher(path, input_size=(32, 48), output_kind="depth").identity
    assert a.identity != OnnxTeacher(path, input_size=(64, 96)).identity
    with pytest.raises(FileNotFoundError):
        OnnxTeacher(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="no output named"):
        OnnxTeacher(path, feature_output="tokens")
    with pytest.raises(ValueError, match="output_kind"):
        OnnxTeacher(path, output_kind="disparity")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(RuntimeError, match=r"broken\.onnx"):
        OnnxTeacher(broken)


# ---------------------------------------------------------------------- factory


@legacy_onnx_export
def test_factory_builds_real_teachers(da_dir: Path, onnx_net: tuple[TinyDepthNet, Path]) -> None:
    assert set(TEACHER_KINDS) == {"bridged", "depth_anything_v2", "onnx", "synthetic"}
    da = build_teacher("depth_anything_v2", path_or_id=str(da_dir), input_size=56)
    assert isinstance(da, DepthAnythingV2Teacher) and isinstance(da, Teacher)
    onnx_teacher = build_teacher("onnx", model_path=onnx_net[1], input_size=(32, 48))
    assert isinstance(onnx_teacher, OnnxTeacher)
    with pytest.raises(ValueError, match="unknown teacher kind"):
        build_teacher("midas")


def test_factory_imports_lazily() -> None:
    """Importing the teachers package must not pull in transformers or onnxruntime."""
    code = (
        "import sys, fsmde_core.models.teachers as t; "
        "assert 'transformers' not in sys.modules and 'onnxruntime' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_factory_synthetic_teacher() -> None:
    module = pytest.importorskip("fsmde_core.models.teachers.synthetic", reason="no synthetic.py yet")
    assert issubclass(module.SyntheticTeacher, Teacher)
    params = inspect.signature(module.SyntheticTeacher).parameters.values()
    if any(p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD for p in params):
        pytest.skip("SyntheticTeacher needs constructor arguments this test does not know")
    assert type(build_teacher("synthetic")) is module.SyntheticTeacher


def test_registry_matches_every_teacher_constructor() -> None:
    """The registry's option lists are what the constructors take, and its defaults are theirs."""
    from fsmde_core.models.teachers import teacher_class

    for kind, spec in TEACHER_KINDS.items():
        params = inspect.signature(teacher_class(kind).__init__).parameters
        names = [n for n in params if n != "self"]
        assert tuple(names) == spec.options, kind
        required = tuple(n for n in names if params[n].default is inspect.Parameter.empty)
        assert required == spec.required, kind
        for key, value in spec.defaults.items():
            assert params[key].default == value, (kind, key)


def test_factory_refuses_unknown_and_missing_options_by_name() -> None:
    from fsmde_core.models.teachers import TeacherOptionError

    with pytest.raises(TeacherOptionError, match=r"'depth_anything_v2' has no option 'quality'; valid options: "
                                                 r"path_or_id, input_size, device, fp16"):
        build_teacher("depth_anything_v2", path_or_id="/models/da2", quality=0.7)
    with pytest.raises(TeacherOptionError, match=r"'onnx' needs option 'model_path'"):
        build_teacher("onnx")
    assert isinstance(build_teacher("synthetic", quality=0.5, seed=3), Teacher)

