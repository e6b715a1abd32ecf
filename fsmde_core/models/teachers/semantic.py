"""Semantic teachers for semantic-structural KD (``semantic:`` section, ``loss.use_semgraph``).

A semantic teacher gives, per camera image, region nodes: features pooled to
the KD grid, (C, gh, gw). What the loss reads from them is only their cosine
affinity graph (:mod:`fsmde_core.distill.semantic_graph`), so any feature
width works. Two kinds:

* ``synthetic`` (synthetic bags): the renderer's per-pixel labels
  (``/synthetic_gt/<camera>/labels``, :mod:`fsmde_core.semantics`) through a
  degraded "segmentation model", as the synthetic depth teacher degrades the
  depth GT. With ``s = 1 - quality``: blocks of ``block_px`` pixels take a
  random class with probability ``0.5 s`` (a segmenter confuses regions, not
  single pixels: pixel noise would average away in the pooling), the one-hot
  maps are blurred with sigma ``4 s`` px (soft boundaries), and each node is
  the class histogram of its region. Deterministic per (seed, sample, camera).
* ``segformer`` (real data): a segmentation model loaded through transformers
  (``AutoModelForSemanticSegmentation``, e.g. a Segformer directory), whose
  last encoder hidden state (B, C, h, w) is pooled. ImageNet-normalised input.

Nodes are cached once per dataset like the depth teacher's outputs (they are
tiny: C x gh x gw per image), keyed by the teacher's identity, the data cache
key and the grid. The synthetic kind reads the labels from the bags for the
cache (the sample cache does not store labels), once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as nnf

from fsmde_core.models.retinex import gaussian_kernel
from fsmde_core.semantics import NUM_CLASSES

SEMANTIC_KINDS = ("synthetic", "segformer")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_VERSION = 1  # bump when an algorithm changes: part of the cache identity


class SemanticTeacherError(ValueError):
    """The semantic teacher cannot be built or has nothing to read; one line naming what and where."""


@dataclass(frozen=True)
class SemanticConfig:
    """The ``semantic:`` section: the teacher of ``loss.use_semgraph`` (read only when that is on).

    Attributes:
        kind: ``synthetic`` (the renderer's labels, degraded) or ``segformer`` (a transformers model).
        quality: synthetic only: 1 = exact labels, 0 = heavily degraded.
        seed: synthetic only: the degradation's random draws.
        block_px: synthetic only: size of the blocks that take a wrong class.
        model: segformer only: a local model directory (config.json + weights) or a hub id.
        device: segformer only: where it runs while the cache is built (None: cuda if available).
    """

    kind: str = "synthetic"
    quality: float = 0.7
    seed: int = 0
    block_px: int = 8
    model: str | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in SEMANTIC_KINDS:
            raise ValueError(f"semantic.kind must be one of {', '.join(SEMANTIC_KINDS)}, got {self.kind!r}")
        if isinstance(self.quality, bool) or not isinstance(self.quality, (int, float)) or not 0 <= self.quality <= 1:
            raise ValueError(f"semantic.quality must be in [0, 1], got {self.quality!r}")
        for key in ("seed", "block_px"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "seed" else 1):
                raise ValueError(f"semantic.{key} must be an integer >= {0 if key == 'seed' else 1}, got {value!r}")
        if self.model is not None and not isinstance(self.model, str):
            raise ValueError(f"semantic.model must be a directory or hub id, got {self.model!r}")


# -------------------------------------------------------------- synthetic
class SyntheticSemanticTeacher:
    """Rendered labels -> degraded class-histogram nodes (see the module docstring)."""

    needs_labels = True

    def __init__(self, quality: float = 0.7, seed: int = 0, block_px: int = 8) -> None:
        self.quality, self.seed, self.block_px = float(quality), int(seed), int(block_px)
        s = 1.0 - self.quality
        self.flip_p, self.blur_sigma = 0.5 * s, 4.0 * s

    @property
    def identity(self) -> str:
        return f"synthetic_semantic:v{_VERSION}:q{self.quality}:s{self.seed}:b{self.block_px}"

    def _degraded_labels(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Blocks of ``block_px`` px that take a random class with probability ``flip_p`` (VOID kept)."""
        h, w = labels.shape
        b = self.block_px
        gh, gw = -(-h // b), -(-w // b)
        flip = rng.random((gh, gw)) < self.flip_p
        wrong = rng.integers(0, NUM_CLASSES, size=(gh, gw))
        up = np.kron(np.where(flip, wrong, -1), np.ones((b, b), dtype=np.int64))[:h, :w]
        return np.where((up >= 0) & (labels < NUM_CLASSES), up, labels).astype(np.int64)

    def _one_hot(self, labels: np.ndarray) -> torch.Tensor:
        """(H, W) ids -> (1, K, H, W) one-hot, blurred; VOID (>= K) is an all-zero column."""
        ids = torch.from_numpy(labels)
        valid = ids < NUM_CLASSES
        hot = nnf.one_hot(ids.clamp_max(NUM_CLASSES - 1), NUM_CLASSES).permute(2, 0, 1).float()
        hot = (hot * valid.float()).unsqueeze(0)
        if self.blur_sigma <= 0:
            return hot
        k = gaussian_kernel(self.blur_sigma)
        r = k.numel() // 2
        weight_x = k.view(1, 1, 1, -1).repeat(NUM_CLASSES, 1, 1, 1)
        weight_y = k.view(1, 1, -1, 1).repeat(NUM_CLASSES, 1, 1, 1)
        hot = nnf.conv2d(nnf.pad(hot, (r, r, 0, 0), mode="replicate"), weight_x, groups=NUM_CLASSES)
        return nnf.conv2d(nnf.pad(hot, (0, 0, r, r), mode="replicate"), weight_y, groups=NUM_CLASSES)

    def nodes(self, labels: np.ndarray, sample_index: int, grid: tuple[int, int]) -> torch.Tensor:
        """(N, H, W) uint8 labels of one surround sample -> (N, K, gh, gw) class-histogram nodes."""
        out = []
        for cam, lab in enumerate(labels):
            rng = np.random.default_rng([self.seed, int(sample_index), cam])
            hot = self._one_hot(self._degraded_labels(np.asarray(lab), rng))
            out.append(nnf.adaptive_avg_pool2d(hot, tuple(grid)))
        return torch.cat(out)


# -------------------------------------------------------------- segformer
def _local_model_dir(source: str) -> Path | None:
    """The local directory to load from (checked), or None for a hub id."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SemanticTeacherError(f"semantic.model: {path} has no config.json")
        if not sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
            raise SemanticTeacherError(f"semantic.model: {path} has no weights (*.safetensors, *.bin)")
        return path
    if path.exists() or source.startswith(("/", "./", "../", "~")):
        raise SemanticTeacherError(f"semantic.model: {path} is not a model directory")
    return None


class SegformerSemanticTeacher:
    """A transformers segmentation model's last hidden features, pooled to the grid."""

    needs_labels = False

    def __init__(self, model: str, device: str | None = None) -> None:
        from transformers import AutoModelForSemanticSegmentation

        local = _local_model_dir(model)
        where = str(local) if local else model
        try:
            self.model = AutoModelForSemanticSegmentation.from_pretrained(where, local_files_only=local is not None)
        except (OSError, ValueError) as exc:
            raise SemanticTeacherError(
                f"semantic.model: cannot load a segmentation model from {model!r}: {exc}. No model hub is "
                "reachable here; download one (e.g. nvidia/segformer-b0-finetuned-cityscapes-1024-1024) "
                "elsewhere and pass its local directory.") from exc
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()
        self._identity = self._weights_identity(model, local)

    @staticmethod
    def _weights_identity(model: str, local: Path | None) -> str:
        if local is None:
            return f"segformer:v{_VERSION}:{model}"
        digest = hashlib.sha256()
        for path in sorted(local.glob("*.safetensors")) + sorted(local.glob("*.bin")) + [local / "config.json"]:
            digest.update(path.name.encode() + path.read_bytes())
        return f"segformer:v{_VERSION}:{digest.hexdigest()[:16]}"

    @property
    def identity(self) -> str:
        return self._identity

    def nodes(self, images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> (B, C, gh, gw) pooled last hidden state."""
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        x = (images.to(self.device).float() - mean) / std
        with torch.inference_mode():
            hidden = self.model(pixel_values=x, output_hidden_states=True, return_dict=True).hidden_states[-1]
        if hidden.dim() != 4:
            raise SemanticTeacherError(f"semantic.model: its last hidden state is {tuple(hidden.shape)}, not "
                                       "(B, C, h, w); use a convolutional-map model such as Segformer")
        return nnf.adaptive_avg_pool2d(hidden.float(), tuple(grid)).cpu()


def build_semantic_teacher(cfg: SemanticConfig) -> SyntheticSemanticTeacher | SegformerSemanticTeacher:
    """The teacher the section names; a segformer without ``semantic.model`` is one clear error."""
    if cfg.kind == "synthetic":
        return SyntheticSemanticTeacher(cfg.quality, cfg.seed, cfg.block_px)
    if not cfg.model:
        raise SemanticTeacherError("semantic.kind segformer needs semantic.model (a local model directory)")
    return SegformerSemanticTeacher(cfg.model, cfg.device)


# ------------------------------------------------------------------ cache
def _labels_of_entries(bags: list[Path], data_config: Any, wanted: dict[tuple[str, int], int],
                       ) -> Iterator[tuple[int, np.ndarray]]:
    """(dataset index, (N, H, W) labels) of the wanted cache entries, read once from the bags."""
    from fsmde_core.data.bag import BagSource

    for m in BagSource(bags, data_config).moments():
        key = (str(m.source.bag), int(m.source.index))
        if key not in wanted:
            continue
        labels = m.assemble().gt_labels
        if labels is None:
            raise SemanticTeacherError(
                f"semantic.kind synthetic reads the renderer's labels, but bag {m.source.bag} has no label "
                "topics (/synthetic_gt/<camera>/labels); use semantic.kind segformer for real data")
        yield wanted[key], labels


def semantic_node_cache(cfg: SemanticConfig, dataset: Any, bags: list[Path], data_config: Any, data_key: str,
                        cache_root: Path, grid: tuple[int, int], progress: bool = False) -> Any:
    """Compute every sample's (N, C, gh, gw) nodes once and keep them (fp16) in a TensorStore; returns it."""
    from tqdm import tqdm

    from fsmde_core.data.store import TensorStore

    teacher = build_semantic_teacher(cfg)
    key = {"semantic": teacher.identity, "data": data_key, "grid": list(grid), "format": 1}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    store = TensorStore(Path(cache_root) / "semantic" / digest, key)
    todo = [i for i in range(len(dataset)) if not store.has(i)]
    if not todo:
        return store
    bar = tqdm(total=len(todo), desc=f"semantic {cfg.kind}", unit="sample", disable=not progress,
               dynamic_ncols=True)
    with bar:
        if isinstance(teacher, SyntheticSemanticTeacher):
            entries = dataset.index.entries
            wanted = {(entries[i].bag, int(entries[i].bag_index)): i for i in todo}
            for i, labels in _labels_of_entries(bags, data_config, wanted):
                store.put(i, {"nodes": teacher.nodes(labels, i, grid).half()})
                bar.update(1)
        else:
            for i in todo:
                store.put(i, {"nodes": teacher.nodes(dataset[i]["images"], grid).half()})
                bar.update(1)
    missing = [i for i in todo if not store.has(i)]
    if missing:
        raise SemanticTeacherError(f"semantic teacher: {len(missing)} cached samples were not found again in "
                                   f"the bags (first: {dataset.index.entries[missing[0]].bag}); clear the cache")
    return store
