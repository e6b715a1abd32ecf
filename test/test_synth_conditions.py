"""Adverse conditions of the synthetic world (``fsmde synth --condition/--condition-mix``).

The checks are physical statistics a wrong implementation would fail: night
is much darker, fog pulls colours towards the airlight more with distance and
lowers contrast, rain streaks add high-frequency energy, exposure blur
removes it, and the LiDAR loses far returns and gains near ones in fog.
Bags are read back with plain sqlite3 and rosbags' CDR decoder; the ground
truth must be the clear world's, byte for byte.
"""

from __future__ import annotations

import argparse
import itertools
import re
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fsmde_core.data.inspect import inspect_bag
from fsmde_core.synthetic.weather import (
    CONDITIONS,
    condition_from_mix,
    parse_condition_mix,
    weather_for,
)
from fsmde_core.synthetic.writer import (
    START_NS,
    Scene,
    SceneSpec,
    add_synth_arguments,
    bag_condition,
    generate_bag,
    resolve_condition,
    run_synth,
)

ADVERSE = ("night", "dusk", "fog", "rain")
STAMP = START_NS + 500_000_000  # 0.5 s into the drive (the ego car is moving)


# ------------------------------------------------------------------ helpers
def bag_messages(bag: Path) -> dict[str, list[bytes]]:
    """topic -> raw CDR messages in file order, with nothing but sqlite3."""
    con = sqlite3.connect(next(bag.glob("*.db3")))
    try:
        rows = con.execute(
            "SELECT t.name, m.data FROM messages m JOIN topics t ON m.topic_id = t.id ORDER BY m.id"
        ).fetchall()
    finally:
        con.close()
    out: dict[str, list[bytes]] = {}
    for name, data in rows:
        out.setdefault(name, []).append(bytes(data))
    return out


def small_bag(out: Path, condition: str | None, seed: int = 4, **kw) -> dict:
    args = {"frames": 2, "width": 96, "height": 64, "progress": False, "workers": 1, "storage": "sqlite3"} | kw
    return generate_bag("nuscenes", seed=seed, out=out, condition=condition, **args)


def scene(condition: str, seed: int = 0, size: tuple[int, int] = (128, 80)) -> Scene:
    return Scene(SceneSpec("nuscenes", size[0], size[1], seed, 2.0, "raw", condition=condition))


def render(sc: Scene, cams=range(6)) -> tuple[np.ndarray, np.ndarray]:
    """(n, H, W, 3) float images and (n, H, W) depths of the scene's cameras at STAMP."""
    out = [sc.render_camera(i, STAMP, 5) for i in cams]
    return np.stack([o[0] for o in out]).astype(np.float64), np.stack([o[1] for o in out])


