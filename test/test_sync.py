"""Tests of fsmde_core.sync: scenarios a surround rig produces (jitter, drops,
reordering, bursts, dead cameras, overflow), property tests against a
brute-force optimal matcher, and a check that the per-message work is linear
in the number of cameras -- first with ``phase_correction=False`` (plain
matching, ``plain``), then the trigger-phase estimate and phase-corrected
matching on sweep-triggered, simultaneous and synthetic rigs, and the offline
bag reader on a real rosbag2 file with nuScenes-style stamps."""

from __future__ import annotations

import bisect
import itertools
import random
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsmde_core.names import SURROUND_CAMERAS
from fsmde_core.sync import ApproximateTimeSynchronizer, SyncedSet, estimate_phases


def plain(*args, **kwargs) -> ApproximateTimeSynchronizer:
    """The synchronizer without phase correction: plain stamp matching."""
    return ApproximateTimeSynchronizer(*args, phase_correction=False, **kwargs)


MS = 1_000_000


@dataclass(frozen=True)
class Event:
    camera: str
    stamp: int
    arrival: int | None = None

    @property
    def payload(self) -> tuple[str, int]:
        # Unique per message, so "used at most once" can be checked by payload.
        return (self.camera, self.stamp)


def feed(sync: ApproximateTimeSynchronizer, events: Iterable[Event]) -> list[SyncedSet]:
    out: list[SyncedSet] = []
    for ev in events:
        out.extend(sync.add(ev.camera, ev.stamp, ev.payload, ev.arrival))
    return out


def rig_stream(
    cameras: Sequence[str],
    frames: int,
    period: int = 100 * MS,
    jitter: int = 4 * MS,
    latency: int = 20 * MS,
    seed: int = 0,
    skip: Iterable[tuple[str, int]] = (),
) -> list[Event]:
    """Frame k of every camera at k*period +- jitter, arriving after a random
    latency; events sorted by arrival (cross-camera order scrambled, each
    camera's own order kept because latency + 2*jitter < period)."""
    rng = random.Random(seed)
    skipped = set(skip)
    events = []
    for k in range(frames):
        for cam in cameras:
            if (cam, k) in skipped:
                continue
            stamp = 1_000 * MS + k * period + rng.randint(-jitter, jitter)
            events.append(Event(cam, stamp, stamp + rng.randint(0, latency)))
    return sorted(events, key=lambda e: e.arrival)


def frame_of(stamp: int, period: int = 100 * MS) -> int:
    return round((stamp - 1_000 * MS) / period)


def check_invariants(
    sync: ApproximateTimeSynchronizer, sets: Sequence[SyncedSet], events: Sequence[Event]
) -> None:
    """What must hold for any input: sets in time order and disjoint, skew
    within slop, reference = latest member, each message used once and only
    as sent, and every received message accounted for. With phase
    correction the slop and the disjointness hold in corrected time, which
    makes complete sets' reference stamps strictly increase."""
    sent = {ev.payload for ev in events}
    used: set[tuple[str, int]] = set()
    previous_ref: int | None = None
    for s in sets:
        assert tuple(s.messages) == sync.cameras
        present = {cam: m for cam, m in s.messages.items() if m is not None}
        assert present, "a set with no message"
        assert s.missing == tuple(cam for cam in sync.cameras if s.messages[cam] is None)
        stamps = [stamp for stamp, _ in present.values()]
        assert s.stamp_ns == max(stamps)
        assert s.skew_ns == max(stamps) - min(stamps)
        assert s.corrected_skew_ns <= max(sync.slop_ns, sync.warmup_slop_ns or 0)  # the warm-up's sets: raw
        if not sync.phase_correction:
            assert s.corrected_skew_ns == s.skew_ns
            if previous_ref is not None:
                assert min(stamps) > previous_ref, "sets overlap in time"
            previous_ref = s.stamp_ns
        elif s.complete:
            if previous_ref is not None:
                assert s.stamp_ns > previous_ref, "complete sets out of time order"
            previous_ref = s.stamp_ns
        for cam, (stamp, payload) in present.items():
            assert payload == (cam, stamp) and payload in sent
            assert payload not in used, "message used twice"
            used.add(payload)
    stats = sync.stats
    pending = sync.pending()
    for cam in sync.cameras:
        n_used = sum(1 for c, _ in used if c == cam)
        assert stats.received[cam] == n_used + stats.dropped[cam].total + pending[cam]
    assert stats.emitted == len(sets)
    assert stats.partial == sum(1 for s in sets if s.missing)


# --------------------------------------------------------------- scenarios
def test_jittered_rig_gives_every_set_and_skew_stats() -> None:
    sync = plain(SURROUND_CAMERAS, slop_ns=10 * MS, queue_size=5)
    events = rig_stream(SURROUND_CAMERAS, frames=50)
    sets = feed(sync, events)
    check_invariants(sync, sets, events)
    assert [frame_of(s.stamp_ns) for s in sets] == list(range(50))
    for s in sets:
        assert s.complete
        assert {frame_of(stamp) for stamp, _ in s.messages.values()} == {frame_of(s.stamp_ns)}
    stats = sync.stats
    skews = [s.skew_ns for s in sets]
    assert stats.emitted == 50 and stats.partial == 0 and stats.dropped_total == 0
    assert stats.skew_last_ns == skews[-1]
    assert stats.skew_max_ns == max(skews)
    assert stats.skew_mean_ns == pytest.approx(sum(skews) / len(skews))
    assert sum(sync.pending().values()) == 0


def test_reference_stamp_is_latest_member_and_minimum_skew() -> None:
    sync = plain(["a", "b", "c"], slop_ns=10)
    assert sync.add("a", 100, "a0") == []
    assert sync.add("a", 104, "a1") == []  # two frames within slop: the later one fits better
    assert sync.add("b", 106, "b0") == []
    (s,) = sync.add("c", 103, "c0")
    assert s.stamp_ns == 106
    assert s.messages == {"a": (104, "a1"), "b": (106, "b0"), "c": (103, "c0")}
    assert s.skew_ns == 3 and s.missing == ()
    assert sync.stats.dropped["a"].unmatched == 1  # a0 lost to a1


