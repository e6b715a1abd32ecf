"""``fsmde inspect BAG``: what a recording holds and whether it can be trained on.

Discovers the layout (metadata, ``/tf_static``, the first message of each
camera, camera_info and LiDAR topic), then reads every message's log time and
the header stamps of the cameras and the LiDAR (never a payload beyond its
header) to report:

* each topic's rate over ITS OWN span, ``(n - 1) / (last - first)``: a bag-wide
  span lets one ``/tf_static`` at t=0 turn every rate into "~0.0 Hz";
* the camera timing: each camera's trigger phase within the rig's cycle
  (:func:`fsmde_core.sync.estimate_phases`), the stamp spread of the sets,
  and how many sets the configured ``data.*`` settings keep — computed by
  replaying the stamps through the reader's own grouping, so the number is
  what training and ``fsmde eval`` will get;
* whether ``/tf`` (ego motion) is recorded;
* every problem that would stop :func:`fsmde_core.data.bag.read_samples`, all
  at once, with the setting that fixes it.

The same survey explains ``fsmde eval``'s "no synchronised set" error
(:func:`explain_no_sets`). Exit status: 0 usable, 1 problems (including: no set
would be kept), 2 the bag cannot be opened or the settings are invalid.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from fsmde_core.data.bag import reader_synchronizer
from fsmde_core.data.config import DataConfig
from fsmde_core.data.errors import BagError
from fsmde_core.data.layout import BagLayout, check_one_sample_size, discover_layout
from fsmde_core.data.reader import check_bag_path, iter_raw, message_stamp_ns, open_bag
from fsmde_core.messages import MalformedMessageError
from fsmde_core.sync import estimate_phases, nearest_stamps, suggest_tolerance_ms
from fsmde_core.synthetic.weather import bag_condition

#: The LiDAR line of a bag without any PointCloud2 topic: what it can still be used for.
CAMERA_ONLY_LINE = "LiDAR: none (camera-only bag; train with loss.use_photometric, README 'Training without LiDAR')"

#: Topic of the dynamic transforms (ego motion) by ROS convention.
TF_TOPIC = "/tf"


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _bag_bytes(path: Path) -> int:
    files = [p for p in path.iterdir() if p.is_file()] if path.is_dir() else [path]
    return sum(p.stat().st_size for p in files)


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


# ------------------------------------------------------------------ survey
@dataclass
class TopicTimes:
    """Log times of one topic: enough for its own rate, nothing else kept."""

    count: int = 0
    first_ns: int = 0
    last_ns: int = 0

    def add(self, log_ns: int) -> None:
        if self.count == 0:
            self.first_ns = log_ns
        self.first_ns, self.last_ns = min(self.first_ns, log_ns), max(self.last_ns, log_ns)
        self.count += 1

    @property
    def rate_hz(self) -> float | None:
        """``(n - 1) / span`` over this topic's own messages; None below two messages or a zero span."""
        span = self.last_ns - self.first_ns
        return (self.count - 1) / (span / 1e9) if self.count > 1 and span > 0 else None


@dataclass
class StampSurvey:
    """One pass over a bag: per-topic log times, camera and LiDAR header stamps (with log times)."""

    topics: dict[str, TopicTimes] = field(default_factory=dict)
    camera_stamps: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # name -> [(stamp, log)]
    lidar_stamps: list[int] = field(default_factory=list)
    unreadable: int = 0  # messages whose header could not be read

    def stamps(self, name: str) -> list[int]:
        return [s for s, _ in self.camera_stamps.get(name, [])]


