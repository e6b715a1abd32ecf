"""``fsmde train``: distil a surround student from a depth foundation model.

Pipeline (each stage cached, so re-runs and ablations are cheap)::

    rosbag2 bags --(fsmde_core.data, cached)--> decoded, resized samples
                 --(teacher, cached once per dataset)--> relative inv. depth + features
                 --> student (cameras batched) --> SILog + bins + CKD + VRKD (+ cross-view, ground)

Runs on CPU or CUDA (mixed precision), on one process or many under
``torchrun`` (DistributedDataParallel; gloo on CPU, NCCL on CUDA). A run
directory is resumable: re-running the same command after a kill continues
from the last checkpoint, losing at most ``optim.checkpoint_every`` steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, Sampler
from tqdm import tqdm

from fsmde_core.camera import CameraModel
from fsmde_core.checkpoint import (
    atomic_write_json,
    load_training_state,
    read_json,
    save_student,
    save_training_state,
)
from fsmde_core.config import ConfigError, TrainConfig, default_config, load_config
from fsmde_core.distill.objective import DistillLossConfig, SemanticGraphInput, compute_losses
from fsmde_core.models.student import SurroundDepthStudent
from fsmde_core.models.teachers.base import TeacherOutput
from fsmde_core.rig import Rig, RigCamera

# Config keys that may change between a run and its resumption without
# changing what is being trained.
_RESUME_FREE_KEYS = {("log",), ("data", "cache_dir"), ("data", "val_bags"), ("eval",)}


# ------------------------------------------------------------------ helpers
@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> DistInfo:
    """Join the process group when started by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


class StudentCollapsedError(RuntimeError):
    """The student predicts one depth per image with a saturated softmax: it cannot recover."""


#: A collapsed student: the largest bin probability is ~1 everywhere and depth is flat
#: within the image. Healthy runs measure 0.2..0.5 and ~0.7 (std/mean); the two collapsed
#: ones seen (tiny CPU runs, supervised-only, before the decoder had GroupNorm) 1.000 with
#: 0.01 and 1.000 with 0.044 (the bin centres still vary a little from image to image).
COLLAPSE_MAX_PROB = 0.995
COLLAPSE_DEPTH_SPREAD = 0.08
COLLAPSE_PATIENCE = 3  # consecutive checks (every log.scalar_every steps) before stopping


