"""``surround_depth_node``: six synchronized cameras in, metric depth per camera + one fused cloud out.

Data flow (one arrow per thread hand-over)::

    image / camera_info callbacks (the executor's thread)
      -> ApproximateTimeSynchronizer (header.stamp; arrival on the steady clock)
      -> mailbox (one slot, newest wins; ``pipeline.queue_size`` > 1 queues sets for replays)
      -> inference worker thread: decode, then :class:`fsmde_core.estimator.SurroundDepthEstimator`
         (resize, ONE batched backend.infer, REP 117, masks, cloud), publish
         <ns>/depth + <ns>/depth/camera_info (+ <ns>/depth/confidence) per camera and the cloud
      -> (every ``image_quality.every_n_sets``-th set, one slot) image-quality thread:
         :func:`fsmde_core.image_quality.assess` per camera, read by the /diagnostics timer

Why a worker thread and a one-slot mailbox: the network takes longer than a
camera period on a CPU (and on a small GPU with six cameras), and executor
callbacks must keep draining the DDS queues meanwhile, or the synchronizer
would see stale, overflowing queues. The newest complete set *replaces* a
waiting one (counted in diagnostics): after a slow frame the node resumes
with the most recent instant instead of working through a backlog, which is
what a perception consumer wants (bounded latency, not every frame).
Offline replays that must keep every set (tests, dataset processing) set
``pipeline.queue_size`` > 1: then nothing is lost to machine load.

Why a *single-threaded* executor: every callback is short (a synchronizer
insert, a cached camera_info check, a diagnostics message), and the one heavy
job has its own thread. rclpy's MultiThreadedExecutor costs Python-level
dispatch (a thread-pool hand-off and a rebuilt wait set) per message; with six
images and six camera_infos arriving in one burst per set, the last image of a
set reached its callback 6 ms (median; 20 ms worst) after it was published,
against 2-3 ms (4.5 ms worst) with the single-threaded one (``bench/bench_runtime.py``,
``bench/results/runtime.md``). That wait is pure latency on every set.

Conventions (REP 103/105/117/118): depth is 32FC1 metres along the optical
Z axis, NaN = invalid or ego-masked, +Inf = beyond range, never 0, published
with the *input image's header* at the model's resolution, with a matching
camera_info whose K/P are rescaled to that size. The cloud is unorganised
xyz(+rgb) in ``cloud.frame_id``, stamped with the synchronized set's
reference stamp = the LATEST member stamp (the first instant at which every
image of the set exists, see :mod:`fsmde_core.sync`).

Lifecycle: configure validates parameters, loads calibration / sets up TF,
loads and warms up the model and creates the (lifecycle) publishers, so
subscribers can connect before data flows; activate creates subscriptions,
timers and the worker; deactivate removes them; cleanup releases publishers
and the model. ``autostart`` (default) runs configure + activate itself so
``ros2 run`` works without a lifecycle manager.
"""

from __future__ import annotations

import contextlib
import re
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

import numpy as np
import rclpy
import rclpy.logging
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType, JumpThreshold, TimeJump
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header

from fsmde_core.calib_health import CrossViewMonitor
from fsmde_core.camera import CameraModel
from fsmde_core.data.tf import transform_stamped_to_matrix
from fsmde_core.estimator import CameraFrame, CloudOptions, DepthResult, SurroundDepthEstimator
from fsmde_core.image_quality import assess
from fsmde_core.rig import Rig, RigCamera, RigError
from fsmde_core.sync import ApproximateTimeSynchronizer, SyncedSet
from fsmde_ros.conversions import (
    ConversionError,
    camera_info_to_model,
    depth_to_image,
    message_to_rgb,
    model_to_camera_info,
    ns_to_stamp,
    points_to_cloud,
    stamp_to_ns,
)
from fsmde_ros.diagnostics import (
    CLOCK_HINT,
    CLOCK_MISMATCH_NS,
    ImageQualityBoard,
    PipelineStats,
    Window,
    calibration_status,
    camera_status,
    image_quality_status,
    pipeline_status,
    silent_cameras,
    sync_failure_advice,
)
from fsmde_ros.instance_guard import guard_output_topics
from fsmde_ros.params import (
    CloudSettings,
    NodeSettings,
    ParameterError,
    declare_parameters,
    load_settings,
    make_set_parameters_check,
    ros_arguments_problem,
    warn_unknown_overrides,
)
from fsmde_ros.stop_signals import StopRequest, stop_signals

NODE_NAME = "surround_depth_node"
LOG_THROTTLE_S = 5.0
SYNC_FAIL_LOG_S = 10.0  # "sets fail to synchronize" is a configuration problem: say it, but rarely
MOTION_TF_WAIT_NS = 50_000_000  # odometry for the newest stamp may arrive a moment after the images
WARMUP_ITERATIONS = 2
WORKER_JOIN_S = 30.0  # a CPU forward pass of a big model can take seconds
STOP_POLL_S = 0.2  # how often the main loop looks at SIGINT / SIGTERM (fsmde_ros.stop_signals)

SUCCESS = TransitionCallbackReturn.SUCCESS
FAILURE = TransitionCallbackReturn.FAILURE


