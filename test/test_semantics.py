"""Synthetic semantic labels: the class table, the renderer's label maps, the bag topic and the reader.

The renderer's labels are checked against geometry recomputed here from the
depth alone (world point = camera origin + ray x depth): sky exactly where
the depth is +Inf, ground classes only on the ground planes in their lateral
zone, lane markings where the paint is, and every object pixel inside a
primitive of a material that class stands for. A label map shifted by a pixel
or a class mix-up puts points outside those sets, so these checks fail.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fsmde_core import semantics as sem
from fsmde_core.data import BagSource, DataConfig
from fsmde_core.data.cache import cache_key
from fsmde_core.data.sample import resize_nearest
from fsmde_core.messages import UnsupportedEncodingError, image_to_mono8
from fsmde_core.rig import preset
from fsmde_core.synthetic.messages import TYPESTORE
from fsmde_core.synthetic.render import CameraRenderer
from fsmde_core.synthetic.shading import Textures
from fsmde_core.synthetic.world import Material, Primitives, World, make_world
from fsmde_core.synthetic.writer import generate_bag

NS = 1_000_000_000
REQUIRED = ("sky", "road", "lane_marking", "sidewalk", "building", "vehicle", "pole", "vegetation", "person",
            "other")
CLASS_MATERIALS = {
    sem.BUILDING: (Material.BUILDING,),
    sem.VEHICLE: (Material.CAR_PAINT, Material.CAR_GLASS),
    sem.POLE: (Material.METAL,),
    sem.TRAFFIC_SIGN: (Material.SIGN,),
    sem.VEGETATION: (Material.BARK, Material.FOLIAGE),
    sem.PERSON: (Material.CLOTH, Material.SKIN),
}


# ------------------------------------------------------------------ the table
def test_class_table_is_complete_with_unique_ids_names_and_colours() -> None:
    ids = [c.id for c in sem.CLASSES]
    assert ids == list(range(len(ids))) == list(range(sem.NUM_CLASSES)), "ids are 0..N-1 in table order"
    names = [c.name for c in sem.CLASSES]
    assert len(set(names)) == len(names) and all(re.fullmatch(r"[a-z_]+", n) for n in names)
    assert set(REQUIRED) <= set(names)
    colours = [c.colour for c in sem.CLASSES] + [sem.VOID_COLOUR]
    assert len(set(colours)) == len(colours), "every class must be told apart in a picture"
    assert sem.VOID == 255 and sem.VOID not in ids
    for c in sem.CLASSES:
        assert sem.class_id(c.name) == c.id and c.description
    with pytest.raises(ValueError, match="vehicle"):
        sem.class_id("vehicel")
    table = sem.table_markdown()
    assert all(f"| {c.id} | `{c.name}` |" in table for c in sem.CLASSES) and "| 255 | `void` |" in table


def test_colourise_is_a_table_lookup_and_flags_unknown_ids() -> None:
    labels = np.array([[sem.ROAD, sem.SKY], [sem.VOID, 200]], dtype=np.uint8)
    pic = sem.colourise(np.stack([labels, labels]))
    assert pic.shape == (2, 2, 2, 3) and pic.dtype == np.uint8
    assert tuple(pic[1, 0, 0]) == sem.CLASSES[sem.ROAD].colour
    assert tuple(pic[0, 0, 1]) == sem.CLASSES[sem.SKY].colour
    assert tuple(pic[0, 1, 0]) == sem.VOID_COLOUR
    assert tuple(pic[0, 1, 1]) == (255, 0, 255), "an id outside the table must not pass for void"
    with pytest.raises(ValueError, match="uint8"):
        sem.colourise(labels.astype(np.int32))


# ------------------------------------------------------------------ rendered labels vs geometry
def _render(world: World, camera: int, t: float, width: int = 256, height: int = 160):
    """(frame, world points (H, W, 3) from the depth, world rays, renderer, primitives) of one camera."""
    rig = preset("nuscenes", width, height)
    cam = rig.cameras[camera]
    renderer = CameraRenderer(cam, camera, world, Textures.for_world(world))
    pose, prims = world.ego_pose(t), world.primitives_at(t)
    frame = renderer.render(pose, prims, 0)
    T = pose @ cam.T_base_cam
    rays = np.einsum("ij,jhw->hwi", T[:3, :3], renderer.grid.dirs.astype(np.float64))
    with np.errstate(invalid="ignore"):
        points = T[:3, 3] + rays * frame.depth.astype(np.float64)[..., None]
    return frame, points, rays, renderer, prims


def _distance_to_hulls(points: np.ndarray, prims: Primitives, materials: tuple[Material, ...]) -> np.ndarray:
    """(n,) distance of each point to the nearest hull box of a primitive made of one of ``materials``."""
    c, h, yaw = prims.hulls()
    keep = np.isin(prims.materials(), [int(m) for m in materials])
    c, h, yaw = c[keep], h[keep], yaw[keep]
    if not len(c):
        return np.full(len(points), np.inf)
    p = points[:, None, :] - c[None]
    cy, sy = np.cos(yaw)[None], np.sin(yaw)[None]
    local = np.stack([cy * p[..., 0] + sy * p[..., 1], -sy * p[..., 0] + cy * p[..., 1], p[..., 2]], axis=-1)
    q = np.maximum(np.abs(local) - h[None], 0.0)
    return np.sqrt((q * q).sum(-1)).min(axis=1)


# (seed, camera, time): streets seen from several sides, together showing every class the world draws
CASES = [(3, 0, 0.0), (3, 1, 0.0), (7, 0, 0.3), (7, 3, 0.3), (11, 2, 0.3)]


@pytest.fixture(scope="module", params=CASES, ids=[f"seed{s}-cam{c}" for s, c, _ in CASES])
def rendered(request):
    seed, camera, t = request.param
    world = make_world(seed, 2.0)
    return (world, *_render(world, camera, t))


def test_sky_label_is_exactly_where_depth_is_infinite(rendered) -> None:
    _, frame, *_ = rendered
    assert frame.labels.shape == frame.depth.shape and frame.labels.dtype == np.uint8
    np.testing.assert_array_equal(frame.labels == sem.SKY, np.isposinf(frame.depth))
    assert np.isfinite(frame.depth[frame.labels != sem.SKY]).all()
    assert frame.labels.max() < sem.NUM_CLASSES, "a rendered pixel is never void or out of the table"


def test_ground_classes_lie_on_the_ground_in_their_zone(rendered) -> None:
    world, frame, points, *_ = rendered
    road = world.road
    z, depth = points[..., 2], frame.depth
    _, l = road.to_sl(points[..., 0], points[..., 1])
    al = np.abs(l)
    finite = np.nan_to_num(depth, posinf=0.0)
    tol_z = 1e-3 + 1e-5 * finite
    tol_l = 0.01 + 1e-3 * finite  # the kerb face is interpolated along the ray: looser far away, curved roads
    on_road = np.abs(z) < tol_z
    on_top = np.abs(z - road.kerb_height) < tol_z
    kerb_face = (np.abs(al - road.half_width) < tol_l) & (z > -tol_z) & (z < road.kerb_height + tol_z)
    outer = road.half_width + road.sidewalk_width
    lab = frame.labels
    for cls, allowed in (
        (sem.ROAD, on_road & (al < road.half_width + tol_l)),
        (sem.LANE_MARKING, on_road & (al < road.half_width + tol_l)),
        (sem.SIDEWALK, (on_top & (al > road.half_width - tol_l) & (al < outer + tol_l)) | kerb_face),
        (sem.TERRAIN, on_top & (al > outer - tol_l)),
    ):
        bad = (lab == cls) & ~allowed
        assert not bad.any(), f"{sem.CLASSES[cls].name}: {int(bad.sum())} pixels off their ground zone"
    ground = on_road | on_top | kerb_face
    assert ((lab == sem.ROAD) | (lab == sem.LANE_MARKING)).sum() > 0.1 * lab.size
    assert ground[np.isin(lab, [sem.ROAD, sem.LANE_MARKING, sem.SIDEWALK, sem.TERRAIN])].all()


def test_object_classes_lie_on_primitives_of_their_materials(rendered) -> None:
    _, frame, points, _, _, prims = rendered
    depth = frame.depth
    seen = set()
    for cls, materials in CLASS_MATERIALS.items():
        m = frame.labels == cls
        if not m.any():
            continue
        seen.add(cls)
        d = _distance_to_hulls(points[m], prims, materials)
        tol = 0.01 + 1e-4 * depth[m]
        assert (d <= tol).all(), (f"{sem.CLASSES[cls].name}: {int((d > tol).sum())} of {int(m.sum())} pixels "
                                  f"are not on a {'/'.join(x.name for x in materials)} primitive (max {d.max():.3f} m)")
    assert {sem.BUILDING, sem.VEHICLE} <= seen, "the checked views must show buildings and vehicles"


def test_every_class_of_the_street_is_seen_over_the_cases() -> None:
    """Guards the other checks against passing vacuously: the views exercise every class the world draws."""
    seen: set[int] = set()
    for seed, camera, t in CASES:
        seen |= set(np.unique(_render(make_world(seed, 2.0), camera, t)[0].labels).tolist())
    expected = {sem.SKY, sem.ROAD, sem.LANE_MARKING, sem.SIDEWALK, sem.TERRAIN, sem.BUILDING, sem.VEHICLE,
                sem.POLE, sem.TRAFFIC_SIGN, sem.VEGETATION, sem.PERSON}
    assert expected <= seen, f"never rendered: {[sem.CLASSES[c].name for c in expected - seen]}"


def _paint_bands(world: World) -> list[tuple[float, float]]:
    """Lateral |l| intervals the street may paint (centre line, lane dividers, edge line), from the road."""
    road = world.road
    lw = road.lane_width
    bands = [(0.06, 0.18)]
    bands += [(k * lw - 0.07, k * lw + 0.07) for k in range(1, road.lanes_per_dir)]
    edge = road.lanes_per_dir * lw - (0.0 if road.parking_width > 0 else 0.35)
    return [*bands, (edge - 0.08, edge + 0.08)]


def test_lane_markings_are_where_the_paint_is(rendered) -> None:
    world, frame, points, rays, renderer, _ = rendered
    road = world.road
    s, l = road.to_sl(points[..., 0], points[..., 1])
    al = np.abs(l)
    lab = frame.labels
    # footprint of a pixel on the ground (m), as wide as the shader filters it, plus margin
    cos_i = np.maximum(np.abs(rays[..., 2]) / np.linalg.norm(rays, axis=-1), 0.08)
    ranges = np.nan_to_num(frame.depth * np.linalg.norm(rays, axis=-1), posinf=1e9)
    fw = 1.5 * ranges * renderer.grid.pixel_angle / cos_i + 0.02
    ground = (lab == sem.ROAD) | (lab == sem.LANE_MARKING)
    far_from_zebra = np.ones(lab.shape, bool)
    for cw in road.crosswalks:
        far_from_zebra &= np.abs(s - cw) > 3.0
    dist = np.full(lab.shape, np.inf)
    for lo, hi in _paint_bands(world):
        dist = np.minimum(dist, np.maximum(lo - al, al - hi))  # < 0 inside the band
    clear = ground & far_from_zebra & (dist > fw)
    assert clear.sum() > 100 and (lab[clear] == sem.ROAD).all(), "unpainted asphalt must be road"
    marking = (lab == sem.LANE_MARKING) & far_from_zebra
    assert (dist[marking] <= fw[marking]).all(), "a marking pixel away from every painted band"
    centre = ground & far_from_zebra & (al > 0.06 + fw) & (al < 0.18 - fw)
    assert (lab[centre] == sem.LANE_MARKING).all(), "the solid centre line, seen closely, is lane_marking"


# ------------------------------------------------------------------ the bag
@pytest.fixture(scope="module")
def labels_bag(tmp_path_factory) -> tuple[Path, dict]:
    """``fsmde synth``'s nuscenes world, 2 frames at 160x96, sqlite3 (read back with plain sqlite3)."""
    out = tmp_path_factory.mktemp("labels") / "bag"
    summary = generate_bag("nuscenes", 2, seed=3, out=out, storage="sqlite3", width=160, height=96,
                           progress=False, workers=1)
    return out, summary


