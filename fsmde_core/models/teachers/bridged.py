"""The bridged teacher: Depth Anything V2 + Segment Anything through Bridging Gates (BriGeS).

A depth foundation model is weakest where scenes are cluttered (thin
structures, overlapping objects); a segmentation foundation model knows
where objects end. BriGeS fuses the two without retraining either: at each of
the four layers the DPT head taps, a :class:`~fsmde_core.models.teachers.bridging.BridgingGate`
lets the depth tokens attend to SAM's image features, and the depth model's own
(frozen) neck and head decode the fused tokens. Only the gates and one shared
projection of the SAM features train.

transformers facts this module relies on (checked in ``test/test_bridged_teacher.py``):

* Depth taps. ``Dinov2Backbone`` has ``stage_names = ["stem", "stage1", ..., "stageL"]``
  and its ``hidden_states`` tuple is aligned with them: entry 0 is the patch
  embeddings (+ CLS and position), entry ``i`` the output of encoder layer
  ``i - 1`` (0-based). ``backbone_config.out_indices`` index that tuple, so
  V2-Small's ``[3, 6, 9, 12]`` are the outputs of layers 2, 5, 8, 11 (0-based),
  the taps the BriGeS description names. The backbone applies its final
  LayerNorm to each tap before the neck (``apply_layernorm``); the gates work
  on the raw residual-stream tokens, and that LayerNorm is applied after them.
* SAM pre-neck features. ``SamVisionEncoder.last_hidden_state`` is AFTER the
  neck (two convs + LayerNorms, ``output_channels`` wide, channels first).
  The pre-neck output of the last block is ``hidden_states[-1]``
  (``output_hidden_states=True``), channels last: (B, H/16, W/16, hidden_size),
  e.g. (B, 64, 64, 768) for ViT-B at 1024 px. In transformers 5 the hidden
  states are recorded by hooks on every ``SamVisionLayer`` (plus the embeddings
  first), so the last one is the last block's output.

SAM sees the image the way its processor prepares it: longest side resized to
``image_size`` (1024), ImageNet-normalised, padded bottom/right with zeros.
Only the feature cells covering the image (not the padding) are used; they
are resized to twice the depth patch grid and max-pooled by 2, so each depth
patch gets the strongest segmentation response in its footprint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as nnf

from fsmde_core.models.teachers.base import Teacher, TeacherOutput
from fsmde_core.models.teachers.bridging import TAU_MODES, BridgingGate, TauMode
from fsmde_core.models.teachers.depth_anything_v2 import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DepthAnythingV2Teacher,
    TeacherWeightsError,
    _sha256_files,
    _weight_files,
    sha256_state_dict,
)

GATES_CONFIG = "gates.json"
GATES_WEIGHTS = "gates.safetensors"
GATES_FORMAT = 1
#: gates.json keys that must match the models the gates are loaded into.
_STRUCTURAL_KEYS: tuple[str, ...] = ("tap_indices", "depth_width", "num_heads", "segmentation_width")


class GatesError(RuntimeError):
    """A gates directory is missing, corrupt, or was trained for other models."""


# ------------------------------------------------------------------ loading SAM


def _resolve_sam_dir(source: str) -> Path | None:
    """The local SAM directory to load from (checked), or None for a hub id."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TeacherWeightsError(f"Segment Anything directory {path} has no config.json")
        if not _weight_files(path):
            raise TeacherWeightsError(f"Segment Anything directory {path} has no weights (*.safetensors, *.bin)")
        return path
    if path.is_file():
        raise TeacherWeightsError(f"{path} is a file; Segment Anything needs a directory (config.json + weights)")
    if source.startswith(("/", "./", "../", "~")):
        raise TeacherWeightsError(f"Segment Anything weights directory does not exist: {path}")
    return None


