"""Short real training runs for the issue-11 switches: train, stop after a checkpoint, resume, compare.

In-process (:class:`fsmde_core.train.Trainer`) so a test can look at what the
trainer hands the student and the losses; the stop is an exception raised right
after the step-2 checkpoint is written, which leaves the run directory exactly
as a kill at that instant would (the checkpoint is complete, the deliverable
student is not written).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from safetensors.torch import load_file

from fsmde_core.config import load_config
from fsmde_core.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "config" / "train_tiny.yaml"
# 64x64 input, 4 steps, a checkpoint every 2: seconds on 2 CPU cores.
FAST = ["data.width=64", "data.height=64", "teacher.cache_height=32", "teacher.cache_width=32",
        "optim.max_steps=4", "optim.checkpoint_every=2", "optim.warmup_steps=2", "optim.kd_warmup_steps=0",
        "log.tensorboard=false"]
STOP_AT = 2


class _StoppedError(Exception):
    """Raised by :class:`StopAfterCheckpoint` in place of a kill."""


class StopAfterCheckpoint(Trainer):
    """A Trainer that dies right after writing the step-``STOP_AT`` checkpoint."""

    def maybe_checkpoint(self) -> None:
        super().maybe_checkpoint()
        if self.pos.step == STOP_AT:
            raise _StoppedError


def tiny_config(bag: Path, cache: Path, *overrides: str) -> dict:
    cfg = load_config(TINY, [*FAST, f"data.cache_dir={cache}", *overrides])
    cfg["data"]["bags"] = [str(bag)]
    return cfg


def train_stop_resume(cfg: dict, tmp: Path) -> tuple[Path, Path, Trainer]:
    """An uninterrupted run and a stopped-then-resumed one of ``cfg``; returns (ref dir, resumed dir, resumer)."""
    ref = tmp / "ref"
    Trainer(cfg, ref, progress=False, device_name="cpu").run()
    run = tmp / "stopped"
    with contextlib.suppress(_StoppedError):
        StopAfterCheckpoint(cfg, run, progress=False, device_name="cpu").run()
    assert not (run / "student.safetensors").exists()
    resumer = Trainer(cfg, run, progress=False, device_name="cpu")
    resumer.run()
    return ref, run, resumer


def max_weight_difference(a: Path, b: Path) -> float:
    wa, wb = load_file(a / "student.safetensors"), load_file(b / "student.safetensors")
    assert wa.keys() == wb.keys()
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


def weights_changed(run: Path, cfg: dict) -> bool:
    """Whether training moved the student away from its initialisation (same seed, same architecture)."""
    from fsmde_core.config import TrainConfig
    from fsmde_core.models.student import SurroundDepthStudent

    torch.manual_seed(cfg["seed"])
    init = SurroundDepthStudent(TrainConfig.from_dict(cfg).student).state_dict()
    trained = load_file(run / "student.safetensors")
    return any(not torch.equal(init[k].float(), trained[k].float()) for k in trained if k in init)