def survey_bag(reader, layout: BagLayout) -> StampSurvey:
    """Read every message's log time and the header stamps of cameras and LiDAR (payloads untouched)."""
    survey = StampSurvey(topics={t: TopicTimes() for t in layout.topics})
    cams = {c.image_topic: c.name for c in layout.cameras}
    survey.camera_stamps = {c.name: [] for c in layout.cameras}
    for topic, msgtype, log_ns, raw in iter_raw(reader, layout.bag, list(layout.topics)):
        survey.topics[topic].add(log_ns)
        if topic not in cams and topic != layout.lidar_topic:
            continue
        try:
            stamp = message_stamp_ns(reader, raw, msgtype, topic)
        except MalformedMessageError:
            survey.unreadable += 1
            continue
        if topic in cams:
            survey.camera_stamps[cams[topic]].append((stamp, log_ns))
        else:
            survey.lidar_stamps.append(stamp)
    return survey


# --------------------------------------------------------- set formation
@dataclass
class SetCount:
    """What the reader's grouping makes of the camera stamps under a DataConfig."""

    sets: int  # complete camera sets
    spreads_ns: list[int]  # raw stamp spread of each set
    references_ns: list[int]  # each set's reference stamp (the LiDAR is matched to it)
    incomplete: int  # moments that lost a camera
    with_lidar: int  # sets with a sweep within lidar_tolerance_ms

    @property
    def spread_median_ms(self) -> float:
        return float(np.median(self.spreads_ns)) / 1e6 if self.spreads_ns else math.nan

    @property
    def spread_max_ms(self) -> float:
        return max(self.spreads_ns) / 1e6 if self.spreads_ns else math.nan


def count_sets(survey: StampSurvey, names: Sequence[str], config: DataConfig) -> SetCount:
    """Replay the camera stamps, in log-time order, through the reader's synchronizer with ``config``.

    The reader's own synchronizer (:func:`fsmde_core.data.bag.reader_synchronizer`; stamps that do
    not rise on their topic skipped, as the reader does), so the count is the reader's, not an estimate.
    """
    sync = reader_synchronizer(names, config)
    events = sorted((log, k, stamp) for k, n in enumerate(names) for stamp, log in survey.camera_stamps[n])
    last: list[int | None] = [None] * len(names)
    sets = []
    for _log, k, stamp in events:
        if last[k] is not None and stamp <= last[k]:
            continue
        last[k] = stamp
        sets.extend(sync.add(names[k], stamp, None))
    sets.extend(sync.flush())
    members = [[m[0] for m in st.messages.values() if m is not None] for st in sets if st.complete]
    spreads = [max(m) - min(m) for m in members]
    refs = [min(m) for m in members]  # the LiDAR is chosen by the earliest camera stamp (bag.lidar_reference_ns)
    lidar = np.sort(np.asarray(survey.lidar_stamps, dtype=np.int64))
    return SetCount(len(members), spreads, refs, sync.stats.lost_instants,
                    int(np.sum(_nearest_gap_ns(lidar, refs) <= config.lidar_tolerance_ns)))


def _nearest_gap_ns(sorted_stamps: np.ndarray, queries: Iterable[int]) -> np.ndarray:
    """|query - nearest stamp| for each query (inf when there is no stamp)."""
    q = np.asarray(list(queries), dtype=np.int64)
    if sorted_stamps.size == 0 or q.size == 0:
        return np.full(q.shape, np.inf)
    return np.abs(q - nearest_stamps(sorted_stamps, q)).astype(np.float64)


def capture_spreads_ns(survey: StampSurvey, names: Sequence[str], phases_ns: dict[str, int]) -> np.ndarray:
    """Raw stamp spread of each capture of the first-firing camera, whatever the tolerance.

    Per capture, each camera's stamp nearest to where its trigger phase
    (:func:`fsmde_core.sync.estimate_phases`) puts it; the spread is their
    range. Independent of any setting, so it says what a plain tolerance WOULD
    need when the configured one keeps no set, also on sweep-triggered rigs.
    """
    stamps = {n: np.sort(np.asarray(survey.stamps(n), dtype=np.int64)) for n in names}
    if not names or any(s.size == 0 for s in stamps.values()):
        return np.zeros(0, dtype=np.int64)
    first = min(names, key=lambda n: phases_ns.get(n, 0))
    starts = stamps[first] - phases_ns.get(first, 0)
    picked = np.stack([nearest_stamps(stamps[n], starts + phases_ns.get(n, 0)) for n in names])
    return (picked.max(axis=0) - picked.min(axis=0)).astype(np.int64)