def load_sam_vision_encoder(source: str) -> tuple[nn.Module, Path | None]:
    """SAM's image encoder (``SamVisionEncoder``) from a ``SamModel`` or ``SamVisionModel`` directory / hub id.

    A full SAM checkpoint (``model_type: sam``, e.g. ``facebook/sam-vit-base``)
    is loaded as ``SamModel`` and its ``vision_encoder`` kept; a vision-only
    one (``sam_vision_model``) as ``SamVisionModel``.
    """
    from transformers import AutoConfig, SamModel, SamVisionModel

    local = _resolve_sam_dir(source)
    where = str(local) if local else source
    try:
        model_type = AutoConfig.from_pretrained(where, local_files_only=local is not None).model_type
        if model_type not in ("sam", "sam_vision_model"):
            raise TeacherWeightsError(f"{where} holds a {model_type!r} model, not Segment Anything (sam)")
        cls = SamModel if model_type == "sam" else SamVisionModel
        model = cls.from_pretrained(where, local_files_only=local is not None)
    except (OSError, ValueError) as exc:
        if isinstance(exc, TeacherWeightsError):
            raise
        raise TeacherWeightsError(
            f"cannot load Segment Anything weights from {source!r}: {exc}. No model hub is reachable here; "
            "download the model (e.g. facebook/sam-vit-base) on another machine and pass its local directory."
        ) from exc
    return model.vision_encoder, local