def _messages(bag: Path) -> dict[str, list]:
    con = sqlite3.connect(next(bag.glob("*.db3")))
    try:
        rows = con.execute("SELECT t.name, t.type, m.data FROM messages m JOIN topics t ON m.topic_id = t.id "
                           "ORDER BY m.id").fetchall()
    finally:
        con.close()
    out: dict[str, list] = {}
    for topic, typ, data in rows:
        out.setdefault(topic, []).append(TYPESTORE.deserialize_cdr(bytes(data), typ))
    return out


def _stamp(msg) -> int:
    return msg.header.stamp.sec * NS + msg.header.stamp.nanosec


def test_bag_has_mono8_labels_with_the_depth_headers(labels_bag) -> None:
    bag, summary = labels_bag
    msgs = _messages(bag)
    rig = preset("nuscenes", 160, 96)
    for cam in rig.cameras:
        topic = f"/synthetic_gt/{cam.name}/labels"
        assert summary["topics"][topic] == {"type": "sensor_msgs/msg/Image", "count": 2}
        labels, depths = msgs[topic], msgs[f"/synthetic_gt/{cam.name}/depth"]
        assert len(labels) == len(depths) == 2
        for lab, dep in zip(labels, depths, strict=True):
            assert (lab.encoding, lab.width, lab.height, lab.step, lab.is_bigendian) == ("mono8", 160, 96, 160, 0)
            assert (_stamp(lab), lab.header.frame_id) == (_stamp(dep), dep.header.frame_id)
            ids = np.asarray(lab.data).reshape(96, 160)
            depth = np.frombuffer(dep.data.tobytes(), "<f4").reshape(96, 160)
            np.testing.assert_array_equal(ids == sem.SKY, np.isposinf(depth))
            assert ids.max() < sem.NUM_CLASSES