def collapse_stats(logits: torch.Tensor, depth: torch.Tensor) -> tuple[float, float]:
    """(mean largest bin probability, median over images of depth std / mean) of one batch."""
    with torch.no_grad():
        max_prob = logits.detach().softmax(1).amax(1).mean()
        d = depth.detach().flatten(1)
        spread = (d.std(1) / d.mean(1).clamp_min(1e-6)).median()
    return float(max_prob), float(spread)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def lr_at(step: int, total: int, base_lr: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 5 % — a pure function of the step, so
    resuming needs no scheduler state."""
    if step < warmup:
        return base_lr * (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def kd_ramped(cfg: DistillLossConfig, step: int, warmup: int) -> DistillLossConfig:
    """Ramp the KD weights (CKD, VRKD, semantic graph) linearly from 0 over ``warmup`` steps.

    The CKD targets that are placed on the student's own bins (``ckd_target``
    linear/kernel, and the ``student`` anchor) would, on a freshly
    initialised, nearly flat student, put all teacher mass on one bin and keep
    it flat; letting SILog + bins shape the depth first avoids that. The rank
    target does not depend on the student, and keeps the ramp only because the
    benchmarked runs used it.
    """
    if warmup <= 0 or step >= warmup:
        return cfg
    f = step / warmup
    return dataclasses.replace(cfg, w_ckd=cfg.w_ckd * f, w_vrkd=cfg.w_vrkd * f, w_semgraph=cfg.w_semgraph * f)


def config_differences(a: dict, b: dict, prefix: tuple = ()) -> list[str]:
    """Dotted keys whose values differ, ignoring keys that may change on resume."""
    diffs = []
    for key in sorted(set(a) | set(b)):
        path = (*prefix, key)
        if any(path[: len(free)] == free for free in _RESUME_FREE_KEYS):
            continue
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs += config_differences(va, vb, path)
        elif va != vb:
            diffs.append(f"{'.'.join(path)}: {va!r} -> {vb!r}")
    return diffs


def with_new_defaults(saved: dict, defaults: dict) -> dict:
    """``saved`` with the keys it lacks taken from ``defaults`` (recursively).

    Why: a run written before a key or section existed (``augment:``, ``loss.use_dense_kd``)
    ran with what is now that key's default - new switches are added off - so it
    must still resume instead of being refused as "a different config".
    """
    out = dict(saved)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and isinstance(out[key], dict) and key != "options":
            out[key] = with_new_defaults(out[key], value)  # not into teacher.options: they belong to one kind
    return out


def pairs_for_batch(base_pairs: list[tuple[int, int]], num_samples: int, num_cameras: int) -> torch.Tensor:
    """Adjacent-camera pairs of every surround sample in a flattened batch (B = S * N)."""
    out = [(s * num_cameras + i, s * num_cameras + j) for s in range(num_samples) for i, j in base_pairs]
    return torch.tensor(out, dtype=torch.long).reshape(-1, 2)


def overlap_bands_for(rig: Rig, base_pairs: list[tuple[int, int]]) -> torch.Tensor:
    """(P, 2, 2) normalised column bands each adjacent pair shares (overlap-restricted VRKD).

    Computed once from the calibration; a pair without any overlap keeps whole
    images (band (0, 1)) so the term stays defined.
    """
    from fsmde_core.geometry import overlap_band

    out = []
    for i, j in base_pairs:
        bi = overlap_band(rig.cameras[i], rig.cameras[j]) or (0.0, 1.0)
        bj = overlap_band(rig.cameras[j], rig.cameras[i]) or (0.0, 1.0)
        out.append([list(bi), list(bj)])
    return torch.tensor(out, dtype=torch.float64).reshape(-1, 2, 2)


def rig_from_item(item: dict, names: list[str]) -> Rig:
    """A Rig from one dataset item's intrinsics/extrinsics (for the adjacency ring)."""
    _, _, h, w = item["images"].shape
    cams = [RigCamera(n, n, CameraModel(w, h, item["K"][i].double().numpy()), item["T_base_cam"][i].double().numpy())
            for i, n in enumerate(names)]
    return Rig("data", cams)


def data_config_from(cfg: dict):
    """The reader's DataConfig from the config's data section (every DataConfig key is honoured)."""
    from fsmde_core.config import data_config_from_section

    return data_config_from_section(cfg["data"], "data")


def default_cache_root(cache_dir: str | None, out_dir: Path) -> Path:
    """Shared across runs beside the run dir, so ablations reuse decoded data and teacher outputs."""
    if cache_dir:
        return Path(cache_dir)
    return Path(os.environ.get("FSMDE_CACHE", out_dir.resolve().parent / ".fsmde_cache"))


def check_data_for_losses(index, lc: DistillLossConfig, bags: list[Path]) -> None:
    """One line when the chosen loss terms need data the bags lack (LiDAR; odometry for ``photometric_pose: odom``)."""
    if not any(e.lidar_stamp_ns is not None for e in index.entries) and lc.lidar_terms:
        fix = ["loss.use_photometric=true", *(f"loss.{t}=false" for t in ("use_silog", "use_bins", "use_dense_kd")
                                              if getattr(lc, t))]
        raise ConfigError(
            f"{', '.join(map(str, bags))}: no LiDAR sweep in any surround set, but loss terms "
            f"{', '.join(lc.lidar_terms)} need LiDAR depth; train camera-only with {' '.join(fix)} "
            "(README 'Training without LiDAR')")
    if lc.use_photometric and lc.photometric_temporal and lc.photometric_pose == "odom" and not all(
            e.has_odom for e in index.entries):
        missing = sum(not e.has_odom for e in index.entries)
        raise ConfigError(f"loss.photometric_pose=odom but {missing} of {len(index.entries)} surround sets have no "
                          "/tf odometry (a chain odom|map -> base_link): use photometric_pose auto or posenet")


def check_bags_exist(bags: list[Path], key: str) -> None:
    """Refuse a missing bag before anything is written, naming the config key that listed it."""
    if not bags:
        raise ConfigError(f"no bags given: pass --bag BAG or set {key} in the config")
    for bag in bags:
        if not bag.exists():
            raise ConfigError(f"{key}: bag not found: {bag}")


