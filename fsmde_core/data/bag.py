"""Streaming rosbag2 recordings into :class:`SurroundSample` s.

Per bag: discover the layout (:mod:`fsmde_core.data.layout`), then one pass in
log-time order over the camera, LiDAR and ground-truth topics. Only stamps are
read from each message on the way (:func:`header_stamp_ns`); a message is
deserialised and decoded once its set is complete, so memory holds a few raw
frames per camera, never the bag.

Pairing is on ``header.stamp`` (capture time), never on the reader's log time:

* cameras: :class:`~fsmde_core.sync.ApproximateTimeSynchronizer`, the same
  one as the node's: each camera's trigger phase is learnt from the stamps and
  sets are matched on phase-corrected stamps within ``sync_tolerance_ms``
  (policy ``wait``, the stamp clock as arrival clock); a queue of
  ``horizon_s`` x 30 images per camera absorbs log-time reordering (a camera
  whose transport lags the others). Instants with a missing camera are
  dropped and counted. A set's reference stamp is its LATEST camera stamp.
* LiDAR: the sweep whose stamp is closest to the set's EARLIEST camera stamp
  (see :func:`lidar_reference_ns`), within ``lidar_tolerance_ms``. A set waits
  until a sweep later than ``reference + tolerance`` has been seen (or
  ``horizon_s`` of log time has passed) so a better sweep cannot arrive
  afterwards.
* ground truth: per camera, the GT image closest to that camera's stamp.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.highlevel import AnyReader

from fsmde_core.data.config import DataConfig
from fsmde_core.data.errors import BagError
from fsmde_core.data.grouping import Stamped
from fsmde_core.data.layout import BagLayout, discover_layout
from fsmde_core.data.motion import compensated_sparse_depth, decode_point_times, stamp_sparse_depth
from fsmde_core.data.reader import check_bag_path, deserialize, iter_raw, message_stamp_ns, open_bag
from fsmde_core.data.sample import SampleSource, SurroundSample, load_mask, resize_nearest, resize_rgb
from fsmde_core.geometry import drop_see_through_points, lidar_to_sparse_depth
from fsmde_core.messages import (
    MalformedMessageError,
    UnsupportedEncodingError,
    cloud_xyz,
    image_to_depth,
    image_to_mono8,
    message_to_rgb,
)
from fsmde_core.semantics import VOID
from fsmde_core.sync import ApproximateTimeSynchronizer

log = logging.getLogger(__name__)


@dataclass
class ReadStats:
    """What the reader produced and what it had to leave out (summed over bags)."""

    bags: int = 0
    sets: int = 0  # complete camera sets
    samples: int = 0  # samples yielded
    incomplete_sets: int = 0  # moments where at least one camera was missing
    dropped_images: int = 0  # images of those moments
    out_of_order: int = 0  # images whose stamp went backwards on their topic
    no_lidar: int = 0  # sets of bags with a LiDAR topic without a sweep within tolerance (dropped if require_lidar)
    camera_only: int = 0  # sets of bags without any LiDAR topic (kept, all-NaN sparse depth)
    missing_gt: int = 0  # camera images whose GT depth was missing (NaN-filled)
    missing_labels: int = 0  # camera images whose semantic labels were missing (VOID-filled)
    missing_reflective: int = 0  # camera images whose reflective mask was missing (all False)
    skipped_messages: int = 0  # malformed messages skipped (their set is dropped)
    uncompensated: int = 0  # samples whose LiDAR projection ignores ego motion (no /tf, or outside it)
    no_odometry: int = 0  # samples without odometry poses (no /tf odom|map -> base chain, or outside it)

    def add(self, other: ReadStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}


@dataclass
class Moment:
    """A complete camera set with its matched LiDAR sweep, GT depth and labels, still as raw CDR.

    Decoding is deferred to :meth:`assemble` so that a consumer (the cache
    builder resuming a killed run) can skip sets it already has. ``assemble``
    must be called before the iterator that produced the moment advances (it
    deserialises with the open bag's type store).
    """

    source: SampleSource
    images: list[Stamped[bytes]]
    lidar: Stamped[bytes] | None
    gt: list[Stamped[bytes] | None]
    builder: SampleBuilder = field(repr=False)
    labels: list[Stamped[bytes] | None] | None = None  # per camera; None = the bag has no label topics
    reflective: list[Stamped[bytes] | None] | None = None  # per camera; None = no reflective-mask topics

    @property
    def stamp_ns(self) -> int:
        """The set's reference stamp: the latest camera stamp (as the node's ``SyncedSet.stamp_ns``)."""
        return max(s.stamp_ns for s in self.images)

    def assemble(self) -> SurroundSample:
        """Decode and resize; MalformedMessageError for a broken payload, BagError for a broken topic.

        Counts the outcome in the bag's :class:`ReadStats` (``samples`` or ``skipped_messages``).
        """
        try:
            sample = self.builder.build(self)
        except MalformedMessageError:
            self.builder.stats.skipped_messages += 1
            raise
        self.builder.stats.samples += 1
        return sample


class SampleBuilder:
    """Decodes a :class:`Moment` of one bag into a :class:`SurroundSample` at the target size."""

    def __init__(self, reader: AnyReader, layout: BagLayout, config: DataConfig, stats: ReadStats) -> None:
        self.reader, self.layout, self.config, self.stats = reader, layout, config, stats
        native = layout.rig()
        sizes = {c.name: (c.model.width, c.model.height) for c in native.cameras}
        if config.size is None and len(set(sizes.values())) > 1:
            odd = next(c for c in layout.cameras if sizes[c.name] != sizes[layout.cameras[0].name])
            raise BagError(layout.bag, odd.image_topic, f"cameras have different sizes {sizes}: "
                           "set data.width and data.height to read them as one sample")
        self.width, self.height = config.size or next(iter(sizes.values()))
        self.native_sizes = [sizes[c.name] for c in layout.cameras]
        self.rig = native.scaled(self.width, self.height)
        self.models = [c.model for c in self.rig.cameras]
        self.T_base_cam = np.stack([c.T_base_cam for c in self.rig.cameras])
        self.masks = np.stack([
            load_mask(c.mask, self.width, self.height) if c.mask
            else np.zeros((self.height, self.width), dtype=bool)
            for c in layout.cameras
        ])
        self.has_gt = any(c.gt_topic for c in layout.cameras)
        self.has_labels = any(c.labels_topic for c in layout.cameras)
        self.has_reflective = any(c.reflective_topic for c in layout.cameras)
        self.max_depth = config.max_depth if config.max_depth is not None else self.rig.max_depth
        self._warned_uncompensated = False

    def _image(self, k: int, raw: bytes) -> np.ndarray:
        cam = self.layout.cameras[k]
        msg = deserialize(self.reader, raw, cam.image_type, cam.image_topic)
        try:
            img = message_to_rgb(msg, self.config.max_image_pixels)
        except UnsupportedEncodingError as exc:
            raise BagError(self.layout.bag, cam.image_topic, str(exc)) from exc
        except MalformedMessageError as exc:
            raise MalformedMessageError(f"topic {cam.image_topic}: {exc}") from exc
        if (img.shape[1], img.shape[0]) != self.native_sizes[k]:
            w, h = self.native_sizes[k]
            raise BagError(self.layout.bag, cam.image_topic, f"image is {img.shape[1]}x{img.shape[0]} but "
                           f"camera_info ({cam.info_topic}) says {w}x{h}")
        return resize_rgb(img, self.width, self.height)

    def _sparse(self, lidar: Stamped[bytes] | None, camera_stamps_ns: np.ndarray) -> tuple[np.ndarray, bool]:
        """(sparse depth, motion compensated?) of the set's sweep; see :mod:`fsmde_core.data.motion`."""
        if lidar is None:
            return np.full((len(self.models), self.height, self.width), np.nan, dtype=np.float32), False
        topic = self.layout.lidar_topic
        msg = deserialize(self.reader, lidar.item, "sensor_msgs/msg/PointCloud2", topic)
        try:
            pts = cloud_xyz(msg, np.float64)
            # per-point times only matter when there is a trajectory to move the points along
            wanted = self.config.motion_compensation == "auto" and self.layout.motion is not None
            times = decode_point_times(msg, lidar.stamp_ns) if wanted else None
        except UnsupportedEncodingError as exc:
            raise BagError(self.layout.bag, topic, str(exc)) from exc
        except MalformedMessageError as exc:
            raise MalformedMessageError(f"topic {topic}: {exc}") from exc
        depth = self._compensated(pts, times, lidar.stamp_ns, camera_stamps_ns)
        compensated = depth is not None
        if not compensated:
            self.stats.uncompensated += 1
            depth = lidar_to_sparse_depth(pts, self.rig, self.layout.T_base_lidar, self.config.min_depth,
                                          self.max_depth)
        if self.config.see_through_filter:
            depth = drop_see_through_points(depth, self.config.see_through_window, self.config.see_through_ratio)
        return depth.astype(np.float32), compensated

    def _compensated(self, pts: np.ndarray, times: np.ndarray | None, stamp_ns: int,
                     camera_stamps_ns: np.ndarray) -> np.ndarray | None:
        """Motion-compensated sparse depth, or None (logged once per bag) when it cannot be had."""
        motion, why = self.layout.motion, ""
        if self.config.motion_compensation == "off":
            return None
        if motion is None:
            why = f"no odom|map -> {self.layout.config.base_frame} chain on {self.config.tf_topic}"
        else:
            args = (camera_stamps_ns, self.rig, self.layout.T_base_lidar, motion, self.config.min_depth,
                    self.max_depth)
            depth = (compensated_sparse_depth(pts, times, *args) if times is not None
                     else stamp_sparse_depth(pts, stamp_ns, *args))
            if depth is not None:
                return depth
            why = f"sweep or image stamps outside {self.config.tf_topic} (first at sweep stamp {stamp_ns})"
        if not self._warned_uncompensated:
            log.warning("bag %s: LiDAR ground truth is NOT motion compensated (%s); counted in "
                        "ReadStats.uncompensated", self.layout.bag, why)
            self._warned_uncompensated = True
        return None

    def _decode_image(self, raw: Stamped[bytes], topic: str, decode: Callable[[Any], np.ndarray]) -> np.ndarray:
        """One ground-truth Image (depth or labels) decoded; a bad encoding names the bag and topic."""
        msg = deserialize(self.reader, raw.item, "sensor_msgs/msg/Image", topic)
        try:
            return decode(msg)
        except UnsupportedEncodingError as exc:
            raise BagError(self.layout.bag, topic, str(exc)) from exc
        except MalformedMessageError as exc:
            raise MalformedMessageError(f"topic {topic}: {exc}") from exc

    def _gt(self, gts: list[Stamped[bytes] | None]) -> np.ndarray | None:
        if not self.has_gt:
            return None
        out = np.full((len(self.models), self.height, self.width), np.nan, dtype=np.float32)
        for k, (cam, g) in enumerate(zip(self.layout.cameras, gts, strict=True)):
            if g is None:
                self.stats.missing_gt += bool(cam.gt_topic)
                continue
            depth = self._decode_image(g, cam.gt_topic, image_to_depth)
            out[k] = resize_nearest(depth, self.width, self.height)
        return out

    def _mono8_maps(self, msgs: list[Stamped[bytes] | None] | None, topic_of: str, what: str, fill: int,
                    missing: str) -> np.ndarray:
        """(N, H, W) uint8 per-camera mono8 maps at the sample size (nearest: ids and masks must not blend).

        ``topic_of`` names the camera attribute holding the topic; a missing
        message leaves ``fill`` and counts in ``ReadStats.<missing>`` (cameras
        with such a topic only); a map of another size than its camera is malformed.
        """
        out = np.full((len(self.models), self.height, self.width), fill, dtype=np.uint8)
        for k, (cam, msg_raw) in enumerate(zip(self.layout.cameras, msgs or [None] * len(out), strict=True)):
            topic = getattr(cam, topic_of)
            if msg_raw is None:
                setattr(self.stats, missing, getattr(self.stats, missing) + bool(topic))
                continue
            values = self._decode_image(msg_raw, topic, image_to_mono8)
            if (values.shape[1], values.shape[0]) != self.native_sizes[k]:
                w, h = self.native_sizes[k]
                raise MalformedMessageError(f"topic {topic}: {what} is {values.shape[1]}x{values.shape[0]}"
                                            f" but the camera is {w}x{h}")
            out[k] = resize_nearest(values, self.width, self.height)
        return out

    def _labels(self, labels: list[Stamped[bytes] | None] | None) -> np.ndarray | None:
        """(N, H, W) uint8 class ids at the sample size; VOID where missing."""
        if not self.has_labels:
            return None
        return self._mono8_maps(labels, "labels_topic", "label map", VOID, "missing_labels")

    def _reflective(self, masks: list[Stamped[bytes] | None] | None) -> np.ndarray | None:
        """(N, H, W) bool reflective-surface mask at the sample size; all False for a missing message.

        False (not reflective) for a missing camera keeps the sample usable: the
        mask only splits evaluation metrics, and the miss is counted in
        ``ReadStats.missing_reflective``.
        """
        if not self.has_reflective:
            return None
        return self._mono8_maps(masks, "reflective_topic", "reflective mask", 0, "missing_reflective") > 0

    def _odometry(self, camera_stamps_ns: np.ndarray) -> np.ndarray | None:
        """(N, 4, 4) float64 ``T_odom_base`` at each camera's stamp, or None (counted) without usable /tf.

        Per camera stamp, not per set: a sweep-triggered rig spreads its set over
        ~45 ms, 0.5 m at 12 m/s, which the photometric warps between cameras must
        not ignore. All or nothing: a sample with some poses outside /tf gets
        none, so its consumer never mixes odometry with identity.
        """
        motion = self.layout.motion
        if motion is not None:
            T, ok = motion.poses(camera_stamps_ns)
            if ok.all():
                return T.astype(np.float64)
        self.stats.no_odometry += 1
        return None

    def build(self, m: Moment) -> SurroundSample:
        images = np.stack([self._image(k, s.item) for k, s in enumerate(m.images)])
        stamps = np.array([s.stamp_ns for s in m.images], dtype=np.int64)
        sparse, compensated = self._sparse(m.lidar, stamps)
        return SurroundSample(
            stamp_ns=int(stamps.max()),  # the set's reference stamp (latest camera), as Moment.stamp_ns
            camera_names=[c.name for c in self.layout.cameras],
            images=images,
            camera_stamps_ns=stamps,
            models=list(self.models),
            T_base_cam=self.T_base_cam.copy(),
            sparse_depth=sparse,
            gt_depth=self._gt(m.gt),
            masks=self.masks.copy(),
            source=m.source,
            lidar_stamp_ns=None if m.lidar is None else m.lidar.stamp_ns,
            base_frame=self.layout.config.base_frame,
            motion_compensated=compensated,
            gt_labels=self._labels(m.labels),
            gt_reflective=self._reflective(m.reflective),
            T_odom_base=self._odometry(stamps),
        )


