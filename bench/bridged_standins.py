"""Small foundation-model stand-ins for the bridged teacher, trained here on synthetic bags (issue 10).

No Depth Anything V2 or Segment Anything weights can be downloaded on these
machines, and random weights prove nothing about bridging. So the bridged
teacher is measured with stand-ins that have the REAL architectures
(``transformers``' ``DepthAnythingForDepthEstimation`` and ``SamModel``), only
small, pre-trained on ``fsmde synth`` bags:

* ``pretrain-depth``: a small Depth Anything V2 learns RELATIVE inverse depth
  from the dense synthetic GT (scale-and-shift-invariant loss, sky = 0 inverse
  depth), through the teacher's own preprocessing
  (:meth:`DepthAnythingV2Teacher.preprocess`). Saved with ``save_pretrained``,
  so ``--teacher depth_anything_v2 --teacher-option path_or_id=DIR`` and the
  bridged teacher's ``depth=DIR`` load it through the real path.
* ``pretrain-seg``: a small SAM image encoder plus a light per-pixel head on its
  PRE-neck last-block features (what the bridging gates see,
  :meth:`BridgedDepthModel.segmentation_features`) learns the synthetic semantic
  labels (cross-entropy, void ignored), through the teacher's SAM preprocessing
  (:func:`sam_preprocess`). The ``SamModel`` is saved with ``save_pretrained``
  (``segmentation=DIR``); the head goes beside it as ``seg_head.safetensors`` +
  ``seg_head.json`` (for measuring only). Held-out mIoU is printed and written to
  ``DIR/metrics.json``.

Seeds are fixed and every command is printed; not resume-safe (bench scaffolding).

    python bench/bridged_standins.py bags --out /tmp/standins/bags
    python bench/bridged_standins.py pretrain-depth --bag B1 --bag B2 ... --out /tmp/standins/depth
    python bench/bridged_standins.py pretrain-seg --bag B1 ... --heldout H1 --out /tmp/standins/seg
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as nnf
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout, not installed
from fsmde_core.distill.ckd import scale_invariant_normalise
from fsmde_core.models.teachers.bridged import load_sam_vision_encoder, sam_preprocess
from fsmde_core.models.teachers.depth_anything_v2 import DepthAnythingV2Teacher
from fsmde_core.semantics import CLASS_NAMES, NUM_CLASSES, VOID

#: Sample size of the stand-ins: 16:9 like the nuScenes preset, both sides multiples of the 14 px patch.
DEFAULT_HEIGHT, DEFAULT_WIDTH = 126, 224
SEG_HEAD_WEIGHTS = "seg_head.safetensors"
SEG_HEAD_CONFIG = "seg_head.json"


def say(*parts: Any) -> None:
    """Print a command or a result line at once (the runs go to log files in the background)."""
    print(*parts, flush=True)


# ================================================================== data
@dataclass
class Frames:
    """Every camera image of some bags, flattened: (M, H, W, 3) uint8, (M, H, W) float32 depth, uint8 labels."""

    images: np.ndarray
    gt_depth: np.ndarray
    labels: np.ndarray
    ego: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])


def load_frames(bags: list[Path], width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT,
                max_sets: int | None = None, progress: bool = True) -> Frames:
    """Read the surround sets of ``bags`` at (width, height) and keep each camera image with its dense GT.

    The bags must carry dense synthetic ground truth (``fsmde synth``); labels
    may be absent (then every pixel is void).
    """
    from itertools import islice

    from fsmde_core.data.bag import BagSource
    from fsmde_core.data.config import DataConfig

    config = DataConfig(width=width, height=height, require_lidar=False)
    images, depth, labels, ego = [], [], [], []
    samples = BagSource(bags, config)
    source = islice(samples, max_sets) if max_sets is not None else samples
    for sample in tqdm(source, desc="read bags", unit="set", disable=not progress, dynamic_ncols=True):
        if sample.gt_depth is None:
            raise SystemExit(f"bag {sample.source.bag} has no dense synthetic ground truth (/synthetic_gt/*/depth)")
        images.append(sample.images)
        depth.append(sample.gt_depth.astype(np.float32))
        labels.append(sample.gt_labels if sample.gt_labels is not None
                      else np.full(sample.gt_depth.shape, VOID, dtype=np.uint8))
        ego.append(np.asarray(sample.masks, dtype=bool))
    if not images:
        raise SystemExit(f"no surround set in {', '.join(map(str, bags))}")
    return Frames(np.concatenate(images), np.concatenate(depth), np.concatenate(labels), np.concatenate(ego))


def inverse_depth_target(gt_depth: torch.Tensor, ego: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense GT depth -> (inverse depth, valid): sky (+Inf) is 0, NaN / <= 0 and ego pixels are not valid.

    Relative-depth models are trained on inverse depth (disparity-like) so the
    sky has a finite value (0) that the model must learn, as Depth Anything's is.
    """
    finite = torch.isfinite(gt_depth) & (gt_depth > 0)
    sky = torch.isposinf(gt_depth)
    inv = torch.where(finite, 1.0 / gt_depth.clamp_min(1e-6), torch.zeros_like(gt_depth))
    return inv, (finite | sky) & ~ego