def high_freq_energy(img: np.ndarray) -> float:
    """Mean squared difference between the image and its 3x3 box blur (grey, interior pixels)."""
    g = img.mean(axis=-1)
    blur = sum(np.roll(np.roll(g, dy, axis=-2), dx, axis=-1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9.0
    return float(((g - blur)[..., 1:-1, 1:-1] ** 2).mean())


def cloud_range(sc: Scene) -> np.ndarray:
    c = sc.render_lidar(STAMP, 5)
    return np.sqrt(c["x"] ** 2 + c["y"] ** 2 + c["z"] ** 2)  # NaN = no return


# ------------------------------------------------------------------- bags
@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> dict[str, dict[str, list[bytes]]]:
    root = tmp_path_factory.mktemp("conditions")
    return {c: bag_messages(Path(small_bag(root / c, c)["path"])) for c in CONDITIONS}


@pytest.mark.parametrize("condition", ADVERSE)
def test_ground_truth_is_the_clear_worlds(bags, condition):
    clear, adverse = bags["clear"], bags[condition]
    assert clear.keys() == adverse.keys(), "a condition adds or drops no topic"
    for topic in clear:
        if topic.startswith("/synthetic_gt/") or topic.endswith("camera_info") or topic.startswith("/tf"):
            assert adverse[topic] == clear[topic], f"{condition} changed {topic}"
    images = [t for t in clear if t.endswith("image_raw")]
    assert len(images) == 6
    assert all(adverse[t] != clear[t] for t in images), f"{condition} must change every camera's images"
    lidar_changed = adverse["/lidar/points"] != clear["/lidar/points"]
    assert lidar_changed == (condition in ("fog", "rain")), "light does not change the LiDAR, weather does"


def test_condition_is_deterministic_and_recorded(tmp_path, bags):
    again = bag_messages(Path(small_bag(tmp_path / "night", "night")["path"]))
    assert again == bags["night"], "same seed and condition must give identical messages"
    assert bag_condition(tmp_path / "night") == "night"
    report = inspect_bag(tmp_path / "night")
    assert "synthetic condition: night" in report and "status: OK" in report
    clear = small_bag(tmp_path / "clear", None, frames=1)
    assert clear["condition"] == "clear" and bag_condition(tmp_path / "clear") == "clear"


def test_rain_is_identical_for_any_worker_count(tmp_path):
    a = small_bag(tmp_path / "a" / "bag", "rain", frames=3, storage="mcap", workers=1)
    b = small_bag(tmp_path / "b" / "bag", "rain", frames=3, storage="mcap", workers=2)
    assert b["workers"] == 2
    fa, fb = (Path(s["path"]) / "bag.mcap" for s in (a, b))
    assert fa.read_bytes() == fb.read_bytes()


# --------------------------------------------------------------- severity
def test_night_is_much_darker_and_dusk_darker_than_day():
    means = {c: render(scene(c))[0].mean() for c in ("clear", "dusk", "night")}
    assert means["night"] < 0.5 * means["clear"], means
    assert means["night"] < means["dusk"] < means["clear"], means


def test_night_lamps_light_the_street():
    """Street lamps and headlights, not the sky, are what a night image shows."""
    sc = scene("night")
    lit, _ = render(sc, cams=[0])
    cam = sc.cameras[0]
    cam.street_lamps = None
    cam.weather = replace(cam.weather, headlights=False)
    dark, _ = render(sc, cams=[0])
    assert lit.mean() > 1.5 * dark.mean(), (lit.mean(), dark.mean())


def test_fog_pulls_colours_to_the_airlight_more_with_distance():
    clear_img, depth = render(scene("clear"))
    fog_sc = scene("fog")
    fog_img, fog_depth = render(fog_sc)
    np.testing.assert_array_equal(depth, fog_depth)
    assert fog_img.std() < 0.8 * clear_img.std(), "fog lowers the contrast"
    sky = ~np.isfinite(depth)
    airlight = np.median(fog_img[sky], axis=0)  # the sky in fog is the airlight
    gap = np.abs(fog_img - airlight).mean(axis=-1)
    edges = (0.0, 10.0, 25.0, 50.0, 100.0)
    per_bin = [gap[(depth >= lo) & (depth < hi)].mean() for lo, hi in itertools.pairwise(edges)]
    assert all(a > b for a, b in itertools.pairwise(per_bin)), per_bin
    assert per_bin[-1] < 0.5 * per_bin[0], per_bin


def test_rain_streaks_add_high_frequency_energy():
    """Streaks on vs off, sensor noise off in both (it has high-frequency energy of its own)."""
    sc = scene("rain")
    for cam in sc.cameras:
        cam.weather = replace(cam.weather, full_well=0.0)
    rainy, _ = render(sc)
    for cam in sc.cameras:
        cam.weather = replace(cam.weather, streaks=0.0)
    no_streaks, _ = render(sc)
    assert high_freq_energy(rainy) > 1.15 * high_freq_energy(no_streaks)


def test_exposure_blur_removes_high_frequency_energy():
    """Ego motion during a long exposure smears the side views (noise off, to see the blur alone)."""
    sc = scene("dusk", size=(160, 96))
    side = [1, 2, 4, 5]
    for cam in sc.cameras:
        cam.weather = replace(cam.weather, exposure_s=0.0, full_well=0.0)
    sharp, _ = render(sc, side)
    for cam in sc.cameras:
        cam.weather = replace(cam.weather, exposure_s=0.05)
    blurred, _ = render(sc, side)
    assert high_freq_energy(blurred) < 0.8 * high_freq_energy(sharp)


# ------------------------------------------------------------------ LiDAR
def test_fog_costs_lidar_range_and_adds_near_returns():
    clear, fog = cloud_range(scene("clear")), cloud_range(scene("fog"))
    n_clear, n_fog = np.isfinite(clear).sum(), np.isfinite(fog).sum()
    assert n_fog < n_clear
    kept = np.isfinite(fog)
    near_kept = kept[clear < 10].mean()
    far_kept = kept[clear > 40].mean()
    assert far_kept < 0.8 * near_kept, (near_kept, far_kept)
    spurious = (fog < 5.0) & ~(clear < 5.0)  # near returns where clear had none that close
    assert 0 < spurious.sum() < 0.05 * clear.size
    assert np.nanmin(fog[spurious]) >= 1.0


def test_rain_drops_some_returns_and_clear_night_dusk_keep_them():
    clear = cloud_range(scene("clear"))
    rain = cloud_range(scene("rain"))
    assert np.isfinite(rain).sum() < np.isfinite(clear).sum()
    assert ((rain < 5.0) & ~(clear < 5.0)).sum() > 0
    for condition in ("night", "dusk"):
        np.testing.assert_array_equal(cloud_range(scene(condition)), clear)


# ------------------------------------------------------------- mixes / CLI
def test_condition_mix_draws_per_seed_in_proportion():
    mix = parse_condition_mix("fog=1, clear=2,night=1")
    assert mix == {"clear": 0.5, "night": 0.25, "fog": 0.25}
    drawn = [condition_from_mix(mix, s) for s in range(400)]
    assert drawn == [condition_from_mix(mix, s) for s in range(400)], "deterministic per seed"
    share = {c: drawn.count(c) / len(drawn) for c in mix}
    assert set(drawn) == set(mix)
    assert all(abs(share[c] - mix[c]) < 0.08 for c in mix), share
    assert {condition_from_mix({"rain": 1.0}, s) for s in range(20)} == {"rain"}


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("clear=0.5,night", "NAME=WEIGHT"),
        ("clear=0.5,hail=1", "'hail'"),
        ("clear=1,clear=2", "twice"),
        ("fog=-1", ">= 0"),
        ("fog=abc", "not a number"),
        ("fog=0,rain=0", "sum to 0"),
    ],
)
def test_bad_mix_is_refused_naming_the_part(spec, needle):
    with pytest.raises(ValueError, match=re.escape(needle)) as err:
        parse_condition_mix(spec)
    assert spec in str(err.value), "the message names the mix it refuses"