def _closest(buf: Iterable[Stamped[bytes]], t: int, tol: int) -> Stamped[bytes] | None:
    best, best_d = None, tol + 1
    for s in buf:
        d = abs(s.stamp_ns - t)
        if d < best_d:
            best, best_d = s, d
    return best


#: Fastest camera rate the reader's queues are sized for: ``horizon_s`` x this many images per camera.
MAX_CAMERA_RATE_HZ = 30


def reader_queue_size(config: DataConfig) -> int:
    """Images kept per camera while a set waits: ``horizon_s`` of a camera up to 30 Hz, >= 4.

    This is how far (in frames) one camera's log time may lag the others'
    without losing sets, and what bounds memory when a camera stops.
    """
    return max(4, math.ceil(config.horizon_s * MAX_CAMERA_RATE_HZ))


def reader_synchronizer(names: Sequence[str], config: DataConfig) -> ApproximateTimeSynchronizer:
    """The camera-set synchronizer of the reader (complete sets only, stamp clock); ``fsmde inspect``
    counts sets with this same one, so its number is what training and evaluation get."""
    return ApproximateTimeSynchronizer(list(names), slop_ns=config.sync_tolerance_ns,
                                       queue_size=reader_queue_size(config), policy="wait",
                                       phase_correction=config.phase_correction)


