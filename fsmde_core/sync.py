"""N-camera approximate-time synchronizer with trigger-phase correction (ROS-free).

The runtime node needs one image per camera *for the same capture instant* to
run a single batched forward pass, and the offline bag reader needs the same
sets for training. Both use this one class. ``message_filters`` is not
available here, and its Python ``ApproximateTimeSynchronizer`` walks the
product of all queues (cost grows as Q**N); this module does the job in
O(N log Q) per message.

Why phases
----------
A nuScenes-style rig triggers each camera as the spinning LiDAR passes it: the
six ``header.stamp`` s of one capture instant spread over ~43 ms of an 83 ms
period, at fixed per-camera *phases* (plus ~1 ms jitter). A plain tolerance
then has to exceed half the period, where it starts to mix instants.
DDAD-style rigs fire together (spread < 1 ms). Both are handled by matching on
*phase-corrected* stamps ``stamp - phase[camera]``, where the phases are
learnt from the stream itself, so that the tolerance (``slop_ns``) only has to
cover the trigger jitter.

Phase estimation (:func:`estimate_phases`)
-------------------------------------------
* Period ``T`` = median of the consecutive stamp differences of all cameras,
  refined as the median of ``diff / round(diff / T)`` so dropped frames (2T,
  3T gaps) do not bias it.
* Each camera's offset to a reference camera (the one with most stamps): for
  every stamp, the distance to the nearest reference stamp, wrapped into
  ``[-T/2, T/2)``; the circular mean of those, then the median of the values
  unwrapped around that mean (robust to jitter and to drops).
* The offsets lie on a circle of circumference ``T``. The circle is cut at the
  LARGEST gap between cameras, so the first camera after that gap (the
  first-firing one) gets phase 0 and the others lie in ``[0, spread]``. This
  defines a capture instant without any tolerance: the grouping with the least
  spread.

The synchronizer keeps a ring buffer of each camera's recent raw stamps,
independent of the matching queues (drops do not starve it). Once every camera
has ``warmup_frames`` stamps (or a queue would overflow, or one camera has
three times that many: a dead camera must not block the others) the phases are
estimated; a camera that had no stamps then joins later with its own estimate,
placed in the same frame. After every complete set each phase moves by
``phase_gain`` times its residual (corrected stamp minus the set's mean), which
follows a slow drift; the mean phase is kept. ``reset()`` forgets the phases
(a time jump may come with a different rig). ``phase_correction=False`` keeps
every phase at 0: the plain behaviour, for rigs whose cameras are unrelated.

Warm-up (phases unknown): sets are matched on raw stamps within
``warmup_slop_ns`` (default ``max(slop_ns, 50 ms)``, which covers a
nuScenes-style spread), so the first sets are not delayed; but nothing is
dropped or emitted as an "absent for sure" partial set in the warm-up: a set
that does not form waits in the queue for the phases (partial timeouts still
apply). A rig spread beyond ``warmup_slop_ns`` thus only delays its first sets.
Why match at all before the phases are known: a node would otherwise hold its
first frames back and then release them in one burst, of which its one-slot
mailbox keeps only the newest. ``warmup_slop_ns=0`` waits instead.

Contract and vocabulary
-----------------------
* Messages are keyed by ``header.stamp`` in integer nanoseconds; matching uses
  *corrected* stamps ``c = stamp - phase[camera]``. A set holds at most one
  message per camera; its corrected skew is at most ``slop_ns``.
* **Reference stamp** of a set (``SyncedSet.stamp_ns``) = the *latest RAW*
  member stamp. That is the first instant at which every member image exists,
  so a depth image or cloud stamped with it never claims to be older than any
  of its inputs. Offline samples use the same definition.
* **Time order** (in corrected time): every emitted set lies entirely after
  the previous one (its earliest corrected member is later than the previous
  set's latest corrected member, ``last_ref``). Two sets never interleave,
  i.e. never mix capture instants. A message whose corrected stamp is at or
  before ``last_ref`` can no longer be used: it is dropped as ``stale``. For
  complete sets this also makes the raw reference stamps strictly increase.
* **Per-camera order** (assumption, true for one ROS topic from one driver):
  messages of one camera arrive in increasing stamp order, while messages of
  *different* cameras may be interleaved arbitrarily (one camera may lag by
  several frames). A camera's stamps that go backwards are still accepted and
  sorted in, but the guarantees below are only claimed for ordered cameras.
  A phase is a per-camera constant, so corrected stamps keep each camera's
  order, and once camera ``c`` has delivered stamp ``h_c`` every future
  corrected stamp of ``c`` is later than ``h_c - phase[c]``.

Algorithm (one *step*, repeated until it reports "wait")
--------------------------------------------------------
Each camera keeps its pending messages sorted by stamp (``bisect.insort``;
at most ``queue_size`` of them, the oldest is dropped as ``overflow``).

1. **Anchor**: ``t0`` = the oldest pending corrected stamp of all cameras (the
   minimum of the N queue heads). Any set that contains it lies in
   ``W = [t0, t0 + slop]`` (corrected) because nothing older is pending.
2. **Present cameras**: those whose corrected head is in ``W``. ``ref`` = the
   latest of those heads; each present camera contributes its *latest*
   message with corrected stamp ``<= ref`` (found by bisection on the raw
   stamps against ``ref + phase``): with the reference fixed, that choice
   minimises the skew.
3. Every other camera is either **absent for sure** (its latest corrected
   stamp is ``>= t0 + slop``, so by per-camera order it can never fill ``W``)
   or **undecided** (its next message might still land in ``W``; a camera
   whose phase is not known yet is always undecided).
4. Decision:

   * all N present -> emit the complete set;
   * some camera undecided -> wait, unless policy ``"partial"`` and the set's
     first member arrived ``timeout_ns`` ago (on the caller's arrival clock):
     then emit a partial set if at least ``min_cameras`` are present,
     otherwise drop the anchor (``unmatched``);
   * only sure absences -> ``"partial"`` emits the partial set at once (no
     need to wait for a timeout when the answer is known) if it has
     ``min_cameras``; otherwise (and always under ``"wait"``) the anchor can
     never be in an acceptable set: drop it as ``unmatched`` and step again.

   After an emission every pending message with corrected stamp ``<= ref`` is
   removed (unused ones count as ``unmatched``), which enforces the time order.

Why it is correct (policy ``"wait"``, per-camera-ordered streams, fixed phases)
------------------------------------------------------------------------------
With the phases fixed, the corrected streams are per-camera-ordered streams of
plain stamps, so the argument is that of plain matching, in corrected time:

* *No set is missed by a drop*: a dropped anchor has a camera that can
  provide nothing in ``[t0 - slop, t0 + slop]`` (nothing pending there, and
  future messages are later than ``t0 + slop``), so it belongs to no
  complete set. Stale and purged messages lie before the last reference.
* *The emitted set is the earliest-ending one possible*: when all N cameras
  are present, every set that can still be formed (from pending or future
  messages) takes from each camera a message no earlier than its head, so its
  reference is ``>= max(heads) = ref``. No future message can produce a set
  that ends earlier, so waiting cannot improve the choice of instant.
* *Maximum count*: sets are intervals ``[earliest, latest]`` that must not
  overlap. Repeatedly taking the feasible set that ends first is the classic
  earliest-finish greedy of interval scheduling, which is optimal (exchange
  argument). Hence the number of complete sets equals the maximum number of
  disjoint, time-ordered sets within slop that an offline matcher could form
  from the whole (corrected) stream, absent ``overflow`` drops, for *any*
  cross-camera interleaving. ``test/test_sync.py`` checks this against brute
  force, with and without phase correction.
* *Skew*: among the messages received so far the set has the minimum skew
  for its reference. A later message could only tighten it if a camera sent
  two frames less than ``slop`` apart, which a well-chosen slop excludes
  (camera period > slop); waiting for that would cost a full frame period of
  latency on every set, so the set is emitted at once instead.
* *Phase changes*: the online update moves a phase by at most
  ``phase_gain * slop`` per set, far below the gap between instants; an
  estimate (warm-up end, a camera joining) re-expresses ``last_ref`` with the
  new phases. Any message that a change pushes to or before ``last_ref`` is
  dropped as ``stale`` when it becomes the anchor, so the time order holds.

Cost: a step is O(N log Q). Every step except the final "wait" step of a call
consumes at least one message (emits or drops it), so ``add`` costs
O(N log Q) amortised per message, linear in the number of cameras; a phase
update is O(N) per set and an estimate O(N H log H) once per warm-up or join
(ring buffer of H stamps). ``work_units`` counts the elementary operations so
tests can check that.

Threading: ``add``/``poll``/``stats`` take one lock, because rclpy may run
subscription callbacks on a multi-threaded executor.
"""

