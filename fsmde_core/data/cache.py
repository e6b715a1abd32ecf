"""The training cache: decoded, resized surround samples as safetensors, and a Dataset over it.

Decoding JPEGs, resizing and projecting LiDAR every epoch would cost more
than the student's forward pass, so samples are prepared once:

``cache_dir/``
    ``NNNNNNNN.safetensors`` — one per sample (a :class:`TensorStore` entry),
    with the sample's metadata as JSON in the safetensors header;
    ``store.json`` — the store's key; ``index.json`` — written last: cache key,
    camera names, size, per-sample metadata, reader statistics.

The key hashes the bags (paths, file sizes, mtimes), the
:class:`DataConfig`, the rig YAML (and its masks) and the cache format
version. Same key + complete index -> reused without opening a bag. Changed
key -> cleared and rebuilt. A killed build resumes: stored entries are kept
(their sets are recognised by ordinal and not decoded again), temporaries
and unreadable entries are removed.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from fsmde_core.camera import CameraModel
from fsmde_core.data.bag import BagSource, Moment
from fsmde_core.data.config import DataConfig
from fsmde_core.data.errors import BagError
from fsmde_core.data.layout import discover_cameras
from fsmde_core.data.reader import open_bag, topic_table
from fsmde_core.data.sample import SurroundSample
from fsmde_core.data.store import StoreKeyError, TensorStore, atomic_write_text, key_hash
from fsmde_core.messages import MalformedMessageError
from fsmde_core.rig import Rig, RigCamera, RigError

log = logging.getLogger(__name__)

#: 2: odometry poses (``T_odom_base``) and ``has_odom`` / ``has_lidar`` per sample, for training without LiDAR.
CACHE_FORMAT_VERSION = 2
INDEX_FILE = "index.json"


# -------------------------------------------------------------------- key
def _file_stats(path: Path) -> list[list]:
    """(name, size, mtime_ns) of a file or of every file in a bag directory."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def cache_key(bags: Iterable[str | Path], config: DataConfig) -> dict[str, Any]:
    """Everything the cached tensors depend on (see the module docstring)."""
    key: dict[str, Any] = {
        "format": CACHE_FORMAT_VERSION,
        "bags": [{"path": str(Path(b).resolve()), "files": _file_stats(Path(b))} for b in bags],
        "config": config.to_key(),
    }
    if config.rig_yaml is not None and Path(config.rig_yaml).is_file():
        key["rig_yaml"] = _file_stats(Path(config.rig_yaml))
        try:
            masks = [c.mask for c in Rig.load(config.rig_yaml).cameras if c.mask]
        except RigError:
            masks = []  # the reader reports the broken YAML
        key["masks"] = [_file_stats(Path(m)) for m in masks if Path(m).is_file()]
    return key


# ------------------------------------------------------------------ index
@dataclass
class CacheEntry:
    """Per-sample metadata (also stored in the sample file's header)."""

    ordinal: int  # store index: the set's position over all bags
    bag: str
    bag_index: int
    stamp_ns: int
    camera_stamps_ns: list[int]
    lidar_stamp_ns: int | None
    has_gt: bool
    has_odom: bool = False  # the sample has odometry poses (/tf odom|map -> base at every camera stamp)
    has_lidar: bool = False  # a LiDAR sweep was matched (else the sparse depth is empty)


@dataclass
class CacheIndex:
    """The contents of ``index.json``: what a complete cache holds."""

    root: Path
    key: dict[str, Any]
    key_hash: str
    camera_names: list[str]
    width: int
    height: int
    entries: list[CacheEntry] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    complete: bool = False

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def key_digest(self) -> str:
        """The cache key's hash: downstream caches (teacher outputs) key on it."""
        return self.key_hash

    @property
    def store(self) -> TensorStore:
        """The sample store, opened read-only (StoreKeyError if the cache was rebuilt meanwhile)."""
        return TensorStore(self.root, self.key, create=False)

    def save(self) -> None:
        d = asdict(self)
        d["root"] = str(self.root)
        atomic_write_text(self.root / INDEX_FILE, json.dumps(d, indent=1))

    @classmethod
    def load(cls, root: str | Path) -> CacheIndex:
        root = Path(root)
        try:
            d = json.loads((root / INDEX_FILE).read_text())
            d["root"] = root
            d["entries"] = [CacheEntry(**e) for e in d["entries"]]
            return cls(**d)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise FileNotFoundError(f"no valid cache index in {root} ({exc}); run build_cache") from exc


