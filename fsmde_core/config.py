"""Training configuration: typed sections, YAML files and ``key.path=value`` overrides.

Every section is a dataclass (:class:`OptimConfig`, :class:`LogConfig`, ...);
their defaults ARE the config defaults (:func:`default_config` derives the
plain nested dict from them, nothing is repeated). A config travels as that
plain dict (YAML in, ``config.json`` out, read back by ``fsmde eval`` and by
resume) and is checked by building :class:`TrainConfig` from it.

Overrides use dotted paths (``loss.use_vrkd=false optim.lr=3e-4``); values are
YAML scalars, so ``true``, ``1e-4`` and ``[320, 192]`` mean what they look like.
An unknown section or key, in a file or on the command line, is refused with
one line naming where it came from, the dotted key and the valid keys (nearest
first), so a typo fails at start instead of silently training the wrong thing.

Teacher options belong to a teacher kind: a layer (a YAML file's teacher
section, or the command line's ``teacher.*`` overrides together) that names
another kind starts from that kind's defaults
(:mod:`fsmde_core.models.teachers.registry`) and lays its own options over them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from fsmde_core.augment import AugmentConfig
    from fsmde_core.data.config import DataConfig
    from fsmde_core.distill.objective import DistillLossConfig
    from fsmde_core.models.resnet import PretrainedConfig
    from fsmde_core.models.student import StudentConfig
    from fsmde_core.models.teachers.semantic import SemanticConfig

SECTIONS = ("data", "student", "teacher", "loss", "optim", "log", "seed", "eval", "augment", "semantic")

#: The command line, as a source in error messages.
COMMAND_LINE = "command line"

#: Training defaults of reader settings whose reader default (native size, 50 ms) does not suit training.
TRAIN_DATA_DEFAULTS: dict[str, Any] = {"width": 320, "height": 192, "lidar_tolerance_ms": 60.0}

#: StudentConfig fields that come from the data section (the sample size), not the student section.
STUDENT_SIZE_FIELDS = ("input_height", "input_width")


class ConfigError(ValueError):
    """The training config is malformed; the message names the file (or command line) and key."""


# ------------------------------------------------------------ the sections
def _positive_int(section: str, key: str, value: Any, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{section}.{key} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and schedule (AdamW, linear warm-up, cosine decay; see ``fsmde_core.train.lr_at``)."""

    epochs: int = 10
    batch_size: int = 1
    lr: float | None = None  # None: the student preset's rate (models/student.py PRESET_LEARNING_RATES)
    weight_decay: float = 1e-2
    warmup_steps: int = 50
    grad_clip: float = 1.0
    amp: bool = True
    checkpoint_every: int = 100
    max_steps: int | None = None
    kd_warmup_steps: int = 0

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "checkpoint_every"):
            _positive_int("optim", key, getattr(self, key))
        _positive_int("optim", "max_steps", self.max_steps, allow_none=True)
        if self.lr is not None and (isinstance(self.lr, bool) or not isinstance(self.lr, (int, float))
                                    or not self.lr > 0):
            raise ValueError(f"optim.lr must be > 0 (or null: the student preset's rate), got {self.lr!r}")


@dataclass(frozen=True)
class LogConfig:
    """What is logged and how often (TensorBoard scalars/images, held-out validation)."""

    tensorboard: bool = True
    image_every: int = 100
    scalar_every: int = 10
    val_every: int = 100  # steps between validations on data.val_bags (and once at the end)

    def __post_init__(self) -> None:
        for key in ("image_every", "scalar_every", "val_every"):
            _positive_int("log", key, getattr(self, key))


