"""N-camera approximate-time synchronizer (ROS-free).

The runtime node needs one image per camera *for the same capture instant* to
run a single batched forward pass. ``message_filters`` is not available here,
and its Python ``ApproximateTimeSynchronizer`` walks the product of all queues
(cost grows as Q**N). This module does the same job in O(N log Q) per message.

Contract and vocabulary
-----------------------
* Messages are keyed by ``header.stamp`` in integer nanoseconds. A *set* holds
  at most one message per camera; its skew (latest minus earliest member stamp)
  is at most ``slop_ns``.
* **Reference stamp** of a set = the *latest* member stamp. That is the first
  instant at which every member image exists, so a depth image or cloud stamped
  with it never claims to be older than any of its inputs, and it is the value
  that the ordering rule below compares.
* **Time order**: every emitted set lies entirely after the previous one
  (its earliest member is later than the previous reference stamp). Hence the
  reference stamps strictly increase and two sets never interleave, i.e. never
  mix capture instants. A message arriving with a stamp at or before the last
  reference stamp can no longer be used: it is dropped as ``stale``.
* **Per-camera order** (assumption, true for one ROS topic from one driver):
  messages of one camera arrive in increasing stamp order, while messages of
  *different* cameras may be interleaved arbitrarily (one camera may lag by
  several frames). A camera's stamps that go backwards are still accepted and
  sorted in, but the guarantees below are only claimed for ordered cameras.
  Consequence used everywhere: once camera ``c`` has delivered stamp ``h_c``,
  every future message of ``c`` is later than ``h_c``.

Algorithm (one *step*, repeated until it reports "wait")
--------------------------------------------------------
Each camera keeps its pending messages sorted by stamp (``bisect.insort``;
at most ``queue_size`` of them, the oldest is dropped as ``overflow``).

1. **Anchor**: ``t0`` = the oldest pending message of all cameras (the minimum
   of the N queue heads). Any set that contains it lies in
   ``W = [t0, t0 + slop]`` because nothing older is pending.
2. **Present cameras**: those whose head is in ``W``. The head is each
   camera's earliest message at or after ``t0``, so it is the candidate nearest
   to the anchor. ``ref`` = the latest of those heads; each present camera
   then contributes its *latest* message ``<= ref`` (found by bisection): with
   the reference fixed, that choice minimises the skew.
3. Every other camera is either **absent for sure** (it has already delivered
   a stamp ``>= t0 + slop``, so by per-camera order it can never fill ``W``) or
   **undecided** (its next message might still land in ``W``).
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

   After an emission every pending message ``<= ref`` is removed (unused ones
   count as ``unmatched``), which enforces the time order.

Why it is correct (policy ``"wait"``, per-camera-ordered streams)
----------------------------------------------------------------
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
  from the whole stream (absent ``overflow`` drops), for *any* cross-camera
  interleaving. ``test/test_sync.py`` checks this against brute force.
* *Skew*: among the messages received so far the set has the minimum skew
  for its reference. A later message could only tighten it if a camera sent
  two frames less than ``slop`` apart, which a well-chosen slop excludes
  (camera period > slop); waiting for that would cost a full frame period of
  latency on every set, so the set is emitted at once instead.

Cost: a step is O(N log Q). Every step except the final "wait" step of a call
consumes at least one message (emits or drops it), so ``add`` costs
O(N log Q) amortised per message, linear in the number of cameras.
``work_units`` counts the elementary operations so tests can check that.

Threading: ``add``/``poll``/``stats`` take one lock, because rclpy may run
subscription callbacks on a multi-threaded executor.
"""

from __future__ import annotations

import bisect
import operator
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Policy = Literal["wait", "partial"]
_POLICIES: tuple[str, ...] = ("wait", "partial")


@dataclass(frozen=True, slots=True)
class SyncedSet:
    """One synchronized capture instant.

    ``messages`` maps every camera (in the synchronizer's camera order) to
    ``(stamp_ns, payload)`` or ``None`` when the camera is missing (partial
    sets only). ``stamp_ns`` is the reference stamp: the latest member stamp.
    """

    stamp_ns: int
    messages: dict[str, tuple[int, Any] | None]
    skew_ns: int
    missing: tuple[str, ...]

    @property
    def complete(self) -> bool:
        """True when every camera contributed a message."""
        return not self.missing


