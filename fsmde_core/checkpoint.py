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

Every safetensors file written here carries the sha256 of its tensors in its
metadata (:data:`HASH_KEY`), checked on load: a flipped byte in tensor data
otherwise loads silently (a student off by metres). A corrupt latest training
checkpoint falls back to the previous one (two are kept) and says so. Writes
are atomic (temporary file + rename), so a full disk loses nothing: the error
names the path and the previous files stay intact.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from fsmde_core.atomic import atomic_output

STUDENT_WEIGHTS = "student.safetensors"
STUDENT_META = "student.json"
CHECKPOINT_DIR = "checkpoints"
#: safetensors metadata key holding :func:`tensors_sha256` of the file's tensors.
HASH_KEY = "sha256"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or does not match the model."""


def _replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then rename over ``path`` (:func:`fsmde_core.atomic.atomic_output`); a failure
    (disk full) is a CheckpointError naming ``path``, and the previous file stays as it was."""
    try:
        with atomic_output(path) as tmp:
            try:
                write(tmp)
            except SafetensorError as exc:  # safetensors reports a failed write as its own type
                raise OSError(str(exc)) from exc
    except OSError as exc:  # an AtomicWriteError: names ``path`` and says the old file is unchanged
        raise CheckpointError(str(exc)) from exc


def atomic_write_json(path: Path, obj: Any) -> None:
    """JSON written whole or not at all."""
    data = json.dumps(obj, indent=2, sort_keys=True).encode()
    _replace_atomically(Path(path), lambda tmp: tmp.write_bytes(data))


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Safetensors written whole or not at all, with the tensors' sha256 in the metadata."""
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {**(metadata or {}), HASH_KEY: tensors_sha256(cpu)}
    _replace_atomically(Path(path), lambda tmp: save_file(cpu, str(tmp), metadata=meta))


def read_json(path: Path, what: str = "file") -> dict:
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt {what} (not valid JSON: {exc})") from exc


def _stored_hash(path: Path) -> str | None:
    with safe_open(str(path), framework="pt") as fh:
        return (fh.metadata() or {}).get(HASH_KEY)


def read_tensors(path: Path, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Load a safetensors file and check its content hash (files written before hashes have none)."""
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        tensors = load_file(str(path))
        stored = _stored_hash(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated {what} ({exc})") from exc
    if stored is not None and tensors_sha256(tensors) != stored:
        raise CheckpointError(f"{path}: corrupt {what}: its tensor data does not match the sha256 recorded "
                              "when it was written (flipped bytes on disk or in transfer)")
    return tensors


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


def _checkpoint_candidates(ckpt_dir: Path) -> list[Path]:
    """Checkpoint bases to try, newest first: the one ``latest.json`` names, then the others by step.

    A corrupt ``latest.json`` only loses the pointer: the step files are still listed.
    """
    bases = sorted({p.with_suffix("") for p in ckpt_dir.glob("step_*.safetensors")}, reverse=True)
    try:
        named = ckpt_dir / str(read_json(ckpt_dir / "latest.json", "checkpoint pointer").get("file", ""))
    except (CheckpointError, AttributeError):
        return bases
    return [named, *(b for b in bases if b != named)]


def _read_checkpoint(base: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of one checkpoint, both checked; CheckpointError naming the file otherwise."""
    meta = read_json(base.with_suffix(".json"), "checkpoint metadata")
    if not all(k in meta for k in ("step", "epoch", "batch_in_epoch", "optimizer")):
        raise CheckpointError(f"{base.with_suffix('.json')}: corrupt checkpoint metadata (keys missing)")
    return meta, read_tensors(base.with_suffix(".safetensors"))


def _newest_intact_checkpoint(ckpt_dir: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The newest checkpoint that reads back intact, saying on stderr which corrupt ones were passed over."""
    failures: list[str] = []
    for base in _checkpoint_candidates(ckpt_dir):
        try:
            meta, tensors = _read_checkpoint(base)
        except CheckpointError as exc:
            failures.append(str(exc))
            continue
        for failure in failures:
            print(f"warning: {failure}; resuming from the previous checkpoint {base.name} instead", file=sys.stderr)
        return meta, tensors
    raise CheckpointError(f"{ckpt_dir}: no intact checkpoint to resume from ({'; '.join(failures)}); "
                          "remove the folder to start over")


def load_training_state(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> dict | None:
    """Restore the newest intact checkpoint into ``model``/``optimizer``; None if there is none."""
    ckpt_dir = Path(run_dir) / CHECKPOINT_DIR
    if not (ckpt_dir / "latest.json").is_file() and not any(ckpt_dir.glob("step_*.safetensors")):
        return None
    meta, tensors = _newest_intact_checkpoint(ckpt_dir)
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{ckpt_dir}: step {meta['step']} does not match the model: {exc}") from exc
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
