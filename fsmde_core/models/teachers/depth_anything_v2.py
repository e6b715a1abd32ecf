"""Depth Anything V2 as a distillation teacher, through ``transformers``.

This is the real architecture (DINOv2 ViT backbone + DPT neck/head,
``DepthAnythingForDepthEstimation``), loaded with ``from_pretrained`` from a
local directory (``config.json`` + ``model.safetensors``) or, where a model hub
is reachable, a hub id such as ``depth-anything/Depth-Anything-V2-Small-hf``.
Nothing is downloaded at run time in this project: put the weights in a
directory and pass its path.

Outputs for distillation:

* ``inv_depth``: the model's relative inverse depth (disparity-like, larger =
  closer) at the resized input resolution (a multiple of the 14 px patch).
  Metric fine-tunes (``depth_estimation_type == "metric"``) predict depth; it is
  inverted so every teacher speaks inverse depth.
* ``features``: the backbone's last hidden tokens, after the backbone's final
  LayerNorm (the same normalisation DINOv2's ``last_hidden_state`` gets), with
  the CLS (and any register) tokens dropped and reshaped to the patch grid.

For tests and the demo, :func:`build_tiny_depth_anything_v2` writes the same
architecture with a small config and random weights to a directory, so the
real ``save_pretrained`` -> ``from_pretrained`` path is exercised offline.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as nnf

from fsmde_core.models.teachers import invert_positive
from fsmde_core.models.teachers.base import Teacher, TeacherOutput

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Weight files ``from_pretrained`` may read from a directory.
WEIGHT_PATTERNS: tuple[str, ...] = ("*.safetensors", "*.bin")

#: Config keys that do not influence outputs (kept out of the identity hash).
_VOLATILE_CONFIG_KEYS: frozenset[str] = frozenset(
    {"transformers_version", "_name_or_path", "dtype", "torch_dtype"}
)


class TeacherWeightsError(FileNotFoundError):
    """The teacher's weights cannot be found or read."""


