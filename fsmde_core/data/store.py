"""A directory of safetensors files keyed by an integer, tied to a cache key.

Used twice: decoded training samples (:mod:`fsmde_core.data.cache`) and the
teacher outputs, which cost seconds per frame to compute. Both need the same
guarantees:

* a file is either complete or absent — writes go to a unique temporary name
  and are renamed into place (``os.replace`` is atomic on POSIX), so a killed
  run never leaves a half-written entry that a later run would trust;
* entries computed for other inputs are never served — the store records a
  hash of its ``key`` (whatever determines the contents) and clears itself
  when opened with a different key.

Only files the store created (``NNNNNNNN.safetensors``, its temporaries and
``store.json``) are ever deleted, so pointing it at a directory with other
content is safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

STORE_META = "store.json"
_ENTRY_RE = re.compile(r"^(\d{8,})\.safetensors$")
_TMP_RE = re.compile(r"^(\d{8,}\.safetensors|store\.json|index\.json)\.tmp-(\d+)-.+$")


def key_hash(key: Mapping[str, Any]) -> str:
    """Stable SHA-256 of a JSON-serialisable key (dict order does not matter)."""
    blob = json.dumps(key, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a unique temporary file + rename: readers see the old or the new file, never half."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (signal 0 probes without signalling)."""
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True  # exists, owned by someone else
    except (ProcessLookupError, OverflowError):
        return False
    return True


class StoreKeyError(ValueError):
    """A store opened read-only holds entries for a different key."""


class TensorStore:
    """Integer-indexed dicts of tensors on disk, invalidated when ``key`` changes.

    Args:
        root: directory (created if needed).
        key: JSON-serialisable description of everything the contents depend on.
        create: True (writers): a store with another key is cleared and re-keyed.
            False (readers, e.g. a Dataset): a missing store or another key raises
            :class:`StoreKeyError` and nothing is touched, so a stale reader can
            never wipe a cache another process just rebuilt.
    """

    def __init__(self, root: str | Path, key: Mapping[str, Any], create: bool = True) -> None:
        self.root = Path(root)
        self.key = dict(key)
        self.key_hash = key_hash(self.key)
        if not create:
            meta = self._read_meta() if self.root.is_dir() else None
            if meta is None or meta.get("key_hash") != self.key_hash:
                raise StoreKeyError(f"tensor store {self.root} was not built for this key "
                                    f"(found {None if meta is None else meta.get('key_hash')}, "
                                    f"want {self.key_hash}); rebuild it")
            return
        self.root.mkdir(parents=True, exist_ok=True)
        meta = self._read_meta()
        if meta is None or meta.get("key_hash") != self.key_hash:
            if meta is not None or self.indices():
                log.info("tensor store %s: key changed, clearing %d entries", self.root, len(self.indices()))
            self.clear()
            atomic_write_text(self.root / STORE_META, json.dumps(
                {"key_hash": self.key_hash, "key": self.key}, indent=1, sort_keys=True, default=str))
        self.remove_temporaries()

    # --------------------------------------------------------------- files
    def _read_meta(self) -> dict | None:
        try:
            return json.loads((self.root / STORE_META).read_text())
        except (OSError, ValueError):
            return None

    def path(self, i: int) -> Path:
        if i < 0:
            raise IndexError(f"tensor store index must be >= 0, got {i}")
        return self.root / f"{int(i):08d}.safetensors"

    def indices(self) -> list[int]:
        """Stored entry indices, ascending."""
        out = []
        for p in self.root.iterdir():
            m = _ENTRY_RE.match(p.name)
            if m:
                out.append(int(m.group(1)))
        return sorted(out)

    def __len__(self) -> int:
        return len(self.indices())

    def remove_temporaries(self) -> int:
        """Delete temporaries left by writers that are gone (killed runs); returns how many.

        A temporary's name carries its writer's pid; files of a live process
        (a concurrent writer on this machine) are left alone.
        """
        n = 0
        for p in self.root.iterdir():
            m = _TMP_RE.match(p.name)
            if m and not _pid_alive(int(m.group(2))):
                p.unlink(missing_ok=True)
                n += 1
        return n

    def clear(self) -> None:
        """Delete every entry, temporary and the store metadata (nothing else)."""
        for p in self.root.iterdir():
            if _ENTRY_RE.match(p.name) or _TMP_RE.match(p.name) or p.name == STORE_META:
                p.unlink(missing_ok=True)

    # -------------------------------------------------------------- entries
    def has(self, i: int) -> bool:
        return self.path(i).is_file()

    def put(self, i: int, tensors: Mapping[str, torch.Tensor | np.ndarray],
            metadata: Mapping[str, str] | None = None) -> None:
        """Store entry ``i`` atomically (replaces an existing one)."""
        data = {
            k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v).contiguous()
            for k, v in tensors.items()
        }
        path = self.path(i)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            save_file(data, str(tmp), metadata=dict(metadata) if metadata else None)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def get(self, i: int, keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """Entry ``i`` as CPU tensors (KeyError if absent); ``keys``: only these (those present), read alone.

        Reading a subset matters for neighbour frames, which need the images and
        poses of an entry but not its depth maps.
        """
        path = self.path(i)
        if not path.is_file():
            raise KeyError(f"tensor store {self.root} has no entry {i}")
        if keys is None:
            return load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            present = set(f.keys())
            return {k: f.get_tensor(k) for k in keys if k in present}

    def metadata(self, i: int) -> dict[str, str]:
        """The string metadata stored with entry ``i`` (reads only the header)."""
        with safe_open(str(self.path(i)), framework="pt") as f:
            return dict(f.metadata() or {})

    def verify(self, i: int) -> bool:
        """True if entry ``i`` exists and its header parses (cheap integrity check)."""
        try:
            with safe_open(str(self.path(i)), framework="pt") as f:
                f.keys()
        except Exception:  # safetensors raises its own error types on damaged headers
            return False
        return True

    def delete(self, i: int) -> None:
        self.path(i).unlink(missing_ok=True)