@dataclass(slots=True)
class DropCounts:
    """Messages of one camera that were dropped, by reason."""

    stale: int = 0  # arrived at or before the last emitted reference stamp
    overflow: int = 0  # pushed out of a full queue
    unmatched: int = 0  # could not join any acceptable set within slop

    @property
    def total(self) -> int:
        return self.stale + self.overflow + self.unmatched


@dataclass(slots=True)
class SyncStats:
    """Counters for diagnostics. ``emitted`` counts complete and partial sets."""

    emitted: int = 0
    partial: int = 0
    received: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, DropCounts] = field(default_factory=dict)
    skew_last_ns: int | None = None
    skew_max_ns: int = 0
    skew_sum_ns: int = 0

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
        )


@dataclass(frozen=True, slots=True)
class _Msg:
    stamp_ns: int
    payload: Any
    arrival_ns: int


@dataclass(slots=True)
class _Queue:
    """Pending messages of one camera, sorted by stamp (parallel lists so that
    ``bisect`` runs on plain ints)."""

    stamps: list[int] = field(default_factory=list)
    msgs: list[_Msg] = field(default_factory=list)
    latest_ns: int | None = None  # latest stamp ever received (future ones are later)

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
        """Remove every message with stamp <= ``stamp_ns``; return how many."""
        k = bisect.bisect_right(self.stamps, stamp_ns)
        del self.stamps[:k]
        del self.msgs[:k]
        return k


_WAIT = object()  # step result: nothing more can be decided now


