"""``fsmde synth``: write a procedural surround drive as a rosbag2 recording.

The bag is meant to be indistinguishable, for a consumer, from a real
recording of a six-camera rig with a spinning LiDAR:

* per camera: ``sensor_msgs/Image`` rgb8 on ``/cameras/<name>/image_raw`` (or
  ``sensor_msgs/CompressedImage`` on ``.../image_raw/compressed``) and
  ``sensor_msgs/CameraInfo`` with the same header, every frame;
* ``sensor_msgs/PointCloud2`` on the rig's LiDAR topic: organised (rows =
  rings), x/y/z/intensity float32, ring uint16, t float32, NaN = no return;
* ``/tf_static`` once at the start, offered TRANSIENT_LOCAL (as ``ros2 bag
  record`` stores a latched publisher), and ``/tf`` odom -> base_link at 50 Hz;
* dense ground-truth depth per camera on ``/synthetic_gt/<name>/depth``
  (32FC1, metres along optical Z, +Inf = sky), same header as the image;
* per-pixel semantic labels per camera on ``/synthetic_gt/<name>/labels``
  (mono8, class ids of :mod:`fsmde_core.semantics`, sky exactly where the
  depth is +Inf), same header as the image.

Timing is that of a real rig, in one of two modes (``--camera-timing``):

* ``synchronous`` (default): frames at 10 Hz, each camera triggered with its
  own fixed offset (0-8 ms) plus jitter; the LiDAR (10 Hz) sweep is delivered
  deskewed to its stamp (every point's ``t`` = 0).
* ``sweep``: a nuScenes-style rig. The LiDAR spins at 20 Hz and each camera
  fires when the beam passes its optical axis (phase = the axis' azimuth in
  the rotation, ~42 ms spread for six cameras) plus +-1 ms jitter; the frame
  rate stays 10 Hz (the bag keeps the revolution that starts at each frame
  tick).

``--lidar-sweep`` says how the sweep is delivered: ``raw`` (default with
``sweep`` timing) = each azimuth chunk cast from the pose at its own firing
time, ``t`` = firing time after the stamp (= the sweep's start); ``deskewed``
(default with ``synchronous`` timing) = every point where it is at the stamp,
``t`` = 0, as DDAD/nuScenes clouds come.

Every camera is rendered from the vehicle pose at *its own* stamp. The bag's
log time is the stamp plus a varying transport delay (the LiDAR is published
after its sweep), so consumers must pair messages on ``header.stamp``, not on
log time. Messages are written in log-time order, as a recorder receives them.
``--speed`` replaces the seed's 5-12 m/s drive by a constant speed.

``--condition`` (clear, night, fog, rain, dusk) renders the same street and
drive under an adverse condition (:mod:`fsmde_core.synthetic.weather`): the
images and the LiDAR change, the ground truth does not. ``--condition-mix
clear=0.5,night=0.25,fog=0.25`` draws the bag's condition from the seed, so
bags with consecutive seeds mix conditions deterministically. The condition
is stored in the bag's metadata (custom data ``fsmde.condition``, read back
with :func:`bag_condition`) for evaluation to group by.

``--reflective`` adds mirror-like materials (car windows and clear-coated paint,
glass facades, puddles: :mod:`fsmde_core.synthetic.specular`) and their
ground-truth mask per camera on ``/synthetic_gt/<name>/reflective`` (mono8, 255 =
reflection weight > 0.2, same header as the image); custom data
``fsmde.reflective: true``. Depth, labels and LiDAR are unchanged.
``--no-lidar`` writes no PointCloud2 topic (a camera-only fleet); every other
message is byte-identical to the bag written without it.

Rendering runs in worker processes (numpy's many small operations hold the
GIL, so threads do not scale); results are identical for any worker count.
"""

from __future__ import annotations

import argparse
import ctypes
import heapq
import io
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer

from fsmde_core.rig import PRESET_NAMES, Rig
from fsmde_core.rig import preset as rig_preset
from fsmde_core.synthetic import messages as msgs
from fsmde_core.synthetic.render import (
    CameraRenderer,
    LidarRenderer,
    LidarSpec,
    camera_azimuths,
    sweep_start_azimuth_deg,
    trigger_phases_s,
)
from fsmde_core.synthetic.shading import Textures
from fsmde_core.synthetic.specular import REFLECTIVE_KEY, Specular
from fsmde_core.synthetic.weather import (  # noqa: F401 - bag_condition: re-exported for the writer's users
    CONDITION_KEY,
    CONDITIONS,
    apply_condition,
    bag_condition,
    check_condition,
    condition_from_mix,
    parse_condition_mix,
)
from fsmde_core.synthetic.world import FRAME_PERIOD_S, MAX_SPEED, World, make_world

START_NS = 1_735_732_800 * 1_000_000_000  # 2025-01-01 12:00:00 UTC: realistic, large epoch stamps
TF_PERIOD_NS = 20_000_000  # odometry at 50 Hz
GT_TOPIC = "/synthetic_gt/{name}/depth"
LABELS_TOPIC = "/synthetic_gt/{name}/labels"
REFLECTIVE_TOPIC = "/synthetic_gt/{name}/reflective"
ODOM_FRAME = "odom"
JPEG_QUALITY = 90
CAMERA_TIMINGS = ("synchronous", "sweep")
LIDAR_SWEEPS = ("raw", "deskewed")
SWEEP_LIDAR_PERIOD_S = 0.05  # 20 Hz spinning LiDAR of the triggered (nuScenes-style) rig
SWEEP_CHUNKS = 50  # rolling sweep: 1 ms of rotation per chunk -> t and geometry agree within 0.5 ms
SWEEP_JITTER_NS = 1_000_000  # trigger jitter of the triggered rig (+-1 ms)
SYNC_JITTER_NS = 40_000  # +-40 us around the synchronous rig's fixed offsets

# rosbag2 stores what the publisher offered; history/depth are not visible over DDS ("unknown", 0)
_INF = QosTime(9223372036, 854775807)


def _qos(reliability: QosReliability, durability: QosDurability) -> Qos:
    return Qos(QosHistory.UNKNOWN, 0, reliability, durability, _INF, _INF, QosLiveliness.AUTOMATIC, _INF, False)


QOS_SENSOR = _qos(QosReliability.BEST_EFFORT, QosDurability.VOLATILE)  # camera / LiDAR drivers
QOS_RELIABLE = _qos(QosReliability.RELIABLE, QosDurability.VOLATILE)
QOS_LATCHED = _qos(QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL)  # /tf_static


# ------------------------------------------------------------------ timing
@dataclass(frozen=True)
class RigTiming:
    """Trigger offsets and delays of the rig, fixed per seed."""

    camera_offset_ns: np.ndarray  # (n_cam,) fixed trigger offset after the frame tick
    camera_delay_ns: np.ndarray  # (n_cam,) mean transport delay of each camera driver
    lidar_period_ns: int
    jitter_ns: int = SYNC_JITTER_NS  # triggers vary uniformly in [-jitter, jitter) per frame

    @classmethod
    def for_seed(cls, seed: int, n_cam: int, lidar_period_s: float) -> RigTiming:
        """The synchronous rig: fixed offsets of 0-8 ms after the frame tick."""
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x71AE]))
        return cls(
            camera_offset_ns=np.round(rng.uniform(0.0, 8e6, n_cam), -3).astype(np.int64),
            camera_delay_ns=rng.uniform(14e6, 24e6, n_cam).astype(np.int64),
            lidar_period_ns=round(lidar_period_s * 1e9),
        )

    @classmethod
    def triggered(cls, seed: int, phases_s: np.ndarray, lidar_period_s: float) -> RigTiming:
        """The sweep-triggered rig: each camera fires at its phase in the LiDAR's revolution."""
        base = cls.for_seed(seed, len(phases_s), lidar_period_s)
        return cls(
            camera_offset_ns=np.round(np.asarray(phases_s) * 1e9, -3).astype(np.int64),
            camera_delay_ns=base.camera_delay_ns,
            lidar_period_ns=base.lidar_period_ns,
            jitter_ns=SWEEP_JITTER_NS,
        )


@dataclass(frozen=True)
class FrameTimes:
    """Stamps and log times of one frame's messages (ns)."""

    tick: int
    camera_stamp: np.ndarray
    camera_log: np.ndarray
    info_log: np.ndarray
    gt_log: np.ndarray
    lidar_stamp: int
    lidar_log: int
    tf_stamps: np.ndarray
    tf_log: np.ndarray