@dataclass
class Timing:
    """Camera timing of one bag: phases (None when unknown), observed spread and the configured set count."""

    phases: object | None  # fsmde_core.sync.PhaseEstimate
    phase_error: str
    spreads_ns: np.ndarray  # per capture, independent of the tolerance (capture_spreads_ns)
    count: SetCount
    lidar_gap_ms: float  # median distance of a set reference (or camera stamp) to its nearest sweep


def _phases(survey: StampSurvey, names: Sequence[str]) -> tuple[object | None, str]:
    try:
        return estimate_phases({n: survey.stamps(n) for n in names}), ""
    except ValueError as exc:
        return None, str(exc)


def camera_timing(survey: StampSurvey, layout: BagLayout, config: DataConfig) -> Timing:
    """Phases (:func:`fsmde_core.sync.estimate_phases`), spreads, set count and LiDAR distance of one bag."""
    names = [c.name for c in layout.cameras]
    phases, error = _phases(survey, names)
    spreads = capture_spreads_ns(survey, names, phases.phases_ns) if phases is not None else np.zeros(0, np.int64)
    count = count_sets(survey, names, config)
    refs = count.references_ns or (survey.stamps(names[0]) if names else [])
    gaps = _nearest_gap_ns(np.sort(np.asarray(survey.lidar_stamps, dtype=np.int64)), refs)
    gap = float(np.median(gaps)) / 1e6 if gaps.size and np.isfinite(gaps).any() else math.nan
    return Timing(phases, error, spreads, count, gap)


def _suggest_ms(ms: float) -> str:
    """The tolerance to suggest for a measured spread, as text (the node's rule: ``suggest_tolerance_ms``)."""
    return f"{suggest_tolerance_ms(ms * 1e6):g}"


def timing_verdict(t: Timing, layout: BagLayout, config: DataConfig, need_lidar: bool) -> str | None:
    """None when sets would be kept; else one line: what fails and the setting that fixes it."""
    c = t.count
    if c.sets == 0:
        if t.spreads_ns.size and t.phases is not None:
            med, top = float(np.median(t.spreads_ns)) / 1e6, float(t.spreads_ns.max()) / 1e6
            seen = f"the cameras' header.stamps of one capture spread over median {med:.1f} ms, max {top:.1f} ms"
            jitter_ms = 3.0 * t.phases.jitter_ns / 1e6  # corrected stamps still spread by the trigger jitter
            if config.phase_correction:
                seen += f" (trigger jitter {t.phases.jitter_ns / 1e6:.1f} ms after phase correction)"
                fix = f"set data.sync_tolerance_ms={_suggest_ms(jitter_ms)}"
            elif float(_suggest_ms(top)) < 0.5 * t.phases.period_ns / 1e6:
                fix = (f"set data.phase_correction=true (or a plain data.sync_tolerance_ms={_suggest_ms(top)}, "
                       "below half the frame period)")
            else:  # a plain tolerance that wide would mix capture instants
                fix = (f"set data.phase_correction=true (a plain tolerance would have to exceed half the "
                       f"{t.phases.period_ns / 1e6:.0f} ms frame period and would mix capture instants)")
        else:
            seen = f"the camera stamps cannot be analysed ({t.phase_error or 'a camera has no stamp'})"
            fix = "check that every camera publishes"
        return (f"no complete camera set: {c.incomplete} capture(s) lost a camera at data.sync_tolerance_ms="
                f"{config.sync_tolerance_ms:g}; {seen}; {fix}")
    if need_lidar and c.with_lidar == 0:
        if not layout.lidar_topic:
            return ("no LiDAR sweep: the bag has no PointCloud2 topic (set data.lidar_topic=...), "
                    "or evaluate against dense GT with --gt synthetic")
        gap = f"the nearest sweep is typically {t.lidar_gap_ms:.1f} ms away" if math.isfinite(t.lidar_gap_ms) \
            else "no sweep was readable"
        fix = (f"set data.lidar_tolerance_ms={_suggest_ms(t.lidar_gap_ms)}" if math.isfinite(t.lidar_gap_ms)
               else f"check {layout.lidar_topic}")
        return (f"{c.sets} camera set(s) formed but none has a LiDAR sweep on {layout.lidar_topic} within "
                f"data.lidar_tolerance_ms={config.lidar_tolerance_ms:g}; {gap} (another clock?); {fix}")
    return None


