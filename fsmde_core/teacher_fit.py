"""``fsmde teacher fit``: train the bridged teacher's Bridging Gates on recordings against their LiDAR.

The bridged teacher (:mod:`fsmde_core.models.teachers.bridged`, BriGeS) fuses
Depth Anything V2 with Segment Anything through Bridging Gates. Both
foundation models stay frozen; only the gates and the shared projection of the
SAM features train, with the scale-and-shift-invariant loss
(:mod:`fsmde_core.distill.ssi`) of the relative inverse depth against the sparse
LiDAR. The output directory is a gates directory (``gates.safetensors`` +
``gates.json``) that ``BridgedTeacher(gates=DIR)`` loads, i.e.
``fsmde eval --teacher bridged --teacher-option gates=DIR`` and
``fsmde train ... teacher.options.gates=DIR``.

Frozen features are cached (``cache.features``). A step only needs the depth
backbone's four tap tokens and SAM's pooled features of each image; they do not
depend on the gates, and the encoders are nearly all of a step's cost (SAM
ViT-B alone is ~490 GFLOPs per 1024 px image, the gates + DPT head a small
fraction). ``disk`` (default) computes them once per image into a tensor store
keyed by both models' identities, the data and the input size, so every epoch,
a resumed run and other runs on the same data (tau ablations) reuse them; it
costs ~10 MB per image at fp16 for ViT-S + SAM-B at 518 px. ``memory`` keeps
them in RAM for the run (small data), ``off`` computes them every step (data
too large for the disk). No augmentation: the images are resized exactly as the
teacher resizes them at inference, which is what makes the cache valid.

The trainer's habits (:mod:`fsmde_core.train`, whose helpers are reused):
tqdm progress (``--no-progress``), TensorBoard scalars, safetensors + JSON
checkpoints of the gates only (optimizer and OneCycle state as tensors + JSON,
never pickle), resume by re-running the same command, DDP under ``torchrun``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn import functional as nnf
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from fsmde_core.checkpoint import atomic_write_json, load_training_state, read_json, save_training_state
from fsmde_core.config import (
    COMMAND_LINE,
    TRAIN_DATA_DEFAULTS,
    ConfigError,
    data_config_from_section,
    overrides_layer,
    unknown_key_error,
)
from fsmde_core.distill.ssi import ssi_loss
from fsmde_core.models.teachers.depth_anything_v2 import resize_target
from fsmde_core.train import (
    DistInfo,
    Position,
    SkipFirstBatches,
    barrier,
    check_bags_exist,
    check_replicas_in_sync,
    config_differences,
    default_cache_root,
    seed_everything,
    setup_distributed,
)

FIT_SECTIONS: tuple[str, ...] = ("data", "models", "gates", "optim", "cache", "log")
#: ``data`` keys only the fit has (the rest are the reader's DataConfig keys).
FIT_DATA_KEYS: tuple[str, ...] = ("bags", "cache_dir")
FEATURE_MODES: tuple[str, ...] = ("disk", "memory", "off")
FEATURE_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "float32": torch.float32}
FEATURE_CACHE_FORMAT = 1


# ------------------------------------------------------------------ config
def _positive(section: str, key: str, value: Any, integer: bool = False, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        raise ValueError(f"{section}.{key} must be a positive {'integer' if integer else 'number'}, got {value!r}")


@dataclass(frozen=True)
class FitModelsConfig:
    """The frozen foundation models (local directories or hub ids) and the depth model's input size."""

    depth: str | None = ""  # Depth Anything V2: directory (config.json + weights) or hub id; ""/None = unset
    segmentation: str | None = ""  # Segment Anything (SamModel or SamVisionModel): directory or hub id
    input_size: int | list[int] = 518  # depth model's short side, or [height, width]: the teacher's input_size

    def __post_init__(self) -> None:
        for key in ("depth", "segmentation"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), str):
                raise ValueError(f"models.{key} must be a directory or hub id, got {getattr(self, key)!r}")
        if isinstance(self.input_size, (list, tuple)):
            if len(self.input_size) != 2:
                raise ValueError(f"models.input_size must be one size or [height, width], got {self.input_size!r}")
            for side in self.input_size:
                _positive("models", "input_size", side, integer=True)
        else:
            _positive("models", "input_size", self.input_size, integer=True)