def frame_times(seed: int, frame: int, timing: RigTiming, last: bool) -> FrameTimes:
    """Stamps for frame ``frame``: jittered triggers and varying delays, reproducible per (seed, frame)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x71AE, frame]))
    n = timing.camera_offset_ns.size
    tick = START_NS + frame * int(FRAME_PERIOD_S * 1e9)
    stamp = tick + timing.camera_offset_ns + rng.integers(-timing.jitter_ns, timing.jitter_ns, n)
    log = stamp + timing.camera_delay_ns + rng.integers(-4_000_000, 9_000_000, n)
    n_tf = int(FRAME_PERIOD_S * 1e9) // TF_PERIOD_NS + int(last)  # the last frame closes the interval
    tf_stamps = tick + TF_PERIOD_NS * np.arange(n_tf, dtype=np.int64)
    return FrameTimes(
        tick=tick,
        camera_stamp=stamp,
        camera_log=log,
        info_log=log + rng.integers(50_000, 400_000, n),
        gt_log=log + rng.integers(500_000, 3_000_000, n),
        lidar_stamp=tick,
        lidar_log=tick + timing.lidar_period_ns + int(rng.integers(2_000_000, 9_000_000)),
        tf_stamps=tf_stamps,
        tf_log=tf_stamps + rng.integers(200_000, 2_000_000, n_tf),
    )


def seconds(stamp_ns: int | np.ndarray) -> float:
    """Stamp -> world time (s since the first frame) used to pose the ego vehicle and traffic."""
    return float((int(stamp_ns) - START_NS) / 1e9)


# --------------------------------------------------------------- rendering
@dataclass(frozen=True)
class SceneSpec:
    """Everything a worker process needs to rebuild the scene (picklable, small)."""

    preset: str
    width: int | None
    height: int | None
    seed: int
    duration_s: float
    image_format: str
    camera_timing: str = "synchronous"
    speed: float | None = None
    lidar_sweep: str | None = None
    condition: str = "clear"
    reflective: bool = False
    lidar: bool = True


def default_lidar_sweep(camera_timing: str, lidar_sweep: str | None) -> str:
    """``raw`` for the triggered rig, ``deskewed`` for the synchronous one, unless chosen."""
    return lidar_sweep or ("deskewed" if camera_timing == "synchronous" else "raw")


def lidar_spec(rig: Rig, camera_timing: str, lidar_sweep: str | None = None) -> LidarSpec:
    """The LiDAR of the rig: 10 Hz (synchronous) or 20 Hz starting between two cameras (sweep);
    deskewed (one pose) or raw (rolling, one pose per azimuth chunk)."""
    max_range = min(float(rig.max_depth), 120.0)
    chunks = SWEEP_CHUNKS if default_lidar_sweep(camera_timing, lidar_sweep) == "raw" else 0
    if camera_timing == "synchronous":
        return LidarSpec(max_range=max_range, rolling_chunks=chunks)
    return LidarSpec(
        max_range=max_range,
        period_s=SWEEP_LIDAR_PERIOD_S,
        start_azimuth_deg=sweep_start_azimuth_deg(camera_azimuths(rig)),
        rolling_chunks=chunks,
    )


def rig_timing(seed: int, rig: Rig, camera_timing: str) -> RigTiming:
    """Trigger offsets and delays of the rig for ``camera_timing``, fixed per seed."""
    spec = lidar_spec(rig, camera_timing)
    if camera_timing == "synchronous":
        return RigTiming.for_seed(seed, len(rig.cameras), spec.period_s)
    return RigTiming.triggered(seed, trigger_phases_s(camera_azimuths(rig), spec), spec.period_s)


#: What rendering one camera gives the writer: image (rgb array or JPEG bytes), depth, labels,
#: reflective mask (None without reflective materials).
CameraResult = tuple[bytes | np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]


class Scene:
    """World + rig + renderers; one per process."""

    def __init__(self, spec: SceneSpec) -> None:
        self.spec = spec
        self.rig: Rig = rig_preset(spec.preset, spec.width, spec.height)
        self.world, weather = apply_condition(make_world(spec.seed, spec.duration_s, spec.speed), spec.condition)
        textures = Textures.for_world(self.world)
        specular = Specular.for_world(self.world) if spec.reflective else None
        self.cameras = [
            CameraRenderer(c, i, self.world, textures, weather=weather, specular=specular)
            for i, c in enumerate(self.rig.cameras)
        ]
        self.lidar = LidarRenderer(
            self.rig, self.world, textures, lidar_spec(self.rig, spec.camera_timing, spec.lidar_sweep), weather
        )

    def render_camera(self, index: int, stamp_ns: int, frame: int) -> CameraResult:
        """(image: rgb array or JPEG bytes, depth, labels, reflective mask) of camera ``index`` at its stamp."""
        t = seconds(stamp_ns)
        out = self.cameras[index].render(self.world.ego_pose(t), self.world.primitives_at(t), frame, t)
        if self.spec.image_format == "jpeg":
            buf = io.BytesIO()
            Image.fromarray(out.rgb).save(buf, format="JPEG", quality=JPEG_QUALITY)
            return buf.getvalue(), out.depth, out.labels, out.reflective
        return out.rgb, out.depth, out.labels, out.reflective

    def render_lidar(self, stamp_ns: int, frame: int) -> np.ndarray:
        return self.lidar.sweep_at(seconds(stamp_ns), frame)


_WORKER_SCENE: Scene | None = None


def _keep_freed_memory() -> None:
    """Let glibc reuse freed heap memory instead of unmapping it.

    Rendering allocates many short-lived multi-megabyte temporaries; with
    glibc's default (mmap for large blocks, unmapped on free) every one of
    them page-faults again, which costs about a quarter of the render time.
    Only called in our own worker processes: it changes process-global malloc
    behaviour (peak memory is kept, not returned to the OS).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl): nothing to tune
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    libc.mallopt(M_MMAP_THRESHOLD, 512 << 20)
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)