def explain_no_sets(bags: Iterable[str | Path], config: DataConfig, need_lidar: bool) -> str:
    """Why the reader formed no set from ``bags``: the first bag's verdict (or layout problems)."""
    reasons = []
    for bag in bags:
        with open_bag(bag) as reader:
            layout = discover_layout(reader, Path(bag), config)
            if not layout.ok:
                reasons.append(f"bag {bag}: " + "; ".join(str(p) for p in layout.problems))
                continue
            verdict = timing_verdict(camera_timing(survey_bag(reader, layout), layout, config), layout,
                                     config, need_lidar)
        if verdict:
            reasons.append(f"bag {bag}: {verdict}")
    return " | ".join(reasons) if reasons else "the sets were dropped while decoding (see the log's warnings)"


# ------------------------------------------------------------------ report
def _topic_lines(layout: BagLayout, survey: StampSurvey | None) -> list[str]:
    rows = [["topic", "type", "count", "rate"]]
    for name, t in layout.topics.items():
        latched = name == layout.config.tf_static_topic  # published once per publisher: no rate
        own = survey.topics.get(name) if survey is not None else None
        rate = own.rate_hz if own is not None and not latched else None
        rows.append([name, t.msgtype, str(t.count), "-" if rate is None else f"{rate:.1f} Hz"])
    return _table(rows)


def _timing_lines(t: Timing, layout: BagLayout, config: DataConfig) -> list[str]:
    lines = [f"camera timing (data.sync_tolerance_ms={config.sync_tolerance_ms:g}, data.phase_correction="
             f"{str(config.phase_correction).lower()}, data.lidar_tolerance_ms={config.lidar_tolerance_ms:g}):"]
    if t.phases is not None:
        p = t.phases
        lines.append(f"  period {p.period_ns / 1e6:.1f} ms, capture spread {p.spread_ns / 1e6:.1f} ms, "
                     f"jitter {p.jitter_ns / 1e6:.2f} ms")
        lines.append("  phases: " + ", ".join(f"{c.name} {p.phases_ns.get(c.name, 0) / 1e6:.1f} ms"
                                             for c in layout.cameras))
    else:
        lines.append(f"  phases: unknown ({t.phase_error})")
    c = t.count
    if t.spreads_ns.size:
        lines.append(f"  capture stamp spread: median {float(np.median(t.spreads_ns)) / 1e6:.1f} ms, "
                     f"max {float(t.spreads_ns.max()) / 1e6:.1f} ms")
    if c.sets:
        lines.append(f"  kept sets' spread: median {c.spread_median_ms:.1f} ms, max {c.spread_max_ms:.1f} ms")
    lidar = f", {c.with_lidar} with a LiDAR sweep" if layout.lidar_topic else ""
    lines.append(f"  sets kept: {c.sets} ({c.incomplete} incomplete capture(s) dropped){lidar}")
    return lines