# ---------------------------------------------------------- teacher cache
def teacher_cache(cfg: TrainConfig, dataset, cache_key: str, cache_root: Path, info: DistInfo, progress: bool):
    """Run the teacher once per sample and keep fp16 outputs on disk.

    Keyed by the teacher's identity (weights + settings), the data cache key
    and the cache resolution: change any of them and the store is rebuilt.
    Returns a TensorStore or None when no loss term needs the teacher.
    """
    from fsmde_core.data.cache import TensorStore
    from fsmde_core.models.teachers import build_teacher

    tcfg = cfg.teacher
    if not cfg.loss.needs_teacher:
        return None
    if not tcfg.enabled:
        on = [f"loss.{t}" for t in ("use_ckd", "use_vrkd", "use_dense_kd") if getattr(cfg.loss, t)]
        raise ConfigError(f"{', '.join(on)} need a teacher but teacher.kind is none: choose a teacher or switch "
                          f"them off ({' '.join(f'{t}=false' for t in on)}) for a supervised-only run")
    teacher = build_teacher(tcfg.kind, **tcfg.options)
    h = tcfg.cache_height or cfg.student.input_height // 2
    w = tcfg.cache_width or cfg.student.input_width // 2
    key = {"teacher": teacher.identity, "data": cache_key, "size": [h, w], "format": 1}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    store = TensorStore(cache_root / "teacher" / digest, key)
    todo = [i for i in range(len(dataset)) if not store.has(i)]
    if todo and info.is_main:
        bar = tqdm(todo, desc=f"teacher {tcfg.kind}", unit="sample", disable=not progress, dynamic_ncols=True)
        for i in bar:
            item = dataset[i]
            extras = {"seed": torch.full((item["images"].shape[0],), i, dtype=torch.long)}
            if bool(item.get("has_gt", False)):
                extras["gt_depth"] = item["gt_depth"]
            with torch.inference_mode():
                out = teacher.predict(item["images"], extras)
            inv = torch.nn.functional.interpolate(out.inv_depth.float(), size=(h, w), mode="bilinear",
                                                  align_corners=False)
            store.put(i, {"inv_depth": inv.half(), "features": out.features.float().half()})
    barrier(info)
    return store


# -------------------------------------------------------------- training
def check_replicas_in_sync(model: torch.nn.Module, info: DistInfo) -> None:
    """DDP must leave every rank with identical weights; verify instead of trusting."""
    with torch.no_grad():
        checksum = torch.stack([p.double().sum() for p in model.parameters()]).sum().reshape(1)
    gathered = [torch.zeros_like(checksum) for _ in range(info.world)]
    dist.all_gather(gathered, checksum)
    values = [float(g) for g in gathered]
    if max(values) - min(values) > 1e-6 * max(1.0, abs(values[0])):
        raise RuntimeError(f"DDP replicas diverged: parameter checksums per rank {values}")
    if info.is_main:
        print(f"ddp: {info.world} ranks, parameters in sync (checksum {values[0]:.6f})", file=sys.stderr)


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    """Surround samples -> one camera batch (B = samples x cameras) + the sample indices (teacher cache).

    K and T_base_cam travel per camera too: the geometric loss terms read the
    calibration of each image (at the cache size, the LiDAR depth's size).
    """
    out = {k: torch.cat([it[k] for it in items]) for k in ("images", "sparse_depth", "masks", "K", "T_base_cam")}
    out["index"] = torch.tensor([int(it["index"]) for it in items], dtype=torch.long)
    return out


def collate_with_sets(items: list[dict]) -> dict[str, torch.Tensor]:
    """:func:`collate` plus the per-set (S, N, ...) tensors the photometric terms read, under ``set.<key>``."""
    from fsmde_core.selfsup.objective import SET_KEYS

    out = collate(items)
    for key in SET_KEYS:
        if key in items[0]:
            out[f"set.{key}"] = torch.stack([torch.as_tensor(it[key]) for it in items])
    return out