def test_dropped_frame_under_wait_is_counted_unmatched_as_soon_as_known() -> None:
    events = rig_stream(SURROUND_CAMERAS, frames=10, skip=[("back", 3)])
    sync = plain(SURROUND_CAMERAS, slop_ns=10 * MS, policy="wait")
    sets: list[SyncedSet] = []
    back4 = next(i for i, e in enumerate(events) if e.camera == "back" and frame_of(e.stamp) == 4)
    sets += feed(sync, events[:back4])
    assert sync.stats.dropped_total == 0  # "back" might still send frame 3
    sets += feed(sync, events[back4 : back4 + 1])
    assert sync.stats.dropped_total >= 1  # now certain: the oldest frame-3 image goes
    sets += feed(sync, events[back4 + 1 :])
    # The other frame-3 images go as their cameras' frame 4 proves that no
    # second frame-3 image is coming: five in all, nothing else.
    assert sync.stats.dropped_total == 5
    check_invariants(sync, sets, events)
    assert [frame_of(s.stamp_ns) for s in sets] == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert all(s.complete for s in sets)


def test_lagging_camera_reordered_across_frames() -> None:
    """One camera is delivered three frames late: messages of different
    instants interleave, yet every set is found, in time order."""
    events = rig_stream(SURROUND_CAMERAS, frames=20)
    lag = [Event(e.camera, e.stamp, e.arrival + 300 * MS) if e.camera == "back" else e for e in events]
    lag.sort(key=lambda e: e.arrival)
    sync = plain(SURROUND_CAMERAS, slop_ns=10 * MS, queue_size=5)
    sets: list[SyncedSet] = []
    for ev in lag:
        got = sync.add(ev.camera, ev.stamp, ev.payload, ev.arrival)
        assert len(got) == (1 if ev.camera == "back" else 0)  # back completes each set
        sets += got
    check_invariants(sync, sets, lag)
    assert [frame_of(s.stamp_ns) for s in sets] == list(range(20))
    assert sync.stats.dropped_total == 0


def test_stamps_out_of_order_within_a_camera() -> None:
    """A camera's frames arrive swapped: both still match, because each queue
    is kept sorted and nothing is decided before the other camera speaks."""
    sync = plain(["a", "b"], slop_ns=10)
    assert sync.add("a", 200, "a200") == []
    assert sync.add("a", 100, "a100") == []
    sets = sync.add("b", 102, "b102") + sync.add("b", 205, "b205")
    assert [(s.messages["a"], s.messages["b"]) for s in sets] == [
        ((100, "a100"), (102, "b102")),
        ((200, "a200"), (205, "b205")),
    ]


def test_message_older_than_last_set_is_stale() -> None:
    sync = plain(["a", "b"], slop_ns=10)
    sync.add("a", 100, None)
    (s,) = sync.add("b", 105, None)
    assert s.stamp_ns == 105
    assert sync.add("a", 105, None) == []  # equal to the reference: same instant, too late
    assert sync.add("b", 99, None) == []
    stats = sync.stats
    assert (stats.dropped["a"].stale, stats.dropped["b"].stale) == (1, 1)
    assert sync.pending() == {"a": 0, "b": 0}
    assert len(sync.add("a", 106, None) + sync.add("b", 107, None)) == 1


def test_burst_after_a_stall_releases_sets_in_order() -> None:
    """A camera stalls for eight frames then flushes them in one burst (one
    arrival time, its own order kept as on one DDS topic), interleaved with
    the other cameras' fresh frames."""
    events = rig_stream(SURROUND_CAMERAS, frames=12, seed=3)
    burst_at = 1_000 * MS + 850 * MS
    rng = random.Random(1)
    stalled = [
        Event(e.camera, e.stamp, burst_at) for e in events if e.camera == "front" and e.arrival < burst_at
    ]
    others = [e for e in events if not (e.camera == "front" and e.arrival < burst_at)]
    before = [e for e in others if e.arrival < burst_at]
    after = [e for e in others if e.arrival >= burst_at]
    merged = before[:]
    for ev in stalled:  # splice the burst into the other cameras' next arrivals
        merged.append(ev)
        if after[0].camera != "front" and rng.random() < 0.3:
            merged.append(after.pop(0))
    merged += after
    sync = plain(SURROUND_CAMERAS, slop_ns=10 * MS, queue_size=10)
    burst_sets = feed(sync, before)
    assert burst_sets == [] and max(sync.pending().values()) == 9
    sets = feed(sync, merged[len(before) :])
    check_invariants(sync, sets, merged)
    assert [frame_of(s.stamp_ns) for s in sets] == list(range(12))
    assert sync.stats.dropped_total == 0


def test_burst_overflowing_queues_keeps_newest_frames() -> None:
    sync = plain(["a", "b"], slop_ns=10, queue_size=3)
    events = [Event("a", 100 * k) for k in range(6)] + [Event("b", 100 * k + 2) for k in range(6)]
    sets = feed(sync, events)
    check_invariants(sync, sets, events)
    assert [s.stamp_ns for s in sets] == [302, 402, 502]
    stats = sync.stats
    assert stats.dropped["a"].overflow == 3  # a0..a2 pushed out while b was silent
    assert stats.dropped["b"].unmatched == 3  # b0..b2 have nothing left to pair with
    assert max(sync.pending().values()) == 0


def test_dead_camera_under_wait_keeps_memory_bounded_and_recovers() -> None:
    queue = 10
    events = [
        e for e in rig_stream(SURROUND_CAMERAS, frames=60) if not (e.camera == "back" and 4 <= frame_of(e.stamp) < 50)
    ]
    sync = plain(SURROUND_CAMERAS, slop_ns=10 * MS, queue_size=queue, policy="wait")
    sets: list[SyncedSet] = []
    for ev in events:
        sets += sync.add(ev.camera, ev.stamp, ev.payload, ev.arrival)
        assert max(sync.pending().values()) <= queue
    check_invariants(sync, sets, events)
    assert [frame_of(s.stamp_ns) for s in sets] == [0, 1, 2, 3, *range(50, 60)]
    assert all(s.complete for s in sets)
    stats = sync.stats
    for cam in SURROUND_CAMERAS:
        if cam != "back":
            # frames 4..49 waited in a full queue: the oldest overflowed, the
            # last `queue` were found unmatched once "back" came back.
            assert stats.dropped[cam].overflow == 46 - queue
            assert stats.dropped[cam].unmatched == queue
    assert stats.dropped["back"].total == 0


