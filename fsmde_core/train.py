"""``fsmde train``: distil a surround student from a depth foundation model.

Pipeline (each stage cached, so re-runs and ablations are cheap)::

    rosbag2 bags --(fsmde_core.data, cached)--> decoded, resized samples
                 --(teacher, cached once per dataset)--> relative inv. depth + features
                 --> student (cameras batched) --> SILog + bins + CKD + VRKD

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from fsmde_core.camera import CameraModel
from fsmde_core.checkpoint import (
    atomic_write_json,
    load_training_state,
    read_json,
    save_student,
    save_training_state,
)
from fsmde_core.config import ConfigError, load_config
from fsmde_core.distill.objective import DistillLossConfig, compute_losses
from fsmde_core.models.student import StudentConfig, SurroundDepthStudent
from fsmde_core.models.teachers.base import TeacherOutput
from fsmde_core.rig import Rig, RigCamera

# Config keys that may change between a run and its resumption without
# changing what is being trained.
_RESUME_FREE_KEYS = {("log",), ("data", "cache_dir")}


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
    """Ramp the KD weights linearly from 0 over ``warmup`` steps.

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
    return dataclasses.replace(cfg, w_ckd=cfg.w_ckd * f, w_vrkd=cfg.w_vrkd * f)


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


def default_cache_root(cfg: dict, out_dir: Path) -> Path:
    """Shared across runs beside the run dir, so ablations reuse decoded data and teacher outputs."""
    if cfg["data"].get("cache_dir"):
        return Path(cfg["data"]["cache_dir"])
    return Path(os.environ.get("FSMDE_CACHE", out_dir.resolve().parent / ".fsmde_cache"))


# ---------------------------------------------------------- teacher cache
def teacher_cache(cfg: dict, dataset, cache_key: str, cache_root: Path, info: DistInfo, progress: bool):
    """Run the teacher once per sample and keep fp16 outputs on disk.

    Keyed by the teacher's identity (weights + settings), the data cache key
    and the cache resolution: change any of them and the store is rebuilt.
    Returns a TensorStore or None when no loss term needs the teacher.
    """
    from fsmde_core.data.cache import TensorStore
    from fsmde_core.models.teachers import build_teacher

    tcfg = cfg["teacher"]
    loss_cfg = DistillLossConfig.from_mapping(cfg["loss"])
    if not loss_cfg.needs_teacher or tcfg.get("kind") in (None, "none"):
        if loss_cfg.needs_teacher:
            raise ConfigError("loss.use_ckd/use_vrkd need a teacher but teacher.kind is none")
        return None
    teacher = build_teacher(tcfg["kind"], **(tcfg.get("options") or {}))
    h = tcfg.get("cache_height") or cfg["data"]["height"] // 2
    w = tcfg.get("cache_width") or cfg["data"]["width"] // 2
    key = {"teacher": teacher.identity, "data": cache_key, "size": [h, w], "format": 1}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    store = TensorStore(cache_root / "teacher" / digest, key)
    todo = [i for i in range(len(dataset)) if not store.has(i)]
    if todo and info.is_main:
        bar = tqdm(todo, desc=f"teacher {tcfg['kind']}", unit="sample", disable=not progress, dynamic_ncols=True)
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
    keys = ("images", "sparse_depth", "masks")
    return {k: torch.cat([it[k] for it in items]) for k in keys}


def depth_grid_image(depth: torch.Tensor, max_depth: float) -> np.ndarray:
    """(N,1,H,W) depth -> (3, H, N*W) image for TensorBoard, coloured like the eval report."""
    from fsmde_core.report import colour_inverse_depth

    d = depth.detach().float().cpu().numpy()[:, 0]
    row = np.concatenate(list(d), axis=1)
    return colour_inverse_depth(row, near=1.0, far=max_depth).transpose(2, 0, 1)