def test_bag_source_reads_labels_resized_nearest(labels_bag) -> None:
    bag, _ = labels_bag
    msgs = _messages(bag)
    samples = list(BagSource([bag], DataConfig(width=80, height=48)))
    assert len(samples) == 2
    for f, s in enumerate(samples):
        assert s.gt_labels is not None and s.gt_labels.shape == (6, 48, 80) and s.gt_labels.dtype == np.uint8
        for k, name in enumerate(s.camera_names):
            raw = msgs[f"/synthetic_gt/{name}/labels"][f]
            assert _stamp(raw) == int(s.camera_stamps_ns[k])
            full = np.asarray(raw.data).reshape(96, 160)
            np.testing.assert_array_equal(s.gt_labels[k], resize_nearest(full, 80, 48))
        np.testing.assert_array_equal(s.gt_labels == sem.SKY, np.isposinf(s.gt_depth))


def test_labels_are_optional_and_configurable(labels_bag, small_bag) -> None:
    bag, _ = labels_bag
    assert next(iter(BagSource([small_bag.path], DataConfig(width=32, height=24)))).gt_labels is None
    elsewhere = DataConfig(width=80, height=48, labels_topic_pattern="/elsewhere/{name}/labels")
    sample = next(iter(BagSource([bag], elsewhere)))
    assert sample.gt_labels is None and sample.gt_depth is not None, "labels only come from the pattern's topic"
    with pytest.raises(ValueError, match="labels_topic_pattern must contain"):
        DataConfig(labels_topic_pattern="/synthetic_gt/labels")
    # the training cache stores no labels, so their topic must not invalidate existing caches
    assert cache_key([bag], DataConfig()) == cache_key([bag], DataConfig(labels_topic_pattern="/x/{name}/labels"))
    assert "labels_topic_pattern" not in DataConfig().to_key()


