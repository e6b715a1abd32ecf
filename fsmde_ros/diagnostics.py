"""/diagnostics of the surround depth node: thread-safe counters and the DiagnosticStatus builders.

Why apart from the node: what the node *counts* (callbacks, worker and timer all
touch the counters) and how a period's counts become OK/WARN/ERROR with a message
that names the fix are pure functions of those counts; kept here they can be
read and tested without the node's lifecycle, threads and publishers.

Status names start with the node's fully-qualified name (``/robot1/surround_depth_node:
pipeline``): two nodes in different namespaces publish on the same global
/diagnostics topic, and an aggregator tells statuses apart by name only.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from fsmde_core.calib_health import CrossViewMonitor
from fsmde_core.image_quality import ImageQuality
from fsmde_core.sync import suggest_tolerance_ms

CLOCK_MISMATCH_NS = 60_000_000_000  # |stamp - node clock| beyond this is another clock, not latency
CLOCK_HINT = "stamps are not in this clock: use_sim_time / --clock?"

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR


@dataclass
class Window:
    """Counters of one diagnostics period."""

    outputs: int = 0
    latency_sum_s: float = 0.0
    latency_max_s: float = 0.0
    latency_n: int = 0
    model_sum_s: float = 0.0
    model_max_s: float = 0.0
    sets_in: int = 0
    replaced: int = 0
    dropped_sets: int = 0
    clock_offset_s: float | None = None  # set when |stamp - node clock| > CLOCK_MISMATCH_NS
    received: Counter = field(default_factory=Counter)


class PipelineStats:
    """Thread-safe counters for /diagnostics (callbacks, worker and timer all touch them)."""

    def __init__(self, cameras: Sequence[str]) -> None:
        self._lock = threading.Lock()
        self.cameras = tuple(cameras)
        self.window = Window()
        self.window_started = time.monotonic()
        self.outputs = 0
        self.replaced = 0
        self.dropped_sets = 0
        self.inference_errors = 0
        self.stamp_resets = 0
        self.bad_input: dict[str, Counter] = defaultdict(Counter)
        self.last_arrival: dict[str, float] = {}
        self.received: Counter = Counter()

    def arrival(self, camera: str) -> None:
        with self._lock:
            self.last_arrival[camera] = time.monotonic()
            self.received[camera] += 1
            self.window.received[camera] += 1

    def set_in(self, replaced: bool) -> None:
        with self._lock:
            self.window.sets_in += 1
            self.window.replaced += int(replaced)
            self.replaced += int(replaced)

    def problem(self, camera: str, kind: str) -> None:
        with self._lock:
            self.bad_input[camera][kind] += 1

    def dropped(self) -> None:
        with self._lock:
            self.dropped_sets += 1
            self.window.dropped_sets += 1

    def inference_error(self) -> None:
        with self._lock:
            self.inference_errors += 1
            self.dropped_sets += 1
            self.window.dropped_sets += 1

    def stamp_reset(self) -> None:
        with self._lock:
            self.stamp_resets += 1

    def output(self, model_s: float, latency_s: float | None) -> None:
        """One published set; ``latency_s`` None = unknown (no clock yet, or stamps in another clock)."""
        with self._lock:
            w = self.window
            self.outputs += 1
            w.outputs += 1
            w.model_sum_s += model_s
            w.model_max_s = max(w.model_max_s, model_s)
            if latency_s is not None and abs(latency_s) * 1e9 > CLOCK_MISMATCH_NS:
                w.clock_offset_s = latency_s
            elif latency_s is not None:
                w.latency_n += 1
                w.latency_sum_s += latency_s
                w.latency_max_s = max(w.latency_max_s, latency_s)

    def roll(self) -> tuple[Window, float]:
        """Return the finished window and its length in seconds; start a new one."""
        with self._lock:
            now = time.monotonic()
            window, span = self.window, max(now - self.window_started, 1e-9)
            self.window, self.window_started = Window(), now
            return window, span

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "outputs": self.outputs, "replaced": self.replaced, "dropped_sets": self.dropped_sets,
                "inference_errors": self.inference_errors, "stamp_resets": self.stamp_resets,
                "bad_input": {c: dict(v) for c, v in self.bad_input.items()},
                "last_arrival": dict(self.last_arrival), "received": dict(self.received),
            }


def pipeline_health(out_rate: float, camera_rates: dict[str, float], silent: Sequence[str], dropped: int,
                    replaced: int) -> tuple[bytes, str]:
    """Level and message of the pipeline status for one diagnostics period.

    ERROR: no camera sends anything, or every set of the period was dropped. WARN: some camera
    is silent, the output rate is below half the slowest live camera's rate (inference slower
    than the cameras, or sets failing to synchronize), or some sets were dropped.
    """
    if not camera_rates:
        return ERROR, "no input images"
    if dropped and out_rate == 0:
        return ERROR, f"every set dropped ({dropped}): bad input or inference errors, see the log"
    if silent:
        return WARN, f"{out_rate:.1f} Hz; silent camera(s): {', '.join(silent)}"
    slowest = min(camera_rates.values())
    if slowest > 0 and out_rate < 0.5 * slowest:
        why = (f"{replaced} set(s) replaced while busy: inference is slower than the cameras" if replaced
               else "images fail to synchronize: check sync.slop_ms and the camera stamps")
        return WARN, f"output {out_rate:.1f} Hz < half the camera rate {slowest:.1f} Hz; {why}"
    if dropped:
        return WARN, f"{out_rate:.1f} Hz; {dropped} set(s) dropped (bad input, see the log)"
    return OK, f"{out_rate:.1f} Hz"


# ------------------------------------------------------------ status builders
def silent_cameras(cams: Sequence[DiagnosticStatus]) -> list[str]:
    """Names of the cameras whose status is not OK (silent), from their status names."""
    return [s.name.rsplit(" ", 1)[-1] for s in cams if s.level != OK]


def camera_status(node_name: str, camera: str, w: Window, span: float, snap: dict, sync_stats: Any,
                  now: float) -> DiagnosticStatus:
    """Rate, silence, synchronizer drops and bad inputs of one camera."""
    last = snap["last_arrival"].get(camera)
    rate = w.received.get(camera, 0) / span
    bad = snap["bad_input"].get(camera, {})
    level, message = OK, f"{rate:.1f} Hz"
    if last is None:
        level, message = WARN, "silent: no image received yet"
    elif w.received.get(camera, 0) == 0:
        level, message = WARN, f"silent for {now - last:.1f} s"
    values = {"rate_hz": f"{rate:.2f}", "received": str(snap["received"].get(camera, 0)),
              "last_image_age_s": f"{now - last:.2f}" if last is not None else "never"}
    if sync_stats is not None and camera in sync_stats.dropped:
        d = sync_stats.dropped[camera]
        values.update({"dropped_stale": str(d.stale), "dropped_overflow": str(d.overflow),
                       "dropped_unmatched": str(d.unmatched)})
    values.update({f"bad_input_{kind}": str(count) for kind, count in sorted(bad.items())})
    if bad and level == OK and sum(bad.values()):
        message += f"; {sum(bad.values())} bad input(s) so far"
    return _status(f"{node_name}: camera {camera}", level, message, values, camera)


def pipeline_status(node_name: str, w: Window, span: float, snap: dict, sync_stats: Any,
                    cams: Sequence[DiagnosticStatus], *, motion_note: str, backend_info: dict[str, Any],
                    ray_cache_builds: int) -> DiagnosticStatus:
    """Rates, latency, model time and synchronizer figures of the whole pipeline."""
    out_rate, in_rate = w.outputs / span, w.sets_in / span
    silent = silent_cameras(cams)
    camera_rates = {c: w.received.get(c, 0) / span for c in (s.hardware_id for s in cams) if c not in silent}
    level, message = pipeline_health(out_rate, camera_rates, silent, w.dropped_sets, w.replaced)
    no_latency = "n/a"
    if w.clock_offset_s is not None:
        no_latency = f"n/a ({CLOCK_HINT})"
        message += f"; {CLOCK_HINT}"
        level = max(level, WARN)
    values = {
        "output_rate_hz": f"{out_rate:.2f}",
        "synchronized_input_rate_hz": f"{in_rate:.2f}",
        "latency_mean_ms": f"{1e3 * w.latency_sum_s / w.latency_n:.1f}" if w.latency_n else no_latency,
        "latency_max_ms": f"{1e3 * w.latency_max_s:.1f}" if w.latency_n else no_latency,
        "stamp_clock_offset_s": f"{w.clock_offset_s:+.1f}" if w.clock_offset_s is not None else "n/a",
        "model_time_mean_ms": f"{1e3 * w.model_sum_s / w.outputs:.1f}" if w.outputs else "n/a",
        "model_time_max_ms": f"{1e3 * w.model_max_s:.1f}" if w.outputs else "n/a",
        "outputs_total": str(snap["outputs"]),
        "sets_replaced_while_busy": str(snap["replaced"]),
        "sets_dropped": str(snap["dropped_sets"]),
        "inference_errors": str(snap["inference_errors"]),
        "ray_cache_builds": str(ray_cache_builds),
        "stamp_jump_resets": str(snap["stamp_resets"]),
        "cloud_motion_compensation": motion_note,
        "backend": json.dumps(backend_info, default=str, sort_keys=True),
    }
    if sync_stats is not None:
        values.update(_sync_values(sync_stats))
    return _status(f"{node_name}: pipeline", level, message, values, str(backend_info.get("device", "")))


def _sync_values(sync_stats: Any) -> dict[str, str]:
    return {
        "sync_sets_emitted": str(sync_stats.emitted),
        "sync_partial_sets": str(sync_stats.partial),
        "sync_skew_last_ms": _ms(sync_stats.skew_last_ns),
        "sync_skew_mean_ms": _ms(sync_stats.skew_mean_ns),
        "sync_skew_max_ms": f"{sync_stats.skew_max_ns / 1e6:.2f}",
        # attempted sets too (dropped ones included): not 0.00 when every set fails
        "sync_attempt_skew_last_ms": _ms(sync_stats.attempt_skew_last_ns),
        "sync_attempt_skew_max_ms": _ms(sync_stats.attempt_skew_max_ns),
        "sync_attempt_skew_min_ms": _ms(sync_stats.attempt_skew_min_ns),
        "sync_phases_ms": _phases_text(sync_stats.phases_ns) or "n/a",
        "sync_phase_resets": str(sync_stats.phase_resets),
    }


def calibration_status(node_name: str, monitor: CrossViewMonitor | None, note: str) -> DiagnosticStatus:
    """Cross-view consistency per adjacent pair; WARN names the camera(s) that look bumped."""
    name = f"{node_name}: calibration"
    if monitor is None:
        return _status(name, OK, f"cross-view check {note}", {"cross_view": note}, "")
    values = {"cross_view": note, **monitor.values()}
    suspects = monitor.suspects()
    values["cross_view_suspects"] = ", ".join(suspects) or "none"
    if suspects:
        return _status(name, WARN, f"camera(s) {', '.join(suspects)}: depth inconsistent with both neighbours "
                                   f"(cross-view); bumped camera or wrong extrinsic?", values, "")
    return _status(name, OK, f"cross-view consistency OK ({note})", values, "")


@dataclass(frozen=True)
class QualityReport:
    """The latest image-quality check of one camera."""

    quality: ImageQuality
    stamp_ns: int  # header.stamp of the checked image
    checks: int  # images of this camera checked since configure


class ImageQualityBoard:
    """Latest :class:`QualityReport` per camera: the inference worker writes, the diagnostics timer reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, QualityReport] = {}

    def record(self, camera: str, quality: ImageQuality, stamp_ns: int) -> None:
        with self._lock:
            previous = self._latest.get(camera)
            self._latest[camera] = QualityReport(quality, stamp_ns, (previous.checks if previous else 0) + 1)

    def latest(self, camera: str) -> QualityReport | None:
        with self._lock:
            return self._latest.get(camera)


