"""Trainer: config handling, kill/resume equivalence, DDP over gloo, bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from bagfactory import BagSpec, write_bag
from safetensors.torch import load_file

from fsmde_core.config import ConfigError, load_config
from fsmde_core.train import config_differences, lr_at, pairs_for_batch

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "config" / "train_tiny.yaml"
# Small enough for 2 CPU cores: 64x64 input, 8 steps.
FAST = ["data.width=64", "data.height=64", "teacher.cache_height=32", "teacher.cache_width=32",
        "optim.max_steps=8", "optim.checkpoint_every=2", "optim.warmup_steps=2", "log.tensorboard=false"]


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bags") / "tiny"
    write_bag(path, BagSpec(width=64, height=48, n_frames=6, with_gt=True))
    return path


def _train_cmd(bag: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fsmde_core.cli", "train", "--config", str(TINY), "--bag", str(bag),
            "--out", str(out), "--no-progress", *FAST, *extra]


def _env(cache: Path) -> dict:
    env = dict(os.environ)
    env["FSMDE_CACHE"] = str(cache)
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_config_overrides_and_errors(tmp_path):
    cfg = load_config(TINY, ["loss.use_vrkd=false", "optim.lr=1e-3", "data.width=96"])
    assert cfg["loss"]["use_vrkd"] is False and cfg["optim"]["lr"] == 1e-3 and cfg["data"]["width"] == 96
    with pytest.raises(ConfigError, match="multiple of 32"):
        load_config(TINY, ["data.width=100"])
    with pytest.raises(ConfigError, match=r"^command line: unknown section 'optimizer'; valid sections: optim, "):
        load_config(TINY, ["optimizer.lr=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {width: 64}\nmodel: {}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown section 'model'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_teacher_kind_override_starts_from_that_kinds_defaults():
    """The YAML's synthetic options (quality, seed) must not follow a switch to another kind."""
    from fsmde_core.config import default_config
    from fsmde_core.models.teachers import default_options

    assert default_config()["teacher"]["options"] == default_options("synthetic")
    tiny = load_config(TINY)
    assert tiny["teacher"]["kind"] == "synthetic" and "quality" in tiny["teacher"]["options"]
    da = {"input_size": 518, "fp16": False, "path_or_id": "/models/da2"}
    # explicit options of the new kind are kept whatever their position on the command line
    for overrides in (["teacher.kind=depth_anything_v2", "teacher.options.path_or_id=/models/da2"],
                      ["teacher.options.path_or_id=/models/da2", "teacher.kind=depth_anything_v2"],
                      ["teacher.kind=depth_anything_v2", "teacher.options={path_or_id: /models/da2}"]):
        cfg = load_config(TINY, overrides)
        assert cfg["teacher"]["kind"] == "depth_anything_v2" and cfg["teacher"]["options"] == da, overrides
        assert cfg["teacher"]["cache_height"] == tiny["teacher"]["cache_height"]  # the rest of the section stays
    cfg = load_config(TINY, ["teacher.kind=none"])
    assert cfg["teacher"]["options"] == {}
    # the same in a YAML: a file naming another kind starts from that kind's defaults
    nus = load_config(ROOT / "config" / "train_nuscenes.yaml", ["teacher.kind=synthetic"])
    assert nus["teacher"]["options"] == default_options("synthetic")
    cfg = load_config(TINY, ["teacher.kind=synthetic", "teacher.options.quality=0.9"])
    assert cfg["teacher"]["options"] == {"quality": 0.9, "seed": 0}


def test_teacher_option_errors_name_option_kind_and_valid_options(tmp_path):
    with pytest.raises(ConfigError, match=r"teacher kind 'onnx' has no option 'quality'; valid options: model_path"):
        load_config(TINY, ["teacher.kind=onnx", "teacher.options.model_path=m.onnx", "teacher.options.quality=1"])
    with pytest.raises(ConfigError, match=r"'depth_anything_v2' needs option 'path_or_id'"):
        load_config(TINY, ["teacher.kind=depth_anything_v2"])
    with pytest.raises(ConfigError, match=r"unknown teacher kind 'midas'"):
        load_config(TINY, ["teacher.kind=midas"])
    yaml_file = tmp_path / "t.yaml"
    yaml_file.write_text("teacher: {kind: synthetic, options: {qualty: 0.5}}\n")
    with pytest.raises(ConfigError, match=r"t\.yaml: teacher kind 'synthetic' has no option 'qualty'"):
        load_config(yaml_file)
    with pytest.raises(ConfigError, match=r"^command line: unknown key 'data.sync_tolerance'; valid data keys: "
                                          r"sync_tolerance_ms, "):
        load_config(TINY, ["data.sync_tolerance=25"])
    # the user's command line: one line, exit 2, never a TypeError traceback
    res = subprocess.run([sys.executable, "-m", "fsmde_core.cli", "train", "--config", str(TINY), "--out",
                          str(tmp_path / "run"), "teacher.kind=depth_anything_v2", "teacher.options.path_or_id=x",
                          "teacher.options.quality=0.5"], capture_output=True, text=True, timeout=120,
                         env=_env(tmp_path / "cache"))
    assert res.returncode == 2
    assert "no option 'quality'" in res.stderr and "TypeError" not in res.stderr and "Traceback" not in res.stderr