def lidar_reference_ns(cams: Iterable[Stamped[bytes]]) -> int:
    """Stamp a camera set's LiDAR sweep is chosen by: its EARLIEST camera stamp.

    Why not the set's reference (latest) stamp: on a sweep-triggered rig the
    cameras fire one after the other while the sweep passes them, so the sweep
    that triggered the set starts at or just before the first-firing camera,
    and the set spreads over ~43 ms. With a 20 Hz LiDAR (50 ms) the latest
    camera is then nearer to the NEXT sweep (7 ms) than to its own (43 ms);
    the earliest camera is nearest to its own. On a near-simultaneous rig
    (spread < 1 ms) both choices agree. Motion between the sweep and each
    camera is compensated per camera stamp elsewhere, so this only has to pick
    the right sweep.
    """
    return min(s.stamp_ns for s in cams)


class _BagStream:
    """The one-pass pairing state machine of one bag (see the module docstring)."""

    def __init__(self, reader: AnyReader, layout: BagLayout, config: DataConfig, stats: ReadStats) -> None:
        self.reader, self.layout, self.config, self.stats = reader, layout, config, stats
        self.builder = SampleBuilder(reader, layout, config, stats)
        n = len(layout.cameras)
        self.tol, self.ltol = config.sync_tolerance_ns, config.lidar_tolerance_ns
        self.horizon = config.horizon_ns
        self.names = [c.name for c in layout.cameras]
        self.sync = reader_synchronizer(self.names, config)
        self.roles: dict[str, tuple[str, int]] = {
            c.image_topic: ("cam", k) for k, c in enumerate(layout.cameras)
        }
        # per-camera dense side topics (GT depth, semantic labels, reflective masks): each image takes the
        # closest stamp
        self.side_topics = {
            "gt": [c.gt_topic for c in layout.cameras],
            "labels": [c.labels_topic for c in layout.cameras],
            "reflective": [c.reflective_topic for c in layout.cameras],
        }
        for role, topics in self.side_topics.items():
            self.roles.update({t: (role, k) for k, t in enumerate(topics) if t})
        if layout.lidar_topic:
            self.roles[layout.lidar_topic] = ("lidar", 0)
        self.lidar: deque[Stamped[bytes]] = deque()
        self.side: dict[str, list[deque[Stamped[bytes]]]] = {r: [deque() for _ in range(n)] for r in self.side_topics}
        self.lidar_newest: int | None = None
        self.side_newest: dict[str, list[int | None]] = {r: [None] * n for r in self.side_topics}
        self.cam_last: list[int | None] = [None] * n  # per camera: its latest stamp (order check)
        self.cam_newest: int | None = None
        self.pending: deque[list[Stamped[bytes]]] = deque()
        self.index = 0

    def run(self) -> Iterator[Moment]:
        for topic, msgtype, log_ns, raw in iter_raw(self.reader, self.layout.bag, list(self.roles)):
            try:
                stamp = message_stamp_ns(self.reader, raw, msgtype, topic)
            except MalformedMessageError as exc:
                log.warning("bag %s: skipping message: %s", self.layout.bag, exc)
                self.stats.skipped_messages += 1
                continue
            role, k = self.roles[topic]
            if role == "cam":
                self._camera(k, Stamped(stamp, log_ns, raw))
            elif role == "lidar":
                self.lidar.append(Stamped(stamp, log_ns, raw))
                self.lidar_newest = stamp if self.lidar_newest is None else max(self.lidar_newest, stamp)
            else:
                self.side[role][k].append(Stamped(stamp, log_ns, raw))
                newest = self.side_newest[role]
                newest[k] = stamp if newest[k] is None else max(newest[k], stamp)
            yield from self._finalise(log_ns, end=False)
            self._prune()
        self._queue_sets(self.sync.flush())  # end of bag: what is still waiting is decided now
        yield from self._finalise(0, end=True)
        st = self.sync.stats
        self.stats.dropped_images += st.dropped_total
        self.stats.incomplete_sets += st.lost_instants

    def _camera(self, k: int, msg: Stamped[bytes]) -> None:
        """Offer one image to the synchronizer; a stamp that does not rise on its topic is skipped."""
        last = self.cam_last[k]
        if last is not None and msg.stamp_ns <= last:
            self.stats.out_of_order += 1
            return
        self.cam_last[k] = msg.stamp_ns
        self.cam_newest = msg.stamp_ns if self.cam_newest is None else max(self.cam_newest, msg.stamp_ns)
        self._queue_sets(self.sync.add(self.names[k], msg.stamp_ns, msg))

    def _queue_sets(self, sets: Iterable) -> None:
        for synced in sets:
            self.pending.append([synced.messages[name][1] for name in self.names])

    def _ready(self, cams: list[Stamped[bytes]], log_ns: int) -> bool:
        if log_ns > max(s.log_ns for s in cams) + self.horizon:
            return True
        ref = lidar_reference_ns(cams)
        if self.layout.lidar_topic and (self.lidar_newest is None or self.lidar_newest <= ref + self.ltol):
            return False
        return all(
            not topic or (newest is not None and newest >= s.stamp_ns)
            for role, topics in self.side_topics.items()
            for topic, newest, s in zip(topics, self.side_newest[role], cams, strict=True)
        )

    def _finalise(self, log_ns: int, end: bool) -> Iterator[Moment]:
        while self.pending and (end or self._ready(self.pending[0], log_ns)):
            cams = self.pending.popleft()
            self.stats.sets += 1
            ref = lidar_reference_ns(cams)
            lidar = _closest(self.lidar, ref, self.ltol) if self.layout.lidar_topic else None
            if not self.layout.lidar_topic:
                self.stats.camera_only += 1  # nothing to require: the bag records no LiDAR
            elif lidar is None:
                self.stats.no_lidar += 1
                if self.config.require_lidar:
                    continue
            side = {r: [_closest(buf, s.stamp_ns, self.tol) for buf, s in zip(self.side[r], cams, strict=True)]
                    for r in self.side_topics}
            yield Moment(SampleSource(self.layout.bag, self.index), cams, lidar, side["gt"], self.builder,
                         labels=side["labels"] if self.builder.has_labels else None,
                         reflective=side["reflective"] if self.builder.has_reflective else None)
            self.index += 1

    def _prune(self) -> None:
        """Forget LiDAR/GT messages no current or future set can match."""
        if self.cam_newest is None:
            return
        floor = self.cam_newest - self.horizon
        held = self.sync.oldest_pending_ns()
        if held is not None:
            floor = min(floor, held)
        if self.pending:
            floor = min(floor, min(s.stamp_ns for s in self.pending[0]))
        while self.lidar and self.lidar[0].stamp_ns < floor - self.ltol:
            self.lidar.popleft()
        for bufs in self.side.values():
            for buf in bufs:
                while buf and buf[0].stamp_ns < floor - self.tol:
                    buf.popleft()


