"""Trainer: config handling, kill/resume equivalence, DDP over gloo, bad inputs."""

from __future__ import annotations

import json
import os
import re
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
                                    "loss.use_dense_kd=false", "teacher.kind=none", "student.min_depth=10",
                                    "student.max_depth=10.5"),
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


# ------------------------------------------------------------ loader order
@pytest.mark.parametrize("world", [1, 2, 3])
def test_the_sampler_orders_and_shards_like_the_hand_made_sharding_it_replaced(world):
    """DistributedSampler(seed = seed x 1000) + set_epoch: the same per-rank order training always had."""
    import math

    from torch.utils.data import DistributedSampler

    n, seed = 7, 3
    for epoch in (0, 1, 5):
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)
        perm = torch.randperm(n, generator=gen).tolist()
        per_rank = math.ceil(n / world)
        for rank in range(world):
            sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed * 1000)
            sampler.set_epoch(epoch)
            assert list(sampler) == (perm * world)[: per_rank * world][rank::world]


# ------------------------------------------------------------- faults
def test_fixing_the_bag_error_in_the_same_out_is_not_refused_as_a_different_run(tmp_path):
    """config.json used to be written before the bags were read: the fix the error suggested
    (data.rig_yaml=...) in the same --out was then refused as "a run with a different config"."""
    written = write_bag(tmp_path / "no_tf", BagSpec(width=64, height=48, n_frames=4, omit_tf_static=True,
                                                       with_gt=True))
    env = _env(tmp_path / "cache")
    run = tmp_path / "run"
    res = subprocess.run(_train_cmd(written.path, run, "optim.max_steps=2"), env=env, capture_output=True,
                         text=True, timeout=240)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "data.rig_yaml" in res.stderr and "DataConfig." not in res.stderr, res.stderr
    assert not (run / "config.json").exists()
    rig_yaml = tmp_path / "rig.yaml"
    written.rig.save(rig_yaml)
    res = subprocess.run(_train_cmd(written.path, run, "optim.max_steps=2", f"data.rig_yaml={rig_yaml}"), env=env,
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr
    assert json.loads((run / "config.json").read_text())["data"]["rig_yaml"] == str(rig_yaml)


def _flip_tensor_byte(path: Path, offset_in_data: int = 100) -> None:
    """Flip one byte of a safetensors file's tensor data (the header stays valid)."""
    raw = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")
    raw[start + offset_in_data] ^= 0x40
    path.write_bytes(bytes(raw))


def _tiny_state(tmp_path: Path):
    from fsmde_core.checkpoint import save_training_state

    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    save_training_state(tmp_path, 2, 0, 2, model, opt)
    with torch.no_grad():
        model.weight.add_(1.0)
    save_training_state(tmp_path, 4, 0, 4, model, opt)
    return model, opt


@pytest.mark.parametrize("damage", ["flip", "truncate", "pointer"])
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one_and_says_so(tmp_path, capsys, damage):
    from fsmde_core.checkpoint import load_training_state

    model, _ = _tiny_state(tmp_path)
    latest = tmp_path / "checkpoints" / "step_00000004.safetensors"
    if damage == "flip":
        _flip_tensor_byte(latest, 4)
    elif damage == "truncate":
        latest.write_bytes(latest.read_bytes()[:-30])
    else:
        (tmp_path / "checkpoints" / "latest.json").write_text('{"step": 4, "fi')
    fresh = torch.nn.Linear(4, 3)
    meta = load_training_state(tmp_path, fresh, torch.optim.AdamW(fresh.parameters()))
    if damage == "pointer":  # only the pointer is lost: the newest intact step file is used
        assert meta["step"] == 4
        torch.testing.assert_close(fresh.weight, model.weight)
        return
    assert meta["step"] == 2
    torch.testing.assert_close(fresh.weight, model.weight - 1.0)
    err = capsys.readouterr().err
    assert "step_00000004.safetensors" in err and "previous checkpoint step_00000002" in err


def test_no_intact_checkpoint_is_one_clear_error(tmp_path):
    from fsmde_core.checkpoint import CheckpointError, load_training_state

    _tiny_state(tmp_path)
    for f in (tmp_path / "checkpoints").glob("step_*.safetensors"):
        _flip_tensor_byte(f, 4)
    with pytest.raises(CheckpointError, match=r"no intact checkpoint to resume from .*sha256"):
        load_training_state(tmp_path, torch.nn.Linear(4, 3))


def test_a_flipped_byte_in_the_student_weights_is_refused_naming_the_file(tmp_path):
    """It used to load silently (depth off by up to 10 m)."""
    from fsmde_core.checkpoint import CheckpointError, load_student, save_student
    from fsmde_core.models.student import StudentConfig, SurroundDepthStudent

    cfg = StudentConfig(num_bins=8, decoder_channels=(8, 8, 8, 8), input_height=32, input_width=64)
    path = save_student(tmp_path, SurroundDepthStudent(cfg), {"student": cfg.to_dict()})
    load_student(tmp_path)  # intact: loads
    _flip_tensor_byte(path, 1000)
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))}: corrupt student weights: .*sha256"):
        load_student(tmp_path)


