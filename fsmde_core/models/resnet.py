"""ResNet-18/34 encoders in plain torch, key-compatible with torchvision.

torchvision cannot be installed next to the CPU torch build this project pins,
so the encoder is written here. Module and parameter names follow
``torchvision.models.resnet`` exactly (``conv1``, ``bn1``, ``layer1..layer4``,
BasicBlock ``conv1/bn1/conv2/bn2/downsample.0/downsample.1``) so that a user's
ImageNet checkpoint -- a torchvision ``resnet18`` state_dict saved with
``torch.save`` or converted to safetensors -- loads by key with
:func:`load_pretrained_encoder`. The classifier (``fc``) is deliberately absent:
a dense-prediction encoder has no use for it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

#: Blocks per stage for the supported depths (torchvision's BasicBlock variants).
RESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
}

#: Channels of the five feature maps returned by the encoder (stride 2, 4, 8, 16, 32).
ENCODER_CHANNELS: tuple[int, int, int, int, int] = (64, 64, 128, 256, 512)

#: Prefixes of checkpoint keys that are silently dropped: the ImageNet classifier of a
#: torchvision ResNet (``fc``) or MobileNetV3 (``classifier``).
IGNORED_PREFIXES: tuple[str, ...] = ("fc.", "classifier.")


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


@dataclass(frozen=True)
class PretrainedConfig:
    """The optional ImageNet encoder initialisation (``student.pretrained*`` keys).

    A file whose names match less than ``pretrained_min_match`` of the encoder's
    tensors is refused: it initialises (almost) nothing, and training from
    scratch by accident is the costliest silent failure there is.
    """

    pretrained: str | None = None
    pretrained_min_match: float = 0.9
    pretrained_force: bool = False  # load whatever matches, however little

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.pretrained_min_match) <= 1.0:
            raise ValueError(f"student.pretrained_min_match must be in [0, 1], got {self.pretrained_min_match!r}")



class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock``: two 3x3 convs with an identity/projection shortcut."""

    expansion = 1

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        # Same structure (Sequential of conv1x1 + BN) as torchvision, so the keys
        # read ``downsample.0.weight`` / ``downsample.1.running_mean``.
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """ResNet trunk without the classifier, returning five multi-scale features.

    ``forward`` returns ``[relu(bn1(conv1(x))) (stride 2), layer1 (4), layer2 (8),
    layer3 (16), layer4 (32)]`` -- the skip connections a U-Net decoder needs.
    The input is expected to be ImageNet-normalised already.
    """

    def __init__(self, layers: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.channels: tuple[int, ...] = ENCODER_CHANNELS
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, 64, layers[0], stride=1)
        self.layer2 = self._make_layer(64, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(128, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(256, 512, layers[3], stride=2)
        self._init_weights()

    @staticmethod
    def _make_layer(in_ch: int, out_ch: int, blocks: int, stride: int) -> nn.Sequential:
        mods = [BasicBlock(in_ch, out_ch, stride)]
        mods += [BasicBlock(out_ch, out_ch) for _ in range(blocks - 1)]
        return nn.Sequential(*mods)

    def _init_weights(self) -> None:
        # torchvision's default init, so training from scratch behaves the same.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f0 = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(f0))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [f0, f1, f2, f3, f4]


def build_encoder(name: str) -> ResNetEncoder:
    """Build ``"resnet18"`` or ``"resnet34"`` with random (torchvision-style) init."""
    if name not in RESNET_LAYERS:
        raise ValueError(f"unknown encoder {name!r}; expected one of {sorted(RESNET_LAYERS)}")
    return ResNetEncoder(RESNET_LAYERS[name])


def resnet18() -> ResNetEncoder:
    """ResNet-18 encoder (11.2 M parameters without ``fc``)."""
    return build_encoder("resnet18")


def resnet34() -> ResNetEncoder:
    """ResNet-34 encoder (21.3 M parameters without ``fc``)."""
    return build_encoder("resnet34")


# --------------------------------------------------------------------------- loading


class PretrainedLoadError(RuntimeError):
    """A checkpoint file exists but cannot be read as a state_dict."""


@dataclass
class LoadReport:
    """What :func:`load_pretrained_encoder` did, key by key.

    Attributes:
        path: the checkpoint file.
        loaded: encoder keys that received a tensor from the file.
        missing: encoder keys the file did not provide (they keep their init).
        unexpected: file keys the encoder does not have (the classifier excluded).
        shape_mismatch: ``(key, encoder_shape, file_shape)`` for keys present in
            both but with different shapes (not loaded).
        ignored: file keys dropped on purpose (the ImageNet classifier).
    """

    path: Path
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every encoder tensor came from the file with the right shape."""
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def matched_fraction(self, encoder_tensors: int) -> float:
        """Share of the encoder's tensors that the file provided."""
        return len(self.loaded) / max(1, encoder_tensors)

    def too_few_matched(self, encoder_tensors: int, min_match: float) -> str:
        """One line: the file, how much matched, and a few names on each side that did not."""
        file_side = self.unexpected[:3] + [k for k, *_ in self.shape_mismatch[:3]]
        return (f"pretrained encoder {self.path}: matches only {len(self.loaded)} of the encoder's "
                f"{encoder_tensors} tensors ({100 * self.matched_fraction(encoder_tensors):.0f} % < "
                f"{100 * min_match:.0f} %); unmatched, e.g. encoder {self.missing[:3]}, file {file_side[:3]}; "
                "set student.pretrained_force=true (or student.pretrained_min_match=0) to load it anyway")

    def summary(self) -> str:
        """Multi-line human-readable account, listing every problem key."""
        lines = [
            f"pretrained encoder {self.path}: loaded {len(self.loaded)} tensors, "
            f"ignored {len(self.ignored)} (classifier), missing {len(self.missing)}, "
            f"unexpected {len(self.unexpected)}, shape mismatches {len(self.shape_mismatch)}"
        ]
        lines += [f"  missing:    {k}" for k in self.missing]
        lines += [f"  unexpected: {k}" for k in self.unexpected]
        lines += [f"  shape:      {k} encoder {tuple(a)} file {tuple(b)}" for k, a, b in self.shape_mismatch]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _unwrap_checkpoint(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Accept a bare state_dict or the common ``{"state_dict": ...}``/``{"model": ...}`` wrappers."""
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping):
                obj = inner
                break
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            # DataParallel/DistributedDataParallel checkpoints prefix every key.
            if all(k.startswith("module.") for k in tensors):
                tensors = {k[len("module.") :]: v for k, v in tensors.items()}
            return tensors
    raise PretrainedLoadError(f"{path}: no tensors found; expected a state_dict (mapping of name -> tensor)")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or ``.pth``/``.pt`` state_dict onto the CPU.

    ``.pth``/``.pt`` files are read with ``torch.load(weights_only=True)`` only:
    a pickle from an untrusted source must not be able to run code.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the suffix is not one of the supported ones.
        PretrainedLoadError: the file exists but is corrupt or not a state_dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained encoder weights not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        elif suffix in (".pth", ".pt"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise ValueError(f"{path}: unsupported checkpoint suffix {suffix!r}; use .safetensors/.pth/.pt")
    except ValueError:
        raise
    except Exception as exc:  # corrupt zip/pickle/header: name the file, keep the cause
        raise PretrainedLoadError(f"cannot read pretrained weights from {path}: {exc}") from exc
    return _unwrap_checkpoint(obj, path)


def load_pretrained_encoder(encoder: nn.Module, path: str | Path, strict: bool = False,
                            min_match: float = PretrainedConfig.pretrained_min_match) -> LoadReport:
    """Copy matching tensors from a torchvision-style checkpoint into ``encoder``.

    Keys are matched by name; the classifier (``fc.*``, ``classifier.*``) is
    ignored; tensors whose shape differs are skipped and reported rather than
    crashing, so a partially compatible checkpoint still initialises what it can. The report is logged (warning
    level when anything is off) and returned.

    Args:
        encoder: a :class:`ResNetEncoder`, a MobileNetV3 encoder, or any module with torchvision names.
        path: ``.safetensors``, ``.pth`` or ``.pt`` file.
        strict: raise ``PretrainedLoadError`` unless ``report.ok``.
        min_match: raise ``PretrainedLoadError`` (loading nothing) when fewer than
            this fraction of the encoder's tensors come from the file: a file of
            another architecture or naming scheme matches almost nothing, and
            training on from random weights would look like a working run.
    """
    path = Path(path)
    source = read_state_dict(path)
    target = encoder.state_dict()
    report = LoadReport(path=path)
    to_load: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        if key.startswith(IGNORED_PREFIXES):
            report.ignored.append(key)
        elif key not in target:
            report.unexpected.append(key)
        elif tuple(target[key].shape) != tuple(tensor.shape):
            report.shape_mismatch.append((key, tuple(target[key].shape), tuple(tensor.shape)))
        else:
            to_load[key] = tensor
    report.missing = [k for k in target if k not in source]
    report.loaded = sorted(to_load)
    if strict and not report.ok:
        raise PretrainedLoadError(report.summary())
    if report.matched_fraction(len(target)) < min_match:
        raise PretrainedLoadError(report.too_few_matched(len(target), min_match))
    encoder.load_state_dict(to_load, strict=False)
    log.log(logging.INFO if report.ok else logging.WARNING, "%s", report.summary())
    return report
