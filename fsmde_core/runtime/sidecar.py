"""The JSON sidecar next to every exported model: ``OUT.onnx.json``, ``OUT.engine.json``.

The exporter writes what it verified (sizes, cameras, depth range, the
ORT-vs-torch difference, content hashes); the TensorRT builder writes the cache
key the engine was built under; the backends read both back for ``describe()``
and for the checks a bare model file cannot answer (the precision an engine was
built with). One module for path, hashing, reading and writing, so the writers
and readers cannot disagree on any of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from fsmde_core.atomic import atomic_write_json

log = logging.getLogger(__name__)

#: Name of the optional second model output (per-pixel confidence, ``fsmde export --confidence``);
#: the exporter writes it and the backends look for it by this name. The sidecar's
#: ``confidence_output`` key records it (None: the model has depth only).
CONFIDENCE_OUTPUT = "confidence"


def sidecar_path(model_path: str | Path) -> Path:
    """``OUT.onnx -> OUT.onnx.json``; ``OUT.engine -> OUT.engine.json``."""
    p = Path(model_path)
    return p.with_name(p.name + ".json")


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes already in memory."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (models can be larger than is worth holding twice)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_sidecar(model_path: str | Path) -> dict[str, Any]:
    """The sidecar of ``model_path``, or ``{}`` if absent or unreadable (it is advisory: a bare model still runs)."""
    path = sidecar_path(model_path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        log.warning("ignoring unreadable sidecar %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def write_sidecar(model_path: str | Path, facts: dict[str, Any]) -> Path:
    """Write ``facts`` as the sidecar of ``model_path`` (atomically); return the sidecar's path."""
    path = sidecar_path(model_path)
    atomic_write_json(path, facts)
    return path