# ------------------------------------------------------------------- build
def sample_tensors(sample: SurroundSample) -> dict[str, np.ndarray]:
    """What a sample stores: compact dtypes (uint8 images), full-precision geometry.

    LiDAR depth covers a few percent of the pixels, so it is stored as flat
    indices + values (8 bytes per point instead of 4 bytes per pixel: a
    640x384 six-camera sample shrinks from ~11 MB to ~6 MB).
    """
    flat = sample.sparse_depth.reshape(-1)
    idx = np.flatnonzero(np.isfinite(flat))
    t = {
        "images": sample.images,
        "sparse_index": idx.astype(np.int64),
        "sparse_value": flat[idx].astype(np.float32),
        "masks": sample.masks.astype(bool),
        "K": sample.K,
        "D": sample.D,
        "T_base_cam": sample.T_base_cam.astype(np.float64),
        "camera_stamps_ns": sample.camera_stamps_ns.astype(np.int64),
    }
    if sample.gt_depth is not None:
        t["gt_depth"] = sample.gt_depth.astype(np.float32)
    if sample.T_odom_base is not None:
        t["T_odom_base"] = sample.T_odom_base.astype(np.float64)  # odom coordinates can be kilometres
    return t


def _entry(ordinal: int, sample: SurroundSample) -> CacheEntry:
    return CacheEntry(ordinal, str(sample.source.bag), sample.source.index, int(sample.stamp_ns),
                      [int(s) for s in sample.camera_stamps_ns], sample.lidar_stamp_ns,
                      sample.gt_depth is not None, has_odom=sample.T_odom_base is not None,
                      has_lidar=sample.lidar_stamp_ns is not None)


def _estimate_sets(bags: list[Path], config: DataConfig) -> int | None:
    """Upper bound on the number of sets (fewest images of any camera), from bag metadata only."""
    total = 0
    for bag in bags:
        with open_bag(bag) as reader:
            topics = topic_table(reader)
        cams = config.cameras if config.cameras is not None else discover_cameras(topics, config, [])
        counts = [topics[c.image_topic].count for c in cams if c.image_topic in topics]
        if not counts:
            return None
        total += min(counts)
    return total


class _Builder:
    """Fills a :class:`TensorStore` from :class:`BagSource` moments, keeping resumed entries."""

    def __init__(self, store: TensorStore, index: CacheIndex) -> None:
        self.store, self.index = store, index

    def check_shape(self, names: list[str], width: int, height: int, where: Moment) -> None:
        if not self.index.camera_names:
            self.index.camera_names, self.index.width, self.index.height = names, width, height
        elif (names, width, height) != (self.index.camera_names, self.index.width, self.index.height):
            first = f"{self.index.camera_names} at {self.index.width}x{self.index.height}"
            raise BagError(where.source.bag, None, f"cameras {names} at {width}x{height} differ from the "
                           f"earlier bags' {first}; set data.cameras and data.width/height so all bags "
                           "give the same layout")

    def resumed(self, ordinal: int, m: Moment) -> bool:
        """Reuse a stored entry of a killed run, if it is readable."""
        if not self.store.has(ordinal):
            return False
        if not self.store.verify(ordinal):
            self.store.delete(ordinal)
            return False
        try:
            meta = json.loads(self.store.metadata(ordinal)["sample"])
            entry = CacheEntry(**meta["entry"])
        except (KeyError, ValueError, TypeError) as exc:
            log.warning("cache %s: entry %d has bad metadata (%s); rebuilding it", self.store.root,
                        ordinal, exc)
            self.store.delete(ordinal)
            return False
        self.check_shape(meta["camera_names"], meta["width"], meta["height"], m)
        self.index.entries.append(entry)
        return True

    def add(self, ordinal: int, m: Moment) -> bool:
        try:
            sample = m.assemble()
        except MalformedMessageError as exc:
            log.warning("bag %s: skipping set %d: %s", m.source.bag, m.source.index, exc)
            return False
        w, h = sample.size
        self.check_shape(sample.camera_names, w, h, m)
        entry = _entry(ordinal, sample)
        meta = {"entry": asdict(entry), "camera_names": sample.camera_names, "width": w, "height": h}
        self.store.put(ordinal, sample_tensors(sample), {"sample": json.dumps(meta)})
        self.index.entries.append(entry)
        return True