from __future__ import annotations

import bisect
import math
import operator
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

Policy = Literal["wait", "partial"]
_POLICIES: tuple[str, ...] = ("wait", "partial")
_HISTORY = 32  # raw stamps kept per camera for (re-)estimating phases
_WARMUP_SLOP_NS = 50_000_000  # raw-stamp tolerance before the phases are known: covers a ~45 ms sweep spread


# ------------------------------------------------------------------ phase estimation
@dataclass(frozen=True, slots=True)
class PhaseEstimate:
    """Trigger phases of a rig, learnt from stamps (see the module doc).

    ``phases_ns``: per camera, its firing time after the first-firing camera
    (which has 0), all in ``[0, spread_ns]``. ``jitter_ns``: robust spread
    (1.4826 MAD) of the stamps around their phase, relative to ``reference``.
    """

    period_ns: int
    phases_ns: dict[str, int]
    spread_ns: int
    jitter_ns: float
    reference: str


def estimate_phases(stamps: Mapping[str, Sequence[int]]) -> PhaseEstimate:
    """Period and per-camera trigger phases from raw ``header.stamp`` s (ns).

    Raises:
        ValueError: no camera, a camera without stamps, or no camera with two
            distinct stamps (the period is then unknown).
    """
    series = {name: np.unique(np.asarray(list(values), dtype=np.int64)) for name, values in stamps.items()}
    if not series:
        raise ValueError("estimate_phases needs the stamps of at least one camera")
    empty = [name for name, s in series.items() if s.size == 0]
    if empty:
        raise ValueError(f"no stamps for camera(s) {empty}: cannot estimate their trigger phase")
    period = _estimate_period(series)
    reference = max(series, key=lambda name: series[name].size)  # first of the longest
    offsets: dict[str, float] = {}
    residuals: list[np.ndarray] = []
    for name, s in series.items():
        d = _wrap((s - nearest_stamps(series[reference], s)).astype(np.float64), period)
        mean = _circular_mean(d, period)
        unwrapped = mean + _wrap(d - mean, period)
        offsets[name] = float(np.median(unwrapped))
        if name != reference:
            residuals.append(unwrapped - offsets[name])
    phases = _cut_at_largest_gap(offsets, period)
    res = np.concatenate(residuals) if residuals else np.zeros(0)
    jitter = float(1.4826 * np.median(np.abs(res - np.median(res)))) if res.size else 0.0
    return PhaseEstimate(period_ns=period, phases_ns=phases, spread_ns=max(phases.values()), jitter_ns=jitter,
                         reference=reference)


