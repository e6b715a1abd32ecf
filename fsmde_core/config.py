"""Training configuration: YAML files + ``key.path=value`` overrides.

The YAML is a plain nested mapping (see ``config/train_*.yaml``); overrides on
the command line use dotted paths, e.g. ``loss.use_vrkd=false optim.lr=3e-4``.
Values are parsed as YAML scalars so ``true``, ``1e-4`` and ``[320, 192]`` mean
what they look like. Unknown top-level sections are refused, so a typo fails
at start instead of silently training the wrong thing.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import yaml

SECTIONS = ("data", "student", "teacher", "loss", "optim", "log", "seed", "eval")

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "data": {
        "bags": [],
        "width": 320,
        "height": 192,
        "rig_yaml": None,
        "cache_dir": None,
        "sync_tolerance_ms": 10.0,  # phase-corrected spread (fsmde_core.data.config.DataConfig)
        "lidar_tolerance_ms": 60.0,
    },
    "student": {"encoder": "resnet18", "num_bins": 64, "min_depth": 0.5, "max_depth": 80.0,
                "pretrained": None},
    "teacher": {"kind": "synthetic", "cache_height": None, "cache_width": None, "options": {}},
    "loss": {},
    "optim": {
        "epochs": 10, "batch_size": 1, "lr": 2e-4, "weight_decay": 1e-2, "warmup_steps": 50,
        "grad_clip": 1.0, "amp": True, "checkpoint_every": 100,
        "max_steps": None, "kd_warmup_steps": 0,
    },
    "log": {"tensorboard": True, "image_every": 100, "scalar_every": 10},
    "eval": {"cap": None},
}


class ConfigError(ValueError):
    """The training config is malformed; the message names the file and key."""


def _merge(base: dict, update: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, val in update.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict) and key not in ("options", "loss"):
            out[key] = _merge(out[key], val, f"{where}.{key}")
        elif isinstance(val, dict) and isinstance(out.get(key), dict):
            merged = dict(out[key])
            merged.update(val)
            out[key] = merged
        else:
            out[key] = copy.deepcopy(val)
    return out


def apply_override(cfg: dict, override: str) -> None:
    """Apply one ``a.b.c=value`` override in place."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form key.path=value")
    path, raw = override.split("=", 1)
    keys = path.strip().split(".")
    if keys[0] not in SECTIONS:
        raise ConfigError(f"override {override!r}: unknown section {keys[0]!r} (known: {', '.join(SECTIONS)})")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {override!r}: value is not valid YAML ({exc})") from exc
    if isinstance(value, str):
        # YAML 1.1 reads "1e-3" (no dot) as a string; users mean a number.
        with contextlib.suppress(ValueError):
            value = float(value)
    node = cfg
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[keys[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> dict:
    """Defaults <- YAML file <- overrides; validated."""
    cfg = copy.deepcopy(DEFAULTS)
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"training config not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
        unknown = sorted(set(data) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"{p}: unknown sections {unknown} (known: {', '.join(SECTIONS)})")
        # Relative bag / rig paths in a config file are relative to the file.
        data_sec = data.get("data", {}) or {}
        for key in ("rig_yaml", "cache_dir"):
            if data_sec.get(key) and not Path(data_sec[key]).is_absolute():
                data_sec[key] = str((p.parent / data_sec[key]).resolve())
        if data_sec.get("bags"):
            data_sec["bags"] = [b if Path(b).is_absolute() else str((p.parent / b).resolve())
                                for b in data_sec["bags"]]
        cfg = _merge(cfg, data, source)
    for ov in overrides or []:
        apply_override(cfg, ov)
    validate(cfg, source)
    return cfg


def validate(cfg: dict, source: str = "<config>") -> None:
    o = cfg["optim"]
    for key in ("epochs", "batch_size", "checkpoint_every"):
        if not isinstance(o.get(key), int) or o[key] < 1:
            raise ConfigError(f"{source}: optim.{key} must be a positive integer, got {o.get(key)!r}")
    if not (isinstance(o.get("lr"), (int, float)) and o["lr"] > 0):
        raise ConfigError(f"{source}: optim.lr must be > 0, got {o.get('lr')!r}")
    d = cfg["data"]
    for key in ("width", "height"):
        if not isinstance(d.get(key), int) or d[key] <= 0 or d[key] % 32:
            raise ConfigError(f"{source}: data.{key} must be a positive multiple of 32, got {d.get(key)!r}")
    if cfg["teacher"].get("kind") not in ("synthetic", "depth_anything_v2", "onnx", "none", None):
        raise ConfigError(f"{source}: teacher.kind must be synthetic, depth_anything_v2, onnx or none, "
                          f"got {cfg['teacher'].get('kind')!r}")