def build_cache(
    bags: Iterable[str | Path], config: DataConfig | None, cache_dir: str | Path, progress: bool = True
) -> CacheIndex:
    """Decode the bags into ``cache_dir`` (or reuse / resume / rebuild it) and return the index."""
    bags = [Path(b) for b in bags]
    config = config or DataConfig()
    cache_dir = Path(cache_dir)
    source = BagSource(bags, config)  # validates the paths first
    key = cache_key(bags, config)
    try:
        old = CacheIndex.load(cache_dir)
    except FileNotFoundError:
        old = None
    if old is not None and old.complete and old.key_hash == key_hash(key):
        try:
            store = old.store
        except StoreKeyError:
            store = None
        if store is not None and all(store.has(e.ordinal) for e in old.entries):
            log.info("cache %s is up to date (%d samples)", cache_dir, len(old))
            return old
    (cache_dir / INDEX_FILE).unlink(missing_ok=True)
    store = TensorStore(cache_dir, key)
    index = CacheIndex(cache_dir, key, store.key_hash, [], 0, 0)
    builder = _Builder(store, index)
    ordinals: set[int] = set()
    reused = skipped = 0
    bar = tqdm(total=_estimate_sets(bags, config) if progress else None, disable=not progress,
               desc=f"caching {cache_dir.name}", unit="set")
    with bar:
        for ordinal, m in enumerate(source.moments()):
            ordinals.add(ordinal)
            if builder.resumed(ordinal, m):
                reused += 1
            elif not builder.add(ordinal, m):
                skipped += 1
            bar.update(1)
    for stale in set(store.indices()) - ordinals:  # entries of sets that no longer exist
        store.delete(stale)
    index.stats = {**source.stats.as_dict(), "cached": len(index.entries), "reused": reused,
                   "skipped_sets": skipped}
    index.complete = True
    index.save()
    log.info("cache %s: %d samples (%d reused, %d skipped)", cache_dir, len(index), reused, skipped)
    return index