def test_dead_camera_under_partial_emits_after_timeout_via_poll() -> None:
    timeout = 50 * MS
    events = [e for e in rig_stream(SURROUND_CAMERAS, frames=30) if not (e.camera == "back" and frame_of(e.stamp) >= 5)]
    sync = plain(
        SURROUND_CAMERAS, slop_ns=10 * MS, policy="partial", timeout_ns=timeout, min_cameras=4
    )
    sets: list[SyncedSet] = []
    emitted_at: list[int] = []
    tick, poll_period = events[0].arrival, 5 * MS
    for ev in events:
        while tick + poll_period <= ev.arrival:  # a 200 Hz timer on the arrival clock
            tick += poll_period
            got = sync.poll(tick)
            sets += got
            emitted_at += [tick] * len(got)
        got = sync.add(ev.camera, ev.stamp, ev.payload, ev.arrival)
        sets += got
        emitted_at += [ev.arrival] * len(got)
    sets += sync.poll(tick + timeout + poll_period)
    check_invariants(sync, sets, events)
    assert [frame_of(s.stamp_ns) for s in sets] == list(range(30))
    assert all(s.complete for s in sets[:5])
    first_arrival = {}
    for ev in events:
        first_arrival.setdefault(frame_of(ev.stamp), ev.arrival)
    for s, t in zip(sets[5:29], emitted_at[5:], strict=True):
        assert s.missing == ("back",) and s.messages["back"] is None
        assert s.stamp_ns == max(m[0] for m in s.messages.values() if m is not None)
        # released by the timer within one tick of the timeout, not later
        assert timeout <= t - first_arrival[frame_of(s.stamp_ns)] < timeout + poll_period
    assert sync.stats.partial == 25


def test_partial_timeout_also_fires_inside_add_and_camera_dead_from_start() -> None:
    sync = plain(["a", "b", "c"], slop_ns=10, policy="partial", timeout_ns=150)
    assert sync.add("a", 0, None, arrival_ns=1) == []
    assert sync.add("b", 2, None, arrival_ns=3) == []
    assert sync.add("a", 100, None, arrival_ns=101) == []  # "c" never sent: undecided
    (s,) = sync.add("b", 200, None, arrival_ns=201)  # clock passed 1 + 150
    assert s.stamp_ns == 2 and s.missing == ("c",)
    assert sync.poll(250) == [] and len(sync.poll(251)) == 1  # frame 100: due at 101 + 150


def test_partial_is_emitted_without_timeout_when_absence_is_certain() -> None:
    """A single dropped frame: the missing camera's next frame proves the
    absence, so the partial set does not wait for the (long) timeout."""
    events = rig_stream(SURROUND_CAMERAS, frames=6, skip=[("back", 3)])
    sync = plain(SURROUND_CAMERAS, slop_ns=10 * MS, policy="partial", timeout_ns=10**12)
    sets: list[SyncedSet] = []
    for ev in events:
        got = sync.add(ev.camera, ev.stamp, ev.payload, ev.arrival)
        if ev.camera == "back" and frame_of(ev.stamp) == 4:
            assert [frame_of(s.stamp_ns) for s in got] == [3] and got[0].missing == ("back",)
        sets += got
    check_invariants(sync, sets, events)
    assert [frame_of(s.stamp_ns) for s in sets] == list(range(6))


def test_partial_below_min_cameras_is_dropped_not_emitted() -> None:
    events = [e for e in rig_stream(SURROUND_CAMERAS, frames=12) if not (e.camera == "back" and frame_of(e.stamp) >= 2)]
    sync = plain(
        SURROUND_CAMERAS, slop_ns=10 * MS, queue_size=4, policy="partial", timeout_ns=60 * MS, min_cameras=6
    )
    sets = feed(sync, events) + sync.poll(10**12)
    check_invariants(sync, sets, events)
    assert [frame_of(s.stamp_ns) for s in sets] == [0, 1]
    assert sum(sync.pending().values()) == 0
    assert sum(d.unmatched + d.overflow for d in sync.stats.dropped.values()) == 5 * 10


def test_poll_under_wait_never_emits_and_reset_forgets_time_order() -> None:
    sync = plain(["a", "b"], slop_ns=10)
    sync.add("a", 1_000, None)
    assert sync.poll(10**15) == []
    assert len(sync.add("b", 1_001, None)) == 1
    sync.reset()  # e.g. a bag replayed from the start
    assert sync.pending() == {"a": 0, "b": 0}
    assert len(sync.add("a", 5, None) + sync.add("b", 6, None)) == 1
    assert sync.stats.emitted == 2
    sync.reset(clear_stats=True)
    assert sync.stats.emitted == 0 and sync.stats.received == {"a": 0, "b": 0}