def ssi_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Scale-and-shift-invariant L1 (MiDaS / Depth Anything): both normalised per image by median and MAD.

    Reuses :func:`fsmde_core.distill.ckd.scale_invariant_normalise`, so the
    loss of ``a * pred + b`` equals that of ``pred`` for any a > 0.
    """
    u_pred, _, _ = scale_invariant_normalise(pred, valid)
    u_target, _, _ = scale_invariant_normalise(target, valid)
    diff = (u_pred - u_target).abs()
    count = valid.sum().clamp_min(1)
    return torch.where(valid, diff, torch.zeros_like(diff)).sum() / count


def _batches(n: int, batch: int, steps: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``steps`` index batches, epoch after epoch of a seeded permutation (no batch repeats within an epoch)."""
    out: list[torch.Tensor] = []
    while len(out) < steps:
        perm = torch.randperm(n, generator=generator)
        out += [perm[i:i + batch] for i in range(0, n - batch + 1, batch)]
    return out[:steps]


def _flip(generator: torch.Generator, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Flip each image of a batch left-right with probability 1/2, the same way in every tensor."""
    flip = torch.rand(tensors[0].shape[0], generator=generator) < 0.5
    return [torch.where(flip.view(-1, *([1] * (t.dim() - 1))), t.flip(-1), t) for t in tensors]


def _images(frames: Frames, idx: torch.Tensor) -> torch.Tensor:
    """uint8 (M, H, W, 3) rows -> float (B, 3, H, W) in [0, 1], the Teacher interface's input."""
    return torch.from_numpy(frames.images[idx.numpy()]).permute(0, 3, 1, 2).float() / 255.0


def _out_of_time(start: float, max_minutes: float | None) -> bool:
    """The wall-time guard of a shared machine: stop (and save) once ``max_minutes`` have passed.

    The learning-rate schedule stays the one of ``steps``; a run cut short says
    so in ``steps_done`` (metrics.json), so a number is never read as a full run.
    """
    return max_minutes is not None and time.monotonic() - start > 60.0 * max_minutes


def _schedule(optimiser: torch.optim.Optimizer, lr: float, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """OneCycle (cosine, 10 % warm-up), the BriGeS / Depth Anything habit; short runs need the warm-up."""
    return torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=max(steps, 2), pct_start=0.1)


# ============================================================= depth stand-in
def standin_depth_config(size: str = "standin") -> Any:
    """Depth Anything V2 configs: ``standin`` (~3.8 M parameters, trained here) or ``tiny`` (tests).

    ``standin`` keeps V2-Small's structure (DINOv2/14 backbone, four taps spread
    over the depth, reassemble factors 4/2/1/0.5, DPT fusion and head) at half
    V2-Small's width and half its depth, which a 2-core CPU trains to a usable
    relative-depth model at 126x224 in about ten minutes.
    """
    from transformers import DepthAnythingConfig

    from fsmde_core.models.teachers.depth_anything_v2 import tiny_depth_anything_v2_config

    if size == "tiny":
        return tiny_depth_anything_v2_config()
    if size != "standin":
        raise ValueError(f"unknown depth stand-in size {size!r}; expected standin or tiny")
    backbone = {"model_type": "dinov2", "image_size": DEFAULT_WIDTH, "patch_size": 14, "hidden_size": 192,
                "num_hidden_layers": 6, "num_attention_heads": 3, "intermediate_size": 768,
                "out_indices": [2, 3, 5, 6], "reshape_hidden_states": False, "layerscale_value": 1.0}
    return DepthAnythingConfig(backbone_config=backbone, patch_size=14, reassemble_hidden_size=192,
                               reassemble_factors=[4, 2, 1, 0.5], neck_hidden_sizes=[24, 48, 96, 192],
                               fusion_hidden_size=48, head_hidden_size=16, depth_estimation_type="relative")


def init_depth_model(directory: Path, size: str, seed: int) -> Path:
    """Write a freshly initialised stand-in to ``directory`` (the library's init, head bias positive).

    The last conv's bias starts at 1 so the head's final ReLU passes gradients
    from the first step (at 0 it can start dead and never learn).
    """
    from transformers import DepthAnythingForDepthEstimation

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DepthAnythingForDepthEstimation(standin_depth_config(size))
    with torch.no_grad():
        model.head.conv3.bias.fill_(1.0)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    return directory


def pretrain_depth(frames: Frames, out: Path, size: str = "standin", steps: int = 1000, batch: int = 8,
                   lr: float = 5e-4, seed: int = 0, heldout: Frames | None = None,
                   progress: bool = True, max_minutes: float | None = None) -> dict[str, Any]:
    """Train a Depth Anything V2 stand-in for relative inverse depth and ``save_pretrained`` it to ``out``.

    The model is trained INSIDE a :class:`DepthAnythingV2Teacher` loaded from
    its initial save, so training sees exactly the teacher's resizing and
    normalisation. Returns the run's numbers (also written to ``out/metrics.json``).
    """
    height, width = frames.images.shape[1:3]
    init_depth_model(out, size, seed)
    teacher = DepthAnythingV2Teacher(out, input_size=(height, width) if height % 14 == 0 and width % 14 == 0
                                     else min(height, width))
    model = teacher.model.train().requires_grad_(True)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    schedule = _schedule(optimiser, lr, steps)
    generator = torch.Generator().manual_seed(seed)
    start, losses = time.monotonic(), []
    bar = tqdm(_batches(len(frames), batch, steps, generator), desc="pretrain-depth", unit="step",
               disable=not progress, dynamic_ncols=True)
    for idx in bar:
        if _out_of_time(start, max_minutes):
            break
        depth = torch.from_numpy(frames.gt_depth[idx.numpy()])
        ego = torch.from_numpy(frames.ego[idx.numpy()])
        images, depth, ego = _flip(generator, _images(frames, idx), depth, ego)
        loss = _depth_loss(teacher, model, images, depth, ego)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    model.eval().save_pretrained(out)
    result = {"kind": "depth", "size": size, "steps": steps, "steps_done": len(losses), "batch": batch, "lr": lr,
              "seed": seed, "train_images": len(frames), "parameters": sum(p.numel() for p in model.parameters()),
              "input_hw": [height, width], "wall_s": time.monotonic() - start,
              "train_ssi_last50": float(np.mean(losses[-50:])) if losses else None}
    if heldout is not None:
        result["heldout_ssi"] = heldout_depth_ssi(DepthAnythingV2Teacher(out, input_size=teacher.input_size),
                                                  heldout)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _depth_loss(teacher: DepthAnythingV2Teacher, model: nn.Module, images: torch.Tensor, depth: torch.Tensor,
                ego: torch.Tensor) -> torch.Tensor:
    """SSI loss of the model's relative inverse depth against the GT's, at the GT's resolution."""
    pred = model(pixel_values=teacher.preprocess(images)).predicted_depth.unsqueeze(1)
    if pred.shape[-2:] != depth.shape[-2:]:
        pred = nnf.interpolate(pred, size=depth.shape[-2:], mode="bilinear", align_corners=False)
    target, valid = inverse_depth_target(depth.unsqueeze(1), ego.unsqueeze(1))
    return ssi_loss(pred, target, valid)


def heldout_depth_ssi(teacher: DepthAnythingV2Teacher, frames: Frames, batch: int = 8) -> float:
    """Mean SSI loss of a loaded teacher on held-out frames (a quick check; ``fsmde eval`` is the measure)."""
    losses = []
    for start in range(0, len(frames), batch):
        idx = torch.arange(start, min(start + batch, len(frames)))
        with torch.inference_mode():
            rows = idx.numpy()
            loss = _depth_loss(teacher, teacher.model, _images(frames, idx),
                               torch.from_numpy(frames.gt_depth[rows]), torch.from_numpy(frames.ego[rows]))
        losses.append(float(loss) * len(idx))
    return sum(losses) / len(frames)


# ====================================================== segmentation stand-in
def standin_sam_config(size: str = "standin") -> Any:
    """Segment Anything configs: ``standin`` (~0.6 M-parameter image encoder at 224 px) or ``tiny`` (tests).

    ``standin`` is SAM's ViT (windowed blocks + a global one at the end, relative
    position, neck) at 224 px with 8 px patches, so the 126x224 images give a
    16x28 pre-neck grid - finer than the 9x16 depth patch grid it is pooled onto.
    The prompt encoder and mask decoder are there (a loadable ``SamModel``) but untrained.
    """
    from transformers import SamConfig

    from fsmde_core.models.teachers.bridged import tiny_sam_config

    if size == "tiny":
        return tiny_sam_config(64)
    if size != "standin":
        raise ValueError(f"unknown segmentation stand-in size {size!r}; expected standin or tiny")
    vision = {"hidden_size": 96, "output_channels": 32, "num_hidden_layers": 4, "num_attention_heads": 3,
              "image_size": 224, "patch_size": 8, "window_size": 7, "global_attn_indexes": [3],
              "mlp_dim": 384, "num_pos_feats": 16}
    prompt = {"hidden_size": 32, "image_size": 224, "patch_size": 8, "mask_input_channels": 8}
    decoder = {"hidden_size": 32, "num_multimask_outputs": 3, "iou_head_depth": 2, "iou_head_hidden_dim": 32,
               "mlp_dim": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


class SegmentationHead(nn.Module):
    """Per-pixel classes from SAM's pre-neck last-block features: LayerNorm, 2-layer MLP, bilinear upsampling.

    Light on purpose: the classes must be readable from the features the gates
    get, so the encoder (not the head) has to learn them.
    """

    def __init__(self, width: int, num_classes: int = NUM_CLASSES, hidden: int = 64) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, num_classes))

    def forward(self, features: torch.Tensor, patch: int, valid_hw: tuple[int, int],
                out_hw: tuple[int, int]) -> torch.Tensor:
        """(B, S, S, C) channels-last features -> (B, K, *out_hw) logits over the image (padding cut off)."""
        rows, cols = math.ceil(valid_hw[0] / patch), math.ceil(valid_hw[1] / patch)
        logits = self.mlp(self.norm(features[:, :rows, :cols])).permute(0, 3, 1, 2)
        logits = nnf.interpolate(logits, size=(rows * patch, cols * patch), mode="bilinear", align_corners=False)
        logits = logits[..., :valid_hw[0], :valid_hw[1]]
        if tuple(logits.shape[-2:]) != tuple(out_hw):
            logits = nnf.interpolate(logits, size=out_hw, mode="bilinear", align_corners=False)
        return logits


