"""Training configuration: YAML files + ``key.path=value`` overrides.

The YAML is a plain nested mapping (see ``config/train_*.yaml``); overrides on
the command line use dotted paths, e.g. ``loss.use_vrkd=false optim.lr=3e-4``.
Values are parsed as YAML scalars so ``true``, ``1e-4`` and ``[320, 192]`` mean
what they look like. Unknown top-level sections, unknown ``data`` keys and
options the chosen teacher does not take are refused, so a typo fails at start
instead of silently training the wrong thing.

Teacher options belong to a teacher kind: choosing a kind (in the YAML or with
``teacher.kind=...``) starts from that kind's defaults
(:data:`fsmde_core.models.teachers.registry.TEACHER_KINDS`); options given for
another kind in an earlier layer are dropped, options given in the same layer
(``teacher.kind=onnx teacher.options.model_path=m.onnx``) are kept.
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
    "teacher": {"kind": "synthetic", "cache_height": None, "cache_width": None,
                "options": {"quality": 0.7, "seed": 0}},  # = default_options("synthetic"); test checks
    "loss": {},
    "optim": {
        "epochs": 10, "batch_size": 1, "lr": 2e-4, "weight_decay": 1e-2, "warmup_steps": 50,
        "grad_clip": 1.0, "amp": True, "checkpoint_every": 100,
        "max_steps": None, "kd_warmup_steps": 0,
    },
    "log": {"tensorboard": True, "image_every": 100, "scalar_every": 10},
    "eval": {"cap": None},
}


#: ``data`` keys that are not DataConfig fields (training-only).
TRAIN_ONLY_DATA_KEYS = ("bags", "cache_dir")


class ConfigError(ValueError):
    """The training config is malformed; the message names the file and key."""


def _teacher_registry():
    """Imported on use: the registry lives in the teachers package, which imports torch."""
    from fsmde_core.models.teachers import registry

    return registry


def _teacher_layer(current: dict, layer: dict, where: str) -> dict:
    """Apply one layer (a YAML file's or a ``teacher=`` override's) of the teacher section.

    A layer that names a different kind starts from that kind's defaults; its
    own ``options`` are laid over them. Same kind: options merge as before.
    """
    out = {k: copy.deepcopy(v) for k, v in current.items()}
    options = layer.get("options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: teacher.options must be a mapping, got {options!r}")
    kind = layer.get("kind", current.get("kind"))
    if kind != current.get("kind"):
        try:
            out["options"] = _teacher_registry().default_options(kind)
        except ValueError as exc:
            raise ConfigError(f"{where}: teacher.kind: {exc}") from exc
    out.update({k: copy.deepcopy(v) for k, v in layer.items() if k != "options"})
    out["options"] = {**(out.get("options") or {}), **copy.deepcopy(options)}
    return out


def _merge(base: dict, update: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, val in update.items():
        if key == "teacher" and isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = _teacher_layer(out[key], val, where)
            continue
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


def _is_teacher_options_override(override: str) -> bool:
    return override.split("=", 1)[0].strip().startswith("teacher.options")


def apply_overrides(cfg: dict, overrides: list[str]) -> None:
    """Apply command-line overrides in place, teacher-kind aware.

    Everything except ``teacher.options*`` goes first, in order; a changed
    ``teacher.kind`` then resets the options to the new kind's defaults; the
    ``teacher.options*`` overrides of the same command line are applied last, so
    they are kept whatever their position relative to ``teacher.kind=``.
    """
    before = copy.deepcopy(cfg.get("teacher") or {})
    for ov in overrides:
        if not _is_teacher_options_override(ov):
            apply_override(cfg, ov)
    teacher = cfg.get("teacher")
    if isinstance(teacher, dict) and teacher.get("kind") != before.get("kind"):
        given = teacher.get("options") if teacher.get("options") != before.get("options") else None
        try:
            teacher["options"] = {**_teacher_registry().default_options(teacher.get("kind")), **(given or {})}
        except ValueError as exc:
            raise ConfigError(f"override teacher.kind: {exc}") from exc
    for ov in overrides:
        if _is_teacher_options_override(ov):
            path, _, _ = ov.partition("=")
            if path.strip() == "teacher.options":  # a whole mapping: lay it over the kind's defaults
                scratch: dict = {"teacher": {}}
                apply_override(scratch, ov)
                value = scratch["teacher"]["options"]
                if not isinstance(value, dict):
                    raise ConfigError(f"override {ov!r}: teacher.options must be a mapping")
                cfg["teacher"].setdefault("options", {}).update(value)
            else:
                apply_override(cfg, ov)


def read_config_file(path: str | Path) -> dict:
    """A training YAML as a mapping, sections checked and relative paths made absolute."""
    p = Path(path)
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
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> dict:
    """Defaults <- YAML file <- overrides; validated."""
    cfg = copy.deepcopy(DEFAULTS)
    source = "<defaults>"
    if path is not None:
        source = str(path)
        cfg = _merge(cfg, read_config_file(path), source)
    apply_overrides(cfg, list(overrides or []))
    validate(cfg, source)
    return cfg


def data_config_from_section(data: dict, source: str = "<config>"):
    """The reader's :class:`~fsmde_core.data.config.DataConfig` from a config's ``data`` section.

    Training-only keys (bags, cache dir) are left out and so are unset (None)
    values, which keep the DataConfig defaults; an unknown key or a bad value
    is a ConfigError naming the key, so ``data.sync_tolerance=25`` cannot pass
    silently.
    """
    from dataclasses import fields

    from fsmde_core.data.config import DataConfig

    known = {f.name for f in fields(DataConfig)}
    unknown = sorted(set(data) - known - set(TRAIN_ONLY_DATA_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown data keys {unknown} (known: {', '.join(sorted(known))})")
    keep = {k: v for k, v in data.items() if k in known and v is not None}
    try:
        return DataConfig.from_dict(keep)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: data: {exc}") from exc


def load_data_config(base: dict | None, config_path: str | Path | None, overrides: list[str],
                     source: str = "<data>", explicit: dict | None = None):
    """DataConfig from ``base`` (a run's data section) <- a YAML's data section <- ``explicit``
    (command-line flags) <- ``data.*`` overrides.

    For ``fsmde eval`` and ``fsmde inspect``: only the data section matters
    there, so any other section in an override is refused with a clear line
    (and the teacher registry, i.e. torch, is never imported).
    """
    data = copy.deepcopy(base or {})
    if config_path is not None:
        data.update(read_config_file(config_path).get("data") or {})
        source = str(config_path)
    data.update(explicit or {})
    scratch: dict = {"data": data}
    for ov in overrides:
        if not ov.split("=", 1)[0].strip().startswith("data."):
            raise ConfigError(f"override {ov!r}: only data.* settings apply here (e.g. data.sync_tolerance_ms=25)")
        apply_override(scratch, ov)
    return data_config_from_section(scratch["data"], source)


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
    from dataclasses import fields

    from fsmde_core.data.config import DataConfig

    unknown = sorted(set(d) - {f.name for f in fields(DataConfig)} - set(TRAIN_ONLY_DATA_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown data keys {unknown} "
                          f"(known: {', '.join(sorted({f.name for f in fields(DataConfig)}))})")
    t = cfg["teacher"]
    options = t.get("options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"{source}: teacher.options must be a mapping, got {options!r}")
    try:
        _teacher_registry().check_teacher_options(t.get("kind"), options)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
