"""Training without LiDAR end to end: `fsmde train` on camera-only rosbag2 files (issue 12).

Real bags (``fsmde synth --no-lidar`` through :func:`generate_bag`; a
:mod:`bagfactory` bag for a recording without /tf), the real CLI in a
subprocess, checkpoints read back with safetensors.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bagfactory import BagSpec, write_bag
from safetensors.torch import load_file

from fsmde_core.distill.objective import DistillLossConfig
from fsmde_core.selfsup.objective import downscaled_sets, rescaled_intrinsics, ring_neighbours, smoothness_loss

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "config" / "train_tiny.yaml"
FAST = ["data.width=96", "data.height=64", "teacher.cache_height=32", "teacher.cache_width=48",
        "optim.max_steps=4", "optim.checkpoint_every=2", "optim.warmup_steps=2", "log.tensorboard=false"]
#: The LiDAR terms off (dense KD too: it anchors the teacher on LiDAR); CKD at the weight measured for it
#: without LiDAR (1.0: the camera-only student's structure comes from CKD; 0.3 is the LiDAR default).
CAMERA_ONLY = ["loss.use_photometric=true", "loss.use_silog=false", "loss.use_bins=false",
               "loss.use_dense_kd=false", "loss.w_ckd=1.0"]


@pytest.fixture(scope="module")
def camera_only(tmp_path_factory) -> Path:
    """A moving nuScenes-rig drive with /tf odometry, reflective materials and no LiDAR topic."""
    from fsmde_core.synthetic.writer import generate_bag

    out = tmp_path_factory.mktemp("selfsup") / "camera_only"
    generate_bag("nuscenes", 5, seed=4, out=out, width=96, height=64, progress=False, workers=1, reflective=True,
                 lidar=False)
    return out


def _train(bag: Path, out: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FSMDE_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "fsmde_core.cli", "train", "--config", str(TINY), "--bag", str(bag), "--out",
           str(out), "--no-progress", *FAST, *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_a_camera_only_bag_with_lidar_losses_is_one_line_naming_the_terms_and_the_fix(camera_only, tmp_path):
    res = _train(camera_only, tmp_path / "run", tmp_path / "cache")
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert str(camera_only) in lines[0] and "no LiDAR" in lines[0]
    assert "use_silog" in lines[0] and "loss.use_photometric=true" in lines[0]
    assert "loss.use_dense_kd=false" in lines[0]  # the default dense KD anchors on LiDAR too


def test_a_camera_only_bag_trains_a_metric_student_and_a_killed_run_resumes_to_the_same_weights(camera_only,
                                                                                                 tmp_path):
    """Photometric + CKD + VRKD + reflective mask: the run's own modules are checkpointed and resumed."""
    extra = [*CAMERA_ONLY, "loss.use_reflective_mask=true"]
    ref = tmp_path / "ref"
    res = _train(camera_only, ref, tmp_path / "cache", *extra)
    assert res.returncode == 0, res.stderr
    assert "temporal poses from /tf odometry" in res.stderr
    student = load_file(ref / "student.safetensors")
    assert all(torch.isfinite(v.float()).all() for v in student.values())
    state = load_file(ref / "checkpoints" / "step_00000004.safetensors")
    owned = [k for k in state if ".owned.selfsup." in k or k.startswith("model.owned.selfsup.")]
    assert any("decomposer" in k for k in owned) and any("error_stats" in k for k in owned), sorted(state)[:8]
    assert float(state[next(k for k in owned if k.endswith("error_stats.count"))]) == 4  # one update per step

    # the same run killed after its step-2 checkpoint: what is on disk then, rerun with the same command
    run = tmp_path / "killed"
    shutil.copytree(ref, run)
    (run / "student.safetensors").unlink()
    for f in (run / "checkpoints").glob("step_00000004*"):
        f.unlink()
    (run / "checkpoints" / "latest.json").unlink()
    res = _train(camera_only, run, tmp_path / "cache", *extra)
    assert res.returncode == 0, res.stderr
    assert f"resuming {run} from step 2" in res.stderr
    a, b = load_file(ref / "student.safetensors"), load_file(run / "student.safetensors")
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-5, f"resumed run differs from the uninterrupted one by {worst}"
    resumed = load_file(run / "checkpoints" / "step_00000004.safetensors")
    for k in owned:
        assert torch.allclose(state[k].double(), resumed[k].double(), atol=1e-5), k
    meta = json.loads((run / "student.json").read_text())
    assert meta["steps"] == 4


def test_photometric_alone_trains_with_every_other_term_off(camera_only, tmp_path):
    """The benchmark's (b): no LiDAR term, no KD term, only the video (and the smoothness prior)."""
    res = _train(camera_only, tmp_path / "run", tmp_path / "cache", *CAMERA_ONLY, "loss.use_ckd=false",
                 "loss.use_vrkd=false", "optim.max_steps=2")
    assert res.returncode == 0, res.stderr
    student = load_file(tmp_path / "run" / "student.safetensors")
    assert all(torch.isfinite(v.float()).all() for v in student.values())