def _round_to_multiple(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def resize_target(
    height: int, width: int, input_size: int | tuple[int, int], multiple: int
) -> tuple[int, int]:
    """The (h, w) the teacher runs at.

    ``input_size`` as an int is the short side (Depth Anything's "lower bound,
    keep aspect ratio" rule): both sides scaled by the same factor, then each
    rounded to the nearest multiple of the patch size. A ``(h, w)`` pair is used
    as given and must already be a multiple of the patch size.
    """
    if isinstance(input_size, int):
        if input_size < multiple:
            raise ValueError(f"input_size {input_size} is smaller than the patch size {multiple}")
        scale = input_size / min(height, width)
        return _round_to_multiple(height * scale, multiple), _round_to_multiple(width * scale, multiple)
    h, w = (int(v) for v in input_size)
    if h <= 0 or w <= 0 or h % multiple or w % multiple:
        raise ValueError(f"input_size {(h, w)} must be positive multiples of the patch size {multiple}")
    return h, w


def _sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def sha256_state_dict(module: nn.Module) -> str:
    """Hash of every tensor (name, dtype, shape, bytes) in a module's state_dict."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _weight_files(directory: Path) -> list[Path]:
    return sorted({p for pattern in WEIGHT_PATTERNS for p in directory.glob(pattern)})


def _check_local_dir(directory: Path) -> None:
    """Fail early, naming what is missing, rather than deep inside transformers."""
    if not (directory / "config.json").is_file():
        raise TeacherWeightsError(f"Depth Anything V2 directory {directory} has no config.json")
    if not _weight_files(directory):
        present = sorted(p.name for p in directory.iterdir())
        raise TeacherWeightsError(
            f"Depth Anything V2 directory {directory} has no weights (*.safetensors, *.bin); found {present}"
        )


def _looks_like_path(path_or_id: str) -> bool:
    return path_or_id.startswith(("/", "./", "../", "~")) or Path(path_or_id).exists()


class DepthAnythingV2Teacher(Teacher):
    """Depth Anything V2 (any size) from a local directory or hub id.

    Args:
        path_or_id: directory written by ``save_pretrained`` (or a HF snapshot
            directory), or a hub id (needs the hub cache or network).
        input_size: short side in pixels (int, default 518 as in the paper) or
            an explicit ``(h, w)`` that is a multiple of the patch size.
        device: where the model runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``...).
        fp16: run in half precision (CUDA only; changes ``identity``).
    """

    name = "depth_anything_v2"

    def __init__(
        self,
        path_or_id: str | Path,
        input_size: int | tuple[int, int] = 518,
        device: str | torch.device = "cpu",
        fp16: bool = False,
    ) -> None:
        from transformers import DepthAnythingForDepthEstimation

        self.device = torch.device(device)
        if fp16 and self.device.type != "cuda":
            raise ValueError("fp16 is only supported on CUDA devices; use fp16=False on CPU")
        self.fp16 = bool(fp16)
        self.dtype = torch.float16 if fp16 else torch.float32
        self.source = str(path_or_id)
        self._local_dir = self._resolve_local_dir(self.source)
        try:
            model = DepthAnythingForDepthEstimation.from_pretrained(
                str(self._local_dir) if self._local_dir else self.source,
                local_files_only=self._local_dir is not None,
            )
        except OSError as exc:
            raise TeacherWeightsError(
                f"cannot load Depth Anything V2 weights from {self.source!r}: {exc}. No model hub is "
                "reachable here; download the model (e.g. depth-anything/Depth-Anything-V2-Small-hf) on "
                "another machine and pass its local directory."
            ) from exc
        self.model = model.eval().to(device=self.device, dtype=self.dtype)
        self.config = self.model.config
        self.patch_size = int(self.config.backbone_config.patch_size)
        self.input_size: int | tuple[int, int] = (
            input_size if isinstance(input_size, int) else (int(input_size[0]), int(input_size[1]))
        )
        resize_target(4 * self.patch_size, 4 * self.patch_size, self.input_size, self.patch_size)  # validate
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        self._identity: str | None = None

    @staticmethod
    def _resolve_local_dir(source: str) -> Path | None:
        """The local directory to load from, or None for a hub id."""
        path = Path(source).expanduser()
        if path.is_dir():
            _check_local_dir(path)
            return path
        if path.is_file():
            raise TeacherWeightsError(
                f"{path} is a file; Depth Anything V2 needs a directory (config.json + model.safetensors)"
            )
        if _looks_like_path(source):
            raise TeacherWeightsError(f"Depth Anything V2 weights directory does not exist: {path}")
        return None

    # ------------------------------------------------------------------ identity

    def _config_hash(self) -> str:
        cfg = {k: v for k, v in self.config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
        if isinstance(cfg.get("backbone_config"), dict):
            cfg["backbone_config"] = {
                k: v for k, v in cfg["backbone_config"].items() if k not in _VOLATILE_CONFIG_KEYS
            }
        return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()

    def _weights_hash(self) -> str:
        # File bytes when we have them (cheap, and identical to what was loaded);
        # otherwise the loaded tensors themselves (hub cache, unknown file layout).
        if self._local_dir is not None:
            return _sha256_files(_weight_files(self._local_dir))
        return sha256_state_dict(self.model)

    @property
    def identity(self) -> str:
        """``class|config hash|weights hash|input size|dtype`` (device is left out:
        CPU and CUDA agree to float tolerance, and caches should be shareable)."""
        if self._identity is None:
            size = self.input_size
            size_tag = str(size) if isinstance(size, int) else f"{size[0]}x{size[1]}"
            self._identity = (
                f"{type(self).__name__}|cfg={self._config_hash()[:16]}|w={self._weights_hash()[:16]}"
                f"|in={size_tag}|{str(self.dtype).removeprefix('torch.')}"
            )
        return self._identity

    # ---------------------------------------------------------------- inference

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] RGB (B, 3, H, W) -> resized, ImageNet-normalised model input."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        h, w = resize_target(images.shape[-2], images.shape[-1], self.input_size, self.patch_size)
        x = images.to(device=self.device, dtype=torch.float32)
        if (h, w) != tuple(x.shape[-2:]):
            # bicubic like the reference image processor; clamp its overshoot back into [0, 1]
            x = nnf.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
            x = x.clamp(0.0, 1.0)
        return ((x - self.mean) / self.std).to(self.dtype)

    def _tokens_to_grid(self, tokens: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        """(B, prefix + gh*gw, C) -> (B, C, gh, gw), dropping CLS/register tokens.

        The prefix length is inferred from the sequence length, so DINOv2
        backbones with register tokens work too.
        """
        n_prefix = tokens.shape[1] - grid_h * grid_w
        if n_prefix < 0:
            raise RuntimeError(f"backbone gave {tokens.shape[1]} tokens for a {grid_h}x{grid_w} patch grid")
        patches = tokens[:, n_prefix:]
        return patches.reshape(tokens.shape[0], grid_h, grid_w, -1).permute(0, 3, 1, 2).contiguous()

    def predict(self, images: torch.Tensor, extras: dict[str, torch.Tensor] | None = None) -> TeacherOutput:
        """Relative inverse depth (B, 1, h, w) and last-layer patch features (B, C, h/14, w/14).

        ``extras`` is unused. Results are float32 on the device of ``images``.
        """
        with torch.inference_mode():
            x = self.preprocess(images)
            out = self.model(pixel_values=x, output_hidden_states=True, return_dict=True)
            pred = out.predicted_depth.unsqueeze(1).float()
            if self.config.depth_estimation_type == "metric":
                pred = invert_positive(pred)
            tokens = out.hidden_states[-1]
            if getattr(self.config.backbone_config, "apply_layernorm", True):
                tokens = self.model.backbone.layernorm(tokens)
            grid_h, grid_w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
            feats = self._tokens_to_grid(tokens, grid_h, grid_w).float()
        return TeacherOutput(inv_depth=pred.to(images.device), features=feats.to(images.device))

    @classmethod
    def tiny_random(cls, directory: str | Path, seed: int = 0, **kwargs: Any) -> DepthAnythingV2Teacher:
        """Write a tiny random Depth Anything V2 to ``directory`` and load it back as a teacher."""
        return cls(build_tiny_depth_anything_v2(directory, seed=seed), **kwargs)


# ---------------------------------------------------------------- tiny random model


def tiny_depth_anything_v2_config() -> Any:
    """A ~140 k-parameter config of the Depth Anything V2 architecture.

    Same structure as V2-Small (DINOv2 backbone feeding four hidden states into
    the DPT reassemble/fusion neck and the relative-depth head), only narrower
    and shallower, so it runs in milliseconds on a CPU.
    """
    from transformers import DepthAnythingConfig

    backbone = {
        "model_type": "dinov2",
        "image_size": 56,
        "patch_size": 14,
        "hidden_size": 32,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "out_indices": [1, 2, 3, 4],
        "reshape_hidden_states": False,
    }
    return DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        depth_estimation_type="relative",
    )


def small_depth_anything_v2_config() -> Any:
    """The published Depth Anything V2-Small architecture (24.8 M parameters).

    Same values as the ``depth-anything/Depth-Anything-V2-Small-hf`` config:
    DINOv2-S/14 backbone (384 wide, 12 layers, 6 heads) feeding layers
    3/6/9/12 into the DPT neck. Used to time the real teacher architecture
    where its weights cannot be downloaded (random weights, same cost).
    """
    from transformers import DepthAnythingConfig

    backbone = {
        "model_type": "dinov2",
        "image_size": 518,
        "patch_size": 14,
        "hidden_size": 384,
        "num_hidden_layers": 12,
        "num_attention_heads": 6,
        "intermediate_size": 1536,
        "out_indices": [3, 6, 9, 12],
        "reshape_hidden_states": False,
        "layerscale_value": 1.0,
    }
    return DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=384,
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=[48, 96, 192, 384],
        fusion_hidden_size=64,
        head_hidden_size=32,
        depth_estimation_type="relative",
    )


def _reinit_for_signal(model: nn.Module, generator: torch.Generator) -> None:
    """He-initialise conv/linear weights and bias the last conv positive.

    The library's init (std 0.02) makes a random tiny model predict ~1e-8
    everywhere after the final ReLU; tests need a non-degenerate map to compare
    outputs before and after a save/load round trip.
    """
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Conv2d | nn.Linear):
                fan_in = mod.weight[0].numel()
            elif isinstance(mod, nn.ConvTranspose2d):
                fan_in = mod.weight.shape[0] * mod.weight[0, 0].numel()
            else:
                continue
            mod.weight.copy_(torch.randn(mod.weight.shape, generator=generator) * math.sqrt(2.0 / fan_in))
        model.head.conv3.bias.fill_(1.0)


def build_tiny_depth_anything_v2(directory: str | Path, seed: int = 0) -> Path:
    """Build a tiny random Depth Anything V2 and ``save_pretrained`` it to ``directory``.

    Deterministic in ``seed`` and does not disturb the global RNG.
    """
    from transformers import DepthAnythingForDepthEstimation

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DepthAnythingForDepthEstimation(tiny_depth_anything_v2_config())
    _reinit_for_signal(model, torch.Generator().manual_seed(seed))
    model.save_pretrained(directory)
    return directory