def _worker_init(spec: SceneSpec, own_process: bool = True) -> None:
    global _WORKER_SCENE
    if own_process:
        _keep_freed_memory()
    _WORKER_SCENE = Scene(spec)


def _worker_camera(index: int, stamp_ns: int, frame: int) -> CameraResult:
    return _WORKER_SCENE.render_camera(index, stamp_ns, frame)


def _worker_lidar(stamp_ns: int, frame: int) -> np.ndarray:
    return _WORKER_SCENE.render_lidar(stamp_ns, frame)


class _InlineExecutor(Executor):
    """Runs work in the calling process (one worker): no start-up cost for small bags and tests."""

    def __init__(self, spec: SceneSpec) -> None:
        _worker_init(spec, own_process=False)

    def submit(self, fn, /, *args, **kwargs) -> Future:
        fut: Future = Future()
        fut.set_result(fn(*args, **kwargs))
        return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        global _WORKER_SCENE
        _WORKER_SCENE = None  # release the renderers held in this process


@dataclass
class RenderedFrame:
    times: FrameTimes
    images: list  # per camera: rgb array or JPEG bytes
    depths: list[np.ndarray]
    labels: list[np.ndarray]
    cloud: np.ndarray | None  # None: the bag has no LiDAR
    reflective: list[np.ndarray | None]