@dataclass(frozen=True)
class FitGatesConfig:
    """The gates' Attention Temperature Scaling (see :mod:`fsmde_core.models.teachers.bridging`)."""

    tau_mode: str = "learnable"  # none | fixed | learnable
    tau: float = 2.0  # the fixed value, or the learnable one's start
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        from fsmde_core.models.teachers.bridging import TAU_MODES

        if self.tau_mode not in TAU_MODES:
            raise ValueError(f"gates.tau_mode must be one of {', '.join(TAU_MODES)}, got {self.tau_mode!r}")
        _positive("gates", "tau", self.tau)
        _positive("gates", "mlp_ratio", self.mlp_ratio)


@dataclass(frozen=True)
class FitOptimConfig:
    """AdamW with a OneCycle schedule (BriGeS: lr 5e-5, batch 4)."""

    lr: float = 5e-5  # OneCycle's peak rate
    weight_decay: float = 1e-2
    batch_size: int = 4  # images per step and rank
    epochs: int = 10
    max_steps: int | None = None
    pct_start: float = 0.3  # share of the steps spent warming up to lr
    grad_clip: float = 1.0  # max gradient norm; 0 = off
    checkpoint_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        _positive("optim", "lr", self.lr)
        for key in ("batch_size", "epochs", "checkpoint_every"):
            _positive("optim", key, getattr(self, key), integer=True)
        _positive("optim", "max_steps", self.max_steps, integer=True, allow_none=True)
        if not (isinstance(self.pct_start, (int, float)) and 0 < self.pct_start < 1):
            raise ValueError(f"optim.pct_start must be in (0, 1), got {self.pct_start!r}")
        for key in ("weight_decay", "grad_clip"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"optim.{key} must be a number >= 0, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"optim.seed must be an integer >= 0, got {self.seed!r}")


@dataclass(frozen=True)
class FitCacheConfig:
    """Where the frozen models' features live (see the module doc)."""

    features: str = "disk"  # disk | memory | off
    dtype: str = "float16"  # float16 | float32 (what the cache stores)

    def __post_init__(self) -> None:
        if self.features is False:  # YAML 1.1 reads an unquoted off as false
            object.__setattr__(self, "features", "off")
        if self.features not in FEATURE_MODES:
            raise ValueError(f"cache.features must be one of {', '.join(FEATURE_MODES)}, got {self.features!r}")
        if self.dtype not in FEATURE_DTYPES:
            raise ValueError(f"cache.dtype must be one of {', '.join(FEATURE_DTYPES)}, got {self.dtype!r}")


@dataclass(frozen=True)
class FitLogConfig:
    tensorboard: bool = True
    scalar_every: int = 10

    def __post_init__(self) -> None:
        _positive("log", "scalar_every", self.scalar_every, integer=True)


_SECTION_CLASSES: dict[str, type] = {"models": FitModelsConfig, "gates": FitGatesConfig, "optim": FitOptimConfig,
                                     "cache": FitCacheConfig, "log": FitLogConfig}


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def fit_section_keys(section: str) -> tuple[str, ...]:
    if section == "data":
        from fsmde_core.data.config import DataConfig

        return _field_names(DataConfig) + FIT_DATA_KEYS
    return _field_names(_SECTION_CLASSES[section])


@dataclass(frozen=True)
class FitConfig:
    """The whole ``fsmde teacher fit`` config, typed; built from (and checked against) its plain dict."""

    data: Any  # fsmde_core.data.config.DataConfig
    bags: list[str]
    cache_dir: str | None
    models: FitModelsConfig
    gates: FitGatesConfig
    optim: FitOptimConfig
    cache: FitCacheConfig
    log: FitLogConfig

    @classmethod
    def from_dict(cls, cfg: dict[str, Any], source: str = "<config>") -> FitConfig:
        """A bad key or value is a ConfigError naming ``source`` and the dotted key."""
        check_fit_keys(cfg, source)
        d = cfg["data"]
        reader = {k: v for k, v in d.items() if k not in FIT_DATA_KEYS}
        bags = d.get("bags") or []
        if not isinstance(bags, list) or not all(isinstance(b, str) for b in bags):
            raise ConfigError(f"{source}: data.bags must be a list of bag paths, got {bags!r}")
        sections = {}
        for name, build in _SECTION_CLASSES.items():
            try:
                sections[name] = build(**cfg[name])
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{source}: {exc if str(exc).startswith(name) else f'{name}: {exc}'}") from exc
        return cls(data=data_config_from_section(reader, source), bags=list(bags), cache_dir=d.get("cache_dir"),
                   **sections)


def default_fit_config() -> dict[str, Any]:
    """The defaults as a plain nested dict (the section dataclasses' defaults; data as ``fsmde train``'s)."""
    from fsmde_core.data.config import DataConfig

    data = {**asdict(DataConfig(**TRAIN_DATA_DEFAULTS)), "bags": [], "cache_dir": None}
    out = {"data": data, **{name: asdict(build()) for name, build in _SECTION_CLASSES.items()}}
    return json.loads(json.dumps(out, default=str))


def check_fit_keys(cfg: dict[str, Any], where: str) -> None:
    """Refuse unknown sections and keys, in one line naming the dotted key and the valid ones."""
    for section, body in cfg.items():
        if section not in FIT_SECTIONS:
            raise unknown_key_error(where, section, FIT_SECTIONS, "section")
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: {section} must be a mapping of keys, got {body!r}")
        valid = fit_section_keys(section)
        for key in body:
            if key not in valid:
                raise unknown_key_error(where, f"{section}.{key}", valid)


def _read_fit_file(path: Path) -> dict[str, Any]:
    """A fit YAML as a partial config; bag and cache paths relative to the file are made absolute."""
    if not path.is_file():
        raise ConfigError(f"teacher fit config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    check_fit_keys(data, str(path))
    section = data.get("data") or {}
    for key in ("rig_yaml", "cache_dir"):
        if section.get(key) and not Path(section[key]).is_absolute():
            section[key] = str((path.parent / section[key]).resolve())
    if section.get("bags"):
        section["bags"] = [b if Path(b).is_absolute() else str((path.parent / b).resolve()) for b in section["bags"]]
    return data


def _merge(cfg: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(cfg)
    for section, body in layer.items():
        if body is not None:
            out[section] = {**out[section], **copy.deepcopy(body)}
    return out


def load_fit_config(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Defaults <- YAML file <- ``key.path=value`` overrides, checked by building :class:`FitConfig`."""
    cfg, sources = default_fit_config(), []
    if path is not None:
        sources.append(str(path))
        cfg = _merge(cfg, _read_fit_file(Path(path)))
    if overrides:
        sources.append(COMMAND_LINE)
        layer = overrides_layer(list(overrides), FIT_SECTIONS)
        check_fit_keys(layer, COMMAND_LINE)
        cfg = _merge(cfg, layer)
    if cfg["cache"].get("features") is False:  # YAML 1.1 reads an unquoted off as false
        cfg["cache"]["features"] = "off"
    FitConfig.from_dict(cfg, " + ".join(sources) or "defaults")
    return json.loads(json.dumps(cfg, default=str))


# ------------------------------------------------------------------ data
class SurroundImages(Dataset):
    """One item per camera image of a :class:`~fsmde_core.data.cache.SurroundDataset`: id = sample * N + camera.

    Items: ``id``, ``image`` (3, H, W) in [0, 1], ``sparse_depth`` (1, H, W) NaN-empty, ``masks`` (1, H, W) ego.
    """

    def __init__(self, samples: Any, num_cameras: int) -> None:
        self.samples, self.num_cameras = samples, num_cameras

    def __len__(self) -> int:
        return len(self.samples) * self.num_cameras

    def __getitem__(self, image_id: int) -> dict[str, Any]:
        sample, cam = divmod(int(image_id), self.num_cameras)
        item = self.samples[sample]
        return {"id": int(image_id), "image": item["images"][cam], "sparse_depth": item["sparse_depth"][cam],
                "masks": item["masks"][cam]}


def check_lidar(bags: list[Path], data_cfg: Any) -> None:
    """Refuse a bag without the LiDAR the loss needs, in one line naming the bag and the topic."""
    from fsmde_core.data.bag import BagSource
    from fsmde_core.data.layout import CLOUD_TYPE

    source = BagSource(bags, data_cfg)
    need = "the gates are fitted against the LiDAR, so every bag needs it"
    for bag in bags:
        layout = source.layout(bag)
        if layout.lidar_topic is not None:
            continue
        clouds = sorted(t for t, info in layout.topics.items() if info.msgtype == CLOUD_TYPE)
        topic = data_cfg.lidar_topic
        if topic is None and len(clouds) > 1:
            raise ConfigError(f"bag {bag}: several LiDAR topics {clouds}: set data.lidar_topic to the one to fit "
                              "against")
        if topic is None:
            raise ConfigError(f"bag {bag}: no LiDAR topic (no {CLOUD_TYPE} topic in the bag); {need}")
        if topic in layout.topics and layout.topics[topic].msgtype != CLOUD_TYPE:
            raise ConfigError(f"bag {bag}: LiDAR topic {topic} has type {layout.topics[topic].msgtype}, "
                              f"not {CLOUD_TYPE}")
        if topic in layout.topics:  # present but empty or unreadable: the layout says which
            raise ConfigError(f"bag {bag}: LiDAR topic {topic}: {'; '.join(p.detail for p in layout.problems)}")
        raise ConfigError(f"bag {bag}: LiDAR topic {topic} (data.lidar_topic) is not in the bag "
                          f"(PointCloud2 topics: {clouds or 'none'}); {need}")


# ------------------------------------------------------------------ model
class GateNetwork(nn.Module):
    """The trainable part of a bridged model (projection + gates) and its forward from cached features.

    The frozen bridged model is held outside the module tree, so ``state_dict``,
    ``parameters``, checkpoints and DDP see only what trains.
    """

    def __init__(self, bridged: Any) -> None:
        super().__init__()
        self.projection = bridged.projection
        self.gates = bridged.gates
        self._bridged = (bridged,)

    @property
    def bridged(self) -> Any:
        return self._bridged[0]

    def forward(self, taps: list[torch.Tensor], seg: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Tap tokens + pooled SAM features -> (B, h, w) the depth head's output."""
        model = self.bridged
        return model.decode(model.fuse(taps, seg), grid).predicted_depth


class FrozenFeatures:
    """The frozen models' per-image features: computed, cached (disk / memory) or both.

    Args:
        teacher: a :class:`~fsmde_core.models.teachers.bridged.BridgedTeacher` (its models and preprocessing).
        mode, dtype: ``cache.features`` and ``cache.dtype``.
        store_root: the disk store's directory (``disk`` only).
        data_key: the sample cache's key digest (what the images are).
        writer: False for DDP ranks other than 0: they open the disk store read-only, after rank 0
            filled it, so they can never clear what it is writing.
    """

    def __init__(self, teacher: Any, mode: str, dtype: str, store_root: Path | None, data_key: str,
                 writer: bool = True) -> None:
        self.teacher, self.mode = teacher, mode
        self.dtype = FEATURE_DTYPES[dtype]
        self.key = {"format": FEATURE_CACHE_FORMAT, "depth": teacher.depth_teacher.identity,
                    "segmentation": teacher._sam_hash()[:16], "sam_size": teacher.sam_image_size,
                    "data": data_key, "dtype": dtype}
        self.digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]
        self.memory: dict[int, dict[str, torch.Tensor]] = {}
        self.store = None
        if mode == "disk":
            from fsmde_core.data.store import TensorStore

            self.store = TensorStore(Path(store_root) / self.digest, self.key, create=writer)

    def compute(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, tuple[int, int]]:
        """(B, 3, H, W) images in [0, 1] -> the four tap tokens, pooled SAM features and the patch grid."""
        from fsmde_core.models.teachers.bridged import sam_preprocess

        teacher, model = self.teacher, self.teacher.model
        with torch.no_grad():
            x = teacher.depth_teacher.preprocess(images)
            patch = int(model.depth.config.patch_size)
            grid = (x.shape[-2] // patch, x.shape[-1] // patch)
            seg, valid = sam_preprocess(images.to(teacher.device), teacher.sam_image_size)
            taps = model.depth_taps(x)
            feats = model.segmentation_features(seg.to(teacher.dtype), valid, grid)
        return taps, feats, grid

    def _pack(self, taps: list[torch.Tensor], feats: torch.Tensor, row: int) -> dict[str, torch.Tensor]:
        # copies: a view would keep the whole batch alive in memory mode
        out = {f"tap{k}": t[row].to("cpu", self.dtype, copy=True) for k, t in enumerate(taps)}
        out["segmentation"] = feats[row].to("cpu", self.dtype, copy=True)
        return out

    def _cached(self, image_id: int) -> dict[str, torch.Tensor] | None:
        if self.mode == "memory":
            return self.memory.get(image_id)
        if self.mode == "disk" and self.store.has(image_id):
            return self.store.get(image_id)
        return None

    def fill(self, samples: Any, num_cameras: int, progress: bool) -> int:
        """Compute every sample's features (all cameras as one batch) that the cache lacks; returns how many."""
        if self.mode == "off":
            return 0
        todo = [i for i in range(len(samples)) if any(self._cached(i * num_cameras + c) is None
                                                      for c in range(num_cameras))]
        for i in tqdm(todo, desc="teacher features", unit="sample", disable=not progress, dynamic_ncols=True):
            taps, feats, _ = self.compute(samples[i]["images"])
            for cam in range(num_cameras):
                entry = self._pack(taps, feats, cam)
                if self.mode == "memory":
                    self.memory[i * num_cameras + cam] = entry
                else:
                    self.store.put(i * num_cameras + cam, entry)
        return len(todo)

    def batch(self, ids: torch.Tensor, images: torch.Tensor,
              device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Features of a batch of image ids: from the cache, else computed from ``images`` (mode off)."""
        entries = [self._cached(int(i)) for i in ids]
        if any(e is None for e in entries):
            taps, feats, _ = self.compute(images)
            return [t.float().to(device) for t in taps], feats.float().to(device)
        taps = [torch.stack([e[f"tap{k}"] for e in entries]).float().to(device)
                for k in range(len(self.teacher.model.taps))]
        return taps, torch.stack([e["segmentation"] for e in entries]).float().to(device)


# ------------------------------------------------------------------ fitting
class GateFitter:
    """One gates-fitting run: set up once, then epochs of steps, logging and checkpoints.

    Everything that can fail on bad input (models, bags, LiDAR, data) is done
    in :meth:`setup` before ``config.json`` is written, so fixing the input and
    re-running the same command is never refused as "a different run".
    """

    def __init__(self, cfg: dict[str, Any], out_dir: Path, progress: bool = True,
                 device_name: str | None = None) -> None:
        self.raw_cfg = cfg
        self.cfg = FitConfig.from_dict(cfg, "config")
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.device = torch.device(device_name or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.info = DistInfo()
        self.pos = Position()
        self.writer: Any = None
        self.timings = {"features_s": 0.0, "steps_s": 0.0}

    # ------------------------------------------------------------ setup
    def setup(self) -> None:
        self.info = setup_distributed(self.device)
        if self.device.type == "cuda" and self.info.world > 1:
            self.device = torch.device("cuda", self.info.local_rank)
            torch.cuda.set_device(self.device)
        self._refuse_a_different_run()
        seed_everything(self.cfg.optim.seed)
        self.bags = [Path(b) for b in self.cfg.bags]
        check_bags_exist(self.bags, "data.bags")  # the cheap checks first: loading the models takes a while
        check_lidar(self.bags, self.cfg.data)
        self._setup_models()
        self._setup_data()
        self._setup_features()
        self._setup_optimizer()
        self._resume()
        self._setup_logging()
        if self.info.is_main:
            atomic_write_json(self.out_dir / "config.json", self.raw_cfg)

    def _refuse_a_different_run(self) -> None:
        cfg_path = self.out_dir / "config.json"
        if cfg_path.is_file():
            diffs = config_differences(read_json(cfg_path, "run config"), self.raw_cfg)
            if diffs:
                raise ConfigError(f"{self.out_dir} holds a run with a different config; use a new --out or the "
                                  f"same settings. Differences: {'; '.join(diffs)}")

    def _setup_models(self) -> None:
        from fsmde_core.models.teachers.bridged import BridgedTeacher

        m = self.cfg.models
        for key in ("depth", "segmentation"):
            if not getattr(m, key):
                raise ConfigError(f"models.{key} is not set: pass models.{key}=DIR (a local model directory)")
        size = tuple(m.input_size) if isinstance(m.input_size, (list, tuple)) else m.input_size
        self.teacher = BridgedTeacher(m.depth, m.segmentation, input_size=size, device=self.device)
        g = self.cfg.gates
        self.teacher.model.build_gates(g.tau_mode, float(g.tau), float(g.mlp_ratio))
        self.teacher.model.train()
        self.net = GateNetwork(self.teacher.model)
        self.metric = self.teacher.depth_teacher.config.depth_estimation_type == "metric"

    def _setup_data(self) -> None:
        from fsmde_core.data.cache import SurroundDataset, build_cache

        bags = self.bags
        self.cache_root = default_cache_root(self.cfg.cache_dir, self.out_dir)
        if self.info.is_main:
            index = build_cache(bags, self.cfg.data, self.cache_root / "samples", progress=self.progress)
        barrier(self.info)
        if not self.info.is_main:
            index = build_cache(bags, self.cfg.data, self.cache_root / "samples", progress=False)
        self.samples = SurroundDataset(index)
        if len(self.samples) == 0:
            raise ConfigError(f"no complete surround samples in {', '.join(map(str, bags))}: run 'fsmde inspect'")
        for bag in bags:
            if not any(e.lidar_stamp_ns is not None for e in index.entries if Path(e.bag) == bag):
                raise ConfigError(f"bag {bag}: no camera set has a LiDAR sweep within data.lidar_tolerance_ms "
                                  f"({self.cfg.data.lidar_tolerance_ms} ms); nothing to fit the gates against")
        self.num_cams = len(index.camera_names)
        self.data_key = index.key_digest
        self.images = SurroundImages(self.samples, self.num_cams)
        patch = int(self.teacher.model.depth.config.patch_size)
        h, w = resize_target(index.height, index.width, self.teacher.depth_teacher.input_size, patch)
        self.grid = (h // patch, w // patch)  # the depth model's patch grid (every image has the data size)

    def _setup_features(self) -> None:
        """Rank 0 fills the disk cache, the other ranks then open it read-only; memory: each rank its own."""
        c = self.cfg.cache
        start = time.perf_counter()
        if self.info.is_main:
            self.features = self._frozen_features(writer=True)
            self.features.fill(self.samples, self.num_cams, self.progress)
        barrier(self.info)
        if not self.info.is_main:
            self.features = self._frozen_features(writer=False)
            if c.features == "memory":
                self.features.fill(self.samples, self.num_cams, progress=False)
        self.timings["features_s"] = time.perf_counter() - start

    def _frozen_features(self, writer: bool) -> FrozenFeatures:
        c = self.cfg.cache
        return FrozenFeatures(self.teacher, c.features, c.dtype, self.cache_root / "bridged_features",
                              self.data_key, writer=writer)

    def _setup_optimizer(self) -> None:
        o = self.cfg.optim
        self.sampler = DistributedSampler(self.images, num_replicas=self.info.world, rank=self.info.rank,
                                          shuffle=True, seed=o.seed * 1000, drop_last=False)
        self.batches_per_epoch = len(BatchSampler(self.sampler, o.batch_size, drop_last=False))
        self.total_steps = self.batches_per_epoch * o.epochs
        if o.max_steps:
            self.total_steps = min(self.total_steps, o.max_steps)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=float(o.lr), weight_decay=float(o.weight_decay))
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=float(o.lr),
                                                             total_steps=self.total_steps, pct_start=o.pct_start)
        self.ddp_net: nn.Module = self.net
        if self.info.world > 1:
            self.ddp_net = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _resume(self) -> None:
        meta = load_training_state(self.out_dir, self.net, self.optimizer)
        if meta is None:
            return
        self.pos = Position(int(meta["step"]), int(meta["epoch"]), int(meta["batch_in_epoch"]))
        self.scheduler.load_state_dict(meta["extra"]["scheduler"])
        if self.info.is_main:
            print(f"resuming {self.out_dir} from step {self.pos.step} (epoch {self.pos.epoch}, "
                  f"batch {self.pos.batch_in_epoch})", file=sys.stderr)

    def _setup_logging(self) -> None:
        if self.info.is_main and self.cfg.log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=self.pos.step or None)

    def _loader(self, epoch: int, skip: int) -> DataLoader:
        self.sampler.set_epoch(epoch)
        batches = BatchSampler(self.sampler, self.cfg.optim.batch_size, drop_last=False)
        return DataLoader(self.images, batch_sampler=SkipFirstBatches(batches, skip),
                          generator=torch.Generator().manual_seed(self.cfg.optim.seed))

    # ------------------------------------------------------------ the loop
    def run(self, interrupt_after: int | None = None) -> Path:
        """Set up, fit to ``total_steps`` (resuming where a killed run stopped), save the gates.

        ``interrupt_after``: raise KeyboardInterrupt (as Ctrl-C would) once that many steps have run in
        this call - how the tests stop a run after N steps.
        """
        self.setup()
        self.interrupt_after = interrupt_after
        self.steps_this_run = 0
        self.bar = tqdm(total=self.total_steps, initial=self.pos.step, desc="fit gates", unit="step",
                        disable=not (self.progress and self.info.is_main), dynamic_ncols=True)
        start = time.perf_counter()
        while self.pos.step < self.total_steps:
            self.run_epoch()
        self.timings["steps_s"] = time.perf_counter() - start
        self.bar.close()
        return self.finish()

    def run_epoch(self) -> None:
        for batch in self._loader(self.pos.epoch, self.pos.batch_in_epoch):
            self.pos.batch_in_epoch += 1
            losses = self.step(batch)
            self.log(losses)
            self.maybe_checkpoint()
            self.steps_this_run += 1
            if self.interrupt_after is not None and self.steps_this_run >= self.interrupt_after:
                raise KeyboardInterrupt
            if self.pos.step >= self.total_steps:
                return
        self.pos = Position(self.pos.step, self.pos.epoch + 1, 0)

    def predict(self, batch: dict[str, Any]) -> torch.Tensor:
        """(B, 1, H, W) relative inverse depth of a batch at the LiDAR's resolution (with gradients)."""
        taps, seg = self.features.batch(batch["id"], batch["image"], self.device)
        height, width = batch["image"].shape[-2:]
        depth = self.ddp_net(taps, seg, self.grid).unsqueeze(1).float()
        pred = nnf.interpolate(depth, size=(height, width), mode="bilinear", align_corners=False)
        return 1.0 / pred.clamp_min(1e-6) if self.metric else pred

    def step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One optimiser step on one batch of images; returns the logged terms."""
        o = self.cfg.optim
        pred = self.predict(batch)
        loss, per_image = ssi_loss(pred, batch["sparse_depth"].to(self.device), batch["masks"].to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if o.grad_clip:
            nn.utils.clip_grad_norm_(self.net.parameters(), float(o.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        self.pos.step += 1
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the SSI loss became {loss.item()} at step {self.pos.step}")
        return {"ssi": loss.detach(), "images_with_lidar": (per_image > 0).sum().float()}

    def log(self, losses: dict[str, torch.Tensor]) -> None:
        """Progress bar; every ``log.scalar_every`` steps loss, lr and each gate's tau to TensorBoard."""
        self.bar.update(1)
        self.bar.set_postfix({"ssi": f"{float(losses['ssi']):.4f}"}, refresh=False)
        step = self.pos.step
        if self.writer is not None and step % self.cfg.log.scalar_every == 0:
            self.writer.add_scalar("loss/ssi", float(losses["ssi"]), step)
            self.writer.add_scalar("loss/images_with_lidar", float(losses["images_with_lidar"]), step)
            self.writer.add_scalar("lr", self.optimizer.param_groups[0]["lr"], step)
            for k, tau in enumerate(self.teacher.model.taus()):
                self.writer.add_scalar(f"tau/gate{k}", tau, step)

    def maybe_checkpoint(self) -> None:
        step = self.pos.step
        if self.info.is_main and (step % self.cfg.optim.checkpoint_every == 0 or step == self.total_steps):
            save_training_state(self.out_dir, step, self.pos.epoch, self.pos.batch_in_epoch, self.net,
                                self.optimizer, extra={"scheduler": self.scheduler.state_dict()})

    def finish(self) -> Path:
        """Check DDP replicas agree, write the gates directory (rank 0)."""
        if self.writer is not None:
            self.writer.close()
        if self.info.world > 1:
            check_replicas_in_sync(self.net, self.info)
        if self.info.is_main:
            self.teacher.model.save_gates(self.out_dir)
            m, t = self.cfg.models, self.timings
            rate = self.steps_this_run / max(t["steps_s"], 1e-9)
            print(f"fit: {self.steps_this_run} steps in {t['steps_s']:.1f} s ({rate:.2f} steps/s); frozen features "
                  f"{t['features_s']:.1f} s (cache.features={self.cfg.cache.features})", file=sys.stderr)
            print(f"gates saved to {self.out_dir} after {self.pos.step} steps; use them with: fsmde eval --teacher "
                  f"bridged --teacher-option depth={m.depth} --teacher-option segmentation={m.segmentation} "
                  f"--teacher-option gates={self.out_dir}", file=sys.stderr)
        barrier(self.info)
        return self.out_dir


def fit_gates(cfg: dict[str, Any], out_dir: Path, progress: bool = True, device_name: str | None = None) -> Path:
    """Fit (or resume) the gates into ``out_dir``; returns the gates directory."""
    return GateFitter(cfg, out_dir, progress, device_name).run()


# ------------------------------------------------------------------ CLI
def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="fit YAML (config/teacher_bridged.yaml)")
    parser.add_argument("--bag", type=Path, action="append", default=[],
                        help="rosbag2 directory with LiDAR to fit on (repeatable; overrides data.bags)")
    parser.add_argument("--out", type=Path, required=True,
                        help="gates directory to write (a run directory: resumed if it exists)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="config overrides, e.g. models.depth=/models/da2-small gates.tau_mode=fixed")


def run_fit(args: argparse.Namespace) -> int:
    """``fsmde teacher fit``: every expected failure is one line and exit status 2, never a traceback."""
    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # transformers' "Loading weights" bars
    try:
        cfg = load_fit_config(args.config, args.overrides)
        if args.bag:
            cfg["data"]["bags"] = [str(b.resolve()) for b in args.bag]
        fit_gates(cfg, args.out, progress=not args.no_progress, device_name=args.device)
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"fsmde teacher fit: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``torchrun -m fsmde_core.teacher_fit ...`` (multi-process)."""
    parser = argparse.ArgumentParser(prog="fsmde teacher fit")
    add_fit_arguments(parser)
    return run_fit(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
