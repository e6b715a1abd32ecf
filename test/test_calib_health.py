"""Cross-view calibration health on exact depth from the synthetic renderer.

The depth maps are the renderer's ground truth at each instant, so any
inconsistency between adjacent cameras comes from the extrinsics the monitor
is given: a camera rotated by 1.5 degrees must be flagged, and none when the
extrinsics are right.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from fsmde_core.calib_health import CrossViewMonitor
from fsmde_core.rig import Rig, RigCamera
from fsmde_core.synthetic.raycast import RayGrid, cast
from fsmde_core.synthetic.world import make_world

INSTANTS = np.arange(0.2, 4.0, 0.3)  # 13 sets along one drive: varied overlap content


def rotate(rig: Rig, camera: str, degrees: float) -> Rig:
    """The same rig with one camera's mount rotated about an oblique axis (pitch + yaw, like a knock)."""
    k = np.array([1.0, 1.0, 0.0]) / np.sqrt(2.0)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    a = np.radians(degrees)
    R = np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * K @ K
    cams = []
    for c in rig.cameras:
        T = c.T_base_cam.copy()
        if c.name == camera:
            T[:3, :3] = T[:3, :3] @ R
        cams.append(RigCamera(c.name, c.frame_id, c.model, T))
    return Rig(rig.name, cams, rig.base_frame)


@pytest.fixture(scope="module")
def rig(surround_rig: Callable[..., Rig]) -> Rig:
    return surround_rig("ddad", 96, 64)


@pytest.fixture(scope="module")
def depth_sets(rig: Rig) -> list[np.ndarray]:
    """Exact depth of every camera (true extrinsics) at each instant; static world only."""
    world = make_world(3, 6.0)
    out = []
    for t in INSTANTS:
        T = world.ego_pose(float(t))
        s = float(world.ego.s(float(t)))
        prims = world.static.near(s - 120.0, s + 120.0)
        out.append(np.stack([cast(RayGrid.pinhole(c.model), T @ c.T_base_cam, prims, world.road).t
                             for c in rig.cameras]))
    return out


def run(monitor: CrossViewMonitor, depth_sets: list[np.ndarray], rig: Rig) -> CrossViewMonitor:
    for depths in depth_sets:
        assert monitor.update(depths, rig) >= 4  # most pairs see content in their overlap
    return monitor


def test_correct_extrinsics_flag_nobody_and_report_every_pair(rig: Rig, depth_sets) -> None:
    monitor = run(CrossViewMonitor.for_rig(rig, stride=2), depth_sets, rig)
    assert monitor.suspects() == []
    values = monitor.values()
    names = rig.names
    for i, j in rig.adjacent_pairs():
        key = f"cross_view_{names[i]}-{names[j]}"
        assert key in values and float(values[key]) < 0.03  # exact depth: only resampling differences


@pytest.mark.parametrize("camera", ["back_left", "front"])
def test_camera_rotated_from_the_start_is_flagged_against_the_other_pairs(rig: Rig, depth_sets,
                                                                          camera: str) -> None:
    monitor = run(CrossViewMonitor.for_rig(rig, stride=2), depth_sets, rotate(rig, camera, 1.5))
    assert monitor.suspects() == [camera]


def test_bump_during_the_drive_is_flagged_against_the_pair_baselines(rig: Rig, depth_sets) -> None:
    monitor = CrossViewMonitor.for_rig(rig, stride=2, baseline_sets=6, alpha=0.3)
    run(monitor, depth_sets[:6], rig)
    assert monitor.suspects() == [] and all(np.isfinite(p.baseline) for p in monitor.pairs if p.updates >= 6)
    run(monitor, depth_sets[6:], rotate(rig, "back", 1.5))
    assert monitor.suspects() == ["back"]


def test_a_degradation_shared_by_every_pair_flags_nobody(rig: Rig, depth_sets) -> None:
    """Every camera's depth 30 % too far in the second half (e.g. the model in fog): all pairs rise alike."""
    monitor = CrossViewMonitor.for_rig(rig, stride=2, baseline_sets=6, alpha=0.3)
    run(monitor, depth_sets[:6], rig)
    rng = np.random.default_rng(0)
    noisy = [d * rng.lognormal(0.0, 0.15, d.shape) for d in depth_sets[6:]]
    run(monitor, noisy, rig)
    assert min(p.running - p.baseline for p in monitor.pairs if np.isfinite(p.baseline)) > 0.05
    assert monitor.suspects() == []


def test_bad_arguments_are_refused(rig: Rig) -> None:
    with pytest.raises(ValueError, match="stride >= 1"):
        CrossViewMonitor.for_rig(rig, stride=0)
    with pytest.raises(ValueError, match="2 depth maps for a rig of 6"):
        CrossViewMonitor.for_rig(rig).update(np.zeros((2, 64, 96)), rig)