# --------------------------------------------------------------- small parts
class InputProblemError(Exception):
    """One camera's input cannot be used for this set (bad encoding, size, no camera_info...)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Throttle:
    """Per-key log throttling: rclpy's ``throttle_duration_sec`` is per call site, which
    would let one broken camera hide the messages of another."""

    def __init__(self, period_s: float = LOG_THROTTLE_S) -> None:
        self._period_ns = int(period_s * 1e9)
        self._last: dict[Any, int] = {}
        self._suppressed: Counter = Counter()
        self._lock = threading.Lock()

    def __call__(self, key: Any) -> int | None:
        """None: stay quiet. Otherwise log now; the value = messages suppressed since last time."""
        now = time.monotonic_ns()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._period_ns:
                self._suppressed[key] += 1
                return None
            self._last[key] = now
            return self._suppressed.pop(key, 0)


_Item = TypeVar("_Item")


class Mailbox(Generic[_Item]):
    """Bounded hand-over from one thread to a worker (synchronized sets to inference; frames to
    the image-quality check).

    Capacity 1 is the live mode: a new item replaces the waiting one, so the
    worker always starts on the newest instant. A larger capacity is for
    offline replays that need every set regardless of machine load: items
    queue up and the oldest is dropped only when the queue is full.
    """

    def __init__(self, capacity: int = 1) -> None:
        if capacity < 1:
            raise ValueError(f"mailbox capacity must be >= 1, got {capacity}")
        self._cond = threading.Condition()
        self._items: deque[_Item] = deque()
        self._capacity = capacity
        self._closed = False

    def put(self, item: _Item) -> bool:
        """Store ``item``; True when a waiting item had to make room (replaced, never processed)."""
        with self._cond:
            replaced = len(self._items) >= self._capacity
            if replaced:
                self._items.popleft()
            self._items.append(item)
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> _Item | None:
        """The oldest waiting item, or None when closed or after ``timeout`` seconds."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if self._closed or not self._items:
                return None
            return self._items.popleft()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()


@dataclass
class _CameraInfoState:
    key: bytes = b""
    model: CameraModel | None = None
    error: str | None = None


@dataclass
class _Frame:
    """One camera's decoded image of a set, with the header its outputs carry."""

    name: str
    header: Header
    rgb: np.ndarray
    model: CameraModel  # at the image size


def _info_key(msg: CameraInfo) -> bytes:
    """Cheap identity of a camera_info's calibration (it repeats every frame)."""
    parts = [np.asarray(msg.k, dtype=np.float64).tobytes(), np.asarray(msg.d, dtype=np.float64).tobytes(),
             np.asarray(msg.p, dtype=np.float64).tobytes(),
             np.array([msg.width, msg.height, msg.binning_x, msg.binning_y, msg.roi.x_offset,
                       msg.roi.y_offset, msg.roi.width, msg.roi.height], dtype=np.int64).tobytes(),
             msg.distortion_model.encode()]
    return b"|".join(parts)


