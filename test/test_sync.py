"""Tests of fsmde_core.sync: scenarios a surround rig produces (jitter, drops,
reordering, bursts, dead cameras, overflow), property tests against a
brute-force optimal matcher, and a check that the per-message work is linear
in the number of cameras."""

from __future__ import annotations

import bisect
import itertools
import random
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsmde_core.sync import ApproximateTimeSynchronizer, SyncedSet

MS = 1_000_000
SIX = ("front", "front_left", "rear_left", "rear", "rear_right", "front_right")


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
    as sent, and every received message accounted for."""
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
        assert s.skew_ns == max(stamps) - min(stamps) <= sync.slop_ns
        if previous_ref is not None:
            assert min(stamps) > previous_ref, "sets overlap in time"
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
    sync = ApproximateTimeSynchronizer(SIX, slop_ns=10 * MS, queue_size=5)
    events = rig_stream(SIX, frames=50)
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
    sync = ApproximateTimeSynchronizer(["a", "b", "c"], slop_ns=10)
    assert sync.add("a", 100, "a0") == []
    assert sync.add("a", 104, "a1") == []  # two frames within slop: the later one fits better
    assert sync.add("b", 106, "b0") == []
    (s,) = sync.add("c", 103, "c0")
    assert s.stamp_ns == 106
    assert s.messages == {"a": (104, "a1"), "b": (106, "b0"), "c": (103, "c0")}
    assert s.skew_ns == 3 and s.missing == ()
    assert sync.stats.dropped["a"].unmatched == 1  # a0 lost to a1


def test_dropped_frame_under_wait_is_counted_unmatched_as_soon_as_known() -> None:
    events = rig_stream(SIX, frames=10, skip=[("rear", 3)])
    sync = ApproximateTimeSynchronizer(SIX, slop_ns=10 * MS, policy="wait")
    sets: list[SyncedSet] = []
    rear4 = next(i for i, e in enumerate(events) if e.camera == "rear" and frame_of(e.stamp) == 4)
    sets += feed(sync, events[:rear4])
    assert sync.stats.dropped_total == 0  # "rear" might still send frame 3
    sets += feed(sync, events[rear4 : rear4 + 1])
    assert sync.stats.dropped_total >= 1  # now certain: the oldest frame-3 image goes
    sets += feed(sync, events[rear4 + 1 :])
    # The other frame-3 images go as their cameras' frame 4 proves that no
    # second frame-3 image is coming: five in all, nothing else.
    assert sync.stats.dropped_total == 5
    check_invariants(sync, sets, events)
    assert [frame_of(s.stamp_ns) for s in sets] == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert all(s.complete for s in sets)


def test_lagging_camera_reordered_across_frames() -> None:
    """One camera is delivered three frames late: messages of different
    instants interleave, yet every set is found, in time order."""
    events = rig_stream(SIX, frames=20)
    lag = [Event(e.camera, e.stamp, e.arrival + 300 * MS) if e.camera == "rear" else e for e in events]
    lag.sort(key=lambda e: e.arrival)
    sync = ApproximateTimeSynchronizer(SIX, slop_ns=10 * MS, queue_size=5)
    sets: list[SyncedSet] = []
    for ev in lag:
        got = sync.add(ev.camera, ev.stamp, ev.payload, ev.arrival)
        assert len(got) == (1 if ev.camera == "rear" else 0)  # rear completes each set
        sets += got
    check_invariants(sync, sets, lag)
    assert [frame_of(s.stamp_ns) for s in sets] == list(range(20))
    assert sync.stats.dropped_total == 0


def test_stamps_out_of_order_within_a_camera() -> None:
    """A camera's frames arrive swapped: both still match, because each queue
    is kept sorted and nothing is decided before the other camera speaks."""
    sync = ApproximateTimeSynchronizer(["a", "b"], slop_ns=10)
    assert sync.add("a", 200, "a200") == []
    assert sync.add("a", 100, "a100") == []
    sets = sync.add("b", 102, "b102") + sync.add("b", 205, "b205")
    assert [(s.messages["a"], s.messages["b"]) for s in sets] == [
        ((100, "a100"), (102, "b102")),
        ((200, "a200"), (205, "b205")),
    ]


def test_message_older_than_last_set_is_stale() -> None:
    sync = ApproximateTimeSynchronizer(["a", "b"], slop_ns=10)
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
    events = rig_stream(SIX, frames=12, seed=3)
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
    sync = ApproximateTimeSynchronizer(SIX, slop_ns=10 * MS, queue_size=10)
    burst_sets = feed(sync, before)
    assert burst_sets == [] and max(sync.pending().values()) == 9
    sets = feed(sync, merged[len(before) :])
    check_invariants(sync, sets, merged)
    assert [frame_of(s.stamp_ns) for s in sets] == list(range(12))
    assert sync.stats.dropped_total == 0


def test_burst_overflowing_queues_keeps_newest_frames() -> None:
    sync = ApproximateTimeSynchronizer(["a", "b"], slop_ns=10, queue_size=3)
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
        e for e in rig_stream(SIX, frames=60) if not (e.camera == "rear" and 4 <= frame_of(e.stamp) < 50)
    ]
    sync = ApproximateTimeSynchronizer(SIX, slop_ns=10 * MS, queue_size=queue, policy="wait")
    sets: list[SyncedSet] = []
    for ev in events:
        sets += sync.add(ev.camera, ev.stamp, ev.payload, ev.arrival)
        assert max(sync.pending().values()) <= queue
    check_invariants(sync, sets, events)
    assert [frame_of(s.stamp_ns) for s in sets] == [0, 1, 2, 3, *range(50, 60)]
    assert all(s.complete for s in sets)
    stats = sync.stats
    for cam in SIX:
        if cam != "rear":
            # frames 4..49 waited in a full queue: the oldest overflowed, the
            # last `queue` were found unmatched once "rear" came back.
            assert stats.dropped[cam].overflow == 46 - queue
            assert stats.dropped[cam].unmatched == queue
    assert stats.dropped["rear"].total == 0


def test_dead_camera_under_partial_emits_after_timeout_via_poll() -> None:
    timeout = 50 * MS
    events = [e for e in rig_stream(SIX, frames=30) if not (e.camera == "rear" and frame_of(e.stamp) >= 5)]
    sync = ApproximateTimeSynchronizer(
        SIX, slop_ns=10 * MS, policy="partial", timeout_ns=timeout, min_cameras=4
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
        assert s.missing == ("rear",) and s.messages["rear"] is None
        assert s.stamp_ns == max(m[0] for m in s.messages.values() if m is not None)
        # released by the timer within one tick of the timeout, not later
        assert timeout <= t - first_arrival[frame_of(s.stamp_ns)] < timeout + poll_period
    assert sync.stats.partial == 25


def test_partial_timeout_also_fires_inside_add_and_camera_dead_from_start() -> None:
    sync = ApproximateTimeSynchronizer(["a", "b", "c"], slop_ns=10, policy="partial", timeout_ns=150)
    assert sync.add("a", 0, None, arrival_ns=1) == []
    assert sync.add("b", 2, None, arrival_ns=3) == []
    assert sync.add("a", 100, None, arrival_ns=101) == []  # "c" never sent: undecided
    (s,) = sync.add("b", 200, None, arrival_ns=201)  # clock passed 1 + 150
    assert s.stamp_ns == 2 and s.missing == ("c",)
    assert sync.poll(250) == [] and len(sync.poll(251)) == 1  # frame 100: due at 101 + 150


def test_partial_is_emitted_without_timeout_when_absence_is_certain() -> None:
    """A single dropped frame: the missing camera's next frame proves the
    absence, so the partial set does not wait for the (long) timeout."""
    events = rig_stream(SIX, frames=6, skip=[("rear", 3)])
    sync = ApproximateTimeSynchronizer(SIX, slop_ns=10 * MS, policy="partial", timeout_ns=10**12)
    sets: list[SyncedSet] = []
    for ev in events:
        got = sync.add(ev.camera, ev.stamp, ev.payload, ev.arrival)
        if ev.camera == "rear" and frame_of(ev.stamp) == 4:
            assert [frame_of(s.stamp_ns) for s in got] == [3] and got[0].missing == ("rear",)
        sets += got
    check_invariants(sync, sets, events)
    assert [frame_of(s.stamp_ns) for s in sets] == list(range(6))


def test_partial_below_min_cameras_is_dropped_not_emitted() -> None:
    events = [e for e in rig_stream(SIX, frames=12) if not (e.camera == "rear" and frame_of(e.stamp) >= 2)]
    sync = ApproximateTimeSynchronizer(
        SIX, slop_ns=10 * MS, queue_size=4, policy="partial", timeout_ns=60 * MS, min_cameras=6
    )
    sets = feed(sync, events) + sync.poll(10**12)
    check_invariants(sync, sets, events)
    assert [frame_of(s.stamp_ns) for s in sets] == [0, 1]
    assert sum(sync.pending().values()) == 0
    assert sum(d.unmatched + d.overflow for d in sync.stats.dropped.values()) == 5 * 10


def test_poll_under_wait_never_emits_and_reset_forgets_time_order() -> None:
    sync = ApproximateTimeSynchronizer(["a", "b"], slop_ns=10)
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
    sync = ApproximateTimeSynchronizer(["a"], slop_ns=1)
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
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"cameras": ["a", "b"], "slop_ns": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        ApproximateTimeSynchronizer(**args)


def test_add_rejects_unknown_camera_and_float_stamps() -> None:
    sync = ApproximateTimeSynchronizer(["a", "b"], slop_ns=10)
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
    events = rig_stream(SIX, frames=frames, seed=7)
    sync = ApproximateTimeSynchronizer(SIX, slop_ns=10 * MS, queue_size=frames + 1)
    results: list[SyncedSet] = []
    results_lock = threading.Lock()
    barrier = threading.Barrier(len(SIX))

    def run(cam: str) -> None:
        barrier.wait()
        for ev in events:
            if ev.camera == cam:
                got = sync.add(ev.camera, ev.stamp, ev.payload)
                with results_lock:
                    results.extend(got)

    threads = [threading.Thread(target=run, args=(cam,)) for cam in SIX]
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
        sync = ApproximateTimeSynchronizer(cams, slop_ns=10 * MS, queue_size=8)
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
    sync = ApproximateTimeSynchronizer(cams, slop_ns=slop, queue_size=64)
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
    sync = ApproximateTimeSynchronizer(cams, slop_ns=slop, queue_size=64)
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
    sync = ApproximateTimeSynchronizer(
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
    sync = ApproximateTimeSynchronizer(
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