def _estimate_period(series: Mapping[str, np.ndarray]) -> int:
    diffs = np.concatenate([np.diff(s) for s in series.values() if s.size >= 2] or [np.zeros(0, np.int64)])
    if diffs.size == 0:
        raise ValueError("too few stamps to estimate the frame period: need two stamps of at least one camera")
    rough = float(np.median(diffs))
    multiple = np.rint(diffs / rough)
    keep = multiple >= 1  # a diff well below the period (a duplicate trigger) says nothing about it
    return max(1, round(float(np.median(diffs[keep] / multiple[keep]))))


def nearest_stamps(ref: np.ndarray, s: np.ndarray) -> np.ndarray:
    """For every stamp in ``s``, the nearest stamp of the sorted, non-empty array ``ref`` (ties: the earlier)."""
    hi = np.clip(np.searchsorted(ref, s), 0, ref.size - 1)
    lo = np.clip(hi - 1, 0, ref.size - 1)
    return np.where(np.abs(ref[lo] - s) <= np.abs(ref[hi] - s), ref[lo], ref[hi])


def suggest_tolerance_ms(spread_ns: float) -> float:
    """A tolerance (``sync.slop_ms``, ``data.*_tolerance_ms``) that accepts a measured stamp spread: 20 % +
    1 ms of margin for jitter, rounded up to whole milliseconds (a value users can type). One rule for the
    node's log, ``fsmde inspect`` and ``fsmde eval``, so they never suggest different values."""
    return float(math.ceil(max(float(spread_ns), 0.0) * 1.2 / 1e6 + 1.0))


def _wrap(x: np.ndarray | float, period: float) -> Any:
    """Into [-period/2, period/2)."""
    return np.mod(np.asarray(x) + period / 2, period) - period / 2


def _circular_mean(d: np.ndarray, period: float) -> float:
    angle = 2 * np.pi * d / period
    return float(np.arctan2(np.sin(angle).mean(), np.cos(angle).mean()) * period / (2 * np.pi))


def _cut_at_largest_gap(offsets: Mapping[str, float], period: int) -> dict[str, int]:
    """Unwrap circular offsets into [0, spread]: the camera after the widest gap fires first."""
    names = sorted(offsets, key=lambda name: offsets[name] % period)
    angles = [offsets[name] % period for name in names]
    gaps = [angles[(i + 1) % len(angles)] - angles[i] for i in range(len(angles))]
    gaps[-1] += period
    first = (int(np.argmax(gaps)) + 1) % len(names)
    origin = angles[first]
    return {name: round((offsets[name] - origin) % period) % period for name in offsets}


# ------------------------------------------------------------------ sets and stats
@dataclass(frozen=True, slots=True)
class SyncedSet:
    """One synchronized capture instant.

    ``messages`` maps every camera (in the synchronizer's camera order) to
    ``(stamp_ns, payload)`` or ``None`` when the camera is missing (partial
    sets only). ``stamp_ns`` is the reference stamp: the latest RAW member
    stamp. ``skew_ns`` is the raw spread; ``corrected_skew_ns`` the spread of
    the phase-corrected stamps (the one bounded by ``slop_ns``).
    """

    stamp_ns: int
    messages: dict[str, tuple[int, Any] | None]
    skew_ns: int
    missing: tuple[str, ...]
    corrected_skew_ns: int = 0

    @property
    def complete(self) -> bool:
        """True when every camera contributed a message."""
        return not self.missing