def test_stats_are_a_snapshot() -> None:
    sync = plain(["a"], slop_ns=1)
    snap = sync.stats
    sync.add("a", 1, None)
    assert snap.emitted == 0 and snap.received["a"] == 0 and snap.skew_mean_ns is None
    assert sync.stats.emitted == 1 and sync.stats.skew_mean_ns == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cameras": []}, "empty"),
        ({"cameras": ["a", "b", "a"]}, "duplicate"),
        ({"cameras": "front"}, "sequence"),
        ({"cameras": ["a", ""]}, "non-empty"),
        ({"slop_ns": 0}, "slop_ns"),
        ({"slop_ns": -5}, "slop_ns"),
        ({"slop_ns": 0.01}, "integer"),
        ({"queue_size": 0}, "queue_size"),
        ({"policy": "latest"}, "policy"),
        ({"policy": "partial"}, "timeout_ns"),
        ({"policy": "partial", "timeout_ns": 0}, "timeout_ns"),
        ({"min_cameras": 0}, "min_cameras"),
        ({"min_cameras": 3}, "min_cameras"),
        ({"phase_correction": 1}, "phase_correction"),
        ({"warmup_frames": 1}, "warmup_frames"),
        ({"phase_gain": 1.5}, "phase_gain"),
        ({"phase_gain": True}, "phase_gain"),
        ({"warmup_slop_ns": -1}, "warmup_slop_ns"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"cameras": ["a", "b"], "slop_ns": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        ApproximateTimeSynchronizer(**args)


def test_add_rejects_unknown_camera_and_float_stamps() -> None:
    sync = plain(["a", "b"], slop_ns=10)
    with pytest.raises(ValueError, match="unknown camera"):
        sync.add("c", 1, None)
    with pytest.raises(ValueError, match="integer"):
        sync.add("a", 1.5, None)
    assert sync.stats.received == {"a": 0, "b": 0}


def test_concurrent_callbacks_one_thread_per_camera() -> None:
    """rclpy multi-threaded executor: each camera's callback in its own
    thread. Whatever the interleaving, every frame is matched exactly once
    (the algorithm is optimal for any cross-camera interleaving)."""
    frames = 300
    events = rig_stream(SURROUND_CAMERAS, frames=frames, seed=7)
    sync = plain(SURROUND_CAMERAS, slop_ns=10 * MS, queue_size=frames + 1)
    results: list[SyncedSet] = []
    results_lock = threading.Lock()
    barrier = threading.Barrier(len(SURROUND_CAMERAS))

    def run(cam: str) -> None:
        barrier.wait()
        for ev in events:
            if ev.camera == cam:
                got = sync.add(ev.camera, ev.stamp, ev.payload)
                with results_lock:
                    results.extend(got)

    threads = [threading.Thread(target=run, args=(cam,)) for cam in SURROUND_CAMERAS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.sort(key=lambda s: s.stamp_ns)  # appends race; emission order is tested elsewhere
    check_invariants(sync, results, events)
    assert [frame_of(s.stamp_ns) for s in results] == list(range(frames))


def test_work_per_message_is_linear_in_camera_count() -> None:
    """A product over queues would multiply the work by ~Q**18 from 6 to 24
    cameras; linear work multiplies it by 4 (bisection depth is the same)."""

    def work_per_message(n_cams: int) -> float:
        cams = [f"cam{i}" for i in range(n_cams)]
        events = rig_stream(cams, frames=200, seed=n_cams)
        lagged = [Event(e.camera, e.stamp, e.arrival + 250 * MS) if e.camera == "cam0" else e for e in events]
        lagged.sort(key=lambda e: e.arrival)  # deep queues, so Q matters too
        sync = plain(cams, slop_ns=10 * MS, queue_size=8)
        assert len(feed(sync, lagged)) == 200
        return sync.work_units / len(lagged)

    w6, w24 = work_per_message(6), work_per_message(24)
    assert 2.5 < w24 / w6 < 6.0, (w6, w24)


# ---------------------------------------------------------------- properties
def brute_force_max_sets(streams: dict[str, list[int]], slop: int) -> int:
    """Maximum number of complete sets (one message per camera, skew <= slop)
    that are disjoint and time ordered: each set's earliest stamp is later than
    the previous set's latest. Enumerates every candidate set (the product the
    synchronizer avoids) and finds the longest chain of non-overlapping
    intervals by dynamic programming -- independent of the greedy."""
    lists = list(streams.values())
    if any(not stamps for stamps in lists):
        return 0
    intervals = sorted(
        (max(combo), min(combo)) for combo in itertools.product(*lists) if max(combo) - min(combo) <= slop
    )
    ends: list[int] = []
    best_prefix: list[int] = []  # best chain among intervals[:i+1]
    for end, start in intervals:
        k = bisect.bisect_left(ends, start)  # chains ending strictly before `start`
        best = 1 + (best_prefix[k - 1] if k else 0)
        ends.append(end)
        best_prefix.append(max(best, best_prefix[-1] if best_prefix else 0))
    return best_prefix[-1] if best_prefix else 0


@st.composite
def interleaved_streams(draw: st.DrawFn, max_cams: int, max_len: int, max_stamp: int) -> tuple:
    """Per camera a strictly increasing list of stamps, delivered in an
    arbitrary cross-camera interleaving (each camera's own order kept)."""
    cams = [f"c{i}" for i in range(draw(st.integers(1, max_cams)))]
    streams = {cam: sorted(draw(st.sets(st.integers(0, max_stamp), max_size=max_len))) for cam in cams}
    tokens = [cam for cam in cams for _ in streams[cam]]
    order = draw(st.permutations(tokens))
    cursor = dict.fromkeys(cams, 0)
    events = []
    for i, cam in enumerate(order):
        events.append(Event(cam, streams[cam][cursor[cam]], arrival=i))
        cursor[cam] += 1
    return cams, streams, events


@settings(max_examples=300, deadline=None)
@given(data=interleaved_streams(max_cams=3, max_len=5, max_stamp=60), slop=st.integers(1, 20))
def test_property_wait_policy_is_count_optimal_on_any_stream(data: tuple, slop: int) -> None:
    """For ANY per-camera-ordered streams (no well-separation assumed) the
    number of sets equals the brute-force optimum; see the module docstring
    of fsmde_core.sync for the earliest-finish greedy argument."""
    cams, streams, events = data
    sync = plain(cams, slop_ns=slop, queue_size=64)
    sets = feed(sync, events)
    check_invariants(sync, sets, events)
    assert all(s.complete for s in sets)
    assert len(sets) == brute_force_max_sets(streams, slop)


@st.composite
def separated_instants(draw: st.DrawFn) -> tuple:
    """Capture instants k*period with jitter < slop/2 and period > 2*slop, so
    any two images of one instant are < slop apart and images of different
    instants are > slop apart: every valid set is exactly one instant. Random
    frame drops and an arbitrary cross-camera interleaving."""
    n_cams = draw(st.integers(2, 4))
    n_frames = draw(st.integers(1, 6))
    slop = draw(st.integers(2, 200))
    period = 2 * slop + draw(st.integers(1, 3 * slop))
    half = (slop - 1) // 2  # |jitter| <= half < slop/2
    cams = [f"c{i}" for i in range(n_cams)]
    instants: dict[int, dict[str, int]] = {}
    for k in range(n_frames):
        instants[k] = {}
        for cam in cams:
            if draw(st.integers(0, 4)) > 0:  # ~20 % frame drops
                instants[k][cam] = 10_000 + k * period + draw(st.integers(-half, half))
    streams = {cam: [instants[k][cam] for k in range(n_frames) if cam in instants[k]] for cam in cams}
    tokens = [cam for cam in cams for _ in streams[cam]]
    order = draw(st.permutations(tokens))
    cursor = dict.fromkeys(cams, 0)
    events = []
    for i, cam in enumerate(order):
        events.append(Event(cam, streams[cam][cursor[cam]], arrival=i))
        cursor[cam] += 1
    return cams, slop, instants, streams, events


@settings(max_examples=200, deadline=None)
@given(data=separated_instants())
def test_property_wait_policy_recovers_exactly_the_complete_instants(data: tuple) -> None:
    """Well-separated instants: the synchronizer emits one set per instant
    seen by every camera, made of exactly that instant's images, and nothing
    else; the count also equals the brute-force optimum."""
    cams, slop, instants, streams, events = data
    sync = plain(cams, slop_ns=slop, queue_size=64)
    sets = feed(sync, events)
    check_invariants(sync, sets, events)
    expected = [k for k in sorted(instants) if len(instants[k]) == len(cams)]
    got = [{cam: m[0] for cam, m in s.messages.items()} for s in sets]
    assert got == [instants[k] for k in expected]
    assert len(sets) == brute_force_max_sets(streams, slop)
    assert sum(d.stale for d in sync.stats.dropped.values()) == 0


@settings(max_examples=200, deadline=None)
@given(data=separated_instants(), min_cameras=st.integers(1, 4))
def test_property_partial_policy_emits_each_instant_once(data: tuple, min_cameras: int) -> None:
    """Partial policy, timeout longer than the whole stream: sets come out
    only when an absence is certain or at the final poll, so each instant
    with at least min_cameras images gives one set with exactly its images
    and the absent cameras marked missing."""
    cams, slop, instants, _, events = data
    min_cameras = min(min_cameras, len(cams))
    sync = plain(
        cams, slop_ns=slop, queue_size=64, policy="partial", timeout_ns=10**6, min_cameras=min_cameras
    )
    sets = feed(sync, events) + sync.poll(10**9)
    check_invariants(sync, sets, events)
    expected = [k for k in sorted(instants) if len(instants[k]) >= min_cameras]
    got = [{cam: m[0] for cam, m in s.messages.items() if m is not None} for s in sets]
    assert got == [instants[k] for k in expected]
    assert sum(sync.pending().values()) == 0


@settings(max_examples=300, deadline=None)
@given(
    data=interleaved_streams(max_cams=4, max_len=6, max_stamp=80),
    slop=st.integers(1, 20),
    timeout=st.integers(1, 10),
    min_cameras=st.integers(1, 4),
    queue_size=st.integers(1, 4),
)
def test_property_partial_policy_invariants_on_any_stream(
    data: tuple, slop: int, timeout: int, min_cameras: int, queue_size: int
) -> None:
    """Short timeouts, tiny queues, arbitrary streams: whatever is emitted is
    still time ordered, within slop, uses each message once, respects
    min_cameras, and every message is accounted for."""
    cams, _, events = data
    min_cameras = min(min_cameras, len(cams))
    sync = plain(
        cams,
        slop_ns=slop,
        queue_size=queue_size,
        policy="partial",
        timeout_ns=timeout,
        min_cameras=min_cameras,
    )
    sets = feed(sync, events) + sync.poll(len(events) + timeout)
    check_invariants(sync, sets, events)
    assert all(len(cams) - len(s.missing) >= min_cameras for s in sets)
    assert sum(sync.pending().values()) == 0


# ====================================================== trigger phases (default)
NUSC = (SURROUND_CAMERAS[0], *reversed(SURROUND_CAMERAS[1:]))  # clockwise: the order a LiDAR sweep passes them


@dataclass(frozen=True)
class Rig:
    """A rig's timing: period, each camera's trigger phase, jitter (all ms)."""

    period: float
    phases: dict[str, float]
    jitter: float


def nuscenes_rig(rng: np.random.Generator) -> Rig:
    """Sweep-triggered: phases 0 .. 42.6-45 ms over an 83 ms period, in a random order around the car."""
    step = rng.uniform(8.5, 9.0)
    order = rng.permutation(len(NUSC))
    return Rig(1000 / 12, {cam: step * float(order[i]) for i, cam in enumerate(NUSC)}, 1.0)


def ddad_rig(rng: np.random.Generator) -> Rig:
    """Near-simultaneous: phases within 0.5 ms at 10 Hz."""
    return Rig(100.0, {cam: float(rng.uniform(0, 0.5)) for cam in SURROUND_CAMERAS}, 0.1)


def synthetic_rig(rng: np.random.Generator) -> Rig:
    """This project's synthetic rig (fsmde_core.synthetic.writer): offsets 0-8 ms at 10 Hz, jitter 40 us."""
    return Rig(100.0, {cam: float(rng.uniform(0, 8)) for cam in SURROUND_CAMERAS}, 0.04)


RIGS = {"nuscenes": nuscenes_rig, "ddad": ddad_rig, "synthetic": synthetic_rig}


@dataclass(frozen=True)
class Phased:
    """A phased stream: events in arrival order, payload = (camera, instant id)."""

    events: list[Event]
    instants: dict[int, dict[str, int]]  # instant -> camera -> stamp of the images that were sent
    truth: dict[str, float]  # each camera's phase at the end of the stream [ms]


def phased_stream(rig: Rig, frames: int, rng: np.random.Generator, drop: float = 0.0,
                  drift_ms_per_frame: float = 0.0, max_lateness: float = 0.0, start_at: float = 0.0) -> Phased:
    """Frame k of camera c at k*T + phase_c(k) + jitter; phase_c drifts linearly by a per-camera
    rate in [-drift, drift] ms/frame; a fraction ``drop`` of images is lost; each image arrives
    after a random lateness up to ``max_lateness`` periods, a camera's own order kept (one topic).
    ``start_at`` (ms into frame 0): images stamped earlier were never received (a node that
    subscribes mid-capture)."""
    drift = {cam: float(rng.uniform(-drift_ms_per_frame, drift_ms_per_frame)) for cam in rig.phases}
    instants: dict[int, dict[str, int]] = {}
    events: list[tuple[int, Event]] = []
    last_arrival = dict.fromkeys(rig.phases, 0)
    for k in range(frames):
        instants[k] = {}
        for cam, phase in rig.phases.items():
            t = k * rig.period + phase + drift[cam] * k + rng.uniform(-rig.jitter, rig.jitter)
            if t < start_at or rng.random() < drop:
                continue
            stamp = 10_000 * MS + round(t * MS)
            arrival = max(last_arrival[cam] + 1, stamp + round(rng.uniform(0, max_lateness * rig.period) * MS))
            last_arrival[cam] = arrival
            instants[k][cam] = stamp
            events.append((arrival, Event(cam, stamp, arrival)))
    events.sort(key=lambda e: e[0])
    truth = {cam: phase + drift[cam] * (frames - 1) for cam, phase in rig.phases.items()}
    return Phased([e for _, e in events], instants, truth)


def instant_of(phased: Phased) -> dict[tuple[str, int], int]:
    return {(cam, stamp): k for k, members in phased.instants.items() for cam, stamp in members.items()}


def relative(phases: dict[str, float]) -> dict[str, float]:
    """Phases relative to their mean: the estimate's origin (first-firing camera) moves with jitter/drift."""
    mean = sum(phases.values()) / len(phases)
    return {cam: p - mean for cam, p in phases.items()}


def check_instants(sync: ApproximateTimeSynchronizer, sets: list[SyncedSet], phased: Phased) -> None:
    """Every instant whose cameras all arrived is one complete set of exactly its images, in order;
    nothing else is emitted and no set mixes instants."""
    check_invariants(sync, sets, phased.events)
    which = instant_of(phased)
    got = []
    for s in sets:
        ids = {which[(cam, m[0])] for cam, m in s.messages.items() if m is not None}
        assert len(ids) == 1, f"set mixes instants {sorted(ids)}"
        got.append(ids.pop())
        assert s.complete and s.stamp_ns == max(m[0] for m in s.messages.values() if m is not None)
    full = [k for k, members in phased.instants.items() if len(members) == len(sync.cameras)]
    assert got == full, f"missing {sorted(set(full) - set(got))}, unexpected {sorted(set(got) - set(full))}"


@pytest.mark.parametrize("kind", sorted(RIGS))
def test_estimate_phases_recovers_known_phases_within_jitter(kind: str) -> None:
    for seed in range(20):
        rng = np.random.default_rng(seed)
        rig = RIGS[kind](rng)
        phased = phased_stream(rig, frames=12, rng=rng, drop=0.1)
        stamps = {cam: [e.stamp for e in phased.events if e.camera == cam] for cam in rig.phases}
        est = estimate_phases(stamps)
        assert est.period_ns == pytest.approx(rig.period * MS, abs=rig.jitter * MS)
        got, want = relative({cam: p / MS for cam, p in est.phases_ns.items()}), relative(rig.phases)
        for cam in rig.phases:
            assert got[cam] == pytest.approx(want[cam], abs=rig.jitter), (seed, cam)
        spread = max(rig.phases.values()) - min(rig.phases.values())
        assert est.spread_ns == max(est.phases_ns.values()) == pytest.approx(spread * MS, abs=2 * rig.jitter * MS)
        assert min(est.phases_ns.values()) == 0
        assert 0.3 * rig.jitter * MS < est.jitter_ns < 1.5 * rig.jitter * MS  # two cameras' jitter: reference's too
        assert est.reference in rig.phases


def test_estimate_phases_unwraps_across_the_period_boundary() -> None:
    """A rig whose first camera fires late in the frame tick: the circle is cut at the widest gap, so
    phases are 0..spread, not split across the period."""
    period = 100 * MS
    offsets = {"a": 95 * MS, "b": 99 * MS, "c": 3 * MS, "d": 7 * MS}  # one instant spans the frame tick
    stamps = {cam: [k * period + off for k in range(5)] for cam, off in offsets.items()}
    est = estimate_phases(stamps)
    assert est.phases_ns == {"a": 0, "b": 4 * MS, "c": 8 * MS, "d": 12 * MS}
    assert est.spread_ns == 12 * MS and est.period_ns == period and est.jitter_ns == 0


@pytest.mark.parametrize(("stamps", "match"), [
    ({}, "at least one camera"),
    ({"a": [1, 2], "b": []}, r"no stamps for camera\(s\) \['b'\]"),
    ({"a": [5], "b": [7]}, "too few stamps"),
])
def test_estimate_phases_refuses_too_few_stamps(stamps: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        estimate_phases(stamps)


def feed_phased(sync: ApproximateTimeSynchronizer, phased: Phased) -> list[SyncedSet]:
    out: list[SyncedSet] = []
    for ev in phased.events:
        out.extend(sync.add(ev.camera, ev.stamp, ev.payload, ev.arrival))
    return out


@pytest.mark.parametrize("kind", sorted(RIGS))
def test_property_every_complete_instant_is_one_set_with_default_settings(kind: str) -> None:
    """Many seeds: phased rig, jitter, 5 % drops, lateness up to two periods, a slow drift of
    up to 4.5 ms over the stream, sometimes a start in the middle of a capture. The defaults
    (slop 10 ms, queue 10) give every instant whose cameras all arrived, as one set of exactly
    its images, at a bounded cost per message, and the phases follow the drift."""
    frames, drift, gain = 150, 0.03, 0.05
    for seed in range(25):
        rng = np.random.default_rng(1000 + seed)
        rig = RIGS[kind](rng)
        start = float(rng.uniform(0, max(rig.phases.values()))) if seed % 3 == 0 else 0.0
        phased = phased_stream(rig, frames, rng, drop=0.05, drift_ms_per_frame=drift, max_lateness=2.0,
                               start_at=start)
        cams = tuple(rig.phases)
        sync = ApproximateTimeSynchronizer(cams, slop_ns=10 * MS)
        sets = feed_phased(sync, phased)
        check_instants(sync, sets, phased)
        assert sync.work_units / len(phased.events) < 8 * len(cams), sync.work_units / len(phased.events)
        final = sync.phases_ns
        est = relative({cam: final[cam] / MS for cam in cams})
        want = relative(phased.truth)
        lag = drift / gain  # steady-state lag of the update behind a ramp, per camera
        for cam in cams:
            assert est[cam] == pytest.approx(want[cam], abs=2 * lag + rig.jitter), (seed, cam)
        stats = sync.stats
        assert stats.phases_ns == final and stats.phase_resets == 0
        assert stats.skew_max_ns == max(s.skew_ns for s in sets)  # raw spread, not the corrected one
        assert sync.flush() == []  # the end: what waits is an incomplete instant, each counted once
        incomplete = [k for k, members in phased.instants.items() if 0 < len(members) < len(cams)]
        assert sync.stats.lost_instants == len(incomplete)


def test_phase_tracking_is_what_follows_the_drift() -> None:
    """Control for the test above: the same drifting stream with the first estimate frozen
    (phase_gain=0) loses sets, so the online update is what keeps them."""
    rng = np.random.default_rng(7)
    rig = Rig(1000 / 12, {cam: 8.5 * i for i, cam in enumerate(NUSC)}, 1.0)
    phased = phased_stream(rig, 300, rng, drift_ms_per_frame=0.04)
    frozen = ApproximateTimeSynchronizer(NUSC, slop_ns=10 * MS, phase_gain=0.0)
    tracked = ApproximateTimeSynchronizer(NUSC, slop_ns=10 * MS)
    sets = feed_phased(tracked, phased)
    check_instants(tracked, sets, phased)
    assert len(sets) >= 295
    assert len(feed_phased(frozen, phased)) < len(sets) - 20


def test_nuscenes_stream_plain_matching_loses_every_set_corrected_keeps_all() -> None:
    """The bug this module fixes: a 10 ms plain slop drops every set of a sweep-triggered rig,
    and the attempt skew says why (it is not 0 although nothing was emitted)."""
    rng = np.random.default_rng(3)
    phased = phased_stream(nuscenes_rig(rng), 40, rng, max_lateness=1.0)
    old = plain(NUSC, slop_ns=10 * MS)
    assert feed_phased(old, phased) == []
    stats = old.stats
    assert stats.emitted == 0 and stats.skew_last_ns is None
    # the refused spread is the rig's (~40 ms), not capped at the slop: the node can name the fix
    assert stats.attempt_skew_max_ns > 30 * MS and stats.attempt_skew_last_ns > 10 * MS
    assert stats.attempt_skew_min_ns is not None and 40 * MS < stats.attempt_skew_min_ns < 47 * MS
    assert stats.lost_instants >= 40 and stats.phases_ns == {}
    assert old.phases_ns == dict.fromkeys(NUSC, None)
    new = ApproximateTimeSynchronizer(NUSC, slop_ns=10 * MS)
    sets = feed_phased(new, phased)
    check_instants(new, sets, phased)
    assert len(sets) == 40 and new.stats.lost_instants == 0
    assert all(s.corrected_skew_ns <= 3 * MS < 40 * MS <= s.skew_ns for s in sets[5:])  # after the warm-up


def test_first_set_is_emitted_before_the_phases_are_known() -> None:
    """A node publishing one set at a time (as test_node does) gets each set at once: during the
    warm-up sets are matched on raw stamps within 50 ms. warmup_slop_ns=0 holds them instead."""
    stamps = {cam: 3 * MS * i for i, cam in enumerate(SURROUND_CAMERAS)}  # 15 ms spread > the 10 ms slop
    sync = ApproximateTimeSynchronizer(SURROUND_CAMERAS, slop_ns=10 * MS)
    holding = ApproximateTimeSynchronizer(SURROUND_CAMERAS, slop_ns=10 * MS, warmup_slop_ns=0)
    for k in range(6):
        got = [sync.add(cam, k * 100 * MS + s, k) for cam, s in stamps.items()][-1]
        held = [holding.add(cam, k * 100 * MS + s, k) for cam, s in stamps.items()][-1]
        assert [s.messages["front"][1] for s in got] == [k]
        assert [s.messages["front"][1] for s in held] == ([] if k < 3 else [0, 1, 2, 3] if k == 3 else [k])
    assert sync.phases_ns == {cam: s for cam, s in stamps.items()} == holding.phases_ns


def test_reset_forgets_phases_and_learns_a_new_rig() -> None:
    rng = np.random.default_rng(11)
    first = phased_stream(nuscenes_rig(rng), 20, rng)
    sync = ApproximateTimeSynchronizer(NUSC, slop_ns=10 * MS)
    assert len(feed_phased(sync, first)) == 20 and None not in sync.phases_ns.values()
    sync.reset()  # e.g. the clock jumped back: a new bag, maybe another rig
    assert sync.phases_ns == dict.fromkeys(NUSC, None)
    assert sync.stats.phases_ns == {} and sync.stats.phase_resets == 1
    sync.reset(clear_stats=True)  # nothing left to forget: no second count, then counters cleared
    assert sync.stats.phase_resets == 0 and sync.stats.emitted == 0
    ddad = Rig(100.0, {cam: 0.2 * i for i, cam in enumerate(NUSC)}, 0.05)
    second = phased_stream(ddad, 20, rng)
    sets = feed_phased(sync, second)
    check_instants(sync, sets, second)
    assert max(p for p in sync.phases_ns.values() if p is not None) < 2 * MS  # not the old 43 ms spread
    plain_sync = plain(NUSC, slop_ns=10 * MS)
    plain_sync.reset()
    assert plain_sync.stats.phase_resets == 0


def test_dead_camera_does_not_block_the_estimate_and_joins_later() -> None:
    """One camera silent for the first 30 frames: the others' phases are estimated without it
    (policy partial emits their sets), and it joins with a phase in the same frame."""
    rng = np.random.default_rng(5)
    rig = Rig(1000 / 12, {cam: 8.5 * i for i, cam in enumerate(NUSC)}, 0.5)
    phased = phased_stream(rig, 60, rng)
    events = [e for e in phased.events if not (e.camera == "back" and e.stamp < 10_000 * MS + 30 * rig.period * MS)]
    sync = ApproximateTimeSynchronizer(NUSC, slop_ns=10 * MS, policy="partial", timeout_ns=200 * MS)
    sets = feed(sync, events)
    check_invariants(sync, sets, events)
    complete = [s for s in sets if s.complete]
    assert len(complete) >= 28 and sync.phases_ns["back"] == pytest.approx(25.5 * MS, abs=1.5 * MS)
    assert sum(1 for s in sets if s.missing == ("back",)) >= 25


def test_flush_decides_what_is_left_at_the_end_of_a_stream() -> None:
    """Two frames only (shorter than the warm-up): flush estimates from them and emits both."""
    stamps = {cam: 8 * MS * i for i, cam in enumerate(NUSC)}
    sync = ApproximateTimeSynchronizer(NUSC, slop_ns=10 * MS, warmup_slop_ns=0)
    for k in range(2):
        for cam, s in stamps.items():
            assert sync.add(cam, k * 83 * MS + s, k) == []
    sync.add("front", 2 * 83 * MS, 2)  # an instant the others never sent
    sets = sync.flush()
    assert [s.messages["back"][1] for s in sets] == [0, 1]
    assert sync.pending()["front"] == 0 and sync.stats.dropped["front"].unmatched == 1
    assert sync.stats.lost_instants == 1


def brute_force_corrected(streams: dict[str, list[int]], phases: dict[str, int], slop: int) -> int:
    return brute_force_max_sets({cam: [s - phases[cam] for s in v] for cam, v in streams.items()}, slop)


def test_property_phase_corrected_wait_policy_is_count_optimal() -> None:
    """Arbitrary small streams (numpy RNG, many seeds), phases frozen once estimated and no set
    before (warmup_slop_ns=0): the number of sets equals the brute-force optimum over the
    phase-corrected streams, for any cross-camera interleaving."""
    for seed in range(300):
        rng = np.random.default_rng(seed)
        cams = [f"c{i}" for i in range(int(rng.integers(1, 4)))]
        streams = {cam: sorted({int(x) for x in rng.integers(0, 80, int(rng.integers(0, 7)))}) for cam in cams}
        tokens = [cam for cam in cams for _ in streams[cam]]
        order = rng.permutation(len(tokens))
        cursor = dict.fromkeys(cams, 0)
        events = []
        for i, j in enumerate(order):
            cam = tokens[j]
            events.append(Event(cam, streams[cam][cursor[cam]], arrival=i))
            cursor[cam] += 1
        slop = int(rng.integers(1, 15))
        sync = ApproximateTimeSynchronizer(cams, slop_ns=slop, queue_size=64, phase_gain=0.0, warmup_frames=2,
                                           warmup_slop_ns=0)
        sets = feed(sync, events) + sync.flush()
        check_invariants(sync, sets, events)
        phases = {cam: (p or 0) for cam, p in sync.phases_ns.items()}
        assert len(sets) == brute_force_corrected(streams, phases, slop), seed
        assert sum(sync.pending().values()) == 0


# ------------------------------------------------------------- offline reader
def test_bag_reader_gives_every_nuscenes_style_set_with_default_config(tmp_path) -> None:
    """A real rosbag2 file: six cameras fired 0-42.6 ms apart at 12 Hz, a sweep starting 1 ms before
    the first camera, transport delays up to 2.5 periods on one camera. The default DataConfig
    gives every set, stamped with its latest camera, with the sweep of its own capture (the latest
    camera would be nearer to the next sweep)."""
    from bagfactory import BagSpec, write_bag

    from fsmde_core.data import DataConfig, read_samples
    from fsmde_core.data.bag import BagSource

    period = 1000 / 12
    offsets = [0.0, 42.6, 34.1, 25.5, 17.0, 8.5]  # sweep order around the car, ring order of the bag
    wb = write_bag(tmp_path / "nusc", BagSpec(n_frames=9, period_ms=period, offsets_ms=offsets,
                                              lidar_offset_ms=-1.0, camera_latency_ms=[0, 200, 0, 0, 0, 0]))
    src = BagSource([wb.path], DataConfig(width=32, height=24))
    samples = list(src)
    assert src.stats.sets == 9 and src.stats.samples == 9
    assert (src.stats.incomplete_sets, src.stats.dropped_images, src.stats.no_lidar) == (0, 0, 0)
    for f, s in enumerate(samples):
        want = [wb.camera_stamps[name][f] for name in s.camera_names]
        assert s.camera_stamps_ns.tolist() == want
        assert s.stamp_ns == max(want)
        assert s.lidar_stamp_ns == wb.lidar_stamps[f]
        if f + 1 < len(wb.lidar_stamps):  # why the LiDAR is matched on the earliest camera
            assert abs(wb.lidar_stamps[f + 1] - max(want)) < abs(wb.lidar_stamps[f] - max(want))
    old = list(read_samples([wb.path], DataConfig(width=32, height=24, phase_correction=False)))
    assert old == []  # the same tolerance on raw stamps: every set lost