def _render_frames(
    spec: SceneSpec, n_cam: int, timing: RigTiming, frames: int, workers: int
) -> Iterator[RenderedFrame]:
    """Frames in order; up to two frames are in flight in the workers ahead of the consumer."""
    if workers <= 1:
        ex: Executor = _InlineExecutor(spec)
    else:
        ex = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(spec,),
        )
    pending: deque[tuple[FrameTimes, list[Future], Future | None]] = deque()
    try:
        for k in range(frames + 2):
            if k < frames:
                ft = frame_times(spec.seed, k, timing, last=k == frames - 1)
                cams = [ex.submit(_worker_camera, i, int(ft.camera_stamp[i]), k) for i in range(n_cam)]
                lid = ex.submit(_worker_lidar, ft.lidar_stamp, k) if spec.lidar else None
                pending.append((ft, cams, lid))
            if pending and (k >= 2 or k >= frames):
                ft, cams, lid = pending.popleft()
                res = [f.result() for f in cams]
                yield RenderedFrame(ft, [r[0] for r in res], [r[1] for r in res], [r[2] for r in res],
                                    None if lid is None else lid.result(), [r[3] for r in res])
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------- the bag
class BagSink:
    """A rosbag2 writer that receives messages out of order and writes them in log-time order."""

    def __init__(self, path: Path, storage: str) -> None:
        plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
        self.writer = Writer(path, version=9, storage_plugin=plugin)
        self.writer.open()
        self.connections: dict[str, object] = {}
        self.types: dict[str, str] = {}
        self.counts: dict[str, int] = {}
        self._heap: list[tuple[int, int, str, bytes]] = []
        self._seq = 0
        self._last_log = -1

    def add_topic(self, topic: str, msgtype: str, qos: Qos) -> None:
        self.connections[topic] = self.writer.add_connection(
            topic, msgtype, typestore=msgs.TYPESTORE, offered_qos_profiles=[qos]
        )
        self.types[topic] = msgtype
        self.counts[topic] = 0

    def push(self, topic: str, log_ns: int, data: bytes | memoryview) -> None:
        heapq.heappush(self._heap, (int(log_ns), self._seq, topic, data))
        self._seq += 1

    def flush(self, before_ns: int | None = None) -> None:
        """Write every queued message logged before ``before_ns`` (all when None)."""
        while self._heap and (before_ns is None or self._heap[0][0] < before_ns):
            log_ns, _, topic, data = heapq.heappop(self._heap)
            if log_ns < self._last_log:
                raise RuntimeError(f"log time went backwards on {topic}: {log_ns} < {self._last_log}")
            self._last_log = log_ns
            self.writer.write(self.connections[topic], log_ns, data)
            self.counts[topic] += 1

    def close(self) -> None:
        self.flush()
        self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


def _static_transforms(rig: Rig) -> list[tuple[int, str, str, np.ndarray]]:
    tfs = [(START_NS, rig.base_frame, c.frame_id, c.T_base_cam) for c in rig.cameras]
    tfs.append((START_NS, rig.base_frame, rig.lidar_frame, rig.T_base_lidar))
    return tfs


def _declare_topics(sink: BagSink, rig: Rig, image_format: str, reflective: bool = False,
                    lidar: bool = True) -> None:
    sink.add_topic("/tf_static", msgs.TF_MESSAGE, QOS_LATCHED)
    sink.add_topic("/tf", msgs.TF_MESSAGE, QOS_RELIABLE)
    for cam in rig.cameras:
        if image_format == "jpeg":
            sink.add_topic(cam.image_topic + "/compressed", msgs.COMPRESSED_IMAGE, QOS_SENSOR)
        else:
            sink.add_topic(cam.image_topic, msgs.IMAGE, QOS_SENSOR)
        sink.add_topic(cam.info_topic, msgs.CAMERA_INFO, QOS_SENSOR)
        sink.add_topic(GT_TOPIC.format(name=cam.name), msgs.IMAGE, QOS_RELIABLE)
        sink.add_topic(LABELS_TOPIC.format(name=cam.name), msgs.IMAGE, QOS_RELIABLE)
        if reflective:
            sink.add_topic(REFLECTIVE_TOPIC.format(name=cam.name), msgs.IMAGE, QOS_RELIABLE)
    if lidar:
        sink.add_topic(rig.lidar_topic, msgs.POINT_CLOUD2, QOS_SENSOR)


