"""``fsmde inspect`` on real rosbag2 files: own-span rates, camera timing, sets kept, exit status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from bagfactory import SWEEP_OFFSETS_MS, BagSpec, write_bag

from fsmde_core.data.config import DataConfig
from fsmde_core.data.inspect import TopicTimes, inspect_layout

ROOT = Path(__file__).resolve().parents[1]
#: A sweep-triggered rig (nuScenes-like): six phases over 42.6 ms at 12 Hz.
SWEEP_OFFSETS = list(SWEEP_OFFSETS_MS)


@pytest.fixture(scope="module")
def sweep_bag(tmp_path_factory) -> Path:
    return write_bag(tmp_path_factory.mktemp("b") / "sweep",
                     BagSpec(n_frames=10, period_ms=83.3, offsets_ms=SWEEP_OFFSETS, latency_ms=(1.0, 3.0))).path


@pytest.fixture(scope="module")
def plain_bag(tmp_path_factory) -> Path:
    return write_bag(tmp_path_factory.mktemp("b") / "plain",
                     BagSpec(n_frames=10, period_ms=100.0, latency_ms=(1.0, 3.0))).path


def _inspect(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fsmde_core.cli", "inspect", *argv], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def test_topic_rate_uses_its_own_span() -> None:
    t = TopicTimes()
    for ns in (5_000_000_000, 5_100_000_000, 5_200_000_000):
        t.add(ns)
    assert t.rate_hz == pytest.approx(10.0)
    one = TopicTimes()
    one.add(0)
    assert one.rate_hz is None


def test_rates_are_not_diluted_by_an_early_tf_static(plain_bag: Path) -> None:
    """The bag's /tf_static sits before the first image; rates must still read ~10 Hz, not the bag-wide rate."""
    text, ok = inspect_layout(plain_bag)
    assert ok, text
    line = next(x for x in text.splitlines() if x.strip().startswith("/cameras/front/image_raw"))
    rate = float(line.split()[-2])
    assert 9.0 < rate < 11.0, line
    assert "ego motion: no /tf" in text


def test_sweep_triggered_rig_reports_phases_spread_and_the_fixing_setting(sweep_bag: Path) -> None:
    # default settings: phases learnt, every capture kept
    res = _inspect(str(sweep_bag))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "phases: front 0.0 ms, front_left 8.5 ms, back_left 17.0 ms, back 25.5 ms" in res.stdout
    assert "capture stamp spread: median 42.6 ms, max 42.6 ms" in res.stdout
    assert "sets kept: 10 (0 incomplete" in res.stdout and "10 with a LiDAR sweep" in res.stdout
    # plain stamp matching at the default tolerance keeps nothing: exit 1, the line names the fix
    bad = _inspect(str(sweep_bag), "data.phase_correction=false")
    assert bad.returncode == 1, bad.stdout
    assert "sets kept: 0" in bad.stdout
    fix = next(x for x in bad.stdout.splitlines() if x.startswith("problem: no complete camera set"))
    assert "spread over median 42.6 ms, max 42.6 ms" in fix and "set data.phase_correction=true" in fix
    # 42.6 ms is beyond half the 83 ms period: no plain tolerance is offered, it would mix instants
    assert "plain data.sync_tolerance_ms" not in fix and "would mix capture instants" in fix, fix


def test_settings_come_from_a_config_file_and_bad_keys_are_one_line(sweep_bag: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "train.yaml"
    cfg.write_text("data: {sync_tolerance_ms: 5, phase_correction: false}\n")
    assert _inspect(str(sweep_bag), "--config", str(cfg)).returncode == 1
    assert _inspect(str(sweep_bag), "--config", str(cfg), "data.phase_correction=true").returncode == 0
    bad = _inspect(str(sweep_bag), "data.sync_tolerance=50")
    assert bad.returncode == 2
    assert "unknown key 'data.sync_tolerance'; valid data keys: sync_tolerance_ms, " in bad.stdout
    assert "Traceback" not in bad.stdout + bad.stderr
    assert _inspect(str(sweep_bag), "optim.lr=1").returncode == 2


def test_missing_lidar_sweeps_are_named_with_the_fixing_setting(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "late_lidar", BagSpec(n_frames=6, lidar_offset_ms=45.0)).path
    text, ok = inspect_layout(bag, DataConfig(lidar_tolerance_ms=20.0))
    assert not ok
    line = next(x for x in text.splitlines() if x.startswith("problem:"))
    assert "none has a LiDAR sweep on /lidar/points within data.lidar_tolerance_ms=20" in line
    assert "nearest sweep is typically 45.0 ms away" in line and "data.lidar_tolerance_ms=" in line
    _, ok = inspect_layout(bag, DataConfig(lidar_tolerance_ms=60.0))
    assert ok