def test_mono8_decoding_keeps_ids_and_refuses_colour() -> None:
    ids = np.arange(12, dtype=np.uint8).reshape(3, 4)
    padded = np.zeros((3, 6), np.uint8)
    padded[:, :4] = ids
    msg = SimpleNamespace(height=3, width=4, step=6, encoding="mono8", is_bigendian=0, data=padded.ravel(),
                          header=SimpleNamespace(frame_id="cam"))
    np.testing.assert_array_equal(image_to_mono8(msg), ids)
    with pytest.raises(UnsupportedEncodingError, match="label map encoding 'rgb8'"):
        image_to_mono8(SimpleNamespace(**{**vars(msg), "encoding": "rgb8"}))


def test_evaluation_reorders_labels_with_the_cameras(labels_bag) -> None:
    from fsmde_core.evaluate import _reorder

    sample = next(iter(BagSource([labels_bag[0]], DataConfig(width=80, height=48))))
    names = list(reversed(sample.camera_names))
    moved = _reorder(sample, names)
    np.testing.assert_array_equal(moved.gt_labels, sample.gt_labels[::-1])
    np.testing.assert_array_equal(moved.gt_labels == sem.SKY, np.isposinf(moved.gt_depth))


def test_readme_shows_the_class_table() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert sem.table_markdown() in readme, "README's class table is out of date: paste semantics.table_markdown()"