def image_quality_status(node_name: str, camera: str, report: QualityReport | None,
                         every_n_sets: int) -> DiagnosticStatus:
    """WARN naming the camera and each problem of its latest checked image ("front: too dark (mean
    12/255)"), OK otherwise; the values are the measures. It reports, it never stops anything."""
    name = f"{node_name}: image quality {camera}"
    if report is None:
        return _status(name, OK, f"{camera}: no image checked yet (every {every_n_sets}. set)",
                       {"checked_images": "0"}, camera)
    values = {**report.quality.values(), "checked_images": str(report.checks),
              "checked_stamp_s": f"{report.stamp_ns / 1e9:.3f}"}
    problems = report.quality.problems
    if problems:
        return _status(name, WARN, f"{camera}: {'; '.join(problems)}", values, camera)
    return _status(name, OK, f"{camera}: OK", values, camera)


def sync_failure_advice(sync_stats: Any, silent: Sequence[str], *, policy: str, slop_ns: int,
                        phase_correction: bool, new_unmatched: bool) -> str | None:
    """Why images arrive but no set forms, with the setting that would fix it; None = nothing to say.

    ``new_unmatched``: the synchronizer refused sets for a stamp spread beyond the slop since
    the last period (the spread it saw is then the number to quote).
    """
    slop_ms = slop_ns / 1e6
    if silent and policy == "wait":
        return (f"camera(s) {', '.join(silent)} send nothing and sync.policy is wait (complete sets only): "
                f"set sync.policy:=partial to run without them")
    if not new_unmatched:
        return None
    spread = sync_stats.attempt_skew_min_ns or 0  # the attempt that started at the first camera
    seen = (f"stamp spread of the refused sets: smallest {_ms(spread)}, last "
            f"{_ms(sync_stats.attempt_skew_last_ns)} ms (sync.slop_ms {slop_ms:g})")
    if spread and spread / 1e6 > slop_ms and not phase_correction:
        fix = (f"{seen}; set sync.phase_correction:=true (learns each camera's trigger phase, as on "
               f"sweep-triggered rigs), or sync.slop_ms:={suggest_tolerance_ms(spread):g} if that stays below "
               f"half the camera period (beyond it, sets mix capture instants)")
    elif spread and spread / 1e6 > slop_ms:
        fix = (f"{seen}; sync.slop_ms:={suggest_tolerance_ms(spread):g} would match them (keep it below half "
               f"the camera period, or the sets mix capture instants)")
    else:
        fix = f"{seen}; check that every camera stamps the same capture instants"
    if sync_stats.phases_ns:
        fix += f"; estimated camera phases [ms]: {_phases_text(sync_stats.phases_ns)}"
    return fix


def _ms(ns: int | None) -> str:
    return f"{ns / 1e6:.2f}" if ns is not None else "n/a"


def _phases_text(phases_ns: dict[str, int]) -> str:
    return ", ".join(f"{name} {ns / 1e6:.1f}" for name, ns in phases_ns.items())


def _status(name: str, level: bytes, message: str, values: dict[str, str], hardware_id: str) -> DiagnosticStatus:
    return DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                            values=[KeyValue(key=k, value=v) for k, v in values.items()])