def test_photometric_pose_odom_on_a_bag_without_tf_is_refused_and_auto_takes_the_pose_network(tmp_path):
    bag = write_bag(tmp_path / "no_tf", BagSpec(width=64, height=48, n_frames=4, with_gt=True)).path
    res = _train(bag, tmp_path / "odom", tmp_path / "cache", "loss.use_photometric=true",
                 "loss.photometric_pose=odom")
    assert res.returncode == 2 and "no /tf odometry" in res.stderr and "Traceback" not in res.stderr, res.stderr
    res = _train(bag, tmp_path / "auto", tmp_path / "cache", "loss.use_photometric=true", "optim.max_steps=2")
    assert res.returncode == 0, res.stderr
    assert "temporal poses from the pose network" in res.stderr
    state = load_file(tmp_path / "auto" / "checkpoints" / "step_00000002.safetensors")
    assert any("posenet" in k for k in state)


def test_eval_with_lidar_ground_truth_on_a_camera_only_bag_is_one_line(camera_only, tmp_path):
    ckpt = tmp_path / "run"
    assert _train(camera_only, ckpt, tmp_path / "cache", *CAMERA_ONLY, "optim.max_steps=2").returncode == 0
    res = subprocess.run([sys.executable, "-m", "fsmde_core.cli", "eval", "--checkpoint", str(ckpt), "--bag",
                          str(camera_only), "--out", str(tmp_path / "rep"), "--gt", "lidar", "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "no LiDAR topic" in res.stderr and str(camera_only) in res.stderr


def test_config_refuses_inconsistent_photometric_switches():
    with pytest.raises(ValueError, match="photometric_temporal or photometric_spatial"):
        DistillLossConfig(use_photometric=True, photometric_temporal=False, photometric_spatial=False)
    with pytest.raises(ValueError, match="use_photometric=true"):
        DistillLossConfig(use_reflective_mask=True)
    with pytest.raises(ValueError, match="photometric_scale"):
        DistillLossConfig(use_photometric=True, photometric_scale=0.0)
    with pytest.raises(ValueError, match="photometric_pose"):
        DistillLossConfig(use_photometric=True, photometric_pose="gps")
    cfg = DistillLossConfig(use_photometric=True, use_silog=False, use_bins=False, use_ckd=False, use_vrkd=False)
    assert cfg.lidar_terms == []  # photometric alone is a complete objective
    assert "use_silog" in DistillLossConfig().lidar_terms


def test_ring_neighbours_follow_the_rigs_adjacent_pairs():
    pairs = [(0, 1), (1, 2), (2, 3), (3, 0)]
    assert ring_neighbours(pairs, 4) == [(3, 1), (0, 2), (1, 3), (2, 0)]
    assert ring_neighbours([(0, 1)], 2) == [(1, 1), (0, 0)]  # two cameras: each other on both sides


def test_smoothness_is_zero_for_constant_depth_and_weaker_across_image_edges():
    depth = torch.full((1, 1, 8, 8), 5.0)
    flat = torch.zeros(1, 3, 8, 8)
    assert float(smoothness_loss(depth, flat, None)) == 0.0
    step = depth.clone()
    step[..., 4:] = 10.0
    edge = flat.clone()
    edge[..., 4:] = 1.0  # the image has an edge where the depth jumps
    assert float(smoothness_loss(step, edge, None)) < 0.5 * float(smoothness_loss(step, flat, None))
    ego = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    ego[..., 3:5] = False  # the jump hidden behind the ego mask
    assert float(smoothness_loss(step, flat, ego)) == 0.0


def test_downscaled_sets_keep_projection_consistent():
    """A 3D point projects to the same place before and after the resize, under the pixel-centre convention."""
    K = torch.tensor([[[[200.0, 0.0, 159.5], [0.0, 210.0, 95.5], [0.0, 0.0, 1.0]]]])
    sets = {"images": torch.rand(1, 1, 3, 192, 320), "masks": torch.zeros(1, 1, 1, 192, 320, dtype=torch.bool),
            "K": K, "prev_images": torch.rand(1, 1, 3, 192, 320)}
    small = downscaled_sets(sets, 0.5)
    assert small["images"].shape[-2:] == (96, 160) and small["prev_images"].shape[-2:] == (96, 160)
    assert small["masks"].dtype == torch.bool
    p = torch.tensor([1.3, -0.4, 7.0])
    uv = (K[0, 0] @ p)[:2] / p[2]
    uv_small = (small["K"][0, 0] @ p)[:2] / p[2]
    assert torch.allclose((uv + 0.5) * 0.5 - 0.5, uv_small, atol=1e-5)
    assert torch.equal(rescaled_intrinsics(K, 1.0, 1.0), K)
    assert downscaled_sets(sets, 1.0) is sets