def _load_mask(path: str, model: CameraModel, camera: str) -> np.ndarray:
    """Ego mask image -> (H, W) bool at the calibration size, True = vehicle body."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as img:
            mask = np.asarray(img.convert("L")) != 0
    except (OSError, ValueError) as exc:
        raise RigError(f"camera {camera!r}: cannot read ego mask {path!r}: {exc}") from exc
    if mask.shape != (model.height, model.width):
        raise RigError(
            f"camera {camera!r}: ego mask {path!r} is {mask.shape[1]}x{mask.shape[0]} but the calibration "
            f"is {model.width}x{model.height}"
        )
    return mask


# ------------------------------------------------------------------ the node
class SurroundDepthNode(LifecycleNode):
    """Lifecycle node running a surround depth student on synchronized camera sets (module doc)."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        declare_parameters(self)  # ParameterError: wrong type/range in an override
        warn_unknown_overrides(self)  # a misspelt name in a params file would otherwise be ignored
        # Validate at construction as well: a bad value refuses to start even under a manager.
        self.settings: NodeSettings = load_settings(self)
        self.autostart = self.settings.autostart
        self._throttle = Throttle()
        self._rare_throttle = Throttle(SYNC_FAIL_LOG_S)
        self._lock = threading.Lock()
        self._reset_resources()
        self.add_on_set_parameters_callback(make_set_parameters_check(self, self._apply_live))

    def _reset_resources(self) -> None:
        self.backend: Any = None
        self.estimator: SurroundDepthEstimator | None = None
        self.backend_info: dict[str, Any] = {}
        self.rig: Rig | None = None
        self._masks: dict[str, np.ndarray] = {}
        self._tf_buffer: Any = None
        self._tf_listener: Any = None
        self._tf_cache: dict[str, np.ndarray] = {}
        self._depth_pubs: dict[str, Any] = {}
        self._info_pubs: dict[str, Any] = {}
        self._confidence_pubs: dict[str, Any] = {}
        self._cloud_pub: Any = None
        self._diag_pub: Any = None
        self._subs: list[Any] = []
        self._timers: list[Any] = []
        self._jump_handle: Any = None
        self._sync: ApproximateTimeSynchronizer | None = None
        self._mailbox: Mailbox[SyncedSet] | None = None
        self._worker: threading.Thread | None = None
        self._quality_mailbox: Mailbox[list[_Frame]] | None = None
        self._quality_worker: threading.Thread | None = None
        self._infos: dict[str, _CameraInfoState] = {}
        self._newest_by_camera: dict[str, int] = {}
        self._cloud_settings: CloudSettings = self.settings.cloud
        self.stats = PipelineStats(self.settings.camera_names)
        self._motion_note = "n/a (no cloud published yet)"
        self._cross_view: CrossViewMonitor | None = None
        self._cross_view_note = "not checked yet"
        self._cross_view_sets = 0
        self._cross_view_checks = 0
        self._cross_view_off = False
        self._sync_seen: tuple[int, int] = (0, 0)  # (emitted, unmatched drops) at the last diagnostics
        self._quality_settings = self.settings.image_quality  # image_quality.* apply live
        self._quality_board = ImageQualityBoard()
        self._quality_sets = 0

    # ------------------------------------------------------------ lifecycle
    def start(self) -> bool:
        """configure + activate (``autostart``); False if either fails (the reason is logged)."""
        return self.trigger_configure() == SUCCESS and self.trigger_activate() == SUCCESS

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        log = self.get_logger()
        try:
            self.settings = load_settings(self)
            self._reset_resources()
            self._load_calibration()
            self._setup_tf()
            self._load_backend()
            self._create_publishers()
        except (ParameterError, RigError, _ConfigureError) as exc:
            log.error(f"configure failed: {exc}")
            self._release_all()
            return FAILURE
        except Exception as exc:  # an unexpected failure must still leave a clean, unconfigured node
            log.error(f"configure failed: {type(exc).__name__}: {exc}")
            self._release_all()
            return FAILURE
        s = self.settings
        h, w = self.backend.input_size
        log.info(
            f"configured: {len(s.cameras)} cameras ({', '.join(s.camera_names)}), {s.image_transport} "
            f"images, sync {s.sync.policy} slop {s.sync.slop_ns / 1e6:g} ms, model {s.model.path} on "
            f"{self.backend_info.get('backend')}/{self.backend_info.get('device')} at {h}x{w}, "
            f"extrinsics from {s.extrinsics.source}"
        )
        return SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._create_pipeline()
        except Exception as exc:
            self.get_logger().error(f"activate failed: {type(exc).__name__}: {exc}")
            self._destroy_pipeline()
            return FAILURE
        ret = super().on_activate(state)  # enables the lifecycle publishers
        self.get_logger().info(
            "active: subscribed to " + ", ".join(c.subscribe_topic for c in self.settings.cameras)
        )
        return ret

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_pipeline()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_all()
        return SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_all()
        return SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error while in state {state.label!r}; releasing everything")
        self._release_all()
        return SUCCESS

    def release(self) -> None:
        """Stop the worker and free every resource (process exit; safe to call twice)."""
        self._release_all()

    def _release_all(self) -> None:
        self._destroy_pipeline()
        for pub in [*self._depth_pubs.values(), *self._info_pubs.values(), *self._confidence_pubs.values(),
                    self._cloud_pub]:
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        if self._diag_pub is not None:
            self.destroy_publisher(self._diag_pub)
        if self._tf_listener is not None and hasattr(self._tf_listener, "unregister"):
            self._tf_listener.unregister()
        self._reset_resources()

    # ---------------------------------------------------------- configure
    def _load_calibration(self) -> None:
        ext = self.settings.extrinsics
        if ext.calibration_file is None:
            return
        rig = Rig.load(ext.calibration_file)
        missing = [n for n in self.settings.camera_names if n not in rig.names]
        if missing and ext.source == "calibration":
            raise _ConfigureError(
                f"calibration {ext.calibration_file} has no camera(s) {missing} (it has {rig.names}); "
                f"cameras.names must use the calibration's camera names"
            )
        if missing:
            self.get_logger().warning(
                f"calibration {ext.calibration_file} has no camera(s) {missing}: they get no fallback "
                f"intrinsics and no ego mask"
            )
        if ext.source == "calibration" and rig.base_frame != self.settings.cloud.frame_id:
            raise _ConfigureError(
                f"cloud.frame_id is {self.settings.cloud.frame_id!r} but the calibration's extrinsics are in "
                f"{rig.base_frame!r} ({ext.calibration_file}); set cloud.frame_id:={rig.base_frame} or use "
                f"extrinsics.source:=tf"
            )
        for cam in rig.cameras:
            if cam.name in self.settings.camera_names and cam.mask:
                self._masks[cam.name] = _load_mask(cam.mask, cam.model, cam.name)
        self.rig = rig

    def _setup_tf(self) -> None:
        """TF is needed for camera extrinsics (extrinsics.source tf) and for the ego motion of
        cloud.motion_compensation; ``auto`` quietly does without it when tf2_ros is missing."""
        motion = self.settings.cloud.motion_compensation
        if self.settings.extrinsics.source != "tf" and motion == "off":
            self._motion_note = "off (cloud.motion_compensation: off)"
            return
        try:
            import tf2_ros  # lazily: pip-only ROS installs have no tf2_ros for Python
        except ImportError as exc:
            if self.settings.extrinsics.source == "tf":
                raise _ConfigureError(
                    f"extrinsics.source is 'tf' but tf2_ros cannot be imported ({exc}). Install tf2_ros "
                    f"(ros-<distro>-tf2-ros-py) or use the rig calibration instead: "
                    f"-p extrinsics.source:=calibration -p extrinsics.calibration_file:=<rig.yaml>"
                ) from None
            if motion == "on":
                raise _ConfigureError(
                    f"cloud.motion_compensation is 'on' but tf2_ros cannot be imported ({exc}); install tf2_ros "
                    f"(ros-<distro>-tf2-ros-py) or set cloud.motion_compensation:=auto (or off)"
                ) from None
            self._motion_note = "off (tf2_ros is not installed: no ego motion from TF)"
            return
        self._tf_buffer = tf2_ros.Buffer()
        self._tf_listener = tf2_ros.TransformListener(self._tf_buffer, self)
        if motion == "off":
            self._motion_note = "off (cloud.motion_compensation: off)"

    def _load_backend(self) -> None:
        from fsmde_core.runtime import build_backend

        m = self.settings.model
        try:
            backend = build_backend(m.backend, m.path, device=m.device, precision=m.precision)
        except Exception as exc:  # CheckpointError, BackendError, ImportError, ValueError, ...
            raise _ConfigureError(
                f"cannot load model {str(m.path)!r} with backend {m.backend!r} on {m.device}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        if self.settings.needs_confidence and not backend.has_confidence:
            raise _ConfigureError(
                f"model {str(m.path)!r} has no confidence output but outputs.confidence is on or "
                f"cloud.min_confidence > 0; re-export it with `fsmde export --confidence`"
            )
        n = len(self.settings.cameras)
        fixed = backend.batch_size
        if fixed is not None and fixed < n:
            raise _ConfigureError(
                f"model {str(m.path)!r} was exported for a fixed batch of {fixed} images but {n} cameras are "
                f"configured; re-export it for {n} cameras or with a dynamic batch"
            )
        try:
            backend.warmup(WARMUP_ITERATIONS, batch=n)
        except Exception as exc:
            raise _ConfigureError(
                f"model {str(m.path)!r} failed its warm-up run: {type(exc).__name__}: {exc}"
            ) from None
        self.backend = backend
        self.estimator = SurroundDepthEstimator(backend, confidence=self.settings.needs_confidence)
        self.backend_info = backend.describe()
        trained = self.backend_info.get("camera_names") or []
        if trained and set(trained) != set(self.settings.camera_names):
            self.get_logger().warning(
                f"model was trained on cameras {trained} but the node runs "
                f"{list(self.settings.camera_names)}; the weights are shared across cameras, so this "
                f"works, but check the rig"
            )

    def _create_publishers(self) -> None:
        s = self.settings
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=s.qos.output_depth,
                         reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
        for cam in s.cameras:
            self._depth_pubs[cam.name] = self.create_lifecycle_publisher(Image, cam.depth_topic, qos)
            self._info_pubs[cam.name] = self.create_lifecycle_publisher(CameraInfo, cam.depth_info_topic, qos)
            if s.confidence:
                self._confidence_pubs[cam.name] = self.create_lifecycle_publisher(Image, cam.confidence_topic, qos)
        if s.cloud.enabled:
            self._cloud_pub = self.create_lifecycle_publisher(PointCloud2, s.cloud.topic, qos)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

    # ------------------------------------------------------------- activate
    def _create_pipeline(self) -> None:
        s = self.settings
        self.stats = PipelineStats(s.camera_names)
        self._sync = ApproximateTimeSynchronizer(
            s.camera_names, slop_ns=s.sync.slop_ns, queue_size=s.sync.queue_size, policy=s.sync.policy,
            timeout_ns=s.sync.timeout_ns if s.sync.policy == "partial" else None,
            min_cameras=s.sync.min_cameras, phase_correction=s.sync.phase_correction,
        )
        self._mailbox = Mailbox(s.pipeline_queue_size)
        self._newest_by_camera = {}
        self._sync_seen = (0, 0)
        reliability = (ReliabilityPolicy.BEST_EFFORT if s.qos.input_reliability == "best_effort"
                       else ReliabilityPolicy.RELIABLE)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=s.qos.input_depth, reliability=reliability,
                         durability=DurabilityPolicy.VOLATILE)
        group = ReentrantCallbackGroup()  # the synchronizer and caches take their own locks
        msg_type = CompressedImage if s.image_transport == "compressed" else Image
        for cam in s.cameras:
            self._subs.append(self.create_subscription(
                msg_type, cam.subscribe_topic, lambda m, n=cam.name: self._on_image(n, m), qos,
                callback_group=group))
            self._subs.append(self.create_subscription(
                CameraInfo, cam.info_topic, lambda m, n=cam.name: self._on_info(n, m), qos,
                callback_group=group))
        steady = Clock(clock_type=ClockType.STEADY_TIME)  # timers keep ticking when /clock pauses
        timer_group = MutuallyExclusiveCallbackGroup()
        if s.sync.policy == "partial":
            period = max(s.sync.timeout_ns / 4e9, 0.005)
            self._timers.append(self.create_timer(period, self._poll_sync, timer_group, clock=steady))
        self._timers.append(self.create_timer(s.diagnostics_period_s, self._publish_diagnostics, timer_group,
                                              clock=steady))
        self._timers.append(guard_output_topics(self, s))  # warns of a second node on our output topics
        # /clock going back (ros2 bag play --loop --clock) restarts the time order of the synchronizer
        self._jump_handle = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(nanoseconds=-1), on_clock_change=False),
            post_callback=self._on_clock_jump)
        self._worker = threading.Thread(target=self._worker_loop, args=(self._mailbox,),
                                        name="surround-depth-inference", daemon=True)
        self._worker.start()
        # image quality in a thread of its own: the inference worker only hands frames over
        self._quality_mailbox = Mailbox(1)
        self._quality_worker = threading.Thread(target=self._quality_loop, args=(self._quality_mailbox,),
                                                name="surround-depth-image-quality", daemon=True)
        self._quality_worker.start()

    def _destroy_pipeline(self) -> None:
        for sub in self._subs:
            self.destroy_subscription(sub)
        for timer in self._timers:
            self.destroy_timer(timer)
        self._subs, self._timers = [], []
        if self._jump_handle is not None:
            self._jump_handle.unregister()
            self._jump_handle = None
        self._sync = None
        if self._mailbox is not None:
            self._mailbox.close()
        worker, self._worker = self._worker, None
        if worker is not None and worker is not threading.current_thread():
            worker.join(WORKER_JOIN_S)
            if worker.is_alive():
                self.get_logger().warning("inference worker did not stop in time; leaving it (daemon thread)")
        self._mailbox = None
        if self._quality_mailbox is not None:
            self._quality_mailbox.close()
        checker, self._quality_worker = self._quality_worker, None
        if checker is not None and checker is not threading.current_thread():
            checker.join(WORKER_JOIN_S)  # at most one check of one set in flight: milliseconds
        self._quality_mailbox = None

    def _apply_live(self, settings: NodeSettings) -> None:
        """Cloud limits take effect on the next set (ray caches rebuild on a stride change);
        cloud.min_confidence waits for configure, where the model's confidence output is checked."""
        self._cloud_settings = replace(settings.cloud, enabled=self._cloud_settings.enabled,
                                       topic=self._cloud_settings.topic,
                                       min_confidence=self._cloud_settings.min_confidence)
        self._quality_settings = settings.image_quality

    # ------------------------------------------------------------ callbacks
    def _on_image(self, camera: str, msg: Image | CompressedImage) -> None:
        arrival = time.monotonic_ns()  # steady: works with use_sim_time and replays alike
        sync = self._sync
        if sync is None:
            return
        self.stats.arrival(camera)
        stamp = stamp_to_ns(msg.header.stamp)
        self._check_time_jump(sync, camera, stamp)
        for synced in sync.add(camera, stamp, msg, arrival):
            self._offer(synced)

    def _check_time_jump(self, sync: ApproximateTimeSynchronizer, camera: str, stamp: int) -> None:
        """A replay that loops (or restarts) without /clock goes back in time: without a reset
        every later message would be dropped as stale by the synchronizer's time order, for good
        when the loop is short (its stamps never pass the last emitted set again).

        One camera's stamps only go forward (one driver, one topic), so any step back of more
        than ``sync.slop_ms`` within a camera is a restart, however short the loop. All cameras'
        history is forgotten with the reset, so the other cameras' first looped messages (also
        back in time) do not reset it a second time.
        """
        with self._lock:
            newest = self._newest_by_camera.get(camera)
            jumped = newest is not None and stamp < newest - self.settings.sync.slop_ns
            if jumped:
                self._newest_by_camera.clear()
            if newest is None or stamp > newest or jumped:
                self._newest_by_camera[camera] = stamp
        if jumped:
            sync.reset()
            self.stats.stamp_reset()
            suppressed = self._throttle(("stamp_jump",))
            if suppressed is not None:
                self.get_logger().warning(
                    f"camera {camera!r}: stamps jumped back by {(newest - stamp) / 1e9:.3f} s (replay looped or "
                    f"restarted without /clock?); synchronizer reset"
                    + (f" ({suppressed} similar suppressed)" if suppressed else ""))

    def _on_clock_jump(self, jump: TimeJump) -> None:
        sync = self._sync
        if sync is not None and jump.delta.nanoseconds < 0:
            self.get_logger().info(
                f"clock jumped back by {-jump.delta.nanoseconds / 1e9:.2f} s; resetting the synchronizer")
            sync.reset()
            with self._lock:
                self._newest_by_camera.clear()

    def _poll_sync(self) -> None:
        sync = self._sync
        if sync is not None:
            for synced in sync.poll(time.monotonic_ns()):
                self._offer(synced)

    def _offer(self, synced: SyncedSet) -> None:
        mailbox = self._mailbox
        if mailbox is not None:
            self.stats.set_in(mailbox.put(synced))

    def _on_info(self, camera: str, msg: CameraInfo) -> None:
        key = _info_key(msg)
        with self._lock:
            current = self._infos.get(camera)
            if current is not None and current.key == key:
                return
        try:
            state = _CameraInfoState(key=key, model=camera_info_to_model(msg))
        except ConversionError as exc:
            state = _CameraInfoState(key=key, error=str(exc))
            self._report(camera, "camera_info", f"unusable camera_info: {exc}")
        with self._lock:
            self._infos[camera] = state

    # --------------------------------------------------------------- worker
    def _worker_loop(self, mailbox: Mailbox) -> None:
        while True:
            synced = mailbox.take()
            if synced is None:
                return
            try:
                self._process(synced)
            except Exception as exc:  # never let one bad set kill the worker
                self.stats.inference_error()
                suppressed = self._throttle(("worker", type(exc).__name__))
                if suppressed is not None:
                    self.get_logger().error(
                        f"set at {synced.stamp_ns / 1e9:.3f} s dropped: {type(exc).__name__}: {exc}"
                        + (f" ({suppressed} similar suppressed)" if suppressed else "")
                    )

    def _process(self, synced: SyncedSet) -> None:
        """Decoded frames -> the estimator -> depth + camera_info per camera, then the cloud."""
        frames = self._prepare(synced)
        if frames is None:
            self.stats.dropped()
            return
        cloud = self._cloud_settings
        want_cloud = cloud.enabled and self._cloud_pub is not None
        cross_view = self._cross_view_due()
        extrinsics = [self._extrinsic(f) if want_cloud or cross_view else None for f in frames]
        result = self.estimator.predict([
            CameraFrame(f.name, f.rgb, f.model, extrinsic=T, mask=self._masks.get(f.name))
            for f, T in zip(frames, extrinsics, strict=True)])
        for k, f in enumerate(frames):
            self._depth_pubs[f.name].publish(depth_to_image(result.depth[k], f.header))
            self._info_pubs[f.name].publish(model_to_camera_info(result.models[k], f.header))
            if f.name in self._confidence_pubs:  # 32FC1 like depth, the same header
                self._confidence_pubs[f.name].publish(depth_to_image(result.confidence[k], f.header))
        if want_cloud:
            self._publish_cloud(synced.stamp_ns, frames, result, cloud)
        self.stats.output(result.timings.model_s, self._latency_s(synced.stamp_ns))
        if cross_view:
            self._update_cross_view(result)
        quality = self._quality_mailbox
        if quality is not None and self._image_quality_due():  # measured in its own thread, never here
            quality.put(frames)

    def _latency_s(self, stamp_ns: int) -> float | None:
        """Node clock minus the set's stamp; None before the clock runs. A gap beyond
        CLOCK_MISMATCH_NS is another clock (a bag without --clock): said in the log, rarely."""
        now = self.get_clock().now().nanoseconds
        latency = (now - stamp_ns) / 1e9 if now > 0 else None
        if latency is not None and abs(latency) * 1e9 > CLOCK_MISMATCH_NS:
            suppressed = self._rare_throttle(("clock",))
            if suppressed is not None:
                side = "behind" if latency > 0 else "ahead of"
                sim_time = self.get_parameter("use_sim_time").value
                self.get_logger().warning(
                    f"{CLOCK_HINT} set stamp {stamp_ns / 1e9:.3f} s is {abs(latency):.1f} s {side} the "
                    f"node clock {now / 1e9:.3f} s (use_sim_time {sim_time}); latency is not reported")
        return latency

    def _prepare(self, synced: SyncedSet) -> list[_Frame] | None:
        """Decode every member and find its intrinsics; None = drop the set.

        Under ``wait`` any bad camera drops the set (a complete set was asked for);
        under ``partial`` only that camera is left out, as long as ``min_cameras`` remain.
        """
        frames: list[_Frame] = []
        sync = self.settings.sync
        for name, member in synced.messages.items():
            if member is None:
                continue
            msg = member[1]
            try:
                frames.append(self._decode(name, msg))
            except InputProblemError as exc:
                self._report(name, exc.kind, f"{exc} (set at {synced.stamp_ns / 1e9:.3f} s)")
                if sync.policy == "wait":
                    return None
        if len(frames) < (sync.min_cameras if sync.policy == "partial" else len(synced.messages)):
            return None
        return frames or None

    def _decode(self, name: str, msg: Image | CompressedImage) -> _Frame:
        try:
            rgb = message_to_rgb(msg, self.settings.max_image_pixels)
        except ConversionError as exc:
            raise InputProblemError("decode", str(exc)) from None
        height, width = rgb.shape[:2]
        return _Frame(name=name, header=msg.header, rgb=rgb, model=self._intrinsics(name, width, height))

    def _intrinsics(self, name: str, width: int, height: int) -> CameraModel:
        """Latest camera_info, else the calibration (rescaled if only the resolution differs)."""
        with self._lock:
            info = self._infos.get(name)
        if info is not None and info.error is not None:
            raise InputProblemError("camera_info", f"its camera_info is unusable: {info.error}")
        if info is not None and info.model is not None:
            m = info.model
            if (m.width, m.height) != (width, height):
                raise InputProblemError(
                    "size_mismatch",
                    f"image is {width}x{height} but its camera_info says {m.width}x{m.height}",
                )
            return m
        cam = self._calibration_camera(name)
        if cam is None:
            topic = next(c.info_topic for c in self.settings.cameras if c.name == name)
            raise InputProblemError(
                "no_camera_info",
                f"no camera_info received on {topic} and no calibration file entry to fall back on",
            )
        m = cam.model
        if abs(m.width / m.height - width / height) > 0.01 * width / height:
            raise InputProblemError(
                "size_mismatch",
                f"image is {width}x{height} but the calibration is {m.width}x{m.height} (other aspect ratio)",
            )
        return m.scaled_to(width, height)

    def _calibration_camera(self, name: str) -> RigCamera | None:
        rig = self.rig
        return rig.camera(name) if rig is not None and name in rig.names else None

    # ----------------------------------------------------------------- cloud
    def _publish_cloud(self, stamp_ns: int, frames: list[_Frame], result: DepthResult,
                       cloud: CloudSettings) -> None:
        """Fuse and publish; cameras exposed before the reference stamp are moved to it when TF
        has the ego motion (cloud.motion_compensation)."""
        poses = self._ego_poses(stamp_ns, frames, cloud)
        ego = None
        if poses is not None:
            ego = {f.name: pose for f, pose in zip(frames, poses[1], strict=True)
                   if stamp_to_ns(f.header.stamp) != stamp_ns}
        options = CloudOptions(stride=cloud.stride, max_range=cloud.max_range, min_range=cloud.min_range,
                               colour=cloud.colour, max_points=cloud.max_points,
                               min_confidence=cloud.min_confidence)
        fused = self.estimator.fuse(result, options, ego, None if poses is None else poses[0])
        header = Header(stamp=ns_to_stamp(stamp_ns), frame_id=cloud.frame_id)
        self._cloud_pub.publish(points_to_cloud(fused.xyz, fused.rgb, header))

    def _ego_poses(self, stamp_ns: int, frames: list[_Frame],
                   cloud: CloudSettings) -> tuple[np.ndarray, list[np.ndarray]] | None:
        """``T_fixed_base`` at the reference stamp and at each camera's stamp, from TF; None = no
        compensation for this set (the reason goes to diagnostics, and to the log under ``on``)."""
        if cloud.motion_compensation == "off" or self._tf_buffer is None:
            return None
        what = f"{cloud.fixed_frame}->{cloud.frame_id}"
        try:
            ref = self._lookup_pose(cloud, stamp_ns)
            at_cameras = [self._lookup_pose(cloud, stamp_to_ns(f.header.stamp)) for f in frames]
        except Exception as exc:  # tf2 raises LookupException, ExtrapolationException, ...
            self._motion_note = f"off (no {what} in TF at the set's stamps: {type(exc).__name__})"
            if cloud.motion_compensation == "on":
                suppressed = self._rare_throttle(("motion",))
                if suppressed is not None:
                    self.get_logger().warning(
                        f"cloud.motion_compensation is on but TF has no {what} at {stamp_ns / 1e9:.3f} s "
                        f"({type(exc).__name__}: {exc}); this cloud is not motion compensated")
            return None
        self._motion_note = f"on ({what})"
        return ref, at_cameras

    def _lookup_pose(self, cloud: CloudSettings, stamp_ns: int) -> np.ndarray:
        tf = self._tf_buffer.lookup_transform(cloud.fixed_frame, cloud.frame_id, Time(nanoseconds=stamp_ns),
                                              timeout=Duration(nanoseconds=MOTION_TF_WAIT_NS))
        return transform_stamped_to_matrix(tf)

    # ------------------------------------------------------- calibration health
    def _cross_view_due(self) -> bool:
        """Every ``diagnostics.cross_view_every_n``-th set gets the cross-view check (WHY: module
        doc of :mod:`fsmde_core.calib_health`)."""
        every = self.settings.cross_view_every_n
        if self._cross_view_off:
            return False
        if every <= 0:
            self._cross_view_note = "off (diagnostics.cross_view_every_n: 0)"
            return False
        self._cross_view_sets += 1
        return (self._cross_view_sets - 1) % every == 0

    def _update_cross_view(self, result: DepthResult) -> None:
        """Feed the set's posed cameras to the monitor; its ring is the first complete set's."""
        posed = result.posed_rig(self._cloud_settings.frame_id)
        if posed is None:
            return
        rig, depth = posed
        try:
            if self._cross_view is None:
                if len(rig.cameras) < len(self.settings.cameras):
                    return  # the adjacency ring needs every camera's pose once
                self._cross_view = CrossViewMonitor.for_rig(rig, stride=self.settings.cross_view_stride)
            self._cross_view.update(depth, rig)
        except ImportError as exc:  # a broken install: say so in diagnostics, keep depth flowing
            self._cross_view_note = f"unavailable ({exc})"
            self._cross_view_off = True
            return
        self._cross_view_checks += 1
        self._cross_view_note = f"checked {self._cross_view_checks} set(s)"

    def _extrinsic(self, f: _Frame) -> np.ndarray | None:
        """T_base_cam from the calibration, or from TF (cached: camera mounts are static)."""
        if self.settings.extrinsics.source == "calibration":
            cam = self._calibration_camera(f.name)
            return None if cam is None else cam.T_base_cam
        frame = f.header.frame_id
        cached = self._tf_cache.get(frame)
        if cached is not None:
            return cached
        try:
            tf = self._tf_buffer.lookup_transform(self._cloud_settings.frame_id, frame, Time())
        except Exception as exc:  # tf2 raises LookupException, ExtrapolationException, ...
            self._report(f.name, "tf", f"no transform {self._cloud_settings.frame_id} <- {frame!r} yet "
                                       f"({type(exc).__name__}); camera left out of the cloud")
            return None
        T = transform_stamped_to_matrix(tf)
        self._tf_cache[frame] = T
        return T

    # ------------------------------------------------------------ image quality
    def _image_quality_due(self) -> bool:
        """Every ``image_quality.every_n_sets``-th output set is checked (the first one included)."""
        q = self._quality_settings
        if not q.enabled:
            return False
        self._quality_sets += 1
        return (self._quality_sets - 1) % q.every_n_sets == 0

    def _quality_loop(self, mailbox: Mailbox[list[_Frame]]) -> None:
        """The image-quality thread: checks the newest handed-over set (a newer one replaces a set
        still waiting, so a slow check never queues up work)."""
        while True:
            frames = mailbox.take()
            if frames is None:
                return
            self._check_image_quality(frames)

    def _check_image_quality(self, frames: list[_Frame]) -> None:
        """Measure each camera's image (fsmde_core.image_quality) for /diagnostics; a failure is
        logged (throttled) and skipped, never counted against the pipeline."""
        q = self._quality_settings
        for f in frames:
            try:
                quality = assess(f.rgb, q.thresholds, q.max_side)
            except Exception as exc:  # e.g. an image too thin to tile: say so, keep depth flowing
                suppressed = self._throttle((f.name, "image_quality"))
                if suppressed is not None:
                    self.get_logger().warning(f"camera {f.name!r}: image quality not measured: "
                                              f"{type(exc).__name__}: {exc}")
                continue
            self._quality_board.record(f.name, quality, stamp_to_ns(f.header.stamp))

    # ------------------------------------------------------------ reporting
    def _report(self, camera: str, kind: str, message: str) -> None:
        """Count a bad input and log it, throttled per (camera, kind)."""
        self.stats.problem(camera, kind)
        suppressed = self._throttle((camera, kind))
        if suppressed is not None:
            extra = f" ({suppressed} similar suppressed)" if suppressed else ""
            self.get_logger().warning(f"camera {camera!r}: {message}{extra}")

    def _publish_diagnostics(self) -> None:
        pub = self._diag_pub
        if pub is None:
            return
        window, span = self.stats.roll()
        sync = self._sync
        sync_stats = sync.stats if sync is not None else None
        msg, cams = self._diagnostic_array(window, span, sync_stats)
        pub.publish(msg)
        if sync_stats is not None:
            self._explain_sync_failure(window, sync_stats, silent_cameras(cams))

    def _diagnostic_array(self, window: Window, span: float,
                          sync_stats: Any) -> tuple[DiagnosticArray, list[DiagnosticStatus]]:
        """Pipeline, per-camera, calibration and (image_quality.enabled) per-camera image-quality
        statuses, named after this node's fully-qualified name (unique per node on /diagnostics)."""
        name = self.get_fully_qualified_name()
        snap = self.stats.snapshot()
        now = time.monotonic()
        cams = [camera_status(name, c, window, span, snap, sync_stats, now) for c in self.stats.cameras]
        estimator = self.estimator
        pipeline = pipeline_status(name, window, span, snap, sync_stats, cams, motion_note=self._motion_note,
                                   backend_info=self.backend_info,
                                   ray_cache_builds=estimator.ray_cache_builds if estimator is not None else 0)
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [pipeline, *cams, calibration_status(name, self._cross_view, self._cross_view_note)]
        quality = self._quality_settings
        if quality.enabled:
            msg.status += [image_quality_status(name, c, self._quality_board.latest(c), quality.every_n_sets)
                           for c in self.stats.cameras]
        return msg, cams

    def _explain_sync_failure(self, w: Window, sync_stats: Any, silent: list[str]) -> None:
        """Images arrive but no set forms: say why in the log (throttled), with the observed stamp
        spread and the setting that would fix it; /diagnostics alone is easy to miss."""
        unmatched = sum(d.unmatched for d in sync_stats.dropped.values())
        emitted_before, unmatched_before = self._sync_seen
        self._sync_seen = (sync_stats.emitted, unmatched)
        if sync_stats.emitted > emitted_before or not sum(w.received.values()):
            return
        s = self.settings.sync
        fix = sync_failure_advice(sync_stats, silent, policy=s.policy, slop_ns=s.slop_ns,
                                  phase_correction=s.phase_correction, new_unmatched=unmatched > unmatched_before)
        if fix is None:
            return
        suppressed = self._rare_throttle(("sync_fail",))
        if suppressed is not None:
            self.get_logger().warning(f"images fail to synchronize: no set in the last "
                                      f"{self.settings.diagnostics_period_s:g} s; {fix}")