@dataclass(frozen=True)
class EvalConfig:
    """How validation during training scores the student (as ``fsmde eval --gt GT --cap CAP``)."""

    cap: float | None = None  # None = the student's max_depth
    gt: str = "lidar"  # lidar | synthetic (dense GT topics of synthetic bags)
    max_frames: int | None = None  # per validation; None = every set of the held-out bags

    def __post_init__(self) -> None:
        if self.gt not in ("lidar", "synthetic"):
            raise ValueError(f"eval.gt must be lidar or synthetic, got {self.gt!r}")
        if self.cap is not None and not (isinstance(self.cap, (int, float)) and self.cap > 0):
            raise ValueError(f"eval.cap must be > 0 metres or null, got {self.cap!r}")
        _positive_int("eval", "max_frames", self.max_frames, allow_none=True)


def _synthetic_defaults() -> dict[str, Any]:
    return _teacher_registry().default_options("synthetic")


@dataclass(frozen=True)
class TeacherConfig:
    """Which teacher, its options (checked against the registry), and the size its outputs are cached at."""

    kind: str | None = "synthetic"
    options: dict[str, Any] = field(default_factory=_synthetic_defaults)
    cache_height: int | None = None  # None = half the training height
    cache_width: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.options, dict):
            raise ValueError(f"teacher.options must be a mapping, got {self.options!r}")
        _teacher_registry().check_teacher_options(self.kind, self.options)
        _positive_int("teacher", "cache_height", self.cache_height, allow_none=True)
        _positive_int("teacher", "cache_width", self.cache_width, allow_none=True)

    @property
    def enabled(self) -> bool:
        return self.kind not in _teacher_registry().NO_TEACHER