def _ego_motion_line(layout: BagLayout, survey: StampSurvey | None) -> str:
    topic = layout.config.tf_topic  # data.tf_topic, as the reader uses it
    t = layout.topics.get(topic)
    if t is None or t.count == 0:
        if layout.camera_only:
            return f"ego motion: no {topic} (no odometry: temporal neighbours need the pose network)"
        return f"ego motion: no {topic} (no motion compensation between camera and LiDAR stamps)"
    rate = survey.topics[topic].rate_hz if survey is not None and topic in survey.topics else None
    return f"ego motion: {topic} ({t.count} messages{'' if rate is None else f', {rate:.1f} Hz'})"


def _camera_lines(layout: BagLayout) -> list[str]:
    rows = [["name", "topic", "size", "yaw", "frame", "intrinsics", "gt"]]
    for c in layout.cameras:
        size = f"{c.model.width}x{c.model.height}" if c.model is not None else (
            f"{c.image_size[0]}x{c.image_size[1]}?" if c.image_size else "?")
        yaw = f"{c.yaw_deg:+.1f} deg" if c.yaw_deg is not None else "?"
        rows.append([c.name, c.image_topic, size, yaw, c.frame_id or "?", c.intrinsics_from or "missing",
                     "yes" if c.gt_topic else "no"])
    return _table(rows)


def _tf_lines(layout: BagLayout) -> list[str]:
    tf = layout.tf
    if tf is None:
        return [f"tf_static: none on {layout.config.tf_static_topic}"]
    roots = sorted(tf.frames - {c for _, c in tf.edges})
    lines = [f"tf_static: {len(tf.frames)} frames, root(s) {', '.join(roots)}"]
    lines += [f"  {p} -> {c}" for p, c in tf.edges]
    return lines


def _condition_lines(bag: Path) -> list[str]:
    """The synthetic world's condition (``fsmde synth --condition``); nothing for a real recording."""
    from fsmde_core.synthetic.specular import bag_reflective

    condition = bag_condition(bag)
    materials = ", reflective materials (--reflective)" if bag_reflective(bag) else ""
    return [f"synthetic condition: {condition}{materials}"] if condition else []


def format_layout(layout: BagLayout, storage: str, size_bytes: int, start_ns: int, duration_ns: int,
                  message_count: int, survey: StampSurvey | None = None, timing: Timing | None = None,
                  verdict: str | None = None) -> str:
    """The human report for one discovered bag (timing only when the layout is usable)."""
    duration_s = duration_ns / 1e9
    start = "-"
    if message_count:
        start = datetime.fromtimestamp(start_ns / 1e9, tz=UTC).isoformat(timespec="milliseconds")
    lines = [
        f"bag: {layout.bag}",
        *_condition_lines(layout.bag),
        f"storage: {storage}, {_human_bytes(size_bytes)}, {message_count} messages",
        f"duration: {duration_s:.2f} s (start {start})",
        "topics:",
        *_topic_lines(layout, survey),
        f"cameras: {len(layout.cameras)}"
        + (f" (extrinsics from {layout.extrinsics_from}, base frame {layout.config.base_frame})"
           if layout.extrinsics_from else ""),
    ]
    if layout.cameras:
        lines += _camera_lines(layout)
    if layout.lidar_topic:
        count = layout.topics[layout.lidar_topic].count
        lines.append(f"lidar: {layout.lidar_topic} ({count} sweeps), frame {layout.lidar_frame or '?'}")
    elif layout.camera_only:
        lines.append(CAMERA_ONLY_LINE)
    else:
        lines.append("lidar: none")
    lines += _tf_lines(layout)
    lines.append(_ego_motion_line(layout, survey))
    if timing is not None:
        lines += _timing_lines(timing, layout, layout.config)
    if layout.notes:
        lines += ["notes:", *[f"  - {n}" for n in layout.notes]]
    if layout.problems:
        lines += [f"missing / problems ({len(layout.problems)}):", *[f"  - {p}" for p in layout.problems]]
        lines.append("status: NOT USABLE for training as configured")
    elif verdict:
        lines += [f"problem: {verdict}", "status: NOT USABLE for training as configured"]
    else:
        lines.append("status: OK")
    return "\n".join(lines)