def test_a_pretrained_file_that_matches_no_encoder_name_is_refused(tmp_path):
    """0 tensors loaded used to pass silently and train from scratch."""
    from safetensors.torch import save_file

    from fsmde_core.models.resnet import PretrainedLoadError, load_pretrained_encoder, resnet18

    foreign = tmp_path / "backbone.safetensors"
    save_file({f"backbone.{k}": v.contiguous() for k, v in resnet18().state_dict().items()}, str(foreign))
    enc = resnet18()
    before = enc.conv1.weight.clone()
    with pytest.raises(PretrainedLoadError, match=rf"{re.escape(str(foreign))}: matches only 0 of the encoder's "
                                                  r"\d+ tensors .*encoder \['conv1.weight'.*file \['backbone\."):
        load_pretrained_encoder(enc, foreign, min_match=0.9)
    torch.testing.assert_close(enc.conv1.weight, before)  # nothing half-loaded
    with pytest.raises(PretrainedLoadError, match="matches only 0"):  # the default is the config's 0.9
        load_pretrained_encoder(enc, foreign)
    assert load_pretrained_encoder(enc, foreign, min_match=0.0).loaded == []  # forced: loads what matches

    res = subprocess.run(_train_cmd(tmp_path / "unused", tmp_path / "run", f"student.pretrained={foreign}"),
                         env=_env(tmp_path / "cache"), capture_output=True, text=True, timeout=120)
    assert res.returncode == 2  # the bag is missing here: checked first, so nothing is written
    assert not (tmp_path / "run" / "config.json").exists()