class BagSource:
    """Synchronised surround samples from one or more rosbag2 recordings.

    Bags are read one after the other (sets never span two bags); each bag's
    layout is discovered on its own, so bags with different topic names work
    as long as :class:`DataConfig` matches them. ``stats`` accumulates over
    every iteration.
    """

    def __init__(self, bags: Iterable[str | Path] | str | Path, config: DataConfig | None = None) -> None:
        if isinstance(bags, (str, Path)):
            bags = [bags]
        self.bags = [Path(b) for b in bags]
        if not self.bags:
            raise ValueError("BagSource needs at least one bag")
        for b in self.bags:
            check_bag_path(b)
        self.config = config or DataConfig()
        self.stats = ReadStats()

    def layout(self, bag: str | Path) -> BagLayout:
        """Discover one bag's layout (problems recorded, not raised)."""
        with open_bag(bag) as reader:
            return discover_layout(reader, Path(bag), self.config)

    def moments(self) -> Iterator[Moment]:
        """Complete sets, still undecoded, in bag order then stamp order."""
        for bag in self.bags:
            with open_bag(bag) as reader:
                layout = discover_layout(reader, bag, self.config)
                layout.raise_for_problems()
                for note in layout.notes:
                    log.info("bag %s: %s", bag, note)
                stats = ReadStats(bags=1)
                try:
                    yield from _BagStream(reader, layout, self.config, stats).run()
                finally:
                    self.stats.add(stats)
                    log.info("bag %s: %s", bag, stats.as_dict())
                if layout.lidar_topic and stats.sets and stats.no_lidar == stats.sets:
                    log.warning("bag %s: no camera set had a LiDAR sweep within %.0f ms on %s; are the "
                                "LiDAR stamps on another clock? (lidar_tolerance_ms)", bag,
                                self.config.lidar_tolerance_ms, layout.lidar_topic)

    def __iter__(self) -> Iterator[SurroundSample]:
        for m in self.moments():
            try:
                sample = m.assemble()
            except MalformedMessageError as exc:
                log.warning("bag %s: skipping set %d at stamp %d: %s", m.source.bag, m.source.index,
                            m.stamp_ns, exc)
                continue
            yield sample


def read_samples(
    bags: Iterable[str | Path] | str | Path, config: DataConfig | None = None
) -> Iterator[SurroundSample]:
    """Stream :class:`SurroundSample` s from rosbag2 recordings (see :class:`BagSource`)."""
    yield from BagSource(bags, config)