def sam_preprocess(images: torch.Tensor, image_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """[0, 1] RGB (B, 3, H, W) -> SAM input (B, 3, S, S) and the (h, w) the image fills in it.

    As ``SamImageProcessor``: longest side to ``image_size``, ImageNet
    normalisation, zero padding (after normalisation) to a square.
    """
    height, width = images.shape[-2:]
    scale = image_size / max(height, width)
    h, w = min(image_size, round(height * scale)), min(image_size, round(width * scale))
    x = images.float()
    if (h, w) != (height, width):
        x = nnf.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True).clamp(0.0, 1.0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    return nnf.pad(x, (0, image_size - w, 0, image_size - h)), (h, w)


# ------------------------------------------------------------------ the model


@dataclass
class BridgedOutput:
    """``predicted_depth``: (B, H, W) the depth head's output; ``features``: (B, C, gh, gw) the last
    tap's fused patch tokens after the backbone LayerNorm (what VRKD distils)."""

    predicted_depth: torch.Tensor
    features: torch.Tensor


def tap_indices(depth_config: Any) -> list[int]:
    """Indices into the depth backbone's ``hidden_states`` that feed the DPT neck (see the module doc)."""
    indices = [int(i) for i in depth_config.backbone_config.out_indices]
    layers = int(depth_config.backbone_config.num_hidden_layers)
    if any(not 1 <= i <= layers for i in indices):
        raise ValueError(f"depth backbone out_indices {indices} must tap encoder layers 1..{layers}")
    return indices


class BridgedDepthModel(nn.Module):
    """Depth Anything V2 whose four DPT taps are fused with SAM features by Bridging Gates.

    Args:
        depth_model: a ``DepthAnythingForDepthEstimation`` (frozen here).
        sam_encoder: a ``SamVisionEncoder`` (frozen here).
        segmentation_id: where the SAM weights came from (recorded with saved gates).
        tau_mode, tau, mlp_ratio: the gates' settings (see :class:`BridgingGate`).

    Both foundation models stay in eval mode with ``requires_grad`` off, even
    under ``.train()``; :meth:`gate_parameters` are the only trainable ones.
    """

    def __init__(self, depth_model: nn.Module, sam_encoder: nn.Module, segmentation_id: str = "",
                 tau_mode: TauMode = "learnable", tau: float = 2.0, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.depth = depth_model
        self.segmentation = sam_encoder
        self.segmentation_id = segmentation_id
        for module in (self.depth, self.segmentation):
            module.eval()
            module.requires_grad_(False)
        backbone = depth_model.config.backbone_config
        self.taps = tap_indices(depth_model.config)
        self.width = int(backbone.hidden_size)
        self.num_heads = int(backbone.num_attention_heads)
        self.segmentation_width = int(sam_encoder.config.hidden_size)
        self.projection = nn.Linear(self.segmentation_width, self.width)
        self.gates = nn.ModuleList()
        self.build_gates(tau_mode, tau, mlp_ratio)

    def build_gates(self, tau_mode: TauMode, tau: float, mlp_ratio: float) -> None:
        """(Re)create identity gates with these settings, on the model's device and dtype."""
        ref = self.projection.weight
        self.tau_mode, self.tau_init, self.mlp_ratio = tau_mode, float(tau), float(mlp_ratio)
        self.gates = nn.ModuleList(
            BridgingGate(self.width, self.num_heads, mlp_ratio=mlp_ratio, tau_mode=tau_mode, tau=tau)
            for _ in self.taps
        ).to(device=ref.device, dtype=ref.dtype)

    def train(self, mode: bool = True) -> BridgedDepthModel:
        """Train mode for the gates only: the foundation models' dropout/norm state never changes."""
        super().train(mode)
        self.depth.eval()
        self.segmentation.eval()
        return self

    def gate_parameters(self) -> list[nn.Parameter]:
        """Everything that trains: the gates and the shared SAM projection."""
        return [*self.projection.parameters(), *self.gates.parameters()]

    def gate_state_dict(self) -> dict[str, torch.Tensor]:
        return {f"projection.{k}": v for k, v in self.projection.state_dict().items()} | {
            f"gates.{k}": v for k, v in self.gates.state_dict().items()
        }

    def set_tau(self, tau: float | None) -> None:
        """Override every gate's tau at inference (None = the gates' own)."""
        for gate in self.gates:
            gate.set_tau(tau)

    def taus(self) -> list[float]:
        """Each gate's current tau."""
        return [gate.temperature.value() for gate in self.gates]

    # ------------------------------------------------------------ forward pieces

    @torch.no_grad()
    def depth_taps(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """The raw (pre-LayerNorm) backbone tokens at the DPT taps, CLS first: (B, 1 + gh*gw, C) each."""
        out = self.depth.backbone(pixel_values, output_hidden_states=True, return_dict=True)
        return [out.hidden_states[i] for i in self.taps]

    @torch.no_grad()
    def segmentation_features(self, seg_pixel_values: torch.Tensor, valid_hw: tuple[int, int],
                              grid: tuple[int, int]) -> torch.Tensor:
        """SAM's pre-neck last-block features over the image, pooled onto the depth grid: (B, gh*gw, Cs)."""
        last_block = self.segmentation(seg_pixel_values, output_hidden_states=True).hidden_states[-1]
        patch = seg_pixel_values.shape[-1] // last_block.shape[2]
        rows, cols = math.ceil(valid_hw[0] / patch), math.ceil(valid_hw[1] / patch)
        feats = last_block[:, :rows, :cols].permute(0, 3, 1, 2)
        feats = nnf.interpolate(feats, size=(2 * grid[0], 2 * grid[1]), mode="bilinear", align_corners=False)
        return nnf.max_pool2d(feats, 2).flatten(2).transpose(1, 2)

    def fuse(self, taps: list[torch.Tensor], seg_features: torch.Tensor) -> list[torch.Tensor]:
        """Each tap's tokens through its gate (all tokens, CLS included, as in a DINOv2 block)."""
        context = self.projection(seg_features)
        return [gate(tokens, context) for gate, tokens in zip(self.gates, taps, strict=True)]

    def _backbone_post(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """What ``Dinov2Backbone`` does to a tap before the neck: LayerNorm, optional reshape."""
        cfg = self.depth.config.backbone_config
        if cfg.apply_layernorm:
            tokens = self.depth.backbone.layernorm(tokens)
        if cfg.reshape_hidden_states:
            tokens = tokens[:, 1:].reshape(tokens.shape[0], grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous()
        return tokens

    def decode(self, fused: list[torch.Tensor], grid: tuple[int, int],
               feature_tokens: torch.Tensor | None = None) -> BridgedOutput:
        """Depth Anything's own neck and head on the fused taps; the features from ``feature_tokens``
        (a raw tap, e.g. the un-gated last one) or, when None, the last fused tap."""
        maps = [self._backbone_post(tokens, grid) for tokens in fused]
        hidden = self.depth.neck(maps, grid[0], grid[1])
        depth = self.depth.head(hidden, grid[0], grid[1])
        last = fused[-1] if feature_tokens is None else feature_tokens
        if self.depth.config.backbone_config.apply_layernorm:
            last = self.depth.backbone.layernorm(last)
        patches = last[:, last.shape[1] - grid[0] * grid[1]:]
        features = patches.reshape(last.shape[0], grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous()
        return BridgedOutput(predicted_depth=depth, features=features)

    def forward(self, pixel_values: torch.Tensor, seg_pixel_values: torch.Tensor,
                seg_valid_hw: tuple[int, int], depth_features: bool = False) -> BridgedOutput:
        """Depth-model input (normalised, a multiple of the patch) + SAM input -> depth and features.

        ``depth_features``: the features are the depth model's own last tap (un-gated), not the fused one.
        """
        patch = int(self.depth.config.patch_size)
        grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
        taps = self.depth_taps(pixel_values)
        seg = self.segmentation_features(seg_pixel_values, seg_valid_hw, grid)
        return self.decode(self.fuse(taps, seg), grid, taps[-1] if depth_features else None)

    # ------------------------------------------------------------ saving gates

    def gates_config(self) -> dict[str, Any]:
        return {
            "format": GATES_FORMAT,
            "tap_indices": list(self.taps),
            "depth_width": self.width,
            "num_heads": self.num_heads,
            "segmentation_width": self.segmentation_width,
            "mlp_ratio": self.mlp_ratio,
            "tau_mode": self.tau_mode,
            "tau": self.tau_init,
            "segmentation_model": self.segmentation_id,
            "learned_taus": [gate.temperature.value() for gate in self.gates] if self.tau_mode == "learnable" else None,
        }

    def save_gates(self, directory: str | Path) -> Path:
        """Write ``gates.safetensors`` (gates + projection only) and ``gates.json``; atomic, never pickle."""
        from fsmde_core.checkpoint import CheckpointError, atomic_save_tensors, atomic_write_json

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        overrides = [gate.temperature.override for gate in self.gates]
        self.set_tau(None)  # the file records the gates' own tau, not an inference override
        try:
            atomic_save_tensors(directory / GATES_WEIGHTS, self.gate_state_dict(), {"format": "pt"})
            atomic_write_json(directory / GATES_CONFIG, self.gates_config())
        except CheckpointError as exc:
            raise GatesError(str(exc)) from exc
        finally:
            for gate, override in zip(self.gates, overrides, strict=True):
                gate.temperature.override = override
        return directory

    def check_gates_config(self, config: dict[str, Any], where: Path) -> None:
        """Refuse gates trained for other models, in one line naming the differing keys."""
        ours = self.gates_config()
        diffs = [f"{k} {config.get(k)!r} != {ours[k]!r}" for k in _STRUCTURAL_KEYS if config.get(k) != ours[k]]
        if diffs:
            raise GatesError(f"gates in {where} do not fit these models ({'; '.join(diffs)}); they were trained "
                             f"with segmentation model {config.get('segmentation_model')!r}")
        if config.get("tau_mode") not in TAU_MODES:
            raise GatesError(f"{where / GATES_CONFIG}: tau_mode {config.get('tau_mode')!r} is not one of "
                             f"{', '.join(TAU_MODES)}")

    def load_gates(self, directory: str | Path) -> None:
        """Replace the gates by those saved in ``directory`` (after checking they fit these models)."""
        from fsmde_core.checkpoint import CheckpointError, read_json, read_tensors

        directory = Path(directory)
        if not directory.is_dir():
            raise GatesError(f"gates directory does not exist: {directory}")
        try:
            config = read_json(directory / GATES_CONFIG, "gates config")
            self.check_gates_config(config, directory)
            tensors = read_tensors(directory / GATES_WEIGHTS, "gates weights")
        except CheckpointError as exc:
            raise GatesError(str(exc)) from exc
        self.build_gates(config["tau_mode"], float(config["tau"]), float(config.get("mlp_ratio", 4.0)))
        ref = self.projection.weight
        tensors = {k: v.to(device=ref.device, dtype=ref.dtype) for k, v in tensors.items()}
        own = self.gate_state_dict()
        if set(tensors) != set(own) or any(tensors[k].shape != own[k].shape for k in own):
            missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
            raise GatesError(f"{directory / GATES_WEIGHTS} does not match {GATES_CONFIG}: missing {missing[:3]}, "
                             f"unexpected {extra[:3]} (or tensor shapes differ)")
        self.projection.load_state_dict({k.removeprefix("projection."): v for k, v in tensors.items()
                                         if k.startswith("projection.")})
        self.gates.load_state_dict({k.removeprefix("gates."): v for k, v in tensors.items() if k.startswith("gates.")})


def gates_hash(directory: str | Path) -> str:
    """sha256 of a gates directory's two files (what :class:`BridgedTeacher`'s identity keys on)."""
    directory = Path(directory)
    return _sha256_files([directory / GATES_CONFIG, directory / GATES_WEIGHTS])


# ------------------------------------------------------------------ the teacher


#: Where the bridged teacher's VRKD features come from (:class:`BridgedTeacher` ``features``).
FEATURE_SOURCES: tuple[str, ...] = ("depth", "fused")

class BridgedTeacher(Teacher):
    """Depth Anything V2 bridged with Segment Anything, as a distillation teacher.

    Args:
        depth: Depth Anything V2 directory or hub id (as ``depth_anything_v2``'s ``path_or_id``).
        segmentation: Segment Anything directory or hub id (``SamModel`` or ``SamVisionModel``).
        gates: a directory written by :meth:`BridgedDepthModel.save_gates`; None = fresh
            identity gates (the teacher then equals Depth Anything V2 alone).
        tau: override the gates' attention temperature at inference (None = theirs).
        input_size, device, fp16: as :class:`DepthAnythingV2Teacher` (the depth model's input).
        features: the VRKD features: ``"depth"`` (default) = the depth model's own last-tap patch
            tokens, as the Depth Anything V2 teacher gives them; ``"fused"`` = the gated ones. Why
            ``depth``: the gates are fitted for depth only (SSI vs LiDAR), nothing asks them to keep the
            relations between regions that VRKD transfers; measured in bench/results/bridged.md.

    Preprocessing and outputs mirror the Depth Anything V2 teacher: relative
    inverse depth at the resized input resolution, and last-tap patch tokens
    (after the backbone LayerNorm) as VRKD features.
    """

    name = "bridged"

    def __init__(
        self,
        depth: str | Path,
        segmentation: str | Path,
        gates: str | Path | None = None,
        tau: float | None = None,
        input_size: int | tuple[int, int] = 518,
        device: str | torch.device = "cpu",
        fp16: bool = False,
        features: str = "depth",
    ) -> None:
        if features not in FEATURE_SOURCES:
            raise ValueError(f"bridged teacher: features must be one of {FEATURE_SOURCES}, got {features!r}")
        self.features = features
        self.depth_teacher = DepthAnythingV2Teacher(depth, input_size=input_size, device=device, fp16=fp16)
        self.device, self.dtype = self.depth_teacher.device, self.depth_teacher.dtype
        self.segmentation_source = str(segmentation)
        sam, self._sam_dir = load_sam_vision_encoder(self.segmentation_source)
        self.model = BridgedDepthModel(self.depth_teacher.model, sam, segmentation_id=self.segmentation_source)
        self.model.to(device=self.device, dtype=self.dtype)
        self.gates_dir = Path(gates).expanduser() if gates not in (None, "") else None
        if self.gates_dir is not None:
            self.model.load_gates(self.gates_dir)
        self.tau = None if tau is None else float(tau)
        self.model.set_tau(self.tau)
        self.model.eval()
        self.sam_image_size = int(sam.config.image_size)
        self._identity: str | None = None

    def _sam_hash(self) -> str:
        if self._sam_dir is not None:
            return _sha256_files(_weight_files(self._sam_dir))
        return sha256_state_dict(self.model.segmentation)

    @property
    def identity(self) -> str:
        """Depth teacher identity + SAM weights + gates file hash (or "identity") + every gate's tau."""
        if self._identity is None:
            gates = gates_hash(self.gates_dir)[:16] if self.gates_dir is not None else "identity"
            taus = ",".join(f"{t:.6g}" for t in self.model.taus())
            self._identity = (f"{type(self).__name__}|{self.depth_teacher.identity}|sam={self._sam_hash()[:16]}"
                              f"|gates={gates}|tau={taus}|features={self.features}")
        return self._identity

    def predict(self, images: torch.Tensor, extras: dict[str, torch.Tensor] | None = None) -> TeacherOutput:
        """Relative inverse depth (B, 1, h, w) and last-tap features (B, C, h/14, w/14), see ``features``."""
        from fsmde_core.models.teachers import invert_positive

        with torch.inference_mode():
            x = self.depth_teacher.preprocess(images)
            seg, valid = sam_preprocess(images.to(self.device), self.sam_image_size)
            out = self.model(x, seg.to(self.dtype), valid, depth_features=self.features == "depth")
            pred = out.predicted_depth.unsqueeze(1).float()
            if self.depth_teacher.config.depth_estimation_type == "metric":
                pred = invert_positive(pred)
            feats = out.features.float()
        return TeacherOutput(inv_depth=pred.to(images.device), features=feats.to(images.device))


# ------------------------------------------------------------------ tiny stand-in


def tiny_sam_config(image_size: int = 64) -> Any:
    """A ~50 k-parameter Segment Anything config: the real architecture (windowed + global
    attention blocks, neck, prompt encoder, mask decoder), only tiny."""
    from transformers import SamConfig

    patch = 8
    vision = {"hidden_size": 32, "output_channels": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": image_size, "patch_size": patch, "window_size": 4, "global_attn_indexes": [1],
              "mlp_dim": 64, "num_pos_feats": 8}
    prompt = {"hidden_size": 16, "image_size": image_size, "patch_size": patch, "mask_input_channels": 4}
    decoder = {"hidden_size": 16, "num_multimask_outputs": 3, "iou_head_depth": 1, "iou_head_hidden_dim": 16,
               "mlp_dim": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def build_tiny_sam_vision(directory: str | Path, seed: int = 0, image_size: int = 64) -> Path:
    """Build a tiny random ``SamModel`` and ``save_pretrained`` it (safetensors) to ``directory``.

    The vision encoder gets unit-scale random weights and position embeddings
    (the library's init leaves them ~0), so its features vary across the image.
    Deterministic in ``seed``; the global RNG is left as it was.
    """
    from transformers import SamModel

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SamModel(tiny_sam_config(image_size))
    with torch.no_grad():
        for name, param in model.vision_encoder.named_parameters():
            if name == "pos_embed":
                param.copy_(0.5 * torch.randn(param.shape, generator=generator))
            elif param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(param[0].numel()))
    model.save_pretrained(directory)
    return directory

