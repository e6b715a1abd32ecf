"""Runtime benchmark of the surround depth node: model time, end-to-end latency, pipeline overhead.

The question it answers (product issue): how much does the ROS pipeline add to
the network itself? Target on CPU: overhead at most 15 % of the model time and
never more than 20 ms per set.

Workload: six cameras at the default size, 640x384 rgb8 images, student presets
(``--preset`` end to end, default the shipped default; ``--model-presets`` model
only) with random weights at input 384x640, saved with ``save_student`` and
exported with ``export_onnx`` (fixed batch of 6).

Rows of the printed table:

* **model only** - ``build_backend(kind, ...).infer`` on one ``(6, 384, 640, 3)``
  uint8 batch, torch and ONNX Runtime, every preset of ``--model-presets``, in
  this process, after a warm-up, interleaved (one run of each per round).
* **end to end** - a real ``python -m fsmde_ros.node`` subprocess (the params
  file ``config/surround_depth.yaml``, calibration extrinsics from
  ``config/rig_ddad.yaml``, the ONNX model) fed over DDS by this process: six
  rgb8 images + camera_info per set. Latency = wall time from just before the
  *last* image of a set is handed to ``publish()`` until its cloud (stamped
  with the set's reference stamp) is received here. Only one set is in flight
  at a time (the next one is sent after the cloud and the node's diagnostics
  window for it came back), so nothing queues and the latency is the
  pipeline's, not a backlog's. This process also subscribes to the six depth
  images and their camera_info, as RViz or any consumer would.
* **node model time** - the node's *own* measurement of ``backend.infer`` for
  the same set, read from ``/diagnostics`` (``model_time_max_ms`` of a window;
  ``diagnostics.period_s`` stays at the params file's 1 s and a set is only
  sent once the window that holds the previous one has been published, so
  every window holds at most one set and the value is that set's model time).
  The node's own latency value of the same window (its clock when the set was
  done minus the set's stamp; same host clock, no sim time) splits the
  overhead into input + in-node and output parts.
* **pipeline overhead** = end-to-end latency minus the node's model time, per
  set: DDS transport in and out (serialisation included), synchronizer,
  decoding, batching, REP 117 masking, depth / camera_info / cloud building
  and publishing, and this consumer's deserialisation of the cloud.
* **parts** - synchronizer cost per message (``ApproximateTimeSynchronizer.add``,
  six cameras), the node's own estimator steps (``SurroundDepthEstimator.predict``:
  resize + the batched ONNX pass + REP 117 finishing; ``SurroundDepthEstimator.fuse``:
  the cloud of 6x384x640 at stride 4 with colour, rays cached as in the node) and
  per-set conversions (6 x ``depth_to_image``, ``points_to_cloud``, 6 x ``image_to_rgb``).

Transport: both participants load a Fast DDS profile with 16 MB shared-memory
segments (``--transport large-shm``, the default; see :data:`LARGE_SHM_PROFILE`).
With Fast DDS as installed (``--transport default``) a 737 KB rgb8 image does
not fit the 512 KB shared-memory segment: the node's default best-effort
subscription then receives *no* image at all, and a reliable one
(``--input-reliability reliable``) receives them after retransmissions that
cost seconds. That is a deployment setting for any ROS 2 node with large
images on Fast DDS, not a property of this node, so the benchmark measures the
node with a transport that can carry its input.

Numbers, not pass/fail. Run it on a quiet machine: the script samples /proc
for other busy processes at the start and during the whole run and records
how much CPU they took with the results. About 2.5 minutes on 2 cores.

    python bench/bench_runtime.py [--model-runs 8] [--sets 16] [--transport large-shm]
                                  [--input-reliability best_effort] [--note TEXT] [--verbose]
                                  [--no-record]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a source checkout, not installed
sys.path.insert(0, str(REPO / "test"))  # the node test harness: the same participant the tests use
from node_harness import Driver, NodeProcess, header, image_msg, start_node  # noqa: E402

from fsmde_core.estimator import CameraFrame, CloudOptions, DepthResult, SurroundDepthEstimator  # noqa: E402
from fsmde_core.models.student import DEFAULT_PRESET, PRESETS  # noqa: E402
from fsmde_core.names import SURROUND_CAMERAS  # noqa: E402
from fsmde_core.rig import Rig  # noqa: E402
from fsmde_core.sync import ApproximateTimeSynchronizer  # noqa: E402

RESULTS = REPO / "bench" / "results" / "runtime.md"
PARAMS_FILE = REPO / "config" / "surround_depth.yaml"
RIG_FILE = REPO / "config" / "rig_ddad.yaml"
CAMERAS = SURROUND_CAMERAS
IMG_W, IMG_H = 640, 384  # published camera images
NET_H, NET_W = 384, 640  # student input = depth output
STRIDE, MAX_RANGE = 4, 80.0  # the params file's cloud defaults
CAMERA_OFFSET_NS = 3_000_000  # trigger offset between consecutive cameras (15 ms spread < 30 ms slop)
DIAG_PERIOD_S = 1.0  # the params file's own value
TARGET_RATIO, TARGET_MS = 0.15, 20.0
# Fast DDS participant profile for large samples on one host. Fast DDS' built-in shared-memory
# transport has 512 KB segments: a 737 KB rgb8 640x384 image does not fit, goes out as
# fragments that overrun the segment, and is then never delivered to a best-effort reader
# (measured here: 0 of 10 at 737 KB, 2 of 10 at 600 KB, 10 of 10 at 400 KB) and only after the
# writer's next heartbeat (seconds) to a reliable one. A 16 MB segment carries whole images;
# UDP stays for discovery, on the loopback interface only.
LARGE_SHM_PROFILE = """<?xml version="1.0" encoding="UTF-8" ?>
<dds xmlns="http://www.eprosima.com">
  <profiles>
    <transport_descriptors>
      <transport_descriptor>
        <transport_id>shm_large</transport_id>
        <type>SHM</type>
        <segment_size>16777216</segment_size>
      </transport_descriptor>
      <transport_descriptor>
        <transport_id>udp_loopback</transport_id>
        <type>UDPv4</type>
        <interfaceWhiteList><address>127.0.0.1</address></interfaceWhiteList>
      </transport_descriptor>
    </transport_descriptors>
    <participant profile_name="bench_runtime_large_shm" is_default_profile="true">
      <rtps>
        <userTransports>
          <transport_id>shm_large</transport_id>
          <transport_id>udp_loopback</transport_id>
        </userTransports>
        <useBuiltinTransports>false</useBuiltinTransports>
      </rtps>
    </participant>
  </profiles>
