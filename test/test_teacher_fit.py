"""``fsmde teacher fit``: the SSI loss, fitting the Bridging Gates on a synthetic bag, caching, resume, CLI errors.

Real tiny models (Depth Anything V2 and SAM architectures through ``save_pretrained``), a real synthetic
rosbag2 with LiDAR, the real training loop; nothing downloaded.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fsmde_core import cli
from fsmde_core.config import ConfigError, load_config
from fsmde_core.distill.ssi import MIN_POINTS, align_scale_shift, ssi_loss
from fsmde_core.models.teachers import build_teacher
from fsmde_core.models.teachers.bridged import GATES_CONFIG, GATES_WEIGHTS, build_tiny_sam_vision
from fsmde_core.models.teachers.depth_anything_v2 import build_tiny_depth_anything_v2
from fsmde_core.teacher_fit import FrozenFeatures, GateFitter, load_fit_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "teacher_bridged.yaml"
TRAIN_TINY = ROOT / "config" / "train_tiny.yaml"
INPUT = 56  # depth model short side: a 4 x 7 patch grid for the 160 x 96 bag


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fit_models")
    return build_tiny_depth_anything_v2(root / "da", seed=0), build_tiny_sam_vision(root / "sam", seed=0)


@pytest.fixture(scope="module")
def bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``fsmde synth --preset nuscenes --frames 3 --width 160 --height 96``: 18 camera images with LiDAR."""
    from fsmde_core.synthetic.writer import generate_bag

    out = tmp_path_factory.mktemp("fit_bag") / "nuscenes"
    generate_bag("nuscenes", frames=3, seed=0, out=out, width=160, height=96, progress=False, workers=1)
    return out


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Decoded samples shared by the module's runs (the features cache keys on everything it depends on)."""
    return tmp_path_factory.mktemp("fit_cache")


def _overrides(models: tuple[Path, Path], cache_dir: Path, *extra: str) -> list[str]:
    return [f"models.depth={models[0]}", f"models.segmentation={models[1]}", f"models.input_size={INPUT}",
            "data.width=160", "data.height=96", f"data.cache_dir={cache_dir}", "log.tensorboard=false",
            "optim.lr=1e-3", "cache.features=memory", *extra]


def _config(models: tuple[Path, Path], bag: Path, cache_dir: Path, *extra: str) -> dict:
    cfg = load_fit_config(CONFIG, _overrides(models, cache_dir, *extra))
    cfg["data"]["bags"] = [str(bag)]
    return cfg


def _bag_ssi(teacher, fitter: GateFitter) -> float:
    """The SSI loss of a teacher's predictions over every image of the fitted bag (one number)."""
    losses = []
    for i in range(len(fitter.samples)):
        item = fitter.samples[i]
        pred = teacher.predict(item["images"]).inv_depth
        pred = torch.nn.functional.interpolate(pred, size=item["images"].shape[-2:], mode="bilinear",
                                               align_corners=False)
        losses.append(ssi_loss(pred, item["sparse_depth"], item["masks"])[1])
    return float(torch.cat(losses).mean())