@dataclass(slots=True)
class DropCounts:
    """Messages of one camera that were dropped, by reason."""

    stale: int = 0  # arrived at or before the last emitted reference (corrected time)
    overflow: int = 0  # pushed out of a full queue
    unmatched: int = 0  # could not join any acceptable set within slop

    @property
    def total(self) -> int:
        return self.stale + self.overflow + self.unmatched


@dataclass(slots=True)
class SyncStats:
    """Counters for diagnostics. ``emitted`` counts complete and partial sets.

    ``skew_*``: raw spread of emitted sets. ``attempt_skew_*``: raw spread of
    every decided attempt, dropped anchors' candidate sets included; a camera
    that missed the window contributes its first pending message after the
    anchor's instant, so a misconfigured slop (or phase correction switched
    off on a sweep-triggered rig) shows the spread it refused instead of 0 or
    slop. ``attempt_skew_min_ns`` (refused attempts only): attempts anchored
    mid-instant span two instants, the one anchored at the first-firing camera
    spans exactly the rig's spread, so the minimum is the slop that would work.
    ``lost_instants``: capture instants given up (dropped anchors and
    overflowed messages, clustered within slop). ``phases_ns``: the current phase estimate (empty before it
    is known); ``phase_resets``: estimates forgotten by ``reset()``.
    """

    emitted: int = 0
    partial: int = 0
    received: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, DropCounts] = field(default_factory=dict)
    skew_last_ns: int | None = None
    skew_max_ns: int = 0
    skew_sum_ns: int = 0
    attempt_skew_last_ns: int | None = None
    attempt_skew_max_ns: int = 0
    attempt_skew_min_ns: int | None = None
    lost_instants: int = 0
    phases_ns: dict[str, int] = field(default_factory=dict)
    phase_resets: int = 0

    @property
    def complete(self) -> int:
        return self.emitted - self.partial

    @property
    def skew_mean_ns(self) -> float | None:
        """Mean skew of all emitted sets; None before the first one."""
        return self.skew_sum_ns / self.emitted if self.emitted else None

    @property
    def dropped_total(self) -> int:
        return sum(d.total for d in self.dropped.values())

    def copy(self) -> SyncStats:
        """Deep snapshot, safe to read while the synchronizer keeps running."""
        return replace(
            self,
            received=dict(self.received),
            dropped={name: replace(d) for name, d in self.dropped.items()},
            phases_ns=dict(self.phases_ns),
        )


@dataclass(frozen=True, slots=True)
class _Msg:
    stamp_ns: int
    payload: Any
    arrival_ns: int


@dataclass(slots=True)
class _Queue:
    """Pending messages of one camera, sorted by raw stamp (parallel lists so
    that ``bisect`` runs on plain ints; a phase shift keeps the order)."""

    stamps: list[int] = field(default_factory=list)
    msgs: list[_Msg] = field(default_factory=list)
    latest_ns: int | None = None  # latest raw stamp ever received (future ones are later)

    def note(self, stamp_ns: int) -> None:
        """Record that the camera has reached ``stamp_ns`` (even if dropped)."""
        if self.latest_ns is None or stamp_ns > self.latest_ns:
            self.latest_ns = stamp_ns

    def insert(self, msg: _Msg) -> None:
        i = bisect.bisect_right(self.stamps, msg.stamp_ns)
        self.stamps.insert(i, msg.stamp_ns)
        self.msgs.insert(i, msg)
        self.note(msg.stamp_ns)

    def pop_oldest(self) -> None:
        del self.stamps[0]
        del self.msgs[0]

    def drop_through(self, stamp_ns: int) -> int:
        """Remove every message with raw stamp <= ``stamp_ns``; return how many."""
        k = bisect.bisect_right(self.stamps, stamp_ns)
        del self.stamps[:k]
        del self.msgs[:k]
        return k


_WAIT = object()  # step result: nothing more can be decided now