def test_the_trainer_refuses_a_foreign_pretrained_file_unless_forced(bag, tmp_path):
    from safetensors.torch import save_file

    from fsmde_core.models.resnet import resnet18

    foreign = tmp_path / "backbone.safetensors"
    save_file({f"backbone.{k}": v.contiguous() for k, v in resnet18().state_dict().items()}, str(foreign))
    env = _env(tmp_path / "cache")
    res = subprocess.run(_train_cmd(bag, tmp_path / "run", "optim.max_steps=1", f"student.pretrained={foreign}"),
                         env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{foreign}: matches only 0 of" in res.stderr and "student.pretrained_force=true" in res.stderr
    res = subprocess.run(_train_cmd(bag, tmp_path / "forced", "optim.max_steps=1", f"student.pretrained={foreign}",
                                    "student.pretrained_force=true"), env=env, capture_output=True, text=True,
                         timeout=240)
    assert res.returncode == 0, res.stderr


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_previous_checkpoint(bag, tmp_path, monkeypatch,
                                                                                      capsys):
    import errno

    from fsmde_core import checkpoint
    from fsmde_core.cli import main

    real_save, calls = checkpoint.save_file, []

    def save_file_on_a_filling_disk(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) > 1:  # the first checkpoint fits, the second does not
            Path(filename).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", save_file_on_a_filling_disk)
    monkeypatch.setenv("FSMDE_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(["train", "--config", str(TINY), "--bag", str(bag), "--out", str(run), "--no-progress", *FAST,
                 "optim.max_steps=4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"fsmde train: error: cannot write {run}/checkpoints/step_00000004.safetensors: "
                       "No space left on device; the previous file (if any) is unchanged")
    assert "Traceback" not in "\n".join(err)
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["latest.json", "step_00000002.json", "step_00000002.safetensors"]  # no temporary left
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 2


# -------------------------------------------------------------- validation
@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bags") / "held_out"
    write_bag(path, BagSpec(width=64, height=48, n_frames=3, with_gt=True, seed=7))
    return path


def test_validation_during_training_reports_what_fsmde_eval_reports(bag, held_out, tmp_path):
    """--val-bag: every log.val_every steps and at the end, fsmde eval's metrics to val.jsonl and TensorBoard;
    the last line equals fsmde eval on the saved student."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fsmde_core.config import load_data_config
    from fsmde_core.evaluate import evaluate, run_data_section

    run = tmp_path / "run"
    cmd = _train_cmd(bag, run, "optim.max_steps=5", "log.val_every=2", "log.tensorboard=true",
                     "student.decoder_channels=[16, 16, 8, 8]")
    res = subprocess.run([*cmd, "--val-bag", str(held_out)], env=_env(tmp_path / "cache"), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in (run / "val.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 4, 5]
    assert all(x["frames"] == 3 and 0 < x["mean"]["abs_rel"] < 10 for x in lines)
    assert json.loads((run / "student.json").read_text())["student"]["decoder_channels"] == [16, 16, 8, 8]

    data = load_data_config(run_data_section(run), None, [], source="config.json")
    report = evaluate(run, held_out, tmp_path / "eval", gt="lidar", progress=False, data_config=data)
    assert report["frames"] == 3
    for key, value in report["mean"].items():
        if key != "cross_view":
            assert lines[-1]["mean"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    for cam, metrics in report["per_camera"].items():  # None: a camera the sparse LiDAR never reaches
        ours = lines[-1]["per_camera"][cam]["rmse"]
        assert (ours is None) == (metrics["rmse"] is None), cam
        assert ours is None or ours == pytest.approx(metrics["rmse"], rel=1e-5)
    assert sum(m["rmse"] is not None for m in report["per_camera"].values()) >= 2
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val/abs_rel")] == [2, 4, 5]


def test_a_run_written_before_a_new_key_existed_compares_equal_to_its_defaults():
    """A config.json from before ``augment:`` / a new loss switch resumes; a real change is still refused."""
    from fsmde_core.config import default_config
    from fsmde_core.train import config_differences, with_new_defaults

    now = load_config(TINY, [])
    old = json.loads(json.dumps(now))
    del old["augment"]
    del old["loss"]["use_semgraph"]
    assert config_differences(old, now)  # the plain comparison refuses it
    assert config_differences(with_new_defaults(old, default_config()), now) == []
    old["optim"]["lr"] = 0.5
    assert config_differences(with_new_defaults(old, default_config()), now) == ["optim.lr: 0.5 -> None"]


def test_kd_terms_without_a_teacher_are_one_line_naming_the_switches(bag, tmp_path):
    """The shipped config distils (CKD, VRKD, dense KD): teacher.kind=none alone must say which terms to switch off."""
    res = subprocess.run(_train_cmd(bag, tmp_path / "run", "optim.max_steps=1", "teacher.kind=none"),
                         env=_env(tmp_path / "cache"), capture_output=True, text=True, timeout=240)
    assert res.returncode == 2, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if "error" in ln]
    assert "Traceback" not in res.stderr and len(errors) == 1, res.stderr
    assert "(loss.use_ckd=false loss.use_vrkd=false loss.use_dense_kd=false)" in errors[0]