def inspect_layout(path: str | Path, config: DataConfig | None = None) -> tuple[str, bool]:
    """(report, usable) for one bag; BagError if it cannot be opened at all."""
    path = Path(path)
    storage = check_bag_path(path)
    config = config or DataConfig()
    survey = timing = verdict = None
    with open_bag(path) as reader:
        layout = discover_layout(reader, path, config)
        check_one_sample_size(layout)  # the reader would refuse it (fsmde_core.data.bag.SampleBuilder)
        count = reader.message_count
        start, duration = (reader.start_time, reader.duration) if count else (0, 0)
        if layout.ok:
            survey = survey_bag(reader, layout)
            timing = camera_timing(survey, layout, config)
            # a camera-only bag has no sweep to require: its sets are kept (fsmde_core.data.bag)
            verdict = timing_verdict(timing, layout, config, need_lidar=config.require_lidar and not layout.camera_only)
    text = format_layout(layout, storage, _bag_bytes(path), start, duration, count, survey, timing, verdict)
    return text, layout.ok and verdict is None


def inspect_bag(path: str | Path, config: DataConfig | None = None) -> str:
    """Human-readable report of a bag: topics, camera layout, LiDAR, TF, what is missing."""
    return inspect_layout(path, config)[0]


def add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``fsmde inspect`` (the CLI entry point owns the parser)."""
    parser.add_argument("bags", nargs="+", type=Path, metavar="BAG",
                        help="rosbag2 directory or .mcap/.db3 file")
    parser.add_argument("--rig", type=Path, default=None,
                        help="rig calibration YAML (extrinsics without /tf_static, ego masks)")
    parser.add_argument("--base-frame", default=None, help="vehicle frame (default: base_link)")
    parser.add_argument("--lidar-topic", default=None, help="PointCloud2 topic (default: the only one)")
    parser.add_argument("--tf-static-topic", default=None, help="static TF topic (default: /tf_static)")
    parser.add_argument("--config", type=Path, default=None,
                        help="training YAML whose data section to check against (as fsmde train would read)")
    parser.add_argument("overrides", nargs="*", metavar="data.key=value", default=[],
                        help="data settings to check, e.g. data.sync_tolerance_ms=45")


def inspect_data_config(args: argparse.Namespace) -> DataConfig:
    """--config's data section <- the explicit flags <- ``data.*`` overrides (ConfigError when invalid)."""
    from fsmde_core.config import load_data_config

    flags = {"rig_yaml": args.rig, "base_frame": args.base_frame, "lidar_topic": args.lidar_topic,
             "tf_static_topic": args.tf_static_topic}
    return load_data_config(None, args.config, list(args.overrides),
                            explicit={k: v for k, v in flags.items() if v is not None})


def run_inspect(args: argparse.Namespace) -> int:
    """Print a report per bag; 0 if all are usable, 1 if any has problems, 2 if one cannot be opened."""
    from fsmde_core.config import ConfigError

    bags, args.overrides = _split_bags_and_overrides(args)
    args.bags = bags
    try:
        config = inspect_data_config(args)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}")
        return 2
    status = 0 if args.bags else 2
    if not args.bags:
        print("error: no bag given")
    for i, bag in enumerate(args.bags):
        if i:
            print()
        try:
            text, ok = inspect_layout(bag, config)
        except BagError as exc:
            print(f"error: {exc}")
            status = 2
            continue
        print(text)
        if not ok:
            status = max(status, 1)
    return status


def _split_bags_and_overrides(args: argparse.Namespace) -> tuple[list[Path], list[str]]:
    """Positional words: ``key=value`` are overrides, the rest are bags (both may be interleaved)."""
    words = [str(w) for w in (*args.bags, *getattr(args, "overrides", []))]
    return [Path(w) for w in words if "=" not in w], [w for w in words if "=" in w]
