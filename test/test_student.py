"""Student network: config, shapes, metric bins, torchvision key compatibility,
pretrained loading, ONNX export."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from fsmde_core.models.resnet import (
    LoadReport,
    PretrainedLoadError,
    build_encoder,
    load_pretrained_encoder,
    resnet18,
    resnet34,
)
from fsmde_core.models.student import (
    DepthOnly,
    StudentConfig,
    StudentOutput,
    SurroundDepthStudent,
    count_parameters,
)

H, W = 64, 96

# A hand-written sample of torchvision's resnet18 state_dict keys (fc.* excluded):
# stem, every stage's first and last block, all three downsample projections
# (layer2..4 only; layer1 has none) and every kind of BatchNorm entry.
TORCHVISION_RESNET18_KEYS = [
    "conv1.weight",
    "bn1.weight",
    "bn1.bias",
    "bn1.running_mean",
    "bn1.running_var",
    "bn1.num_batches_tracked",
    "layer1.0.conv1.weight",
    "layer1.0.bn1.weight",
    "layer1.0.conv2.weight",
    "layer1.0.bn2.running_mean",
    "layer1.1.conv2.weight",
    "layer1.1.bn2.num_batches_tracked",
    "layer2.0.conv1.weight",
    "layer2.0.downsample.0.weight",
    "layer2.0.downsample.1.weight",
    "layer2.0.downsample.1.bias",
    "layer2.0.downsample.1.running_mean",
    "layer2.0.downsample.1.running_var",
    "layer2.0.downsample.1.num_batches_tracked",
    "layer2.1.bn1.bias",
    "layer3.0.downsample.0.weight",
    "layer3.0.downsample.1.running_var",
    "layer3.1.conv1.weight",
    "layer4.0.conv1.weight",
    "layer4.0.downsample.0.weight",
    "layer4.0.downsample.1.weight",
    "layer4.1.conv2.weight",
    "layer4.1.bn2.weight",
    "layer4.1.bn2.running_var",
]
# (key, shape) from torchvision's resnet18.
TORCHVISION_RESNET18_SHAPES = {
    "conv1.weight": (64, 3, 7, 7),
    "layer1.0.conv1.weight": (64, 64, 3, 3),
    "layer2.0.conv1.weight": (128, 64, 3, 3),
    "layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "layer3.0.downsample.0.weight": (256, 128, 1, 1),
    "layer4.0.downsample.0.weight": (512, 256, 1, 1),
    "layer4.1.bn2.running_var": (512,),
}


@pytest.fixture(scope="module")
def small_cfg(student_config: Callable[..., StudentConfig]) -> StudentConfig:
    # uneven decoder widths: a JSON round trip that swapped or dropped a stage would show
    return student_config(H, W, decoder_channels=(64, 32, 24, 16))


@pytest.fixture(scope="module")
def student(small_cfg: StudentConfig) -> SurroundDepthStudent:
    torch.manual_seed(0)
    return SurroundDepthStudent(small_cfg).eval()


# ----------------------------------------------------------------------- config


def test_config_json_round_trip(small_cfg: StudentConfig) -> None:
    data = json.loads(json.dumps(small_cfg.to_dict()))
    assert StudentConfig.from_dict(data) == small_cfg
    assert data["decoder_channels"] == [64, 32, 24, 16]


@pytest.mark.parametrize(
    "bad",
    [
        {"encoder": "resnet50"},
        {"num_bins": 1},
        {"min_depth": 0.0},
        {"min_depth": 90.0},
        {"decoder_channels": (64, 32, 16)},
        {"input_height": 100},
        {"input_width": 0},
    ],
)
def test_config_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        StudentConfig(**bad)


def test_config_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="num_bin"):
        StudentConfig.from_dict({"num_bin": 32})


# ---------------------------------------------------------------------- forward


def test_forward_shapes_and_metric_bins(student: SurroundDepthStudent, small_cfg: StudentConfig) -> None:
    x = torch.rand(3, 3, H, W)
    with torch.no_grad():
        out = student(x)
    assert isinstance(out, StudentOutput)
    assert out.depth.shape == (3, 1, H, W)
    assert out.logits.shape == (3, small_cfg.num_bins, H // 2, W // 2)  # bins resolved at stride 2
    assert out.centres.shape == (3, small_cfg.num_bins)
    assert out.features.shape == (3, student.feature_channels, H // 16, W // 16)
    c = out.centres
    assert torch.all(c[:, 1:] > c[:, :-1]), "centres must be strictly increasing"
    assert torch.all(c > small_cfg.min_depth) and torch.all(c < small_cfg.max_depth)
    assert torch.all(out.depth >= small_cfg.min_depth) and torch.all(out.depth <= small_cfg.max_depth)
    # depth is the probability-weighted geometric mean of the centres at stride 2, upsampled
    half = torch.exp((torch.softmax(out.logits, 1) * c.log()[:, :, None, None]).sum(1, keepdim=True))
    expected = torch.nn.functional.interpolate(half, size=(H, W), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out.depth, expected)


def test_batch_is_independent_cameras(student: SurroundDepthStudent) -> None:
    """Shared weights, batch = cameras: in eval one camera's output must not
    depend on the other cameras in the batch."""
    x = torch.rand(4, 3, H, W)
    with torch.no_grad():
        together = student(x).depth
        alone = student(x[2:3]).depth
    torch.testing.assert_close(together[2:3], alone, atol=1e-4, rtol=1e-5)


def test_normalisation_happens_inside(student: SurroundDepthStudent) -> None:
    assert torch.allclose(student.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert "mean" not in student.state_dict(), "constants should not pollute checkpoints"


def test_gradients_reach_every_part(small_cfg: StudentConfig) -> None:
    model = SurroundDepthStudent(small_cfg).train()
    out = model(torch.rand(2, 3, H, W))
    (out.depth.mean() + out.features.mean()).backward()
    for name in ("encoder.conv1.weight", "bin_head.mlp.0.weight", "logit_head.weight", "up2.conv1.0.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_resnet34_student_runs(student_config: Callable[..., StudentConfig]) -> None:
    cfg = student_config(64, 64, encoder="resnet34", num_bins=8)
    with torch.no_grad():
        out = SurroundDepthStudent(cfg).eval()(torch.rand(1, 3, 64, 64))
    assert out.depth.shape == (1, 1, 64, 64) and torch.isfinite(out.depth).all()


# ---------------------------------------------------------------- torchvision keys


def test_encoder_keys_match_torchvision_resnet18() -> None:
    sd = resnet18().state_dict()
    missing = [k for k in TORCHVISION_RESNET18_KEYS if k not in sd]
    assert not missing, missing
    # torchvision's resnet18 state_dict has 122 entries; fc.weight and fc.bias are dropped.
    assert len(sd) == 120
    assert not any(k.startswith("fc.") for k in sd)
    assert "layer1.0.downsample.0.weight" not in sd
    for key, shape in TORCHVISION_RESNET18_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key


def test_parameter_counts_match_torchvision() -> None:
    # torchvision: resnet18 11,689,512 and resnet34 21,797,672 parameters,
    # of which fc holds 512 * 1000 + 1000 = 513,000.
    assert count_parameters(resnet18()) == 11_689_512 - 513_000
    assert count_parameters(resnet34()) == 21_797_672 - 513_000
    assert len(resnet34().state_dict()) == 218 - 2


def test_encoder_feature_strides() -> None:
    feats = build_encoder("resnet18").eval()(torch.rand(1, 3, H, W))
    assert [tuple(f.shape[1:]) for f in feats] == [
        (64, H // 2, W // 2),
        (64, H // 4, W // 4),
        (128, H // 8, W // 8),
        (256, H // 16, W // 16),
        (512, H // 32, W // 32),
    ]


def test_count_parameters_trainable_only() -> None:
    enc = resnet18()
    for p in enc.layer4.parameters():
        p.requires_grad_(False)
    frozen = sum(p.numel() for p in enc.layer4.parameters())
    assert count_parameters(enc, trainable_only=True) == count_parameters(enc) - frozen


# ------------------------------------------------------------------ pretrained


def _imagenet_like_checkpoint() -> dict[str, torch.Tensor]:
    """A torchvision-style resnet18 state_dict with its fc layer, one key removed,
    one extra key and one wrongly-shaped tensor."""
    torch.manual_seed(123)
    sd = {k: v.clone() for k, v in resnet18().state_dict().items()}
    sd["fc.weight"] = torch.randn(1000, 512)
    sd["fc.bias"] = torch.randn(1000)
    del sd["layer4.1.bn2.running_var"]
    sd["layer3.1.conv2.weight"] = torch.randn(256, 256, 1, 1)
    sd["head.extra.weight"] = torch.randn(3)
    return sd


def _save(sd: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    return path


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_load_pretrained_reports_keys(tmp_path: Path, suffix: str, caplog: pytest.LogCaptureFixture) -> None:
    sd = _imagenet_like_checkpoint()
    path = _save(sd, tmp_path / f"resnet18{suffix}")
    enc = resnet18()
    kept_init = enc.layer4[1].bn2.running_var.clone()
    kept_conv = enc.layer3[1].conv2.weight.clone()
    with caplog.at_level(logging.WARNING, logger="fsmde_core.models.resnet"):
        report = load_pretrained_encoder(enc, path)
    assert isinstance(report, LoadReport) and not report.ok
    assert report.missing == ["layer4.1.bn2.running_var"]
    assert report.unexpected == ["head.extra.weight"]
    assert report.shape_mismatch == [("layer3.1.conv2.weight", (256, 256, 3, 3), (256, 256, 1, 1))]
    assert sorted(report.ignored) == ["fc.bias", "fc.weight"]
    assert len(report.loaded) == 120 - 2
    # loaded tensors are the file's; skipped ones keep their initialisation
    torch.testing.assert_close(enc.conv1.weight, sd["conv1.weight"])
    torch.testing.assert_close(enc.layer2[0].downsample[0].weight, sd["layer2.0.downsample.0.weight"])
    torch.testing.assert_close(enc.layer4[1].bn2.running_var, kept_init)
    torch.testing.assert_close(enc.layer3[1].conv2.weight, kept_conv)
    assert "layer4.1.bn2.running_var" in caplog.text and "head.extra.weight" in caplog.text
    assert "layer3.1.conv2.weight" in report.summary()


def test_load_pretrained_clean_checkpoint_is_ok(tmp_path: Path) -> None:
    src = resnet18()
    wrapped = {"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}, "epoch": 90}
    path = _save(wrapped, tmp_path / "wrapped.pt")
    dst = resnet18()
    report = load_pretrained_encoder(dst, path, strict=True)
    assert report.ok and len(report.loaded) == 120
    x = torch.rand(1, 3, H, W)
    torch.testing.assert_close(dst.eval()(x)[-1], src.eval()(x)[-1])


def test_load_pretrained_strict_raises(tmp_path: Path) -> None:
    path = _save(_imagenet_like_checkpoint(), tmp_path / "bad.pth")
    with pytest.raises(PretrainedLoadError, match=r"layer4\.1\.bn2\.running_var"):
        load_pretrained_encoder(resnet18(), path, strict=True)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_corrupt_checkpoint_names_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"corrupt{suffix}"
    path.write_bytes(b"\x00\x01 this is not a checkpoint " * 10)
    with pytest.raises(PretrainedLoadError, match=re.escape(path.name)):
        load_pretrained_encoder(resnet18(), path)


def test_missing_and_unsupported_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        load_pretrained_encoder(resnet18(), tmp_path / "nope.pth")
    other = tmp_path / "weights.npz"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="suffix"):
        load_pretrained_encoder(resnet18(), other)


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    """weights_only=True: a checkpoint holding arbitrary objects is rejected."""
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "obj": Path("/tmp")}, path)
    with pytest.raises(PretrainedLoadError, match=r"evil\.pth"):
        load_pretrained_encoder(resnet18(), path)


# ------------------------------------------------------------------------ ONNX


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # legacy exporter: onnxscript is not installed
def test_onnx_export_matches_torch(student: SurroundDepthStudent, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "student.onnx"
    model = DepthOnly(student).eval()
    x = torch.rand(2, 3, H, W)
    torch.onnx.export(
        model,
        (x,),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["images"],
        output_names=["depth"],
        dynamic_axes={"images": {0: "cameras"}, "depth": {0: "cameras"}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x6 = torch.rand(6, 3, H, W)  # a different batch size than exported with
    (got,) = session.run(["depth"], {"images": x6.numpy()})
    with torch.no_grad():
        want = model(x6).numpy()
    assert got.shape == (6, 1, H, W)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_bin_expectation_is_taken_in_log_depth():
    """Half the mass on 2 m and half on 32 m reads out as 8 m (geometric mean), not 17 m:
    an uncertain student is not pulled towards the far bins."""
    from fsmde_core.models.student import bin_expectation

    centres = torch.tensor([[2.0, 8.0, 32.0]])
    probs = torch.tensor([0.5, 0.0, 0.5]).view(1, 3, 1, 1)
    torch.testing.assert_close(bin_expectation(probs, centres), torch.full((1, 1, 1, 1), 8.0))
    one_hot = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(bin_expectation(one_hot, centres), torch.full((1, 1, 1, 1), 8.0))
    # AdaBins' arithmetic readout, kept as StudentConfig(readout="linear")
    torch.testing.assert_close(bin_expectation(probs, centres, log_space=False), torch.full((1, 1, 1, 1), 17.0))
    with pytest.raises(ValueError, match="readout"):
        StudentConfig(readout="median")
