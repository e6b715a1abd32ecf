"""The premise of bench/bench_distill.py's paired comparison: one seed, one initialisation and one data order.

The benchmark subtracts a_supervised from each variant seed by seed; that only
cancels the seed scatter if the variants of one seed start from the same
weights and see the samples in the same order, whatever their loss terms and
whether the teacher cache was built in that run (cold) or an earlier one (warm).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
import torch
from bagfactory import BagSpec, write_bag

from fsmde_core.config import load_config
from fsmde_core.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # bench scripts are not a package
from bench_distill import VARIANTS  # noqa: E402

SUPERVISED = VARIANTS["a_supervised"]


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bags") / "pairing"
    write_bag(path, BagSpec(width=64, height=48, n_frames=4, with_gt=True, seed=3))
    return path


def _start(bag: Path, out: Path, overrides: list[str]) -> tuple[str, list[int], float]:
    """Set a trainer up (no step): hash of its initial weights, its first epoch's order, the global RNG's next draw."""
    cfg = load_config(ROOT / "config" / "train_tiny.yaml",
                      ["data.width=64", "data.height=32", "optim.max_steps=2", "log.tensorboard=false", *overrides])
    cfg["data"]["bags"] = [str(bag)]
    trainer = Trainer(cfg, out, False, "cpu")
    trainer.setup()
    weights = hashlib.sha256(b"".join(t.detach().numpy().tobytes() for t in trainer.model.state_dict().values()))
    trainer.sampler.set_epoch(0)
    return weights.hexdigest(), list(trainer.sampler), torch.rand(1).item()


def test_same_seed_same_start_in_every_variant(bag: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FSMDE_CACHE", str(tmp_path / "cache"))
    supervised = _start(bag, tmp_path / "a", ["seed=5", *SUPERVISED])
    distilled_cold = _start(bag, tmp_path / "c_cold", ["seed=5"])  # builds the teacher cache
    distilled_warm = _start(bag, tmp_path / "c_warm", ["seed=5"])  # reads it
    other_seed = _start(bag, tmp_path / "a_other", ["seed=6", *SUPERVISED])
    assert supervised == distilled_cold == distilled_warm
    assert other_seed[0] != supervised[0]  # the seed does reach the initialisation