def test_data_section_reaches_the_reader():
    """Every DataConfig key in the data section is honoured (require_lidar used to be dropped silently)."""
    from fsmde_core.train import data_config_from

    dc = data_config_from(load_config(TINY, ["data.require_lidar=false", "data.sync_tolerance_ms=25",
                                             "data.horizon_s=2"]))
    assert (dc.require_lidar, dc.sync_tolerance_ms, dc.horizon_s, dc.width) == (False, 25.0, 2.0, 320)


def test_lr_schedule_and_pairs():
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(10, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(100, 100, 1.0, 10) == pytest.approx(0.05)
    p = pairs_for_batch([(0, 1), (1, 2), (2, 0)], 2, 3)
    assert p.tolist() == [[0, 1], [1, 2], [2, 0], [3, 4], [4, 5], [5, 3]]
    assert config_differences({"log": {"a": 1}, "optim": {"lr": 1}}, {"log": {"a": 2}, "optim": {"lr": 2}}) == [
        "optim.lr: 1 -> 2"]


def test_killed_run_resumes_to_the_same_weights(bag, tmp_path):
    """SIGKILL mid-run, re-run the same command: identical result to an uninterrupted run."""
    env = _env(tmp_path / "cache")
    ref = tmp_path / "ref"
    subprocess.run(_train_cmd(bag, ref), check=True, env=env, capture_output=True, timeout=240)

    run = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(bag, run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while time.time() < deadline and not (run / "checkpoints" / "step_00000004.safetensors").exists():
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "student.safetensors").exists(), "run finished before it could be killed"
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())
    assert 2 <= latest["step"] < 8

    res = subprocess.run(_train_cmd(bag, run), env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr
    assert f"resuming {run} from step {latest['step']}" in res.stderr
    a, b = load_file(ref / "student.safetensors"), load_file(run / "student.safetensors")
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-5, f"resumed run differs from uninterrupted run by {worst}"
    meta = json.loads((run / "student.json").read_text())
    assert meta["steps"] == 8 and len(meta["camera_names"]) == 6


def test_resume_with_a_different_config_is_refused(bag, tmp_path):
    env = _env(tmp_path / "cache")
    run = tmp_path / "run"
    subprocess.run(_train_cmd(bag, run, "optim.max_steps=2"), check=True, env=env, capture_output=True,
                   timeout=240)
    res = subprocess.run(_train_cmd(bag, run, "optim.max_steps=2", "optim.lr=0.1"), env=env,
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 2
    assert "different config" in res.stderr and "optim.lr" in res.stderr


def test_missing_bag_and_no_teacher_errors(tmp_path):
    env = _env(tmp_path / "cache")
    res = subprocess.run(_train_cmd(tmp_path / "nope", tmp_path / "r"), env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and "nope" in res.stderr


def test_ddp_two_cpu_processes_gloo(bag, tmp_path):
    """torchrun with 2 CPU processes: DDP over gloo, replicas verified in sync, rank 0 saves."""
    env = _env(tmp_path / "cache")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29500 + os.getpid() % 1000), "-m", "fsmde_core.train", "--config", str(TINY), "--bag", str(bag),
           "--out", str(out), "--no-progress", *FAST, "optim.max_steps=3",
           "log.scalar_every=1"]  # the collapse check all-reduces its statistics across ranks
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ddp: 2 ranks, parameters in sync" in res.stderr
    assert (out / "student.safetensors").is_file()
    sd = load_file(out / "student.safetensors")
    assert all(torch.isfinite(v).all() for v in sd.values())


def test_a_collapsed_student_stops_the_run_with_a_clear_error(bag, tmp_path):
    """A far too high learning rate saturates the bin softmax (one bin everywhere,
    flat depth): the run must stop and say so rather than train on for hours.

    Since the decoder has GroupNorm, a high learning rate alone no longer
    collapses the student within a test's budget (lr 1.0 trains on), so the
    bins are also given a 5 % depth range: once the softmax saturates, the
    depth is flat by construction and the guard must fire."""
    env = _env(tmp_path / "cache")
    res = subprocess.run(_train_cmd(bag, tmp_path / "run", "optim.max_steps=30", "log.scalar_every=1", "optim.lr=1.0",
                                    "optim.grad_clip=0", "loss.use_ckd=false", "loss.use_vrkd=false",
                                    "teacher.kind=none", "student.min_depth=10", "student.max_depth=10.5"),
                         env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 2, res.stderr
    assert "collapsed by step" in res.stderr and str(tmp_path / "run") in res.stderr


def test_collapse_stats_tell_a_saturated_flat_student_from_a_healthy_one():
    from fsmde_core.train import COLLAPSE_DEPTH_SPREAD, COLLAPSE_MAX_PROB, collapse_stats

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 32, 24, 40, generator=g)
    depth = 1.0 + 30.0 * torch.rand(6, 1, 48, 80, generator=g)
    max_prob, spread = collapse_stats(logits, depth)
    assert max_prob < COLLAPSE_MAX_PROB and spread > COLLAPSE_DEPTH_SPREAD
    saturated = torch.zeros(6, 32, 24, 40)
    saturated[:, 7] = 50.0
    max_prob, spread = collapse_stats(saturated, torch.full((6, 1, 48, 80), 12.0))
    assert max_prob > COLLAPSE_MAX_PROB and spread < COLLAPSE_DEPTH_SPREAD
