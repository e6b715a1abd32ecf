"""Checkpoints as safetensors + JSON: never pickle, always atomic.

A run directory looks like::

    RUN_DIR/
      config.json                 the full training config (reproducible)
      student.safetensors         the deliverable: student weights
      student.json                StudentConfig + metadata (cameras, rig, size)
      checkpoints/
        step_00000200.safetensors model + optimizer + scaler tensors + RNG
        step_00000200.json        step, epoch, batch position, param groups
        latest.json               {"step": 200} — written last, so a kill
                                  between files never points at a half state

Why not ``torch.save``: checkpoints travel between people, and unpickling a
file runs whatever code it contains. Safetensors holds only tensors; the rest
is JSON. Every loader error names the file and what is wrong with it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

STUDENT_WEIGHTS = "student.safetensors"
STUDENT_META = "student.json"
CHECKPOINT_DIR = "checkpoints"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or does not match the model."""


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def atomic_write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)


def read_json(path: Path, what: str = "file") -> dict:
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt {what} (not valid JSON: {exc})") from exc


def read_tensors(path: Path, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated {what} ({exc})") from exc


# --------------------------------------------------------------- optimizer
def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        for name, val in pstate.items():
            if torch.is_tensor(val):
                tensors[f"optim.{pid}.{name}"] = val
            else:
                scalars.setdefault(str(pid), {})[name] = val
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = val
    for pid, vals in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(vals)
    return {"state": state, "param_groups": meta["param_groups"]}


# ------------------------------------------------------------ training state
def save_training_state(
    run_dir: Path,
    step: int,
    epoch: int,
    batch_in_epoch: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
    extra: dict | None = None,
    keep: int = 2,
) -> Path:
    """Write a resumable training state; returns the safetensors path.

    ``latest.json`` is replaced last, so a run killed at any instant resumes
    from the previous complete checkpoint. Older checkpoints beyond ``keep``
    are deleted.
    """
    ckpt_dir = Path(run_dir) / CHECKPOINT_DIR
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    base = ckpt_dir / f"step_{step:08d}"
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    scaler_state = scaler.state_dict() if scaler is not None and scaler.is_enabled() else None
    atomic_save_tensors(base.with_suffix(".safetensors"), tensors)
    atomic_write_json(base.with_suffix(".json"), {
        "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
        "optimizer": opt_meta, "scaler": scaler_state, "extra": extra or {},
    })
    atomic_write_json(ckpt_dir / "latest.json", {"step": step, "file": base.name})
    old = sorted(ckpt_dir.glob("step_*.safetensors"))[:-keep] if keep > 0 else []
    for f in old:
        f.unlink(missing_ok=True)
        f.with_suffix(".json").unlink(missing_ok=True)
    return base.with_suffix(".safetensors")


def load_training_state(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> dict | None:
    """Restore the latest checkpoint into ``model``/``optimizer``; None if there is none."""
    ckpt_dir = Path(run_dir) / CHECKPOINT_DIR
    latest = ckpt_dir / "latest.json"
    if not latest.is_file():
        return None
    pointer = read_json(latest, "checkpoint pointer")
    base = ckpt_dir / str(pointer.get("file", ""))
    meta = read_json(base.with_suffix(".json"), "checkpoint metadata")
    tensors = read_tensors(base.with_suffix(".safetensors"))
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{base.with_suffix('.safetensors')}: does not match the model: {exc}") from exc
    if optimizer is not None:
        optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    return meta


# ------------------------------------------------------------- the student
def save_student(run_dir: Path, model: torch.nn.Module, meta: dict) -> Path:
    """Write the deliverable student weights + JSON (StudentConfig and metadata)."""
    run_dir = Path(run_dir)
    path = run_dir / STUDENT_WEIGHTS
    atomic_save_tensors(path, dict(model.state_dict()), metadata={"format": "fsmde_student_v1"})
    atomic_write_json(run_dir / STUDENT_META, meta)
    return path


def resolve_student_files(path: str | Path) -> tuple[Path, Path]:
    """Accept a run directory, a ``student.safetensors`` or its JSON; return both paths."""
    p = Path(path)
    if p.is_dir():
        weights, meta = p / STUDENT_WEIGHTS, p / STUDENT_META
    elif p.suffix == ".safetensors":
        weights, meta = p, p.with_suffix(".json")
    elif p.suffix == ".json":
        weights, meta = p.with_suffix(".safetensors"), p
    else:
        raise CheckpointError(f"{p}: expected a run directory or a .safetensors checkpoint")
    if not weights.is_file():
        hint = " (training may not have finished: see its checkpoints/ folder)" if p.is_dir() else ""
        raise CheckpointError(f"student weights not found: {weights}{hint}")
    return weights, meta


def load_student(path: str | Path, map_location: str | torch.device = "cpu"):
    """Load a trained student: returns ``(model in eval mode, StudentConfig, meta dict)``."""
    from fsmde_core.models.student import StudentConfig, SurroundDepthStudent

    weights, meta_path = resolve_student_files(path)
    meta = read_json(meta_path, "student config")
    if "student" not in meta:
        raise CheckpointError(f"{meta_path}: missing 'student' section (StudentConfig)")
    try:
        cfg = StudentConfig.from_dict(meta["student"])
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{meta_path}: invalid student config: {exc}") from exc
    model = SurroundDepthStudent(cfg)
    state = read_tensors(weights, "student weights")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights}: weights do not match the config in {meta_path}: {exc}") from exc
    return model.to(map_location).eval(), cfg, meta