@dataclass(frozen=True)
class TrainDataConfig:
    """The ``data`` keys only training has (the rest is the reader's DataConfig)."""

    bags: list[str] = field(default_factory=list)
    val_bags: list[str] = field(default_factory=list)  # held-out bags scored every log.val_every steps
    cache_dir: str | None = None  # None = $FSMDE_CACHE or .fsmde_cache beside the run directory

    def __post_init__(self) -> None:
        for key in ("bags", "val_bags"):
            value = getattr(self, key)
            if not isinstance(value, list) or not all(isinstance(b, str) for b in value):
                raise ValueError(f"data.{key} must be a list of bag paths, got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """The whole training config, typed; built from (and checked against) the plain dict form."""

    seed: int
    data: DataConfig
    train_data: TrainDataConfig
    student: StudentConfig
    pretrained: PretrainedConfig
    teacher: TeacherConfig
    loss: DistillLossConfig
    optim: OptimConfig
    log: LogConfig
    eval: EvalConfig
    augment: AugmentConfig
    semantic: SemanticConfig

    @classmethod
    def from_dict(cls, cfg: dict[str, Any], source: str = "<config>") -> TrainConfig:
        """Typed sections of a plain config; a bad value is a ConfigError naming ``source`` and the key."""
        from fsmde_core.augment import AugmentConfig
        from fsmde_core.distill.objective import DistillLossConfig
        from fsmde_core.models.resnet import PretrainedConfig
        from fsmde_core.models.student import PRESET_LEARNING_RATES, StudentConfig
        from fsmde_core.models.teachers.semantic import SemanticConfig

        check_keys(cfg, source)
        d = cfg["data"]
        for key in ("width", "height"):
            if isinstance(d.get(key), bool) or not isinstance(d.get(key), int) or d[key] <= 0 or d[key] % 32:
                raise ConfigError(f"{source}: data.{key} must be a positive multiple of 32, got {d.get(key)!r}")
        s = cfg["student"]
        pre_keys = _field_names(PretrainedConfig)
        arch = {k: v for k, v in s.items() if k not in pre_keys}
        student = _section(source, "student", StudentConfig,
                           {**arch, "input_height": d["height"], "input_width": d["width"]})
        optim = _section(source, "optim", OptimConfig, cfg["optim"])
        if optim.lr is None:
            optim = dataclasses.replace(optim, lr=PRESET_LEARNING_RATES[student.preset])
        return cls(
            seed=_seed(cfg["seed"], source),
            data=data_config_from_section(d, source),
            train_data=_section(source, "data", TrainDataConfig,
                                {k: d[k] for k in _field_names(TrainDataConfig) if k in d}),
            student=student,
            pretrained=_section(source, "student", PretrainedConfig, {k: s[k] for k in pre_keys if k in s}),
            teacher=_section(source, "teacher", TeacherConfig, cfg["teacher"]),
            loss=_section(source, "loss", DistillLossConfig, cfg["loss"]),
            optim=optim,
            log=_section(source, "log", LogConfig, cfg["log"]),
            eval=_section(source, "eval", EvalConfig, cfg["eval"]),
            # configs written before these sections existed (a run's config.json) have neither: the defaults
            augment=_section(source, "augment", AugmentConfig, cfg.get("augment") or {}),
            semantic=_section(source, "semantic", SemanticConfig, cfg.get("semantic") or {}),
        )


def _seed(value: Any, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{source}: seed must be an integer >= 0, got {value!r}")
    return value


def _section(source: str, name: str, build: Any, values: Any) -> Any:
    """``build(**values)`` with its TypeError/ValueError turned into one ConfigError line."""
    try:
        return build(**values)
    except (TypeError, ValueError) as exc:
        text = str(exc)
        raise ConfigError(f"{source}: {text if text.startswith(name) else f'{name}: {text}'}") from exc


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _plain(obj: Any) -> Any:
    """The JSON form (tuples -> lists, Paths -> str), so a default compares equal to its config.json copy."""
    return json.loads(json.dumps(obj, default=str))


# ------------------------------------------------------ defaults and keys
def _teacher_registry():
    """Imported on use: the registry lives in the teachers package, which imports torch."""
    from fsmde_core.models.teachers import registry

    return registry


def _data_keys() -> tuple[str, ...]:
    from fsmde_core.data.config import DataConfig

    return _field_names(DataConfig) + _field_names(TrainDataConfig)


def section_keys(section: str) -> tuple[str, ...]:
    """The valid keys of one section (imports the section's class: torch for student and loss)."""
    if section == "data":
        return _data_keys()
    if section == "student":
        from fsmde_core.models.resnet import PretrainedConfig
        from fsmde_core.models.student import StudentConfig

        arch = tuple(k for k in _field_names(StudentConfig) if k not in STUDENT_SIZE_FIELDS)
        return arch + _field_names(PretrainedConfig)
    if section == "loss":
        from fsmde_core.distill.objective import DistillLossConfig

        return _field_names(DistillLossConfig)
    if section == "augment":
        from fsmde_core.augment import AugmentConfig

        return _field_names(AugmentConfig)
    if section == "semantic":
        from fsmde_core.models.teachers.semantic import SemanticConfig

        return _field_names(SemanticConfig)
    classes = {"teacher": TeacherConfig, "optim": OptimConfig, "log": LogConfig, "eval": EvalConfig}
    return _field_names(classes[section])


def default_config() -> dict[str, Any]:
    """The defaults as a plain nested dict, derived from the section dataclasses."""
    from fsmde_core.augment import AugmentConfig
    from fsmde_core.data.config import DataConfig
    from fsmde_core.distill.objective import DistillLossConfig
    from fsmde_core.models.resnet import PretrainedConfig
    from fsmde_core.models.student import StudentConfig
    from fsmde_core.models.teachers.semantic import SemanticConfig

    # the preset and None (= the preset's value) for its fields, so a YAML's preset is not outvoted by defaults
    student = {k: v for k, v in StudentConfig.section_defaults().items() if k not in STUDENT_SIZE_FIELDS}
    return _plain({
        "seed": 0,
        "data": {**asdict(DataConfig(**TRAIN_DATA_DEFAULTS)), **asdict(TrainDataConfig())},
        "student": {**student, **asdict(PretrainedConfig())},
        "teacher": asdict(TeacherConfig()),
        "loss": asdict(DistillLossConfig()),
        "optim": asdict(OptimConfig()),
        "log": asdict(LogConfig()),
        "eval": asdict(EvalConfig()),
        "augment": asdict(AugmentConfig()),
        "semantic": asdict(SemanticConfig()),
    })


def unknown_key_error(where: str, dotted: str, valid: tuple[str, ...], what: str = "key") -> ConfigError:
    """One line: where, the dotted key, and the valid keys with the nearest first."""
    from fsmde_core.data.config import nearest_first

    parts = dotted.split(".")
    scope = f"{'.'.join(parts[:-1])} " if len(parts) > 1 else ""
    return ConfigError(f"{where}: unknown {what} {dotted!r}; valid {scope}{what}s: "
                       f"{', '.join(nearest_first(parts[-1], valid))}")


def _check_section_name(section: str, where: str, sections: tuple[str, ...] = SECTIONS) -> None:
    if section not in sections:
        raise unknown_key_error(where, section, sections, "section")


def check_keys(cfg: dict[str, Any], where: str) -> None:
    """Refuse unknown sections and keys of a (partial) config; teacher options are the registry's job."""
    for section, body in cfg.items():
        _check_section_name(section, where)
        if section == "seed" or body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: {section} must be a mapping of keys, got {body!r}")
        valid = section_keys(section)
        for key in body:
            if key not in valid:
                raise unknown_key_error(where, f"{section}.{key}", valid)


# ----------------------------------------------------------------- layers
def _teacher_layer(current: dict, layer: dict, where: str) -> dict:
    """Lay one teacher layer (a file's section, or the command line's teacher.* keys) over ``current``.

    A layer naming a different kind starts from that kind's defaults; its own
    ``options`` are laid over them. Same kind: options merge.
    """
    options = layer.get("options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: teacher.options must be a mapping, got {options!r}")
    out = copy.deepcopy(current)
    kind = layer.get("kind", current.get("kind"))
    if kind != current.get("kind"):
        try:
            out["options"] = _teacher_registry().default_options(kind)
        except ValueError as exc:
            raise ConfigError(f"{where}: teacher.kind: {exc}") from exc
    out.update({k: copy.deepcopy(v) for k, v in layer.items() if k != "options"})
    out["options"] = {**(out.get("options") or {}), **copy.deepcopy(options)}
    return out


def merge_layer(cfg: dict, layer: dict, where: str) -> dict:
    """``cfg`` with one layer (a YAML file or the command line, as a partial config) laid over it."""
    check_keys(layer, where)
    out = copy.deepcopy(cfg)
    for section, body in layer.items():
        if body is None and section != "seed":
            continue  # an empty section in a YAML file
        if section == "teacher":
            out["teacher"] = _teacher_layer(out["teacher"], body, where)
        elif section == "seed":
            out["seed"] = body
        else:
            out[section] = {**out[section], **copy.deepcopy(body)}
    return out


def _parse_value(override: str, raw: str) -> Any:
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{COMMAND_LINE}: {override!r}: value is not valid YAML ({exc})") from exc
    if isinstance(value, str):
        # YAML 1.1 reads "1e-3" (no dot) as a string; users mean a number.
        with contextlib.suppress(ValueError):
            value = float(value)
    return value


def overrides_layer(overrides: list[str], sections: tuple[str, ...] = SECTIONS) -> dict[str, Any]:
    """``["optim.lr=1e-3", "teacher.options.quality=0.9"]`` as one partial config (later wins).

    ``sections``: the valid top-level names (another command's config, e.g. ``fsmde teacher fit``'s).
    """
    layer: dict[str, Any] = {}
    for ov in overrides:
        path, sep, raw = ov.partition("=")
        keys = path.strip().split(".")
        if not sep or not all(keys):
            raise ConfigError(f"{COMMAND_LINE}: {ov!r} is not of the form key.path=value")
        _check_section_name(keys[0], COMMAND_LINE, sections)
        deepest = 3 if keys[:2] == ["teacher", "options"] else 2
        if len(keys) > deepest:
            raise ConfigError(f"{COMMAND_LINE}: {ov!r}: {'.'.join(keys[:deepest])} takes a value, not sub-keys")
        value = _parse_value(ov, raw)
        node = layer
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        if isinstance(value, dict) and isinstance(node.get(keys[-1]), dict):
            node[keys[-1]].update(value)
        else:
            node[keys[-1]] = value
    return layer


def read_config_file(path: str | Path, sections: tuple[str, ...] = SECTIONS) -> dict:
    """A training YAML as a partial config: ``sections`` of it, keys checked, relative paths made absolute.

    ``fsmde eval``/``inspect`` ask for the data section only: checking the
    student and loss keys would import torch for nothing.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"training config not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    for name in data:
        _check_section_name(name, str(p))
    data = {k: v for k, v in data.items() if k in sections}
    check_keys(data, str(p))
    # Relative bag / rig paths in a config file are relative to the file.
    data_sec = data.get("data") or {}
    for key in ("rig_yaml", "cache_dir"):
        if data_sec.get(key) and not Path(data_sec[key]).is_absolute():
            data_sec[key] = str((p.parent / data_sec[key]).resolve())
    for key in ("bags", "val_bags"):
        if data_sec.get(key):
            data_sec[key] = [b if Path(b).is_absolute() else str((p.parent / b).resolve()) for b in data_sec[key]]
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> dict:
    """Defaults <- YAML file <- command-line overrides, as a plain dict checked by building TrainConfig."""
    cfg = default_config()
    sources = []
    if path is not None:
        sources.append(str(path))
        cfg = merge_layer(cfg, read_config_file(path), str(path))
    if overrides:
        sources.append(COMMAND_LINE)
        cfg = merge_layer(cfg, overrides_layer(list(overrides)), COMMAND_LINE)
    TrainConfig.from_dict(cfg, " + ".join(sources) or "defaults")
    return _plain(cfg)


# ----------------------------------------------------------- data section
def data_config_from_section(data: dict, source: str = "<config>") -> DataConfig:
    """The reader's :class:`~fsmde_core.data.config.DataConfig` from a config's ``data`` section.

    Training-only keys (bags, cache dir) are left out and so are unset (None)
    values, which keep the DataConfig defaults; an unknown key or a bad value
    is a ConfigError naming the key, so ``data.sync_tolerance=25`` cannot pass
    silently.
    """
    from fsmde_core.data.config import DataConfig

    valid = _data_keys()
    for key in data:
        if key not in valid:
            raise unknown_key_error(source, f"data.{key}", valid)
    known = _field_names(DataConfig)
    keep = {k: v for k, v in data.items() if k in known and v is not None}
    try:
        return DataConfig.from_dict(keep)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: data: {exc}") from exc


def load_data_config(base: dict | None, config_path: str | Path | None, overrides: list[str],
                     source: str = "<data>", explicit: dict | None = None) -> DataConfig:
    """DataConfig from ``base`` (a run's data section) <- a YAML's data section <- ``explicit``
    (command-line flags) <- ``data.*`` overrides.

    For ``fsmde eval`` and ``fsmde inspect``: only the data section matters
    there, so any other section in an override is refused with a clear line
    (and the teacher registry, i.e. torch, is never imported).
    """
    data = copy.deepcopy(base or {})
    if config_path is not None:
        data.update(read_config_file(config_path, ("data",)).get("data") or {})
        source = str(config_path)
    data.update(explicit or {})
    for ov in overrides:
        if not ov.split("=", 1)[0].strip().startswith("data."):
            raise ConfigError(f"override {ov!r}: only data.* settings apply here (e.g. data.sync_tolerance_ms=25)")
    data.update(overrides_layer(list(overrides)).get("data", {}))
    return data_config_from_section(data, source)