class ApproximateTimeSynchronizer:
    """Gathers one message per camera per capture instant; see module doc.

    Args:
        cameras: camera names; the order is kept in every ``SyncedSet``.
        slop_ns: maximum skew (latest - earliest stamp) inside a set, > 0.
        queue_size: pending messages kept per camera, >= 1; the oldest is
            dropped (``overflow``) beyond it, which bounds memory.
        policy: ``"wait"`` never emits partial sets; ``"partial"`` emits one
            when a camera is missing for sure, or after ``timeout_ns``.
        timeout_ns: for ``"partial"`` (required, > 0): how long, on the
            caller's arrival clock and counted from the first arrival among
            the set's members, a set waits for a camera that might still
            come. Ignored by ``"wait"``.
        min_cameras: smallest partial set worth emitting (1..N).
    """

    def __init__(
        self,
        cameras: Sequence[str],
        slop_ns: int,
        queue_size: int = 10,
        policy: Policy = "wait",
        timeout_ns: int | None = None,
        min_cameras: int = 1,
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
        self._lock = threading.Lock()
        self._work = 0
        self._reset_state()
        self._stats = _fresh_stats(self._cameras)

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
    def stats(self) -> SyncStats:
        """A snapshot of the counters."""
        with self._lock:
            return self._stats.copy()

    @property
    def work_units(self) -> int:
        """Elementary operations done so far (queue visits, bisection steps).
        For tests and benchmarks of the per-message cost, not for control."""
        with self._lock:
            return self._work

    def pending(self) -> dict[str, int]:
        """Messages waiting per camera (queue depth, for diagnostics)."""
        with self._lock:
            return {name: len(q.stamps) for name, q in self._queues.items()}

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
            queue = self._queues[camera]
            if self._last_ref is not None and stamp <= self._last_ref:
                queue.note(stamp)
                self._stats.dropped[camera].stale += 1
            else:
                self._enqueue(camera, _Msg(stamp, payload, arrival))
            return self._drain()

    def poll(self, now_ns: int) -> list[SyncedSet]:
        """Advance the arrival clock to ``now_ns`` and return the partial sets
        whose timeout expired (always empty under ``"wait"``). Call it from a
        timer so that a dead camera cannot hold sets back when no other
        message arrives."""
        now = _as_int("now_ns", now_ns)
        with self._lock:
            self._advance_clock(now)
            return self._drain()

    def reset(self, clear_stats: bool = False) -> None:
        """Forget pending messages and the time order, e.g. when the clock
        jumps back (a bag replayed in a loop); otherwise everything after the
        jump would be dropped as stale."""
        with self._lock:
            self._reset_state()
            if clear_stats:
                self._stats = _fresh_stats(self._cameras)

    # ------------------------------------------------------------ internals
    def _reset_state(self) -> None:
        self._queues: dict[str, _Queue] = {name: _Queue() for name in self._cameras}
        self._last_ref: int | None = None
        self._now: int | None = None

    def _advance_clock(self, now: int) -> None:
        # The arrival clock only moves forward: a late caller timestamp must
        # not make an expired timeout "unexpire".
        if self._now is None or now > self._now:
            self._now = now

    def _enqueue(self, camera: str, msg: _Msg) -> None:
        queue = self._queues[camera]
        queue.insert(msg)
        self._work += max(1, len(queue.stamps).bit_length())
        if len(queue.stamps) > self._queue_size:
            queue.pop_oldest()
            self._stats.dropped[camera].overflow += 1

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
        hi = t0 + self._slop
        present, undecided = self._classify(hi)
        ref = max(self._queues[name].stamps[0] for name in present)
        members = self._select(present, ref)
        if len(present) == len(self._cameras):
            return self._emit(members, ref)
        partial = self._policy == "partial"
        if undecided and not (partial and self._timed_out(members)):
            return _WAIT
        # Decided: the absences are certain, or the partial timeout expired.
        if partial and len(present) >= self._min_cameras:
            return self._emit(members, ref)
        self._queues[anchor_cam].pop_oldest()
        self._stats.dropped[anchor_cam].unmatched += 1
        return None

    def _anchor(self) -> tuple[str, int] | None:
        """Camera and stamp of the oldest pending message, or None."""
        best: tuple[str, int] | None = None
        for name, queue in self._queues.items():
            self._work += 1
            if queue.stamps and (best is None or queue.stamps[0] < best[1]):
                best = (name, queue.stamps[0])
        return best

    def _classify(self, hi: int) -> tuple[list[str], list[str]]:
        """Split cameras into present (head <= hi) and undecided (might still
        deliver a stamp <= hi). The rest are absent for sure."""
        present: list[str] = []
        undecided: list[str] = []
        for name, queue in self._queues.items():
            self._work += 1
            if queue.stamps and queue.stamps[0] <= hi:
                present.append(name)
            elif queue.latest_ns is None or queue.latest_ns < hi:
                undecided.append(name)
        return present, undecided

    def _select(self, present: list[str], ref: int) -> dict[str, _Msg]:
        """Each present camera's latest message <= ref (minimum skew for ref)."""
        members: dict[str, _Msg] = {}
        for name in present:
            stamps = self._queues[name].stamps
            i = bisect.bisect_right(stamps, ref) - 1  # >= 0: the head is <= ref
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
        """Build the set, consume its members, purge everything <= ref."""
        stamps = [m.stamp_ns for m in members.values()]
        skew = ref - min(stamps)
        messages: dict[str, tuple[int, Any] | None] = {}
        for name in self._cameras:
            msg = members.get(name)
            messages[name] = None if msg is None else (msg.stamp_ns, msg.payload)
        for name, queue in self._queues.items():
            removed = queue.drop_through(ref)
            self._work += 1
            self._stats.dropped[name].unmatched += removed - (1 if name in members else 0)
        self._last_ref = ref
        missing = tuple(name for name in self._cameras if name not in members)
        self._record(skew, partial=bool(missing))
        return SyncedSet(stamp_ns=ref, messages=messages, skew_ns=skew, missing=missing)

    def _record(self, skew: int, partial: bool) -> None:
        stats = self._stats
        stats.emitted += 1
        stats.partial += int(partial)
        stats.skew_last_ns = skew
        stats.skew_max_ns = max(stats.skew_max_ns, skew)
        stats.skew_sum_ns += skew


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