def test_weather_varies_per_seed_but_clear_is_inert():
    assert weather_for("clear", 3) == weather_for("clear", 4)
    assert weather_for("fog", 3).fog_beta != weather_for("fog", 4).fog_beta
    assert 50 < weather_for("fog", 3).visibility_m < 250
    with pytest.raises(ValueError, match="unknown condition 'snow'"):
        weather_for("snow", 0)


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_synth_arguments(parser)
    return run_synth(parser.parse_args(argv))


def test_cli_condition_flags(tmp_path, capsys):
    base = ["--preset", "nuscenes", "--frames", "1", "--width", "64", "--height", "48", "--no-progress",
            "--storage", "sqlite3"]
    for bad, needle in (
        (["--condition", "snow"], "unknown condition 'snow'"),
        (["--condition-mix", "clear=1,night"], "NAME=WEIGHT"),
        (["--condition", "fog", "--condition-mix", "clear=1"], "not both"),
    ):
        assert _cli([*base, "--out", str(tmp_path / "bad"), *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
        assert not (tmp_path / "bad").exists()
    seed = 7
    assert _cli([*base, "--seed", str(seed), "--out", str(tmp_path / "mix"), "--condition-mix",
                 "night=1,fog=1"]) == 0
    expected = resolve_condition(None, "night=1,fog=1", seed)
    assert f"condition {expected}" in capsys.readouterr().out
    assert bag_condition(tmp_path / "mix") == expected
    assert _cli([*base, "--out", str(tmp_path / "fog"), "--condition", "fog"]) == 0
    assert bag_condition(tmp_path / "fog" / "fog.db3") == "fog"


def test_bag_condition_of_a_bag_that_does_not_say(tmp_path):
    (tmp_path / "metadata.yaml").write_text("rosbag2_bagfile_information:\n  version: 9\n")
    assert bag_condition(tmp_path) is None
    assert bag_condition(tmp_path / "missing") is None