class ApproximateTimeSynchronizer:
    """Gathers one message per camera per capture instant; see module doc.

    Args:
        cameras: camera names; the order is kept in every ``SyncedSet``.
        slop_ns: maximum skew of the phase-corrected stamps inside a set, > 0
            (the raw skew with ``phase_correction=False``).
        queue_size: pending messages kept per camera, >= 1; the oldest is
            dropped (``overflow``) beyond it, which bounds memory.
        policy: ``"wait"`` never emits partial sets; ``"partial"`` emits one
            when a camera is missing for sure, or after ``timeout_ns``.
        timeout_ns: for ``"partial"`` (required, > 0): how long, on the
            caller's arrival clock and counted from the first arrival among
            the set's members, a set waits for a camera that might still
            come. Ignored by ``"wait"``.
        min_cameras: smallest partial set worth emitting (1..N).
        phase_correction: learn each camera's trigger phase and match on
            corrected stamps; False = plain matching on raw stamps.
        warmup_frames: stamps per camera before the phases are estimated (>= 2).
        phase_gain: weight of each complete set's residuals in the online
            phase update, in [0, 1] (0 freezes the first estimate).
        warmup_slop_ns: raw-stamp tolerance while the phases are unknown;
            None = ``max(slop_ns, 50 ms)``; 0 = emit nothing until they are.
    """

    def __init__(
        self,
        cameras: Sequence[str],
        slop_ns: int,
        queue_size: int = 10,
        policy: Policy = "wait",
        timeout_ns: int | None = None,
        min_cameras: int = 1,
        phase_correction: bool = True,
        warmup_frames: int = 4,
        phase_gain: float = 0.05,
        warmup_slop_ns: int | None = None,
    ) -> None:
        self._cameras = _validate_cameras(cameras)
        self._slop = _positive_int("slop_ns", slop_ns)
        self._queue_size = _positive_int("queue_size", queue_size)
        if policy not in _POLICIES:
            raise ValueError(f"unknown policy {policy!r}; expected one of {_POLICIES}")
        self._policy: Policy = policy
        if timeout_ns is None:
            if policy == "partial":
                raise ValueError("policy='partial' needs timeout_ns > 0 (arrival-clock nanoseconds)")
            self._timeout: int | None = None
        else:
            self._timeout = _positive_int("timeout_ns", timeout_ns)
        n = len(self._cameras)
        if isinstance(min_cameras, bool) or not isinstance(min_cameras, int) or not 1 <= min_cameras <= n:
            raise ValueError(f"min_cameras must be an int in [1, {n}], got {min_cameras!r}")
        self._min_cameras = min_cameras
        if not isinstance(phase_correction, bool):
            raise ValueError(f"phase_correction must be a bool, got {phase_correction!r}")
        self._correct = phase_correction
        if _positive_int("warmup_frames", warmup_frames) < 2:
            raise ValueError(f"warmup_frames must be >= 2 (two stamps give the period), got {warmup_frames}")
        self._warmup = warmup_frames
        if isinstance(phase_gain, bool) or not isinstance(phase_gain, (int, float)) or not 0 <= phase_gain <= 1:
            raise ValueError(f"phase_gain must be a number in [0, 1], got {phase_gain!r}")
        self._gain = float(phase_gain)
        if warmup_slop_ns is None:
            self._warmup_slop: int | None = max(self._slop, _WARMUP_SLOP_NS)
        elif _as_int("warmup_slop_ns", warmup_slop_ns) < 0:
            raise ValueError(f"warmup_slop_ns must be >= 0, got {warmup_slop_ns}")
        else:
            self._warmup_slop = warmup_slop_ns or None  # 0: no set before the phases are known
        self._lock = threading.Lock()
        self._work = 0
        self._stats = _fresh_stats(self._cameras)
        self._reset_state()

    # ------------------------------------------------------------ public API
    @property
    def cameras(self) -> tuple[str, ...]:
        return self._cameras

    @property
    def slop_ns(self) -> int:
        return self._slop

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def warmup_slop_ns(self) -> int | None:
        """Raw-stamp tolerance of the sets formed before the phases are known (None: no such sets)."""
        return self._warmup_slop if self._correct else None

    @property
    def phase_correction(self) -> bool:
        return self._correct

    @property
    def phases_ns(self) -> dict[str, int | None]:
        """Current phase per camera; None while unknown (always with phase_correction=False)."""
        with self._lock:
            known = self._offsets if self._estimated and self._correct else {}
            return {name: known.get(name) for name in self._cameras}

    @property
    def stats(self) -> SyncStats:
        """A snapshot of the counters."""
        with self._lock:
            return self._stats.copy()

    @property
    def work_units(self) -> int:
        """Elementary operations done so far (queue visits, bisection steps,
        stamps read by an estimate). For tests and benchmarks of the
        per-message cost, not for control."""
        with self._lock:
            return self._work

    def pending(self) -> dict[str, int]:
        """Messages waiting per camera (queue depth, for diagnostics)."""
        with self._lock:
            return {name: len(q.stamps) for name, q in self._queues.items()}

    def oldest_pending_ns(self) -> int | None:
        """Raw stamp of the oldest message still waiting, or None (lets a
        caller prune data that no future set can need)."""
        with self._lock:
            heads = [q.stamps[0] for q in self._queues.values() if q.stamps]
            return min(heads) if heads else None

    def add(self, camera: str, stamp_ns: int, payload: Any, arrival_ns: int | None = None) -> list[SyncedSet]:
        """Offer one message; return the sets it completes (possibly none).

        ``arrival_ns`` is the caller's clock when the message arrived (e.g. the
        node clock, which follows ``/clock`` under ``use_sim_time``); it only
        drives ``"partial"`` timeouts. ``None`` means "the stamp clock": the
        arrival is taken to be ``stamp_ns`` (offline replay, tests).
        Under ``"partial"`` the returned list may hold sets that timed out.
        """
        if camera not in self._queues:
            raise ValueError(f"unknown camera {camera!r}; known: {self._cameras}")
        stamp = _as_int("stamp_ns", stamp_ns)
        arrival = stamp if arrival_ns is None else _as_int("arrival_ns", arrival_ns)
        with self._lock:
            self._advance_clock(arrival)
            self._stats.received[camera] += 1
            self._history[camera].append(stamp)
            queue = self._queues[camera]
            out: list[SyncedSet] = []
            offset = self._offsets.get(camera)
            if offset is not None and self._last_ref is not None and stamp - offset <= self._last_ref:
                queue.note(stamp)
                self._stats.dropped[camera].stale += 1
            else:
                if len(queue.stamps) >= self._queue_size and self._lacks_phase(camera):
                    self._estimate(fallback=False)  # a queue would overflow: estimate from what there is
                    out += self._drain()
                self._enqueue(camera, _Msg(stamp, payload, arrival))
            self._maybe_estimate()
            out += self._drain()
            return out

    def poll(self, now_ns: int) -> list[SyncedSet]:
        """Advance the arrival clock to ``now_ns`` and return the partial sets
        whose timeout expired (always empty under ``"wait"``). Call it from a
        timer so that a dead camera cannot hold sets back when no other
        message arrives."""
        now = _as_int("now_ns", now_ns)
        with self._lock:
            self._advance_clock(now)
            return self._drain()

    def flush(self) -> list[SyncedSet]:
        """End of stream (a bag read to its end): no camera will send again.

        Estimates the phases from what there is (uncorrected if even that is
        impossible), then decides every pending message: complete sets (and
        under ``"partial"`` partial ones) are returned, the rest is dropped as
        ``unmatched``. The time order is kept, so ``add`` may continue after.
        """
        with self._lock:
            if self._correct and (not self._estimated or any(self._lacks_phase(c) for c in self._cameras
                                                             if self._history[c])):
                self._estimate(fallback=True)
            self._closed = True
            try:
                return self._drain()
            finally:
                self._closed = False

    def reset(self, clear_stats: bool = False) -> None:
        """Forget pending messages, the time order and the phases, e.g. when
        the clock jumps back (a bag replayed in a loop); otherwise everything
        after the jump would be dropped as stale."""
        with self._lock:
            if self._correct and self._estimated:
                self._stats.phase_resets += 1
            self._reset_state()
            if clear_stats:
                self._stats = _fresh_stats(self._cameras)

    # ------------------------------------------------------------ internals
    def _reset_state(self) -> None:
        self._queues: dict[str, _Queue] = {name: _Queue() for name in self._cameras}
        self._history: dict[str, deque[int]] = {name: deque(maxlen=_HISTORY) for name in self._cameras}
        self._last_ref: int | None = None  # corrected latest member of the last set
        self._last_members: dict[str, int] = {}  # its raw member stamps (re-expressed after an estimate)
        self._lost_from: int | None = None  # corrected start of the last lost instant
        self._now: int | None = None
        self._closed = False
        # Matching offsets: all 0 while unknown (warm-up) or without correction.
        self._offsets: dict[str, int] = dict.fromkeys(self._cameras, 0)
        self._estimated = not self._correct
        self._period: int | None = None
        self._stats.phases_ns = {}

    def _advance_clock(self, now: int) -> None:
        # The arrival clock only moves forward: a late caller timestamp must
        # not make an expired timeout "unexpire".
        if self._now is None or now > self._now:
            self._now = now

    def _lacks_phase(self, camera: str) -> bool:
        return self._correct and (not self._estimated or camera not in self._offsets)

    def _maybe_estimate(self) -> None:
        """Estimate at the end of the warm-up, or when a camera without a phase has enough stamps."""
        if not self._correct:
            return
        sizes = [len(h) for h in self._history.values()]
        if not self._estimated:
            if min(sizes) >= self._warmup or max(sizes) >= 3 * self._warmup:
                self._estimate(fallback=False)
            return
        need = min(self._warmup, self._queue_size)
        if any(name not in self._offsets and len(h) >= need for name, h in self._history.items()):
            self._estimate(fallback=False)

    def _estimate(self, fallback: bool) -> None:
        """(Re-)estimate the phases of every camera with stamps; see the module doc."""
        known = {name: list(h) for name, h in self._history.items() if h}
        self._work += sum(len(h) for h in known.values()) + len(self._cameras)
        try:
            estimate = estimate_phases(known)
        except ValueError:
            if not fallback or not known:
                return
            phases, period = dict.fromkeys(known, 0), None  # end of stream, one stamp each: match raw
        else:
            phases, period = estimate.phases_ns, estimate.period_ns
        if not self._estimated:
            self._offsets = dict(phases)
        else:  # a camera joins: keep the others, place it in their frame
            shifts = [self._offsets[name] - phases[name] for name in self._offsets if name in phases]
            if period is not None:
                shifts = [round(float(_wrap(s, period))) for s in shifts]
            shift = round(float(np.median(shifts))) if shifts else 0
            for name, phase in phases.items():
                self._offsets.setdefault(name, phase + shift)
        self._estimated = True
        self._period = period
        self._stats.phases_ns = dict(self._offsets)
        if self._last_members:  # the time order, re-expressed in the new corrected time
            self._last_ref = max(stamp - self._offsets.get(name, 0) for name, stamp in self._last_members.items())

    def _enqueue(self, camera: str, msg: _Msg) -> None:
        queue = self._queues[camera]
        queue.insert(msg)
        self._work += max(1, len(queue.stamps).bit_length())
        if len(queue.stamps) > self._queue_size:
            oldest = queue.stamps[0]
            queue.pop_oldest()
            self._stats.dropped[camera].overflow += 1
            if camera in self._offsets:
                self._note_lost(oldest - self._offsets[camera])

    def _drain(self) -> list[SyncedSet]:
        out: list[SyncedSet] = []
        while (result := self._step()) is not _WAIT:
            if result is not None:
                out.append(result)
        return out

    def _step(self) -> SyncedSet | object | None:
        """One decision (module doc, steps 1-4): a SyncedSet, None when a
        message was dropped (step again), or _WAIT."""
        anchor = self._anchor()
        if anchor is None:
            return _WAIT
        anchor_cam, t0 = anchor
        if self._last_ref is not None and t0 <= self._last_ref:  # pushed back by a phase change
            self._queues[anchor_cam].pop_oldest()
            self._stats.dropped[anchor_cam].stale += 1
            return None
        warming = not self._estimated
        if warming and self._warmup_slop is None:
            return _WAIT
        hi = t0 + (self._warmup_slop if warming else self._slop)
        present, undecided = self._classify(hi)
        ref = max(self._queues[name].stamps[0] - self._offsets[name] for name in present)
        members = self._select(present, ref)
        if len(present) == len(self._cameras):
            return self._emit(members, ref)
        partial = self._policy == "partial"
        timed_out = partial and self._timed_out(members)
        if (undecided or warming) and not timed_out:
            return _WAIT  # in the warm-up an absence is never "sure": the phases may change the picture
        self._note_attempt(members, t0)
        if partial and len(present) >= self._min_cameras:
            return self._emit(members, ref)
        self._queues[anchor_cam].pop_oldest()
        self._stats.dropped[anchor_cam].unmatched += 1
        self._note_lost(t0)
        return None

    def _anchor(self) -> tuple[str, int] | None:
        """Camera and corrected stamp of the oldest pending message among
        cameras with a phase, or None."""
        best: tuple[str, int] | None = None
        for name, queue in self._queues.items():
            self._work += 1
            offset = self._offsets.get(name)
            if queue.stamps and offset is not None and (best is None or queue.stamps[0] - offset < best[1]):
                best = (name, queue.stamps[0] - offset)
        return best

    def _classify(self, hi: int) -> tuple[list[str], list[str]]:
        """Split cameras into present (corrected head <= hi) and undecided
        (might still deliver a corrected stamp <= hi). The rest are absent for
        sure. After ``flush`` no camera is undecided."""
        present: list[str] = []
        undecided: list[str] = []
        for name, queue in self._queues.items():
            self._work += 1
            offset = self._offsets.get(name)
            if offset is None:  # phase not known yet: cannot place its messages
                if not self._closed:
                    undecided.append(name)
            elif queue.stamps and queue.stamps[0] - offset <= hi:
                present.append(name)
            elif not self._closed and (queue.latest_ns is None or queue.latest_ns - offset < hi):
                undecided.append(name)
        return present, undecided

    def _select(self, present: list[str], ref: int) -> dict[str, _Msg]:
        """Each present camera's latest message with corrected stamp <= ref (minimum skew for ref)."""
        members: dict[str, _Msg] = {}
        for name in present:
            stamps = self._queues[name].stamps
            i = bisect.bisect_right(stamps, ref + self._offsets[name]) - 1  # >= 0: the head is <= ref
            self._work += max(1, len(stamps).bit_length())
            members[name] = self._queues[name].msgs[i]
        return members

    def _timed_out(self, members: dict[str, _Msg]) -> bool:
        """Has the set waited ``timeout_ns`` since its first member arrived?"""
        if self._timeout is None or self._now is None:
            return False
        first_arrival = min(m.arrival_ns for m in members.values())
        return self._now - first_arrival >= self._timeout

    def _emit(self, members: dict[str, _Msg], ref: int) -> SyncedSet:
        """Build the set, consume its members, purge everything <= ref (corrected)."""
        raw = [m.stamp_ns for m in members.values()]
        corrected = [m.stamp_ns - self._offsets[name] for name, m in members.items()]
        messages: dict[str, tuple[int, Any] | None] = {}
        for name in self._cameras:
            msg = members.get(name)
            messages[name] = None if msg is None else (msg.stamp_ns, msg.payload)
        for name, queue in self._queues.items():
            offset = self._offsets.get(name)
            if offset is None:
                continue  # unknown phase: its messages are judged once it is known
            removed = queue.drop_through(ref + offset)
            self._work += 1
            self._stats.dropped[name].unmatched += removed - (1 if name in members else 0)
        self._last_ref = ref
        self._last_members = {name: m.stamp_ns for name, m in members.items()}
        missing = tuple(name for name in self._cameras if name not in members)
        skew = max(raw) - min(raw)
        self._record(skew, partial=bool(missing))
        if not missing:
            self._track_phases(members)
        return SyncedSet(stamp_ns=max(raw), messages=messages, skew_ns=skew, missing=missing,
                         corrected_skew_ns=ref - min(corrected))

    def _track_phases(self, members: dict[str, _Msg]) -> None:
        """Move each phase by ``gain`` times its residual in this complete set
        (mean kept), so a slow drift is followed."""
        if not self._correct or not self._estimated or self._gain == 0:
            return
        corrected = {name: m.stamp_ns - self._offsets[name] for name, m in members.items()}
        mean = sum(corrected.values()) / len(corrected)
        for name, c in corrected.items():
            self._offsets[name] += round(self._gain * (c - mean))
        self._work += len(corrected)
        self._stats.phases_ns = dict(self._offsets)

    def _note_attempt(self, members: dict[str, _Msg], t0: int) -> None:
        """Record the raw spread of the refused attempt at corrected instant ``t0``: its members plus, for
        each camera outside the window, its first pending message after that instant (O(N log Q))."""
        raw = [m.stamp_ns for m in members.values()]
        for name, queue in self._queues.items():
            if name in members or not queue.stamps:
                continue
            i = bisect.bisect_left(queue.stamps, t0 + self._offsets.get(name, 0))
            self._work += max(1, len(queue.stamps).bit_length())
            if i < len(queue.stamps):
                raw.append(queue.stamps[i])
        skew = max(raw) - min(raw)
        stats = self._stats
        stats.attempt_skew_last_ns = skew
        stats.attempt_skew_max_ns = max(stats.attempt_skew_max_ns, skew)
        stats.attempt_skew_min_ns = skew if stats.attempt_skew_min_ns is None else min(stats.attempt_skew_min_ns, skew)

    def _note_lost(self, t0: int) -> None:
        """Count a lost instant once: drops (anchors, overflow) within slop after the first one that
        opened it belong to it; drops come in (nearly) increasing corrected time."""
        if self._lost_from is None or t0 > self._lost_from + self._slop:
            self._stats.lost_instants += 1
            self._lost_from = t0

    def _record(self, skew: int, partial: bool) -> None:
        stats = self._stats
        stats.emitted += 1
        stats.partial += int(partial)
        stats.skew_last_ns = skew
        stats.skew_max_ns = max(stats.skew_max_ns, skew)
        stats.skew_sum_ns += skew
        stats.attempt_skew_last_ns = skew
        stats.attempt_skew_max_ns = max(stats.attempt_skew_max_ns, skew)


def _fresh_stats(cameras: tuple[str, ...]) -> SyncStats:
    return SyncStats(
        received=dict.fromkeys(cameras, 0),
        dropped={name: DropCounts() for name in cameras},
    )


def _validate_cameras(cameras: Sequence[str]) -> tuple[str, ...]:
    if isinstance(cameras, str):
        raise ValueError("cameras must be a sequence of names, not a single string")
    names = tuple(cameras)
    if not names:
        raise ValueError("cameras must not be empty")
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"camera names must be non-empty strings, got {name!r}")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"duplicate camera names: {duplicates}")
    return names


def _as_int(what: str, value: Any) -> int:
    """Integer nanoseconds; rejects floats so that precision is never lost."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be integer nanoseconds, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be integer nanoseconds, got {value!r}") from None


def _positive_int(what: str, value: Any) -> int:
    number = _as_int(what, value)
    if number <= 0:
        raise ValueError(f"{what} must be > 0, got {number}")
    return number