# ----------------------------------------------------------------- dataset
class SurroundDataset(Dataset):
    """Training view of a cache: one surround sample (all N cameras) per item.

    Returns a dict: ``images`` (N,3,H,W) float32 in [0,1]; ``sparse_depth``
    (N,1,H,W) float32 NaN-empty; ``gt_depth`` (N,1,H,W) NaN-filled when the bag
    had none, with ``has_gt`` (bool scalar); ``masks`` (N,1,H,W) bool, True =
    ego pixel; ``K`` (N,3,3), ``D`` (N,5), ``T_base_cam`` (N,4,4) float32;
    ``T_odom_base`` (N,4,4) float64, the base pose in the odometry frame at each
    camera's stamp (identity without odometry), with ``has_odom`` (bool scalar);
    ``has_lidar`` (bool scalar, False = ``sparse_depth`` is all NaN);
    ``stamp_ns`` int64 scalar; ``index`` int.

    With ``neighbours=True`` (self-supervised photometric training, which warps
    each frame from its temporal neighbours) also ``prev_images`` /
    ``next_images`` (N,3,H,W) float32, zeros when absent, ``prev_T_odom_base`` /
    ``next_T_odom_base`` (N,4,4) float64, identity when absent, and
    ``has_prev`` / ``has_next`` (bool scalars). A neighbour is the adjacent
    cached set of the same bag in stamp order, and only counts when its
    reference stamp is within ``max_gap_ms`` of this set's (a dropped set or a
    recording gap would otherwise pair frames too far apart to warp). Neighbours
    are read from the same store entries as every other item, so each set is
    stored once on disk; only their images and poses are loaded.
    """

    def __init__(self, cache: CacheIndex | str | Path, neighbours: bool = False, max_gap_ms: float = 250.0) -> None:
        self.index = cache if isinstance(cache, CacheIndex) else CacheIndex.load(cache)
        if not self.index.complete:
            raise ValueError(f"cache {self.index.root} is incomplete; run build_cache")
        if not float(max_gap_ms) > 0:
            raise ValueError(f"SurroundDataset max_gap_ms must be > 0, got {max_gap_ms!r}")
        self.store = self.index.store
        self.neighbours = bool(neighbours)
        self.max_gap_ms = float(max_gap_ms)
        self._prev, self._next = neighbour_indices(self.index.entries, round(self.max_gap_ms * 1e6))

    def __len__(self) -> int:
        return len(self.index)

    @property
    def camera_names(self) -> list[str]:
        return list(self.index.camera_names)

    def neighbour(self, i: int, which: str) -> int | None:
        """Dataset index of sample ``i``'s ``"prev"`` or ``"next"`` set, None when it has none."""
        return (self._prev if which == "prev" else self._next)[i]

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range (cache has {len(self)})")
        entry = self.index.entries[i]
        t = self.store.get(entry.ordinal)
        n, h, w = t["masks"].shape
        sparse = torch.full((n * h * w,), float("nan"), dtype=torch.float32)
        sparse[t["sparse_index"]] = t["sparse_value"]
        sparse = sparse.view(n, 1, h, w)
        has_gt = "gt_depth" in t
        item = {
            "images": _images(t),
            "sparse_depth": sparse,
            "gt_depth": t["gt_depth"].unsqueeze(1) if has_gt else torch.full_like(sparse, float("nan")),
            "has_gt": torch.tensor(has_gt),
            "masks": t["masks"].unsqueeze(1),
            "K": t["K"].float(),
            "D": t["D"].float(),
            "T_base_cam": t["T_base_cam"].float(),
            "T_odom_base": _odometry(t, n),
            "has_odom": torch.tensor("T_odom_base" in t),
            "has_lidar": torch.tensor(entry.lidar_stamp_ns is not None),
            "stamp_ns": torch.tensor(entry.stamp_ns, dtype=torch.int64),
            "index": i,
        }
        if self.neighbours:
            for which in ("prev", "next"):
                item.update(self._neighbour_item(i, which, n, h, w))
        return item

    def _neighbour_item(self, i: int, which: str, n: int, h: int, w: int) -> dict[str, torch.Tensor]:
        j = self.neighbour(i, which)
        if j is None:
            return {f"{which}_images": torch.zeros(n, 3, h, w), f"{which}_T_odom_base": _odometry({}, n),
                    f"has_{which}": torch.tensor(False)}
        t = self.store.get(self.index.entries[j].ordinal, keys=("images", "T_odom_base"))
        return {f"{which}_images": _images(t), f"{which}_T_odom_base": _odometry(t, n),
                f"has_{which}": torch.tensor(True)}

    def rig(self, i: int = 0, name: str = "cache") -> Rig:
        """The cameras of sample ``i`` as a :class:`Rig` at the cache size (ring order, VRKD pairs)."""
        t = self.store.get(self.index.entries[i].ordinal)
        w, h = self.index.width, self.index.height
        cams = [
            RigCamera(n, "", CameraModel(w, h, K.numpy(), D.numpy()), T.numpy())
            for n, K, D, T in zip(self.index.camera_names, t["K"], t["D"], t["T_base_cam"], strict=True)
        ]
        return Rig(name, cams)


def _images(t: dict[str, torch.Tensor]) -> torch.Tensor:
    """Stored (N,H,W,3) uint8 -> (N,3,H,W) float32 in [0,1]."""
    return t["images"].permute(0, 3, 1, 2).float().div_(255.0)


def _odometry(t: dict[str, torch.Tensor], n: int) -> torch.Tensor:
    """The entry's (N,4,4) float64 odometry poses, identity when it has none (``has_odom`` tells which)."""
    if "T_odom_base" in t:
        return t["T_odom_base"].to(torch.float64)
    return torch.eye(4, dtype=torch.float64).expand(n, 4, 4).clone()


def neighbour_indices(entries: list[CacheEntry], max_gap_ns: int) -> tuple[list[int | None], list[int | None]]:
    """Per entry, the index of the previous / next entry of the same bag in stamp order (None beyond the gap).

    Neighbours never cross bags: two recordings are unrelated scenes even when
    their stamps happen to be close.
    """
    prev: list[int | None] = [None] * len(entries)
    nxt: list[int | None] = [None] * len(entries)
    by_bag: dict[str, list[int]] = {}
    for i, e in enumerate(entries):
        by_bag.setdefault(e.bag, []).append(i)
    for members in by_bag.values():
        members.sort(key=lambda i: (entries[i].stamp_ns, entries[i].bag_index))
        for a, b in itertools.pairwise(members):
            if entries[b].stamp_ns - entries[a].stamp_ns <= max_gap_ns:
                nxt[a], prev[b] = b, a
    return prev, nxt