</dds>
"""
VERBOSE = False  # --verbose: one line per end-to-end set
WAIT_S = 30.0  # longest wait for one set's cloud before it counts as lost


# ------------------------------------------------------------------ statistics
def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), NaN for no values."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


@dataclass
class Row:
    """One line of the table: a measured quantity and its distribution (kept in milliseconds,
    shown in ``unit``: "ms" or "us")."""

    section: str
    what: str
    values_ms: list[float]
    note: str = ""
    unit: str = "ms"

    @property
    def median(self) -> float:
        return statistics.median(self.values_ms) if self.values_ms else float("nan")

    @property
    def p90(self) -> float:
        return percentile(self.values_ms, 90)


def timed(fn: Callable[[], object], warmup: int, runs: int) -> list[float]:
    """Wall times of ``runs`` calls of ``fn`` after ``warmup`` untimed ones, in milliseconds."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


# ------------------------------------------------------------------ the model
def make_model(work: Path, preset: str) -> tuple[Path, Path, dict]:
    """A student preset with seeded random weights -> run dir (safetensors) + ONNX (batch 6)."""
    import torch

    from fsmde_core.checkpoint import save_student
    from fsmde_core.export import export_onnx
    from fsmde_core.models.student import StudentConfig, SurroundDepthStudent

    cfg = StudentConfig(preset=preset)  # at 384x640, the shipped input size
    torch.manual_seed(0)
    model = SurroundDepthStudent(cfg)
    run = work / f"student_{preset}"
    save_student(run, model, {"student": cfg.to_dict(), "camera_names": list(CAMERAS), "rig": "ddad"})
    report = export_onnx(run, run / "student.onnx", num_cameras=len(CAMERAS))
    if not report["passed"]:
        raise SystemExit(f"ONNX export check failed: max |ORT - torch| = {report['max_abs_diff_m']} m")
    return run, run / "student.onnx", cfg.to_dict()