@pytest.fixture(scope="module")
def fitted(models: tuple[Path, Path], bag: Path, cache_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> GateFitter:
    """Gates fitted for 40 steps (9 epochs of 18 images, batch 4, capped) on the synthetic bag."""
    out = tmp_path_factory.mktemp("fit_run") / "gates"
    fitter = GateFitter(_config(models, bag, cache_dir, "optim.epochs=9", "optim.max_steps=40"), out, progress=False)
    fitter.run()
    return fitter


# ------------------------------------------------------------------ the loss


def _sparse_scene(batch: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, 24, 32) LiDAR-like depth (5 % of pixels, 2-60 m, NaN elsewhere) and an ego mask (bottom rows)."""
    gen = torch.Generator().manual_seed(seed)
    depth = 2.0 + 58.0 * torch.rand(batch, 1, 24, 32, generator=gen)
    keep = torch.rand(batch, 1, 24, 32, generator=gen) < 0.05
    mask = torch.zeros(batch, 1, 24, 32, dtype=torch.bool)
    mask[..., -3:, :] = True
    return torch.where(keep, depth, torch.full_like(depth, math.nan)), mask


def test_ssi_loss_is_scale_and_shift_invariant_and_zero_for_a_perfect_prediction() -> None:
    sparse, mask = _sparse_scene()
    pred = torch.rand(sparse.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    loss, per_image = ssi_loss(pred, sparse, mask)
    assert loss > 0.05 and torch.all(per_image > 0)
    for a, b in ((3.7, -1.2), (1e-3, 5.0), (-2.0, 0.3)):  # any scale (also negative) and shift
        _, moved_per_image = ssi_loss(a * pred + b, sparse, mask)
        torch.testing.assert_close(moved_per_image, per_image, rtol=1e-6, atol=0)
    perfect = 4.0 * (1.0 / sparse.nan_to_num(1.0)) + 0.25  # affine in the LiDAR's inverse depth
    assert float(ssi_loss(perfect, sparse, mask)[0]) < 1e-6


def test_ssi_loss_is_the_l1_of_the_least_squares_aligned_residual() -> None:
    """One image by hand: numpy least squares, L1 residual over the valid, non-ego points, / mean target."""
    sparse, mask = _sparse_scene(batch=1, seed=2)
    pred = torch.rand(sparse.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    valid = (torch.isfinite(sparse) & ~mask).numpy().ravel()
    target = 1.0 / sparse.numpy().ravel()[valid]
    p = pred.numpy().ravel()[valid]
    (s, t), *_ = np.linalg.lstsq(np.stack([p, np.ones_like(p)], 1), target, rcond=None)
    expected = np.abs(s * p + t - target).mean() / target.mean()
    s_t, t_t, ok = align_scale_shift(pred, torch.nan_to_num(1.0 / sparse) * torch.from_numpy(valid).view(
        sparse.shape), torch.from_numpy(valid).view(sparse.shape))
    assert bool(ok[0]) and float(s_t[0]) == pytest.approx(s, rel=1e-9) and float(t_t[0]) == pytest.approx(t, rel=1e-9)
    assert float(ssi_loss(pred, sparse, mask)[0]) == pytest.approx(expected, rel=1e-5)


def test_images_without_lidar_contribute_zero_never_nan() -> None:
    sparse, mask = _sparse_scene(batch=3)
    sparse[1] = math.nan  # no sweep at all
    sparse[2].view(-1)[:] = math.nan
    sparse[2].view(-1)[: MIN_POINTS - 1] = 10.0  # too few points to fix a scale and a shift
    pred = torch.rand(sparse.shape, requires_grad=True)
    loss, per_image = ssi_loss(pred, sparse, mask)
    assert per_image[1] == 0 and per_image[2] == 0 and per_image[0] > 0
    # the mean is over the images that have LiDAR
    assert float(loss.detach()) == pytest.approx(float(per_image[0].detach()))
    none, _ = ssi_loss(pred, torch.full_like(sparse, math.nan), mask)
    none.backward()
    assert float(none.detach()) == 0.0 and torch.isfinite(pred.grad).all() and not pred.grad.any()
    flat = torch.ones_like(pred)  # a constant prediction cannot be aligned: zero, not NaN
    assert float(ssi_loss(flat, sparse, mask)[0]) == 0.0


# ------------------------------------------------------------------ fitting


def test_fitting_lowers_the_bag_loss_and_trains_only_the_gates(fitted: GateFitter, models: tuple[Path, Path]) -> None:
    out = fitted.out_dir
    assert (out / GATES_WEIGHTS).is_file() and (out / GATES_CONFIG).is_file() and fitted.pos.step == 40
    fresh = build_teacher("bridged", depth=str(models[0]), segmentation=str(models[1]), input_size=INPUT)
    trained = build_teacher("bridged", depth=str(models[0]), segmentation=str(models[1]), gates=str(out),
                            input_size=INPUT)
    before, after = _bag_ssi(fresh, fitted), _bag_ssi(trained, fitted)
    assert after < 0.9 * before, f"SSI on the training bag {before:.4f} -> {after:.4f}"
    # the frozen foundation models are bit-identical to freshly loaded ones; the gates moved
    for name in ("depth", "segmentation"):
        ours, theirs = getattr(fitted.teacher.model, name).state_dict(), getattr(fresh.model, name).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    before_sd = fresh.model.gate_state_dict()
    moved = {k for k, v in trained.model.gate_state_dict().items() if not torch.equal(v, before_sd[k])}
    assert any(k.startswith("gates.") for k in moved) and any(k.startswith("projection.") for k in moved)
    assert set(load_file(out / GATES_WEIGHTS)) == set(fresh.model.gate_state_dict())  # gates only, no FM weights


def test_fitted_gates_change_the_bridged_teacher_everywhere_it_is_used(fitted: GateFitter,
                                                                       models: tuple[Path, Path]) -> None:
    images = fitted.samples[0]["images"]
    fresh = build_teacher("bridged", depth=str(models[0]), segmentation=str(models[1]), input_size=INPUT)
    trained = build_teacher("bridged", depth=str(models[0]), segmentation=str(models[1]),
                            gates=str(fitted.out_dir), input_size=INPUT)
    diff = (trained.predict(images).inv_depth - fresh.predict(images).inv_depth).abs().max()
    assert diff > 1e-3 and trained.identity != fresh.identity
    assert [round(t, 6) for t in trained.model.taus()] == [round(t, 6) for t in fitted.teacher.model.taus()]
    # fsmde train ... teacher.kind=bridged teacher.options.gates=DIR and fsmde eval's --teacher-option build it
    cfg = load_config(TRAIN_TINY, ["teacher.kind=bridged", f"teacher.options.depth={models[0]}",
                                   f"teacher.options.segmentation={models[1]}",
                                   f"teacher.options.gates={fitted.out_dir}", f"teacher.options.input_size={INPUT}"])
    assert build_teacher(cfg["teacher"]["kind"], **cfg["teacher"]["options"]).identity == trained.identity


def test_learnable_tau_is_trained_and_logged(fitted: GateFitter) -> None:
    taus = fitted.teacher.model.taus()
    assert len(taus) == 4 and all(t > 0 for t in taus) and any(abs(t - 2.0) > 1e-6 for t in taus)


def test_killed_run_resumes_at_its_checkpoint_to_the_same_state(models: tuple[Path, Path], bag: Path,
                                                               cache_dir: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    """Stopped after 3 steps (checkpoint at 2), re-run: resumes at step 2 and ends where an unbroken run ends."""
    cfg = _config(models, bag, cache_dir, "optim.max_steps=6", "optim.checkpoint_every=2")
    GateFitter(cfg, tmp_path / "ref", progress=False).run()
    run = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        GateFitter(cfg, run, progress=False).run(interrupt_after=3)
    assert not (run / GATES_WEIGHTS).exists()
    assert sorted(p.name for p in (run / "checkpoints").glob("*.safetensors")) == ["step_00000002.safetensors"]
    capsys.readouterr()
    resumed = GateFitter(cfg, run, progress=False)
    resumed.run()
    assert f"resuming {run} from step 2" in capsys.readouterr().err
    assert resumed.pos.step == 6
    ref, got = (load_file(d / "checkpoints" / "step_00000006.safetensors") for d in (tmp_path / "ref", run))
    assert ref.keys() == got.keys() and any(k.startswith("optim.") for k in ref)
    assert all(torch.equal(ref[k], got[k]) for k in ref), "gates, optimizer state and RNG must match exactly"
    a, b = load_file(tmp_path / "ref" / GATES_WEIGHTS), load_file(run / GATES_WEIGHTS)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_different_config_in_the_same_out_is_refused(fitted: GateFitter, models: tuple[Path, Path], bag: Path,
                                                       cache_dir: Path) -> None:
    cfg = _config(models, bag, cache_dir, "optim.epochs=9", "optim.max_steps=40", "gates.tau=3.0")
    with pytest.raises(ConfigError, match=r"different config.*gates\.tau: 2\.0 -> 3\.0"):
        GateFitter(cfg, fitted.out_dir, progress=False).setup()


# ------------------------------------------------------------------ feature cache


def test_disk_cache_holds_the_frozen_features_once_per_image(models: tuple[Path, Path], bag: Path,
                                                             cache_dir: Path, tmp_path: Path) -> None:
    cfg = _config(models, bag, cache_dir, "cache.features=disk", "cache.dtype=float32", "optim.max_steps=1")
    cfg["data"]["cache_dir"] = str(tmp_path / "cache")
    first = GateFitter(cfg, tmp_path / "a", progress=False)
    first.setup()
    store = first.features.store
    assert len(store) == len(first.images) == 18
    # the same image at the same size gives the same tensors: recomputing reproduces the stored ones bit for bit
    taps, seg, grid = first.features.compute(first.samples[1]["images"])
    stored = store.get(1 * 6 + 2)
    assert grid == first.grid == (4, 7)
    assert all(torch.equal(stored[f"tap{k}"], taps[k][2]) for k in range(4))
    assert torch.equal(stored["segmentation"], seg[2])
    # another run on the same data and models reuses them (another tau does not matter), nothing is recomputed
    again = GateFitter({**cfg, "gates": {**cfg["gates"], "tau_mode": "fixed"}}, tmp_path / "b", progress=False)
    again.setup()
    assert again.features.digest == first.features.digest
    assert again.features.fill(again.samples, again.num_cams, progress=False) == 0
    # another input size is another cache
    other = FrozenFeatures(build_teacher("bridged", depth=str(models[0]), segmentation=str(models[1]),
                                         input_size=2 * INPUT), "off", "float32", None, first.data_key)
    assert other.digest != first.features.digest
    # cached features equal the ones computed for a batch on the fly (mode off) to float rounding
    ids = torch.tensor([3, 8, 17])
    images = torch.stack([first.images[int(i)]["image"] for i in ids])
    cached = first.features.batch(ids, images, torch.device("cpu"))
    first.features.mode = load_fit_config(None, ["cache.features=off"])["cache"]["features"]  # YAML's off is false
    assert first.features.mode == "off"
    live = first.features.batch(ids, images, torch.device("cpu"))
    for c, fresh in zip([*cached[0], cached[1]], [*live[0], live[1]], strict=True):
        torch.testing.assert_close(c, fresh, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ CLI


def _cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(argv)
    return code, capsys.readouterr().err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("fsmde teacher fit: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_cli_fits_gates_and_parses_overrides_anywhere(models: tuple[Path, Path], bag: Path, cache_dir: Path,
                                                      tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    name, _, args = cli.parse_command(["teacher", "fit", "--out", "g", "optim.lr=1e-4", "--bag", "b",
                                       "gates.tau=3"], cli.CORE_COMMANDS)
    assert name == "teacher fit" and args.out == Path("g") and args.overrides == ["optim.lr=1e-4", "gates.tau=3"]
    out = tmp_path / "gates"
    code, err = _cli(["teacher", "fit", "--config", str(CONFIG), "--bag", str(bag), "--out", str(out),
                      "--no-progress", *_overrides(models, cache_dir, "optim.max_steps=2")], capsys)
    assert code == 0, err
    assert f"gates saved to {out} after 2 steps" in err and (out / GATES_WEIGHTS).is_file()


def test_teacher_is_a_command_group(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["teacher", "--help"])
    assert done.value.code == 0 and "fit: train the bridged teacher's Bridging Gates" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        cli.main(["teacher"])
    assert done.value.code == 2
    assert cli.resolve_command("teacher fit", cli.CORE_COMMANDS).module == "fsmde_core.teacher_fit"


def test_cli_bag_without_lidar_is_one_line(models: tuple[Path, Path], cache_dir: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    from bagfactory import BagSpec, write_bag

    no_lidar = write_bag(tmp_path / "no_lidar", BagSpec(n_frames=2, omit_lidar=True)).path
    code, err = _cli(["teacher", "fit", "--config", str(CONFIG), "--bag", str(no_lidar), "--out",
                      str(tmp_path / "g"), "--no-progress", *_overrides(models, cache_dir)], capsys)
    line = _one_error_line(err)
    assert code == 2 and str(no_lidar) in line and "LiDAR topic" in line and "PointCloud2" in line
    code, err = _cli(["teacher", "fit", "--config", str(CONFIG), "--bag", str(no_lidar), "--out",
                      str(tmp_path / "g"), "--no-progress", "data.lidar_topic=/velodyne_points",
                      *_overrides(models, cache_dir)], capsys)
    line = _one_error_line(err)
    assert code == 2 and str(no_lidar) in line and "/velodyne_points" in line


def test_cli_missing_model_directory_is_one_line(models: tuple[Path, Path], bag: Path, cache_dir: Path,
                                                 tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "no_such_sam"
    code, err = _cli(["teacher", "fit", "--config", str(CONFIG), "--bag", str(bag), "--out", str(tmp_path / "g"),
                      "--no-progress", *_overrides(models, cache_dir), f"models.segmentation={missing}"], capsys)
    assert code == 2 and str(missing) in _one_error_line(err)
    code, err = _cli(["teacher", "fit", "--config", str(CONFIG), "--bag", str(bag), "--out", str(tmp_path / "g"),
                      "--no-progress", *_overrides(models, cache_dir), "models.depth="], capsys)
    assert code == 2 and "models.depth is not set" in _one_error_line(err)
    assert not (tmp_path / "g" / "config.json").exists()  # nothing written before the input is good


def test_cli_unknown_config_key_is_one_line_naming_it(bag: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    code, err = _cli(["teacher", "fit", "--config", str(CONFIG), "--bag", str(bag), "--out", str(tmp_path / "g"),
                      "optim.learning_rate=1e-4"], capsys)
    line = _one_error_line(err)
    assert code == 2 and "unknown key 'optim.learning_rate'; valid optim keys: " in line and " lr," in line
    bad = tmp_path / "bad.yaml"
    bad.write_text("gates: {tau_mode: fixed, temperature: 3}\n")
    code, err = _cli(["teacher", "fit", "--config", str(bad), "--bag", str(bag), "--out", str(tmp_path / "g")],
                     capsys)
    line = _one_error_line(err)
    assert code == 2 and str(bad) in line and "'gates.temperature'" in line
    code, err = _cli(["teacher", "fit", "--bag", str(bag), "--out", str(tmp_path / "g"), "gates.tau_mode=hot"],
                     capsys)
    assert code == 2 and "gates.tau_mode must be one of none, fixed, learnable" in _one_error_line(err)


def test_shipped_config_is_the_documented_defaults() -> None:
    cfg = load_fit_config(CONFIG)
    assert cfg["optim"]["lr"] == 5e-5 and cfg["optim"]["batch_size"] == 4 and cfg["gates"]["tau_mode"] == "learnable"
    assert cfg == load_fit_config(None)  # the file spells out the defaults


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun over gloo on Linux")
def test_ddp_two_cpu_processes_gloo(models: tuple[Path, Path], bag: Path, cache_dir: Path, tmp_path: Path) -> None:
    """torchrun with 2 CPU processes: the gates stay in sync across ranks, rank 0 writes them (and the
    feature cache, which rank 1 then reads)."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29600 + os.getpid() % 1000), "-m", "fsmde_core.teacher_fit", "--config", str(CONFIG), "--bag",
           str(bag), "--out", str(out), "--no-progress",
           *_overrides(models, tmp_path / "cache", "optim.max_steps=3", "cache.features=disk")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ddp: 2 ranks, parameters in sync" in res.stderr and (out / GATES_WEIGHTS).is_file()
    assert len(list((tmp_path / "cache" / "bridged_features").glob("*/*.safetensors"))) == 18