def init_sam_model(directory: Path, size: str, seed: int) -> Path:
    """Write a freshly initialised SAM stand-in (the library's init) to ``directory``."""
    from transformers import SamModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SamModel(standin_sam_config(size))
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    return directory


def _seg_logits(encoder: nn.Module, head: SegmentationHead, images: torch.Tensor) -> torch.Tensor:
    """SAM preprocessing -> pre-neck last block (``hidden_states[-1]``, as the bridged teacher) -> head."""
    pixels, valid_hw = sam_preprocess(images, int(encoder.config.image_size))
    features = encoder(pixels, output_hidden_states=True).hidden_states[-1]
    return head(features, int(encoder.config.patch_size), valid_hw, tuple(images.shape[-2:]))


def pretrain_seg(frames: Frames, out: Path, size: str = "standin", steps: int = 1000, batch: int = 8,
                 lr: float = 1e-3, seed: int = 0, heldout: Frames | None = None,
                 progress: bool = True, max_minutes: float | None = None) -> dict[str, Any]:
    """Train a SAM image encoder + head on the synthetic labels; save SAM (``save_pretrained``) and the head.

    The encoder trained is the one :func:`load_sam_vision_encoder` returns from
    the initial save (the bridged teacher's loading path); the whole ``SamModel``
    is saved again at the end with the trained encoder. Returns the run's
    numbers (held-out mIoU with ``heldout``), also written to ``out/metrics.json``.
    """
    from transformers import SamModel

    init_sam_model(out, size, seed)
    sam = SamModel.from_pretrained(out, local_files_only=True)
    encoder = sam.vision_encoder.train().requires_grad_(True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = SegmentationHead(int(encoder.config.hidden_size))
    params = [*encoder.parameters(), *head.parameters()]
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    schedule = _schedule(optimiser, lr, steps)
    generator = torch.Generator().manual_seed(seed)
    start, losses = time.monotonic(), []
    bar = tqdm(_batches(len(frames), batch, steps, generator), desc="pretrain-seg", unit="step",
               disable=not progress, dynamic_ncols=True)
    for idx in bar:
        if _out_of_time(start, max_minutes):
            break
        labels = torch.from_numpy(frames.labels[idx.numpy()]).long()
        images, labels = _flip(generator, _images(frames, idx), labels)
        loss = nnf.cross_entropy(_seg_logits(encoder, head, images), labels, ignore_index=VOID)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    sam.eval().save_pretrained(out)
    save_seg_head(head.eval(), out)
    result: dict[str, Any] = {
        "kind": "segmentation", "size": size, "steps": steps, "steps_done": len(losses), "batch": batch, "lr": lr,
        "seed": seed, "train_images": len(frames), "encoder_parameters": sum(p.numel() for p in encoder.parameters()),
        "head_parameters": sum(p.numel() for p in head.parameters()), "wall_s": time.monotonic() - start,
        "train_ce_last50": float(np.mean(losses[-50:])) if losses else None}
    if heldout is not None:
        result.update(evaluate_seg(out, heldout))
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def save_seg_head(head: SegmentationHead, directory: Path) -> None:
    """The head as safetensors + a JSON naming its shape and the class table it predicts."""
    from fsmde_core.checkpoint import atomic_save_tensors, atomic_write_json

    tensors = {k: v.detach().contiguous() for k, v in head.state_dict().items()}
    atomic_save_tensors(directory / SEG_HEAD_WEIGHTS, tensors, {"format": "pt"})
    atomic_write_json(directory / SEG_HEAD_CONFIG, {
        "width": head.norm.normalized_shape[0], "hidden": head.mlp[0].out_features,
        "num_classes": head.mlp[2].out_features, "classes": list(CLASS_NAMES), "void": VOID,
        "features": "SamVisionEncoder hidden_states[-1] (pre-neck last block), channels last"})


def load_seg_head(directory: Path) -> SegmentationHead:
    """The head written by :func:`save_seg_head`."""
    from fsmde_core.checkpoint import read_json, read_tensors

    config = read_json(directory / SEG_HEAD_CONFIG, "segmentation head config")
    head = SegmentationHead(int(config["width"]), int(config["num_classes"]), int(config["hidden"]))
    head.load_state_dict(read_tensors(directory / SEG_HEAD_WEIGHTS, "segmentation head weights"))
    return head.eval()


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(K, K) int64 counts, rows = ground truth, columns = prediction; void pixels left out."""
    keep = labels != VOID
    index = labels[keep].astype(np.int64) * num_classes + pred[keep].astype(np.int64)
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """IoU of each class; NaN for a class absent from both GT and prediction (left out of the mean)."""
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def evaluate_seg(directory: Path, frames: Frames, batch: int = 8) -> dict[str, Any]:
    """mIoU of a saved stand-in (loaded the bridged teacher's way + its head) on ``frames``."""
    encoder, _ = load_sam_vision_encoder(str(directory))
    encoder.eval()
    head = load_seg_head(directory)
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    for start in range(0, len(frames), batch):
        idx = torch.arange(start, min(start + batch, len(frames)))
        with torch.inference_mode():
            pred = _seg_logits(encoder, head, _images(frames, idx)).argmax(1).numpy()
        confusion += confusion_matrix(pred, frames.labels[idx.numpy()])
    iou = iou_per_class(confusion)
    return {"heldout_miou": float(np.nanmean(iou)),
            "heldout_pixel_accuracy": float(np.trace(confusion) / max(confusion.sum(), 1)),
            "heldout_iou": {name: (None if math.isnan(v) else float(v))
                            for name, v in zip(CLASS_NAMES, iou, strict=True)}}


# ====================================================================== CLI
def make_bags(out: Path, train_seeds: list[int], heldout_seeds: list[int], train_frames: int, heldout_frames: int,
              width: int, height: int) -> list[Path]:
    """``fsmde synth`` bags: training and held-out scenes disjoint by seed (the commands are printed)."""
    if set(train_seeds) & set(heldout_seeds):
        raise SystemExit(f"training and held-out seeds overlap: {sorted(set(train_seeds) & set(heldout_seeds))}")
    written = []
    for role, seeds, frames in (("train", train_seeds, train_frames), ("heldout", heldout_seeds, heldout_frames)):
        for seed in seeds:
            path = out / f"{role}_s{seed}"
            cmd = ["fsmde", "synth", "--preset", "nuscenes", "--frames", str(frames), "--seed", str(seed),
                   "--width", str(width), "--height", str(height), "--workers", "1", "--no-progress",
                   "--out", str(path)]
            say("$", shlex.join(cmd))
            subprocess.run([sys.executable, "-m", "fsmde_core.cli", *cmd[1:]], check=True)
            written.append(path)
    return written


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    bags = sub.add_parser("bags", help="write the training and held-out synthetic bags")
    bags.add_argument("--out", type=Path, required=True)
    bags.add_argument("--train-seeds", type=int, nargs="+", default=list(range(1, 9)))
    bags.add_argument("--heldout-seeds", type=int, nargs="+", default=[101, 102])
    bags.add_argument("--train-frames", type=int, default=25)
    bags.add_argument("--heldout-frames", type=int, default=10)
    bags.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    bags.add_argument("--height", type=int, default=DEFAULT_HEIGHT)
    for name, lr in (("pretrain-depth", 5e-4), ("pretrain-seg", 1e-3)):
        p = sub.add_parser(name, help=f"train the {name.split('-')[1]} stand-in")
        p.add_argument("--bag", type=Path, action="append", required=True, help="training bag (repeatable)")
        p.add_argument("--heldout", type=Path, action="append", default=[], help="held-out bag (repeatable)")
        p.add_argument("--out", type=Path, required=True, help="model directory to write")
        p.add_argument("--size", choices=("standin", "tiny"), default="standin")
        p.add_argument("--steps", type=int, default=1000)
        p.add_argument("--batch", type=int, default=8)
        p.add_argument("--lr", type=float, default=lr)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--width", type=int, default=DEFAULT_WIDTH)
        p.add_argument("--height", type=int, default=DEFAULT_HEIGHT)
        p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
        p.add_argument("--max-minutes", type=float, default=None,
                       help="stop training (and save) after this many minutes, whatever --steps says")
        p.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    say("$", shlex.join(["python", "bench/bridged_standins.py", *(sys.argv[1:] if argv is None else argv)]))
    if args.command == "bags":
        make_bags(args.out, args.train_seeds, args.heldout_seeds, args.train_frames, args.heldout_frames,
                  args.width, args.height)
        return 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    progress = not args.no_progress
    frames = load_frames(args.bag, args.width, args.height, progress=progress)
    heldout = load_frames(args.heldout, args.width, args.height, progress=progress) if args.heldout else None
    train = pretrain_depth if args.command == "pretrain-depth" else pretrain_seg
    result = train(frames, args.out, size=args.size, steps=args.steps, batch=args.batch, lr=args.lr,
                   seed=args.seed, heldout=heldout, progress=progress, max_minutes=args.max_minutes)
    say(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