def make_images(n_sets: int, seed: int = 0) -> np.ndarray:
    """(n_sets, 6, H, W, 3) uint8 image-like frames (ramps, edges, noise), distinct per set."""
    from fsmde_core.export import structured_images, to_uint8_nhwc

    rng = np.random.default_rng(seed)
    base = to_uint8_nhwc(structured_images(len(CAMERAS), IMG_H, IMG_W, seed=seed)).astype(np.int16)
    sets = np.empty((n_sets, len(CAMERAS), IMG_H, IMG_W, 3), dtype=np.uint8)
    for s in range(n_sets):  # one vectorised op per set
        sets[s] = np.clip(base + rng.integers(-20, 21, base.shape, dtype=np.int16), 0, 255)
    return sets


def model_rows(models: dict[str, tuple[Path, Path]], batch: np.ndarray, warmup: int, runs: int) -> list[Row]:
    """Model-only time per set for every preset on torch and ONNX Runtime, interleaved.

    One backend per (preset, kind) is built up front and each round times every one
    of them once, so a slow minute of the machine lands on all rows alike and the
    ratios between rows hold (run one after the other, torch moved by up to 1.7x
    between runs on the same quiet machine). ``OnnxBackend`` disables ORT's idle
    spinning, so its threads do not steal the cores from the torch runs after it.
    """
    from fsmde_core.runtime import build_backend

    backends = {(preset, kind): build_backend(kind, run if kind == "torch" else onnx)
                for preset, (run, onnx) in models.items() for kind in ("torch", "onnxruntime")}
    for backend in backends.values():
        for _ in range(warmup):
            backend.infer(batch)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in backends}
    for _ in range(runs):
        for key, backend in backends.items():
            times[key] += timed(lambda b=backend: b.infer(batch), 0, 1)
    rows = [Row("model only", f"{preset}: {kind} infer (6x384x640)", times[(preset, kind)],
                f"warm-up {warmup}, {runs} runs, interleaved") for preset, kind in backends]
    backends.clear()  # free their threads / arenas before the next measurement
    return rows


# ------------------------------------------------------------------ the parts
def sync_row(n_sets: int, seed: int = 0) -> Row:
    """``add`` cost per message: six cameras, shuffled arrival order, jittered stamps."""
    rng = np.random.default_rng(seed)
    period = 100_000_000
    msgs: list[tuple[str, int]] = []
    for s in range(n_sets):
        order = rng.permutation(len(CAMERAS))
        jitter = rng.integers(0, 5_000_000, len(CAMERAS))
        msgs += [(CAMERAS[k], s * period + k * CAMERA_OFFSET_NS + int(jitter[k])) for k in order]
    per_message_ms = []
    for _ in range(5):  # five passes over a fresh synchronizer: the spread between passes
        sync = ApproximateTimeSynchronizer(CAMERAS, slop_ns=30_000_000, queue_size=10)
        emitted = 0
        t = time.perf_counter()
        for cam, stamp in msgs:
            emitted += len(sync.add(cam, stamp, None))
        per_message_ms.append((time.perf_counter() - t) * 1e3 / len(msgs))
        if emitted != n_sets:
            raise SystemExit(f"synchronizer emitted {emitted} sets out of {n_sets}")
    return Row("parts", "sync add, per message (6 cams)", per_message_ms,
               f"{len(msgs)} messages (shuffled, jittered) x 5 passes", unit="us")