def _push_frame(sink: BagSink, rig: Rig, world: World, fr: RenderedFrame, image_format: str) -> None:
    ft = fr.times
    for j, stamp in enumerate(ft.tf_stamps):
        T = world.ego_pose(seconds(stamp))
        sink.push("/tf", ft.tf_log[j], msgs.tf_message([(int(stamp), ODOM_FRAME, rig.base_frame, T)]))
    for i, cam in enumerate(rig.cameras):
        stamp, log = int(ft.camera_stamp[i]), int(ft.camera_log[i])
        if image_format == "jpeg":
            sink.push(cam.image_topic + "/compressed", log, msgs.compressed_image(stamp, cam.frame_id, fr.images[i]))
        else:
            sink.push(cam.image_topic, log, msgs.image_rgb8(stamp, cam.frame_id, fr.images[i]))
        sink.push(cam.info_topic, ft.info_log[i], msgs.camera_info(stamp, cam.frame_id, cam.model))
        sink.push(GT_TOPIC.format(name=cam.name), ft.gt_log[i], msgs.image_depth(stamp, cam.frame_id, fr.depths[i]))
        labels = msgs.image_mono8(stamp, cam.frame_id, fr.labels[i])
        sink.push(LABELS_TOPIC.format(name=cam.name), ft.gt_log[i], labels)
        if fr.reflective[i] is not None:  # 255 = reflective pixel; logged with the other ground truth
            mask = np.where(fr.reflective[i], np.uint8(255), np.uint8(0))
            sink.push(REFLECTIVE_TOPIC.format(name=cam.name), ft.gt_log[i], msgs.image_mono8(stamp, cam.frame_id, mask))
    if fr.cloud is not None:
        dense = bool(np.isfinite(fr.cloud["x"]).all())
        cloud = msgs.point_cloud2(ft.lidar_stamp, rig.lidar_frame, fr.cloud, dense)
        sink.push(rig.lidar_topic, ft.lidar_log, cloud)