def train(cfg: dict, out_dir: Path, progress: bool = True, device_name: str | None = None) -> Path:
    """Train (or resume) a student into ``out_dir``; returns the student weights path."""
    from fsmde_core.data.cache import SurroundDataset, build_cache

    out_dir = Path(out_dir)
    device = torch.device(device_name or ("cuda" if torch.cuda.is_available() else "cpu"))
    info = setup_distributed(device)
    if device.type == "cuda" and info.world > 1:
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    bags = [Path(b) for b in cfg["data"]["bags"]]
    if not bags:
        raise ConfigError("no bags given: pass --bag BAG or set data.bags in the config")

    # --- run directory and resume policy
    cfg_path = out_dir / "config.json"
    if cfg_path.is_file():
        saved = read_json(cfg_path, "run config")
        diffs = config_differences(saved, cfg)
        if diffs:
            raise ConfigError(f"{out_dir} holds a run with a different config; use a new --out or the same "
                              f"settings. Differences: {'; '.join(diffs)}")
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cfg_path, cfg)
    seed_everything(int(cfg["seed"]))

    # --- data (rank 0 decodes, the others wait and read the cache)
    cache_root = default_cache_root(cfg, out_dir)
    data_cfg = data_config_from(cfg)
    if info.is_main:
        index = build_cache(bags, data_cfg, cache_root / "samples", progress=progress)
    barrier(info)
    if not info.is_main:
        index = build_cache(bags, data_cfg, cache_root / "samples", progress=False)
    dataset = SurroundDataset(index)
    if len(dataset) == 0:
        raise ConfigError(f"no complete surround samples in {', '.join(map(str, bags))}: run 'fsmde inspect'")
    names = list(index.camera_names)
    first = dataset[0]
    num_cams = first["images"].shape[0]
    data_rig = rig_from_item(first, names)
    base_pairs = data_rig.adjacent_pairs()
    base_bands = overlap_bands_for(data_rig, base_pairs)
    store = teacher_cache(cfg, dataset, index.key_digest, cache_root, info, progress)

    # --- model and optimiser
    scfg = StudentConfig(
        encoder=cfg["student"]["encoder"], num_bins=int(cfg["student"]["num_bins"]),
        min_depth=float(cfg["student"]["min_depth"]), max_depth=float(cfg["student"]["max_depth"]),
        input_height=int(cfg["data"]["height"]), input_width=int(cfg["data"]["width"]),
        readout=str(cfg["student"].get("readout", "log")),
    )
    model = SurroundDepthStudent(scfg)
    if cfg["student"].get("pretrained"):
        from fsmde_core.models.resnet import load_pretrained_encoder

        report = load_pretrained_encoder(model.encoder, cfg["student"]["pretrained"])
        if info.is_main:
            print(f"pretrained encoder: {report}", file=sys.stderr)
    model.to(device)
    o = cfg["optim"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(o["lr"]), weight_decay=float(o["weight_decay"]))
    use_amp = bool(o.get("amp")) and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    loss_cfg = DistillLossConfig.from_mapping(cfg["loss"])

    meta = load_training_state(out_dir, model, optimizer, scaler)
    step, start_epoch, skip = 0, 0, 0
    if meta is not None:
        step, start_epoch, skip = int(meta["step"]), int(meta["epoch"]), int(meta["batch_in_epoch"])
        if info.is_main:
            print(f"resuming {out_dir} from step {step} (epoch {start_epoch}, batch {skip})", file=sys.stderr)
    ddp_model = model
    if info.world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    per_rank = math.ceil(len(dataset) / info.world)
    batches_per_epoch = math.ceil(per_rank / int(o["batch_size"]))
    total_steps = batches_per_epoch * int(o["epochs"])
    if o.get("max_steps"):
        total_steps = min(total_steps, int(o["max_steps"]))
    writer = None
    if info.is_main and cfg["log"].get("tensorboard"):
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=step if step else None)

    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", disable=not (progress and info.is_main),
               dynamic_ncols=True)
    model.train()
    t_start = time.perf_counter()
    epoch = start_epoch
    collapsed_checks = 0
    while step < total_steps:
        gen = torch.Generator().manual_seed(int(cfg["seed"]) * 1000 + epoch)
        perm = torch.randperm(len(dataset), generator=gen).tolist()
        perm = (perm * info.world)[: per_rank * info.world][info.rank::info.world]  # pad, then shard
        batches = [perm[i:i + int(o["batch_size"])] for i in range(0, len(perm), int(o["batch_size"]))]
        for b_idx in range(skip, len(batches)):
            if step >= total_steps:
                break
            items = [dataset[i] for i in batches[b_idx]]
            batch = {k: v.to(device, non_blocking=True) for k, v in collate(items).items()}
            teacher_out = None
            if store is not None:
                t = [store.get(i) for i in batches[b_idx]]
                teacher_out = TeacherOutput(
                    inv_depth=torch.cat([x["inv_depth"] for x in t]).float().to(device),
                    features=torch.cat([x["features"] for x in t]).float().to(device),
                )
            pairs = pairs_for_batch(base_pairs, len(items), num_cams).to(device)
            bands = base_bands.repeat(len(items), 1, 1)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, float(o["lr"]), int(o["warmup_steps"]))
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                out = ddp_model(batch["images"])
            out = type(out)(*(x.float() for x in out))
            step_cfg = kd_ramped(loss_cfg, step, int(o.get("kd_warmup_steps") or 0))
            losses = compute_losses(out, batch["sparse_depth"], ~batch["masks"], teacher_out, pairs, step_cfg, bands,
                                    readout=scfg.readout)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses["total"]).backward()
            scaler.unscale_(optimizer)
            if o.get("grad_clip"):
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(o["grad_clip"]))
            scaler.step(optimizer)
            scaler.update()
            step += 1
            if not torch.isfinite(losses["total"]):
                raise FloatingPointError(f"loss became {losses['total'].item()} at step {step}: "
                                         f"terms {({k: float(v) for k, v in losses.items()})}")
            bar.update(1)
            bar.set_postfix({k: f"{float(v.detach()):.3f}" for k, v in losses.items()}, refresh=False)
            if step % int(cfg["log"]["scalar_every"]) == 0:
                max_prob, spread = collapse_stats(out.logits, out.depth)
                if info.world > 1:  # every rank must take the same decision, or the others hang in all-reduce
                    stats = torch.tensor([max_prob, spread], device=device)
                    dist.all_reduce(stats)
                    max_prob, spread = (stats / info.world).tolist()
                collapsed_checks = collapsed_checks + 1 if (
                    max_prob > COLLAPSE_MAX_PROB and spread < COLLAPSE_DEPTH_SPREAD) else 0
                if collapsed_checks >= COLLAPSE_PATIENCE:
                    raise StudentCollapsedError(
                        f"{out_dir}: the student collapsed by step {step}: largest bin probability "
                        f"{max_prob:.3f} on average and depth spread {100 * spread:.1f} % within an image, so "
                        "the softmax is saturated and training cannot recover. Start a new --out with another "
                        "seed or a lower optim.lr (the checkpoints written so far are collapsed too).")
                if writer is not None:
                    for k, v in losses.items():
                        writer.add_scalar(f"loss/{k}", float(v.detach()), step)
                    writer.add_scalar("lr", optimizer.param_groups[0]["lr"], step)
                    writer.add_scalar("student/max_bin_prob", max_prob, step)
                    writer.add_scalar("student/depth_spread", spread, step)
            if writer is not None and step % int(cfg["log"]["image_every"]) == 0:
                writer.add_image("depth/pred", depth_grid_image(out.depth[:num_cams], scfg.max_depth), step)
            if info.is_main and (step % int(o["checkpoint_every"]) == 0 or step == total_steps):
                save_training_state(out_dir, step, epoch, b_idx + 1, model, optimizer, scaler,
                                    extra={"elapsed_s": time.perf_counter() - t_start})
        else:
            epoch += 1
            skip = 0
            continue
        break
    bar.close()
    if writer is not None:
        writer.close()
    if info.world > 1:
        check_replicas_in_sync(model, info)
    weights = out_dir / "student.safetensors"
    if info.is_main:
        weights = save_student(out_dir, model, {
            "student": scfg.to_dict(),
            "camera_names": names,
            "pairs": [list(p) for p in base_pairs],
            "input_size": [scfg.input_height, scfg.input_width],
            "steps": step,
            "teacher": cfg["teacher"].get("kind"),
            "loss": {k: v for k, v in cfg["loss"].items()},
            "rig": data_rig.to_dict(),
        })
        print(f"student saved to {weights} after {step} steps", file=sys.stderr)
    barrier(info)
    return weights


# -------------------------------------------------------------------- CLI
def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="training YAML (config/train_*.yaml)")
    parser.add_argument("--bag", type=Path, action="append", default=[],
                        help="rosbag2 directory to train on (repeatable; overrides data.bags)")
    parser.add_argument("--out", type=Path, required=True, help="run directory (resumed if it exists)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="config overrides, e.g. loss.use_vrkd=false optim.epochs=5")


def run_train(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
        if args.bag:
            cfg["data"]["bags"] = [str(b.resolve()) for b in args.bag]
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