def estimator_frames(batch: np.ndarray) -> list[CameraFrame]:
    """One set as the node hands it to the estimator: calibration intrinsics and extrinsics."""
    rig = Rig.load(RIG_FILE)
    return [CameraFrame(c, batch[k], rig.camera(c).model.scaled_to(IMG_W, IMG_H),
                        extrinsic=rig.camera(c).T_base_cam) for k, c in enumerate(CAMERAS)]


def estimator_rows(onnx: Path, batch: np.ndarray, warmup: int, runs: int) -> tuple[list[Row], DepthResult]:
    """The node's own steps (the real estimator on the ONNX backend): predict, then fuse."""
    from fsmde_core.runtime import build_backend

    estimator = SurroundDepthEstimator(build_backend("onnxruntime", onnx))
    frames = estimator_frames(batch)
    options = CloudOptions(stride=STRIDE, max_range=MAX_RANGE)
    predicted = estimator.predict(frames)
    fused = estimator.fuse(predicted, options)
    rows = [
        Row("parts", "estimator.predict (resize + ORT infer + REP 117)",
            timed(lambda: estimator.predict(frames), 0, max(2, runs // 10)), "one batched pass, 6 cameras"),
        Row("parts", f"estimator.fuse 6x{NET_H}x{NET_W} stride {STRIDE} + colour",
            timed(lambda: estimator.fuse(predicted, options), warmup, runs), f"{fused.xyz.shape[0]} points"),
    ]
    if estimator.ray_cache_builds != len(CAMERAS):
        raise SystemExit(f"rays rebuilt during the runs ({estimator.ray_cache_builds} builds for "
                         f"{len(CAMERAS)} cameras): the cache does not hold")
    return rows, fused


def conversion_rows(result: DepthResult, batch: np.ndarray, warmup: int, runs: int) -> list[Row]:
    """Per-set message conversions on the estimator's real output."""
    from std_msgs.msg import Header

    from fsmde_ros.conversions import depth_to_image, image_to_rgb, points_to_cloud

    hdr = Header(frame_id="base_link")
    msgs = [image_msg(batch[k], hdr) for k in range(len(CAMERAS))]
    n = result.xyz.shape[0]
    cases = [
        ("6 x depth_to_image", lambda: [depth_to_image(d, hdr) for d in result.depth], "32FC1 384x640"),
        ("points_to_cloud xyz+rgb", lambda: points_to_cloud(result.xyz, result.rgb, hdr), f"{n} points"),
        ("6 x image_to_rgb (rgb8)", lambda: [image_to_rgb(m) for m in msgs], "zero-copy view"),
    ]
    return [Row("parts", what, timed(fn, warmup, runs), note) for what, fn, note in cases]


# ------------------------------------------------------------------ end to end
def dds_env(domain_id: int, transport: str, work: Path) -> dict[str, str]:
    """Variables for both participants: own domain, localhost discovery, the transport profile."""
    env = {"ROS_DOMAIN_ID": str(domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    if transport == "large-shm":
        profile = work / "fastdds_large_shm.xml"
        profile.write_text(LARGE_SHM_PROFILE)
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)
    return env


def node_params(onnx: Path, input_reliability: str) -> dict[str, str]:
    return {"model.path": str(onnx), "model.backend": "onnxruntime", "extrinsics.source": "calibration",
            "extrinsics.calibration_file": str(RIG_FILE), "diagnostics.period_s": str(DIAG_PERIOD_S),
            "qos.input_reliability": input_reliability}


def node_windows(driver: Driver) -> list[tuple[float, float]]:
    """The node's diagnostics windows that held an output: (model_time_max_ms, latency_max_ms).
    Reads the driver's list while its spin thread may append (safe for a CPython list)."""
    out = []
    for array in driver.diagnostics:
        for status in array.status:
            values = {kv.key: kv.value for kv in status.values}
            if status.name.endswith(": pipeline") and values.get("model_time_max_ms", "n/a") != "n/a":
                latency = values.get("latency_max_ms", "n/a")
                out.append((float(values["model_time_max_ms"]), float(latency) if latency != "n/a" else float("nan")))
    return out


@dataclass
class EndToEnd:
    """Per-set series (ms) of the measured sets, in order."""

    latency_ms: list[float] = field(default_factory=list)  # last image published -> cloud received
    depth_ms: list[float] = field(default_factory=list)  # last image published -> last depth image received
    node_done_ms: list[float] = field(default_factory=list)  # last image published -> node finished the set
    model_ms: list[float] = field(default_factory=list)  # the node's backend.infer time for the set
    points: int = 0
    lost: int = 0

    @property
    def overhead_ms(self) -> list[float]:
        return [e - m for e, m in zip(self.latency_ms, self.model_ms, strict=True)]

    @property
    def in_node_overhead_ms(self) -> list[float]:
        """Input transport + everything the node does besides the model, up to its last publish."""
        return [d - m for d, m in zip(self.node_done_ms, self.model_ms, strict=True)]

    @property
    def out_transport_ms(self) -> list[float]:
        """Node finished publishing -> cloud received here (DDS out + this consumer's callbacks)."""
        return [e - d for e, d in zip(self.latency_ms, self.node_done_ms, strict=True)]


def end_to_end(onnx: Path, images: np.ndarray, warmup_sets: int, domain_id: int, work: Path,
               transport: str, input_reliability: str) -> EndToEnd:
    """Run the node as a subprocess and feed it one set at a time (module doc)."""
    os.environ.update(dds_env(domain_id, transport, work))  # both participants read them
    node = start_node(node_params(onnx, input_reliability), work / "node.log", domain_id)
    driver = Driver(domain_id, CAMERAS)
    try:
        if not driver.wait_until(lambda: driver.node_ready() or not node.alive(), 180.0) or not node.alive():
            raise SystemExit(f"node did not come up (rc {node.proc.poll()}); log:\n{node.log()}")
        return _feed(driver, Rig.load(RIG_FILE), images, warmup_sets, node)
    finally:
        driver.close()
        node.stop(20.0)


def set_messages(rig: Rig, images: np.ndarray, stamps: Sequence[int]) -> list[tuple[str, object, object]]:
    """(camera, Image, CameraInfo) for one set, built before the clock starts."""
    from fsmde_ros.conversions import model_to_camera_info

    out = []
    for k, cam in enumerate(CAMERAS):
        rc = rig.camera(cam)
        hdr = header(stamps[k], rc.frame_id)
        out.append((cam, image_msg(images[k], hdr), model_to_camera_info(rc.model, hdr)))
    return out


def _feed(driver: Driver, rig: Rig, images: np.ndarray, warmup_sets: int, node: NodeProcess) -> EndToEnd:
    """Send one set, wait for its cloud and its diagnostics window, record; repeat."""
    out = EndToEnd()
    for s in range(images.shape[0]):
        now = time.time_ns()  # stamps as a driver would set them: capture times, the last ~ now
        stamps = [now - (len(CAMERAS) - 1 - k) * CAMERA_OFFSET_NS for k in range(len(CAMERAS))]
        ref = max(stamps)
        msgs = set_messages(rig, images[s], stamps)
        windows_before = len(node_windows(driver))
        for cam, _, info in msgs:
            driver.info_pubs[cam].publish(info)
        for cam, img, _ in msgs[:-1]:
            driver.image_pubs[cam].publish(img)
        cam, img, _ = msgs[-1]
        wall_last, t_last = time.time_ns(), time.perf_counter()
        driver.image_pubs[cam].publish(img)
        got = driver.wait_until(lambda r=ref: r in driver.cloud_at, WAIT_S)
        got = got and driver.wait_until(lambda n=windows_before: len(node_windows(driver)) > n, 5.0)
        # depth images carry their input image's header, hence each camera's own stamp
        got = got and driver.wait_until(
            lambda st=stamps: all(t in driver.depth_at[c] for c, t in zip(CAMERAS, st, strict=True)), 5.0)
        if not node.alive():
            raise SystemExit(f"node exited (rc {node.proc.returncode}); log:\n{node.log()}")
        if VERBOSE:
            print(f"  set {s}: {'ok' if got else 'NO OUTPUT'} after {(time.perf_counter() - t_last) * 1e3:.0f} ms",
                  flush=True)
        if not got:
            out.lost += 1
            _settle(driver)
            continue
        windows = node_windows(driver)
        if len(windows) != windows_before + 1:
            raise SystemExit("a diagnostics window held more than one set; cannot pair model times")
        if s < warmup_sets:
            continue
        model_ms, node_latency_ms = windows[-1]
        out.latency_ms.append((driver.cloud_at[ref] - t_last) * 1e3)
        out.depth_ms.append((max(driver.depth_at[c][t] for c, t in zip(CAMERAS, stamps, strict=True)) - t_last) * 1e3)
        # The node's latency is (its clock at the end of the set) - ref; both clocks are this
        # machine's CLOCK_REALTIME (no use_sim_time), so this is "last image -> node done".
        out.node_done_ms.append((ref - wall_last) / 1e6 + node_latency_ms)
        out.model_ms.append(model_ms)
        out.points = int(driver.clouds[ref][0].width)
    return out


def _settle(driver: Driver, quiet_s: float = 3.0) -> None:
    """After a set without output: wait until no diagnostics window with an output has come
    for ``quiet_s``, so a late output cannot be paired with the next set."""
    while True:
        n = len(node_windows(driver))
        time.sleep(quiet_s)
        if len(node_windows(driver)) == n:
            return


# ------------------------------------------------------------------ machine
def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_ticks() -> dict[int, tuple[str, int, int]]:
    """pid -> (command line, parent pid, user + system CPU ticks), from /proc."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        name = cmd or stat[stat.index("(") + 1: stat.rindex(")")]
        out[int(d.name)] = (name, int(fields[1]), int(fields[11]) + int(fields[12]))
    return out


class CpuMonitor:
    """CPU time used by *other* processes while the benchmark runs (sampled from /proc).

    Why: on a small shared machine a neighbour's job silently inflates every
    number here; this records how much CPU the rest of the machine took, so a
    reader can tell a quiet run from a contaminated one. This process and its
    children (the node) are left out.
    """

    def __init__(self, period_s: float = 2.0) -> None:
        self._period = period_s
        self._last = _cpu_ticks()
        self._used: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.monotonic()

    def start(self) -> CpuMonitor:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            self._sample()

    def _sample(self) -> None:
        now, me, hz = _cpu_ticks(), os.getpid(), os.sysconf("SC_CLK_TCK")
        for pid, (cmd, ppid, ticks) in now.items():
            if pid == me or ppid == me:
                continue
            before = self._last.get(pid)
            delta = ticks - before[2] if before is not None else ticks  # new pid: all of its time
            if delta > 0:
                self._used[cmd[:100]] = self._used.get(cmd[:100], 0.0) + delta / hz
        self._last = now

    def stop(self) -> tuple[float, list[str]]:
        """(share of the machine's CPU the others used, top consumers as text)."""
        self._stop.set()
        self._thread.join()
        self._sample()
        span = (time.monotonic() - self._started) * (os.cpu_count() or 1)
        top = sorted(self._used.items(), key=lambda kv: -kv[1])[:3]
        return sum(self._used.values()) / span, [f"{cpu:.0f} CPU-s {cmd}" for cmd, cpu in top if cpu >= 1.0]


def busy_processes(window_s: float = 2.0, threshold: float = 0.1) -> list[str]:
    """Other processes that used more than ``threshold`` of a core over ``window_s`` (from /proc)."""
    before = _cpu_ticks()
    time.sleep(window_s)
    after = _cpu_ticks()
    hz = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, (cmd, _, ticks) in after.items():
        if pid == os.getpid() or pid not in before:
            continue
        share = (ticks - before[pid][2]) / hz / window_s
        if share > threshold:
            busy.append(f"{share:.0%} {cmd[:90]}")
    return busy


def machine_lines() -> list[str]:
    import onnxruntime
    import torch

    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return [
        f"machine: `uname -m` {platform.machine()}, `nproc` {nproc}, {cpu}",
        f"software: Python {platform.python_version()}, torch {torch.__version__} "
        f"(intra-op threads {torch.get_num_threads()}), onnxruntime {onnxruntime.__version__}, "
        f"numpy {np.__version__}, rclpy (ros-kilted) {_version('ros-kilted-rclpy')}, "
        f"RMW {os.environ.get('RMW_IMPLEMENTATION', 'default (rmw_fastrtps_cpp)')}",
    ]


# ------------------------------------------------------------------ output
def table(rows: list[Row]) -> str:
    lines = ["| section | what | median | p90 | unit | n | note |", "|---|---|---:|---:|---|---:|---|"]
    for r in rows:
        k = 1e3 if r.unit == "us" else 1.0
        lines.append(f"| {r.section} | {r.what} | {k * r.median:.2f} | {k * r.p90:.2f} | {r.unit} | "
                     f"{len(r.values_ms)} | {r.note} |")
    return "\n".join(lines)


def verdict(e2e: EndToEnd) -> str:
    over, model = statistics.median(e2e.overhead_ms), statistics.median(e2e.model_ms)
    worst = max(e2e.overhead_ms)
    ratio = over / model
    ok = ratio <= TARGET_RATIO and worst <= TARGET_MS
    return (f"overhead median {over:.1f} ms = {100 * ratio:.1f} % of the node's median model time "
            f"{model:.1f} ms; max {worst:.1f} ms over {len(e2e.overhead_ms)} sets "
            f"(target: <= {100 * TARGET_RATIO:.0f} % and never > {TARGET_MS:.0f} ms): "
            f"{'MET' if ok else 'MISSED'}")


def record(text: str) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if not RESULTS.exists():
        RESULTS.write_text(
            "# Runtime benchmark: model time, end-to-end latency, pipeline overhead\n\n"
            "Appended by `bench/bench_runtime.py` (its docstring defines every row). Six cameras, "
            "640x384 rgb8 images, default student (ResNet-18, 64 bins, 384x640, random weights), "
            "node on the ONNX Runtime CPU backend.\n"
        )
    with RESULTS.open("a") as f:
        f.write("\n" + text + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-runs", type=int, default=8, help="timed model-only runs per backend")
    p.add_argument("--model-warmup", type=int, default=1)
    p.add_argument("--sets", type=int, default=16, help="end-to-end sets measured (after the warm-up sets)")
    p.add_argument("--warmup-sets", type=int, default=1)
    p.add_argument("--part-runs", type=int, default=30, help="timed runs of each part")
    p.add_argument("--domain-id", type=int, default=231, help="ROS_DOMAIN_ID of the node and the feeder")
    p.add_argument("--transport", choices=("large-shm", "default"), default="large-shm",
                   help="large-shm: Fast DDS profile with 16 MB shared-memory segments (see LARGE_SHM_PROFILE); "
                        "default: Fast DDS as installed (640x384 rgb8 images are too big for it)")
    p.add_argument("--input-reliability", choices=("best_effort", "reliable"), default="best_effort",
                   help="the node's qos.input_reliability (its default: best_effort); the feeder publishes reliable")
    p.add_argument("--note", default="", help="free text recorded with the results")
    p.add_argument("--verbose", action="store_true", help="print one line per end-to-end set")
    p.add_argument("--no-record", action="store_true", help=f"do not append to {RESULTS.relative_to(REPO)}")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS),
                   help="the student the node runs end to end (default: the shipped default)")
    p.add_argument("--model-presets", default="lite,base,large,legacy",
                   help="comma-separated presets timed model-only on torch and ONNX Runtime")
    args = p.parse_args(argv)
    presets = [x for x in args.model_presets.split(",") if x]
    if unknown := [x for x in presets if x not in PRESETS]:
        p.error(f"--model-presets: unknown preset(s) {unknown}; choose from {sorted(PRESETS)}")
    global VERBOSE
    VERBOSE = args.verbose

    started = time.monotonic()
    load_start = os.getloadavg()
    busy = busy_processes()
    print(f"other busy processes at start: {busy or 'none'}", flush=True)
    monitor = CpuMonitor().start()
    with tempfile.TemporaryDirectory(prefix="fsmde_bench_runtime_") as tmp:
        work = Path(tmp)
        models = {preset: make_model(work, preset) for preset in dict.fromkeys([args.preset, *presets])}
        _, onnx, cfg = models[args.preset]
        images = make_images(args.warmup_sets + args.sets)
        batch = np.ascontiguousarray(images[0])
        print("parts ...", flush=True)
        rows = [sync_row(500)]
        print("model only ...", flush=True)
        m_rows = model_rows({p: models[p][:2] for p in presets}, batch, args.model_warmup, args.model_runs)
        e_rows, result = estimator_rows(onnx, batch, 3, args.part_runs)
        rows = m_rows + rows + e_rows + conversion_rows(result, batch, 3, args.part_runs)
        print("end to end (node subprocess) ...", flush=True)
        e2e = end_to_end(onnx, images, args.warmup_sets, args.domain_id, work, args.transport,
                         args.input_reliability)
    n = f"{len(e2e.latency_ms)} sets"
    rows[len(m_rows):len(m_rows)] = [
        Row("end to end", "last image in -> cloud out", e2e.latency_ms, f"{n}, {e2e.points} points, {e2e.lost} lost"),
        Row("end to end", "last image in -> last depth image out", e2e.depth_ms, n),
        Row("end to end", "node model time (its /diagnostics)", e2e.model_ms, "same sets"),
        Row("end to end", "**pipeline overhead** = e2e - node model", e2e.overhead_ms, "per set"),
        Row("end to end", "  of which: input + in-node (last image -> node done - model)", e2e.in_node_overhead_ms,
            "node clock, 0.1 ms resolution"),
        Row("end to end", "  of which: output (node done -> cloud received)", e2e.out_transport_ms, ""),
    ]
    out = table(rows)
    summary = verdict(e2e)
    load_end = os.getloadavg()
    others, top = monitor.stop()
    during = (f"other processes used {100 * others:.1f} % of the machine's CPU during the run"
              + (f" (top: {'; '.join(top)})" if top else ""))
    print("\n" + out + "\n\n" + summary + "\n" + during)
    print(f"total {time.monotonic() - started:.0f} s")
    if args.no_record:
        return
    quiet = "quiet (no other process above 10 % of a core)" if not busy else "NOT quiet: " + "; ".join(busy)
    quiet += f"; {during}"
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## {stamp}", "", *[f"- {m}" for m in machine_lines()],
             f"- command: `{shlex.join([Path(sys.executable).name, *sys.argv])}`",
             f"- machine state at start: {quiet}; load average 1/5/15 min at start "
             f"{'/'.join(f'{x:.2f}' for x in load_start)}, at end {'/'.join(f'{x:.2f}' for x in load_end)}",
             f"- DDS: rmw_fastrtps_cpp, domain {args.domain_id}, localhost discovery, transport {args.transport}"
             f"{' (16 MB shared-memory segments, see LARGE_SHM_PROFILE)' if args.transport == 'large-shm' else ''}, "
             f"node qos.input_reliability {args.input_reliability}, feeder publishes reliable, "
             "this process subscribes to the cloud, the six depth images and their camera_info",
             f"- model: end to end the `{args.preset}` preset ({cfg['encoder']}, {cfg['num_bins']} bins, "
             f"decoder {cfg['decoder_block']} {list(cfg['decoder_channels'])}), model-only rows presets "
             f"{', '.join(presets)}; input {cfg['input_height']}x{cfg['input_width']}, random weights (seed 0), "
             "ONNX fixed batch 6",
             f"- total run time {time.monotonic() - started:.0f} s"]
    if args.note:
        lines.append(f"- note: {args.note}")
    record("\n".join([*lines, "", out, "", f"**Target**: {summary}"]))
    print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