def default_workers() -> int:
    """Worker processes for rendering: the usable cores, at most one per camera."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 6))


def generate_bag(
    preset: str,
    frames: int,
    seed: int,
    out: Path,
    storage: str = "mcap",
    image_format: str = "raw",
    width: int | None = None,
    height: int | None = None,
    progress: bool = True,
    workers: int | None = None,
    camera_timing: str = "synchronous",
    speed: float | None = None,
    lidar_sweep: str | None = None,
    condition: str | None = None,
    condition_mix: str | None = None,
    reflective: bool = False,
    lidar: bool = True,
) -> dict:
    """Render ``frames`` surround frames of the procedural street into a new rosbag2 at ``out``.

    Args:
        preset: rig preset (``ddad`` or ``nuscenes``).
        frames: number of 10 Hz frames (>= 1).
        seed: names the world (road, buildings, traffic, light, sensor timing and noise).
        out: bag directory to create (must not exist).
        storage: ``mcap`` or ``sqlite3``.
        image_format: ``raw`` (Image rgb8) or ``jpeg`` (CompressedImage).
        width, height: image size (both or neither); default = the preset's.
        progress: show a progress bar (rate, ETA) on stderr.
        workers: rendering processes; default = usable cores (max 6); 1 renders in-process.
            The bag is bitwise identical for any value.
        camera_timing: ``synchronous`` (cameras 0-8 ms after the tick, deskewed 10 Hz LiDAR) or
            ``sweep`` (cameras triggered by a 20 Hz LiDAR's beam, raw rolling sweep); see the module.
        speed: constant ego speed (m/s, 0 = parked); None = the seed's varying 5-12 m/s.
        lidar_sweep: ``raw`` (rolling, per-point ``t``) or ``deskewed`` (all points at the stamp,
            ``t`` = 0); None = raw with ``sweep`` timing, deskewed with ``synchronous``.
        condition: one of :data:`~fsmde_core.synthetic.weather.CONDITIONS`; None = clear
            (or drawn from ``condition_mix``).
        condition_mix: ``NAME=WEIGHT,...``: the condition is drawn from these weights with the seed.
        reflective: reflective materials and the ``/synthetic_gt/<name>/reflective`` mask topics.
        lidar: False = no PointCloud2 topic (every other message unchanged).

    Returns:
        Summary: path, preset, seed, frames, storage, image_format, width, height,
        topics {topic: {"type", "count"}}, messages, bytes, seconds, frames_per_s.
    """
    from tqdm import tqdm

    if preset not in PRESET_NAMES:
        raise ValueError(f"unknown preset {preset!r} (choose from {', '.join(PRESET_NAMES)})")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if storage not in ("mcap", "sqlite3"):
        raise ValueError(f"storage must be 'mcap' or 'sqlite3', got {storage!r}")
    if image_format not in ("raw", "jpeg"):
        raise ValueError(f"image_format must be 'raw' or 'jpeg', got {image_format!r}")
    if (width is None) != (height is None):
        raise ValueError("give both width and height, or neither")
    if width is not None and (width < 16 or height < 16):
        raise ValueError(f"image size must be at least 16x16, got {width}x{height}")
    if camera_timing not in CAMERA_TIMINGS:
        raise ValueError(f"camera_timing must be one of {', '.join(CAMERA_TIMINGS)}, got {camera_timing!r}")
    if speed is not None and not (np.isfinite(speed) and 0.0 <= speed <= MAX_SPEED):
        raise ValueError(f"speed must be in [0, {MAX_SPEED:g}] m/s, got {speed}")
    if lidar_sweep is not None and lidar_sweep not in LIDAR_SWEEPS:
        raise ValueError(f"lidar_sweep must be one of {', '.join(LIDAR_SWEEPS)}, got {lidar_sweep!r}")
    sweep_kind = default_lidar_sweep(camera_timing, lidar_sweep)
    condition = resolve_condition(condition, condition_mix, int(seed))
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists already; rosbag2 output directories are never overwritten")

    t0 = time.perf_counter()
    spec = SceneSpec(preset, width, height, int(seed), frames * FRAME_PERIOD_S + 0.5, image_format,
                     camera_timing, None if speed is None else float(speed), sweep_kind, condition,
                     bool(reflective), bool(lidar))
    rig = rig_preset(preset, width, height)
    world = make_world(spec.seed, spec.duration_s, spec.speed)  # cheap; this process only needs the ego poses
    timing = rig_timing(spec.seed, rig, camera_timing)
    n_workers = default_workers() if workers is None else max(1, int(workers))
    n_workers = 1 if frames < 3 else n_workers

    sink = BagSink(out, storage)
    try:
        sink.writer.set_custom_data(
            "fsmde.synthetic",
            f"preset={preset} seed={seed} frames={frames} "
            f"size={rig.cameras[0].model.width}x{rig.cameras[0].model.height}"
            + (f" camera_timing={camera_timing}" if camera_timing != "synchronous" else "")
            + (f" speed={speed:g}" if speed is not None else "")
            + (f" lidar_sweep={sweep_kind}" if sweep_kind != default_lidar_sweep(camera_timing, None) else "")
            + ("" if lidar else " lidar=none"),
        )
        if condition != "clear":  # a clear bag stays byte-identical to one written before conditions existed
            sink.writer.set_custom_data(CONDITION_KEY, condition)
        if condition_mix is not None:
            sink.writer.set_custom_data(CONDITION_KEY + "_mix", condition_mix)
        if reflective:  # absent = not reflective: bags without the flag stay byte-identical
            sink.writer.set_custom_data(REFLECTIVE_KEY, "true")
        _declare_topics(sink, rig, image_format, reflective, lidar)
        sink.push("/tf_static", START_NS, msgs.tf_message(_static_transforms(rig)))
        bar = tqdm(total=frames, unit="frame", desc=f"synth {preset}", disable=not progress, file=sys.stderr)
        for fr in _render_frames(spec, len(rig.cameras), timing, frames, n_workers):
            _push_frame(sink, rig, world, fr, image_format)
            sink.flush(before_ns=fr.times.tick + int(FRAME_PERIOD_S * 1e9) - 1_000_000)
            bar.update(1)
        bar.close()
        sink.close()
    except BaseException:
        sink.abort()
        raise
    elapsed = time.perf_counter() - t0
    files = [p for p in out.rglob("*") if p.is_file()]
    return {
        "path": str(out),
        "preset": preset,
        "seed": int(seed),
        "frames": frames,
        "storage": storage,
        "image_format": image_format,
        "width": rig.cameras[0].model.width,
        "height": rig.cameras[0].model.height,
        "topics": {t: {"type": sink.types[t], "count": sink.counts[t]} for t in sink.types},
        "messages": sum(sink.counts.values()),
        "bytes": sum(p.stat().st_size for p in files),
        "seconds": elapsed,
        "frames_per_s": frames / elapsed,
        "workers": n_workers,
        "camera_timing": camera_timing,
        "speed": speed,
        "lidar_sweep": sweep_kind,
        "condition": condition,
        "reflective": bool(reflective),
        "lidar": bool(lidar),
    }


def resolve_condition(condition: str | None, condition_mix: str | None, seed: int) -> str:
    """The bag's condition: the one given, or drawn from the mix with the seed, or clear."""
    if condition is not None and condition_mix is not None:
        raise ValueError("give --condition or --condition-mix, not both")
    if condition_mix is not None:
        return condition_from_mix(parse_condition_mix(condition_mix), seed)
    return check_condition(condition or "clear")


# --------------------------------------------------------------------- CLI
def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``fsmde synth``."""
    parser.add_argument("--preset", choices=PRESET_NAMES, default="ddad", help="rig layout (default: ddad)")
    parser.add_argument("--frames", type=int, default=100, help="number of 10 Hz surround frames (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="world seed (default: 0)")
    parser.add_argument("--out", type=Path, required=True, help="bag directory to create (must not exist)")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="rosbag2 storage")
    parser.add_argument(
        "--image-format",
        choices=("raw", "jpeg"),
        default="raw",
        help="raw = sensor_msgs/Image rgb8; jpeg = CompressedImage on <topic>/compressed",
    )
    parser.add_argument("--width", type=int, default=None, help="image width (with --height; default: preset)")
    parser.add_argument("--height", type=int, default=None, help="image height (with --width; default: preset)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="rendering processes (default: usable cores, max 6; output is identical)",
    )
    parser.add_argument(
        "--camera-timing",
        choices=CAMERA_TIMINGS,
        default="synchronous",
        help="synchronous = cameras 0-8 ms after each 10 Hz tick, deskewed 10 Hz LiDAR (default); "
        "sweep = each camera fires when a 20 Hz LiDAR's beam passes its axis (~42 ms spread), raw rolling sweep",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=None,
        metavar="M_PER_S",
        help="constant ego speed in m/s (0 = parked; default: the seed's varying 5-12 m/s)",
    )
    parser.add_argument(
        "--lidar-sweep",
        choices=LIDAR_SWEEPS,
        default=None,
        help="raw = rolling sweep, per-point t = firing time; deskewed = all points at the stamp, t = 0 "
        "(default: raw with --camera-timing sweep, deskewed with synchronous)",
    )
    parser.add_argument(
        "--condition",
        default=None,
        metavar="NAME",
        help=f"weather / light: {', '.join(CONDITIONS)} (default: clear). The ground truth is the clear world's",
    )
    parser.add_argument(
        "--condition-mix",
        default=None,
        metavar="NAME=W,...",
        help="draw the condition from these weights with the seed, e.g. clear=0.5,night=0.25,fog=0.25",
    )
    parser.add_argument(
        "--reflective",
        action="store_true",
        help="reflective materials (car windows and paint, glass facades, puddles) and their mask per camera "
        "on /synthetic_gt/<name>/reflective (mono8, 255 = reflective); depth GT and LiDAR unchanged",
    )
    parser.add_argument(
        "--no-lidar",
        action="store_true",
        help="write no PointCloud2 topic (a camera-only fleet); every other message is unchanged",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_synth(args: argparse.Namespace) -> int:
    """Run ``fsmde synth``; returns the process exit code."""
    try:
        summary = generate_bag(
            args.preset,
            args.frames,
            args.seed,
            args.out,
            storage=args.storage,
            image_format=args.image_format,
            width=args.width,
            height=args.height,
            progress=not args.no_progress,
            workers=args.workers,
            camera_timing=args.camera_timing,
            speed=args.speed,
            lidar_sweep=args.lidar_sweep,
            condition=args.condition,
            condition_mix=args.condition_mix,
            reflective=args.reflective,
            lidar=not args.no_lidar,
        )
    except (ValueError, FileExistsError) as exc:
        print(f"fsmde synth: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {summary['path']}: {summary['frames']} frames, {summary['messages']} messages, "
        f"{summary['bytes'] / 1e6:.1f} MB in {summary['seconds']:.1f} s "
        f"({summary['frames_per_s']:.2f} frames/s, {summary['workers']} worker(s))"
        + (f", condition {summary['condition']}" if summary["condition"] != "clear" else "")
        + (", reflective" if summary["reflective"] else "")
        + ("" if summary["lidar"] else ", no LiDAR")
    )
    width = max(len(t) for t in summary["topics"])
    for topic, info in summary["topics"].items():
        print(f"  {topic:<{width}}  {info['count']:>6}  {info['type']}")
    return 0