class _ConfigureError(RuntimeError):
    """configure cannot complete; the message is logged as is."""


# -------------------------------------------------------------------- main
def main(args: Sequence[str] | None = None) -> int:
    """Entry point of ``surround_depth_node`` / ``python -m fsmde_ros.node``.

    Exit codes: 0 after SIGINT / SIGTERM / shutdown, 2 for invalid parameters or
    command line, 1 when ``autostart`` could not configure or activate (e.g. the
    model does not load).
    """
    argv = list(args) if args is not None else sys.argv
    problem = ros_arguments_problem(argv)
    if problem is None:
        problem = _init_rclpy(argv)
    if problem is not None:
        print(f"{NODE_NAME}: not starting: {problem}", file=sys.stderr)
        return 2
    with stop_signals() as stop:
        return _run_until_stopped(stop)


def _init_rclpy(argv: list[str]) -> str | None:
    """``rclpy.init`` without rclpy's signal handlers (see :mod:`fsmde_ros.stop_signals`); rcl's
    refusal of the command line as one line (its message without C source locations)."""
    from rclpy.impl.implementation_singleton import rclpy_implementation
    from rclpy.signals import SignalHandlerOptions

    try:
        rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    except rclpy_implementation.RCLError as exc:
        return re.sub(r",? at /\S+:\d+", "", " ".join(str(exc).split()))
    return None


def _run_until_stopped(stop: StopRequest) -> int:
    """Spin until a stop signal or a context shutdown; then worker, node, context, in that order."""
    try:
        node = SurroundDepthNode()
    except ParameterError as exc:
        rclpy.logging.get_logger(NODE_NAME).fatal(f"invalid parameters, not starting: {exc}")
        rclpy.try_shutdown()
        return 2
    executor = SingleThreadedExecutor()  # why single-threaded: module doc
    try:
        if node.autostart and not node.start():
            node.get_logger().fatal("could not configure and activate (see above); exiting")
            return 1
        executor.add_node(node)
        with contextlib.suppress(ExternalShutdownException):
            while not stop.is_set() and rclpy.ok():
                executor.spin_once(timeout_sec=STOP_POLL_S)
        node.get_logger().info(f"shutting down ({stop.received or 'context shutdown'})")
    finally:
        node.release()  # joins the inference worker while its publishers and the context still exist
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