def split_sets(batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the camera batch, the per-set tensors without their ``set.`` prefix)."""
    sets = {k[4:]: v for k, v in batch.items() if k.startswith("set.")}
    return {k: v for k, v in batch.items() if not k.startswith("set.")}, sets


def depth_grid_image(depth: torch.Tensor, max_depth: float) -> np.ndarray:
    """(N,1,H,W) depth -> (3, H, N*W) image for TensorBoard, coloured like the eval report."""
    from fsmde_core.report import colour_inverse_depth

    d = depth.detach().float().cpu().numpy()[:, 0]
    row = np.concatenate(list(d), axis=1)
    return colour_inverse_depth(row, near=1.0, far=max_depth).transpose(2, 0, 1)


class SkipFirstBatches(Sampler[list[int]]):
    """An epoch's batches minus the first ``skip`` (those a resumed run already trained on).

    Skipping at the sampler level, not the loader's, means the skipped samples
    are never read from the cache.
    """

    def __init__(self, batches: BatchSampler, skip: int) -> None:
        self.batches, self.skip = batches, skip

    def __iter__(self) -> Iterator[list[int]]:
        for i, batch in enumerate(self.batches):
            if i >= self.skip:
                yield batch

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.skip)


class TrainedModules(torch.nn.Module):
    """The student plus the modules a loss owns (the semantic graph's adapter), as one checkpointed unit.

    Why one module: the optimiser, gradient clipping and the training checkpoint
    then cover the adapter exactly as they cover the student, so a resumed run
    continues the adapter too. Only used when a loss owns modules: otherwise the
    student alone is checkpointed, with the keys it always had. The deliverable
    ``student.safetensors`` holds the student alone either way.
    """

    def __init__(self, student: torch.nn.Module, owned: dict[str, torch.nn.Module]) -> None:
        super().__init__()
        self.student = student
        self.owned = torch.nn.ModuleDict(owned)


@dataclass
class Position:
    """Where training stands: resumable from exactly these three numbers."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


class Trainer:
    """One training run: set up once, then epochs of steps, logging and checkpoints.

    ``setup`` does everything that can fail on bad input (bags, data, teacher,
    pretrained weights, resume state) before the run directory's config.json
    is written, so fixing the input and re-running the same command is never
    refused as "a different run".
    """

    def __init__(self, cfg: dict, out_dir: Path, progress: bool = True, device_name: str | None = None) -> None:
        self.raw_cfg = cfg
        self.cfg = TrainConfig.from_dict(cfg, "config")
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.device = torch.device(device_name or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.info = DistInfo()
        self.pos = Position()
        self.collapsed_checks = 0
        self.writer: Any = None
        self.validator: Any = None
        self.last_augmented = 0.0

    # ------------------------------------------------------------ setup
    def setup(self) -> None:
        """Data, teacher cache, model, optimiser, resume state, loader, loggers (in that order)."""
        self.info = setup_distributed(self.device)
        if self.device.type == "cuda" and self.info.world > 1:
            self.device = torch.device("cuda", self.info.local_rank)
            torch.cuda.set_device(self.device)
        self._refuse_a_different_run()
        seed_everything(self.cfg.seed)
        self._setup_data()
        self._setup_model()
        self._setup_augment()
        self._resume()
        self._setup_loader()
        self._setup_logging()
        if self.info.is_main:
            atomic_write_json(self.out_dir / "config.json", self.raw_cfg)

    def _refuse_a_different_run(self) -> None:
        cfg_path = self.out_dir / "config.json"
        if cfg_path.is_file():
            diffs = config_differences(with_new_defaults(read_json(cfg_path, "run config"), default_config()),
                                       self.raw_cfg)
            if diffs:
                raise ConfigError(f"{self.out_dir} holds a run with a different config; use a new --out or the "
                                  f"same settings. Differences: {'; '.join(diffs)}")

    def _setup_data(self) -> None:
        from fsmde_core.data.cache import SurroundDataset, build_cache

        bags = [Path(b) for b in self.cfg.train_data.bags]
        check_bags_exist(bags, "data.bags")
        self.cache_root = default_cache_root(self.cfg.train_data.cache_dir, self.out_dir)
        if self.info.is_main:  # rank 0 decodes, the others wait and read the cache
            index = build_cache(bags, self.cfg.data, self.cache_root / "samples", progress=self.progress)
        barrier(self.info)
        if not self.info.is_main:
            index = build_cache(bags, self.cfg.data, self.cache_root / "samples", progress=False)
        lc = self.cfg.loss
        self.dataset = SurroundDataset(index, neighbours=lc.use_photometric and lc.photometric_temporal) \
            if lc.use_photometric else SurroundDataset(index)
        if len(self.dataset) == 0:
            raise ConfigError(f"no complete surround samples in {', '.join(map(str, bags))}: run 'fsmde inspect'")
        check_data_for_losses(index, lc, bags)
        self.names = list(index.camera_names)
        first = self.dataset[0]
        self.num_cams = first["images"].shape[0]
        self.data_rig = rig_from_item(first, self.names)
        self.base_pairs = self.data_rig.adjacent_pairs()
        self.base_bands = overlap_bands_for(self.data_rig, self.base_pairs)
        self.store = teacher_cache(self.cfg, self.dataset, index.key_digest, self.cache_root, self.info,
                                   self.progress)
        self.semantic_store = self._semantic_cache(bags, index.key_digest)

    def _semantic_cache(self, bags: list[Path], data_key: str):
        """The semantic teacher's region nodes per sample (rank 0 builds, the others wait), or None when off."""
        if not self.cfg.loss.use_semgraph:
            return None
        from fsmde_core.models.teachers.semantic import semantic_node_cache

        args = (self.cfg.semantic, self.dataset, bags, self.cfg.data, data_key, self.cache_root,
                self.cfg.loss.semgraph_grid)
        store = semantic_node_cache(*args, progress=self.progress) if self.info.is_main else None
        barrier(self.info)
        return store if store is not None else semantic_node_cache(*args)

    def _setup_model(self) -> None:
        self.model = SurroundDepthStudent(self.cfg.student)
        pre = self.cfg.pretrained
        if pre.pretrained:
            from fsmde_core.models.resnet import load_pretrained_encoder

            report = load_pretrained_encoder(self.model.encoder, pre.pretrained,
                                             min_match=0.0 if pre.pretrained_force else pre.pretrained_min_match)
            if self.info.is_main:
                print(f"pretrained encoder: {report}", file=sys.stderr)
        self.model.to(self.device)
        self.semgraph = self._semantic_graph_module()
        self.selfsup = self._self_supervision()
        owned = {"semgraph": self.semgraph} if self.semgraph is not None else {}
        if self.selfsup is not None and any(True for _ in self.selfsup.state_dict()):
            owned["selfsup"] = self.selfsup
        self.trained: torch.nn.Module = TrainedModules(self.model, owned) if owned else self.model
        self.owned_parameters = [p for m in owned.values() for p in m.parameters()]
        o = self.cfg.optim
        self.optimizer = torch.optim.AdamW(self.trained.parameters(), lr=float(o.lr),
                                           weight_decay=float(o.weight_decay))
        self.use_amp = bool(o.amp) and self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.ddp_model: torch.nn.Module = self.model
        if self.info.world > 1:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _semantic_graph_module(self):
        """The semantic-structural KD term with its trained adapter, or None when ``loss.use_semgraph`` is off."""
        lc = self.cfg.loss
        if not lc.use_semgraph:
            return None
        from fsmde_core.distill.semantic_graph import SemanticGraphKD

        with torch.random.fork_rng(devices=[]):  # its own seed: the global stream stays as without the term
            torch.manual_seed(self.cfg.seed + 1)
            module = SemanticGraphKD(self.model.feature_channels, lc.semgraph_dim, lc.semgraph_grid, lc.tau_semgraph)
        return module.to(self.device)

    def _self_supervision(self):
        """The photometric terms with their modules (pose network, decomposition), or None when off."""
        lc = self.cfg.loss
        if not lc.use_photometric:
            return None
        from fsmde_core.selfsup.objective import SelfSupervision, ring_neighbours

        has_odom = all(e.has_odom for e in self.dataset.index.entries)
        use_posenet = lc.photometric_temporal and (lc.photometric_pose == "posenet"
                                                   or (lc.photometric_pose == "auto" and not has_odom))
        if self.info.is_main and lc.photometric_temporal:
            print(f"photometric: temporal poses from {'the pose network' if use_posenet else '/tf odometry'}",
                  file=sys.stderr)
        module = SelfSupervision(lc, ring_neighbours(self.base_pairs, self.num_cams), use_posenet, self.cfg.seed)
        return module.to(self.device)

    def _setup_augment(self) -> None:
        """The texture-robust augmentation of the student's input, or None when ``augment.enabled`` is off."""
        self.augment = None
        if self.cfg.augment.enabled:
            from fsmde_core.augment import RobustAugment

            self.augment = RobustAugment(self.cfg.augment, self.cfg.seed)

    def _resume(self) -> None:
        meta = load_training_state(self.out_dir, self.trained, self.optimizer, self.scaler)
        if meta is not None:
            self.pos = Position(int(meta["step"]), int(meta["epoch"]), int(meta["batch_in_epoch"]))
            if self.info.is_main:
                print(f"resuming {self.out_dir} from step {self.pos.step} (epoch {self.pos.epoch}, "
                      f"batch {self.pos.batch_in_epoch})", file=sys.stderr)

    def _setup_loader(self) -> None:
        """Shuffled per epoch (seeded by seed x 1000 + epoch), padded and sharded across ranks."""
        self.sampler = DistributedSampler(self.dataset, num_replicas=self.info.world, rank=self.info.rank,
                                          shuffle=True, seed=self.cfg.seed * 1000, drop_last=False)
        self.batches_per_epoch = len(BatchSampler(self.sampler, self.cfg.optim.batch_size, drop_last=False))
        self.total_steps = self.batches_per_epoch * self.cfg.optim.epochs
        if self.cfg.optim.max_steps:
            self.total_steps = min(self.total_steps, self.cfg.optim.max_steps)

    def _loader(self, epoch: int, skip: int) -> DataLoader:
        self.sampler.set_epoch(epoch)
        batches = BatchSampler(self.sampler, self.cfg.optim.batch_size, drop_last=False)
        # its own generator: creating an iterator must not draw from the global RNG (resume equivalence)
        return DataLoader(self.dataset, batch_sampler=SkipFirstBatches(batches, skip),
                          collate_fn=collate_with_sets if self.selfsup is not None else collate,
                          generator=torch.Generator().manual_seed(self.cfg.seed))

    def _setup_logging(self) -> None:
        if not self.info.is_main:
            return
        if self.cfg.log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=self.pos.step or None)
        if self.cfg.train_data.val_bags:
            from fsmde_core.validation import HeldOutValidator

            self.validator = HeldOutValidator(
                [Path(b) for b in self.cfg.train_data.val_bags], self.cfg.data, self.cfg.eval,
                self.cache_root / "val_samples", self.names, self.cfg.student.max_depth, self.out_dir,
                progress=self.progress)

    # ------------------------------------------------------------ the loop
    def run(self) -> Path:
        """Set up, train to ``total_steps`` (resuming where a killed run stopped), save the student."""
        self.setup()
        self.bar = tqdm(total=self.total_steps, initial=self.pos.step, desc="train", unit="step",
                        disable=not (self.progress and self.info.is_main), dynamic_ncols=True)
        self.model.train()
        self.t_start = time.perf_counter()
        while self.pos.step < self.total_steps:
            self.run_epoch()
        self.bar.close()
        return self.finish()

    def run_epoch(self) -> None:
        """The rest of the current epoch (all of it unless resuming mid-epoch), then the next epoch."""
        for batch in self._loader(self.pos.epoch, self.pos.batch_in_epoch):
            self.pos.batch_in_epoch += 1
            out, losses = self.step(batch)
            self.log(out, losses)
            self.maybe_validate()
            self.maybe_checkpoint()
            if self.pos.step >= self.total_steps:
                return
        self.pos = Position(self.pos.step, self.pos.epoch + 1, 0)

    def _teacher_outputs(self, indices: torch.Tensor) -> TeacherOutput | None:
        if self.store is None:
            return None
        t = [self.store.get(int(i)) for i in indices]
        return TeacherOutput(inv_depth=torch.cat([x["inv_depth"] for x in t]).float().to(self.device),
                             features=torch.cat([x["features"] for x in t]).float().to(self.device))

    def _semantic_input(self, indices: torch.Tensor) -> SemanticGraphInput | None:
        if self.semantic_store is None or self.semgraph is None:
            return None
        nodes = torch.cat([self.semantic_store.get(int(i))["nodes"] for i in indices]).float().to(self.device)
        return SemanticGraphInput(self.semgraph, nodes)

    def _augmented(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch with the student's images corrupted (a copy; teacher targets come from the cache, clean)."""
        if self.augment is None:
            return batch
        images, applied = self.augment(batch["images"], batch["index"].tolist(), self.num_cams, self.pos.step)
        self.last_augmented = len(applied) / max(1, images.shape[0])
        return {**batch, "images": images}

    def _average_owned_gradients(self) -> None:
        """DDP averages the student's gradients; the loss's own modules are averaged here, so replicas agree."""
        if self.info.world <= 1:
            return
        for p in self.owned_parameters:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(self.info.world)

    def step(self, batch: dict[str, torch.Tensor]) -> tuple[Any, dict[str, torch.Tensor]]:
        """One optimiser step on one batch; returns the student output and the loss terms."""
        o = self.cfg.optim
        samples = len(batch["index"])
        teacher_out = self._teacher_outputs(batch["index"])
        semantic = self._semantic_input(batch["index"])
        batch, sets = split_sets(batch)  # the per-set view keeps the clean images: photometric targets
        batch = self._augmented(batch)
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if k != "index"}
        sets = {k: v.to(self.device, non_blocking=True) for k, v in sets.items()}
        pairs = pairs_for_batch(self.base_pairs, samples, self.num_cams).to(self.device)
        bands = self.base_bands.repeat(samples, 1, 1)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.pos.step, self.total_steps, float(o.lr), o.warmup_steps)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            # fx / width per image: read only by camera-aware centres (student.focal_canonical).
            out = self.ddp_model(batch["images"], batch["K"][:, 0, 0] / batch["images"].shape[-1])
        out = type(out)(*(x.float() for x in out))
        step_cfg = kd_ramped(self.cfg.loss, self.pos.step, o.kd_warmup_steps)
        losses = compute_losses(out, batch["sparse_depth"], ~batch["masks"], teacher_out, pairs, step_cfg, bands,
                                readout=self.cfg.student.readout, K=batch["K"], T_base_cam=batch["T_base_cam"],
                                semgraph=semantic)
        if self.selfsup is not None:
            losses = self._with_self_supervision(losses, out, sets, teacher_out, step_cfg)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["total"]).backward()
        self._average_owned_gradients()
        self.scaler.unscale_(self.optimizer)
        if o.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.trained.parameters(), float(o.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.pos.step += 1
        if not torch.isfinite(losses["total"]):
            raise FloatingPointError(f"loss became {losses['total'].item()} at step {self.pos.step}: "
                                     f"terms {({k: float(v) for k, v in losses.items()})}")
        return out, losses

    def _with_self_supervision(self, losses: dict[str, torch.Tensor], out: Any, sets: dict[str, torch.Tensor],
                               teacher_out: TeacherOutput | None,
                               step_cfg: DistillLossConfig) -> dict[str, torch.Tensor]:
        """The photometric terms added to the supervised / KD ones (unweighted for logging, weighted in total)."""
        from fsmde_core.selfsup.objective import SelfSupervisedBatch

        assert self.selfsup is not None
        terms, weights = self.selfsup(out, SelfSupervisedBatch(sets), teacher_out, self.cfg.student.readout, step_cfg)
        total = losses["total"] + sum(weights[k] * v for k, v in terms.items())
        return {**{k: v for k, v in losses.items() if k != "total"}, **terms, "total": total}

    def log(self, out: Any, losses: dict[str, torch.Tensor]) -> None:
        """Progress bar; every ``log.scalar_every`` steps the collapse guard and scalars; images."""
        step = self.pos.step
        self.bar.update(1)
        self.bar.set_postfix({k: f"{float(v.detach()):.3f}" for k, v in losses.items()}, refresh=False)
        if step % self.cfg.log.scalar_every == 0:
            max_prob, spread = self._check_collapse(out)
            if self.writer is not None:
                for k, v in losses.items():
                    self.writer.add_scalar(f"loss/{k}", float(v.detach()), step)
                self.writer.add_scalar("lr", self.optimizer.param_groups[0]["lr"], step)
                self.writer.add_scalar("student/max_bin_prob", max_prob, step)
                self.writer.add_scalar("student/depth_spread", spread, step)
                if self.augment is not None:
                    self.writer.add_scalar("augment/corrupted_fraction", self.last_augmented, step)
                if self.selfsup is not None and self.selfsup.decomposer is not None:
                    self.writer.add_scalar("selfsup/reflective_fraction", self.selfsup.last_reflective_fraction, step)
        if self.writer is not None and step % self.cfg.log.image_every == 0:
            self.writer.add_image("depth/pred", depth_grid_image(out.depth[: self.num_cams],
                                                                 self.cfg.student.max_depth), step)

    def _check_collapse(self, out: Any) -> tuple[float, float]:
        max_prob, spread = collapse_stats(out.logits, out.depth)
        if self.info.world > 1:  # every rank must take the same decision, or the others hang in all-reduce
            stats = torch.tensor([max_prob, spread], device=self.device)
            dist.all_reduce(stats)
            max_prob, spread = (stats / self.info.world).tolist()
        collapsed = max_prob > COLLAPSE_MAX_PROB and spread < COLLAPSE_DEPTH_SPREAD
        self.collapsed_checks = self.collapsed_checks + 1 if collapsed else 0
        if self.collapsed_checks >= COLLAPSE_PATIENCE:
            raise StudentCollapsedError(
                f"{self.out_dir}: the student collapsed by step {self.pos.step}: largest bin probability "
                f"{max_prob:.3f} on average and depth spread {100 * spread:.1f} % within an image, so "
                "the softmax is saturated and training cannot recover. Start a new --out with another "
                "seed or a lower optim.lr (the checkpoints written so far are collapsed too).")
        return max_prob, spread

    def maybe_validate(self) -> None:
        """Held-out metrics every ``log.val_every`` steps and after the last one (rank 0 only)."""
        step = self.pos.step
        if self.validator is not None and (step % self.cfg.log.val_every == 0 or step == self.total_steps):
            result = self.validator(self.model, self.device, step, self.writer)
            mean = result["mean"]
            print(f"validation at step {step}: abs_rel {mean['abs_rel']}, rmse {mean['rmse']}, a1 {mean['a1']} "
                  f"({result['frames']} frames)", file=sys.stderr)

    def maybe_checkpoint(self) -> None:
        step = self.pos.step
        if self.info.is_main and (step % self.cfg.optim.checkpoint_every == 0 or step == self.total_steps):
            save_training_state(self.out_dir, step, self.pos.epoch, self.pos.batch_in_epoch, self.trained,
                                self.optimizer, self.scaler, extra={"elapsed_s": time.perf_counter() - self.t_start})

    def finish(self) -> Path:
        """Check DDP replicas agree, write the deliverable student (rank 0)."""
        if self.writer is not None:
            self.writer.close()
        if self.info.world > 1:
            check_replicas_in_sync(self.trained, self.info)  # the loss's own modules too (averaged by hand)
        weights = self.out_dir / "student.safetensors"
        if self.info.is_main:
            weights = save_student(self.out_dir, self.model, self.student_meta())
            print(f"student saved to {weights} after {self.pos.step} steps", file=sys.stderr)
        barrier(self.info)
        return weights

    def student_meta(self) -> dict[str, Any]:
        """student.json: the architecture plus what inference needs (camera order, ring, rig, size)."""
        scfg = self.cfg.student
        return {
            "student": scfg.to_dict(),
            "camera_names": self.names,
            "pairs": [list(p) for p in self.base_pairs],
            "input_size": [scfg.input_height, scfg.input_width],
            "steps": self.pos.step,
            "teacher": self.cfg.teacher.kind,
            "loss": dict(self.raw_cfg["loss"]),
            "rig": self.data_rig.to_dict(),
        }


def train(cfg: dict, out_dir: Path, progress: bool = True, device_name: str | None = None) -> Path:
    """Train (or resume) a student into ``out_dir``; returns the student weights path."""
    return Trainer(cfg, out_dir, progress, device_name).run()


# -------------------------------------------------------------------- CLI
def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="training YAML (config/train_*.yaml)")
    parser.add_argument("--bag", type=Path, action="append", default=[],
                        help="rosbag2 directory to train on (repeatable; overrides data.bags)")
    parser.add_argument("--val-bag", type=Path, action="append", default=[],
                        help="held-out rosbag2 directory scored every log.val_every steps and at the end "
                             "(repeatable; overrides data.val_bags)")
    parser.add_argument("--out", type=Path, required=True, help="run directory (resumed if it exists)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="config overrides, e.g. loss.use_vrkd=false optim.epochs=5")


def run_train(args: argparse.Namespace) -> int:
    """``fsmde train``: every expected failure is one line and exit status 2, never a traceback."""
    try:
        cfg = load_config(args.config, args.overrides)
        if args.bag:
            cfg["data"]["bags"] = [str(b.resolve()) for b in args.bag]
        if args.val_bag:
            cfg["data"]["val_bags"] = [str(b.resolve()) for b in args.val_bag]
        train(cfg, args.out, progress=not args.no_progress, device_name=args.device)
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"fsmde train: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``torchrun -m fsmde_core.train ...`` (multi-process)."""
    parser = argparse.ArgumentParser(prog="fsmde train")
    add_train_arguments(parser)
    return run_train(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
