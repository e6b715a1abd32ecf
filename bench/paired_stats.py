"""Paired comparison of two training variants over seeds: mean difference and its 95 % t-interval.

Why paired: a variant and the baseline trained with the same seed share the
student's initialisation and the data order, so most of the seed-to-seed
scatter (which at this size is larger than the effects measured) cancels in
the per-seed difference. The interval is Student's t on those differences,
``mean ± t(0.975, n-1) · sd / √n``: with 3 seeds t is 4.30, so an effect is
only claimed when it is large against the seed scatter of the differences.

Pure Python, no scipy (not in the venv): the two-sided 95 % quantiles of t
are tabulated below for n-1 <= 30 degrees of freedom, more seeds than a
benchmark on this machine will ever run.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: t(0.975, df) for df = 1..30 (standard table values, 4 decimals; test_paired_stats checks them
#: against a numerical integration of the t density).
T_975: tuple[float, ...] = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)


def t_quantile_975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (1..30)."""
    if not 1 <= df <= len(T_975):
        raise ValueError(f"t quantile tabulated for 1..{len(T_975)} degrees of freedom, got {df}")
    return T_975[df - 1]


@dataclass(frozen=True)
class PairedDifference:
    """``variant - baseline`` over the seeds both finished.

    Attributes:
        n: seeds paired (a seed that failed in either run is left out).
        mean, sd: mean and sample standard deviation of the per-seed differences.
        low, high: 95 % t-interval of the mean difference (NaN with fewer than 2 pairs).
        baseline_mean: the baseline's mean over the same seeds (the reference of the relative change).
    """

    n: int
    mean: float
    sd: float
    low: float
    high: float
    baseline_mean: float

    def relative(self, value: float) -> float:
        """``value`` as a percentage of the baseline mean (the relative change of a difference)."""
        return 100.0 * value / self.baseline_mean if self.baseline_mean else math.nan

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0: a difference this data can tell."""
        return self.low > 0 or self.high < 0


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def paired_difference(variant: Sequence[float | None], baseline: Sequence[float | None]) -> PairedDifference:
    """Mean ``variant[i] - baseline[i]`` over seeds i with both values, and its 95 % t-interval.

    ``None`` / NaN marks a run that did not finish; its pair is dropped, not the seed's partner alone.
    """
    if len(variant) != len(baseline):
        raise ValueError(f"paired samples differ in length: {len(variant)} vs {len(baseline)}")
    pairs = [(v, b) for v, b in zip(variant, baseline, strict=True) if _finite(v) and _finite(b)]
    n = len(pairs)
    if n == 0:
        return PairedDifference(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    diffs = [v - b for v, b in pairs]
    mean = statistics.fmean(diffs)
    base = statistics.fmean(b for _, b in pairs)
    if n < 2:
        return PairedDifference(n, mean, math.nan, math.nan, math.nan, base)
    sd = statistics.stdev(diffs)
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return PairedDifference(n, mean, sd, mean - half, mean + half, base)


def relative_cell(d: PairedDifference) -> str:
    """``-12.3 % [-20.1, -4.5]``: a paired difference as a percentage of the baseline (— without an interval)."""
    if d.n < 2:
        return "—"
    return f"{d.relative(d.mean):+.1f} % [{d.relative(d.low):+.1f}, {d.relative(d.high):+.1f}]"


def paired_rows(rows: Mapping[str, Sequence[Mapping | None]], baseline: str,
                keys: Sequence[str]) -> dict[str, dict[str, PairedDifference]]:
    """variant -> key -> its paired difference with ``baseline`` (a None or ``not_run`` row drops its seed)."""
    if baseline not in rows:
        return {}

    def values(name: str, key: str) -> list[float | None]:
        return [None if r is None or r.get("not_run") or r.get(key) is None else float(r[key]) for r in rows[name]]

    return {name: {key: paired_difference(values(name, key), values(baseline, key)) for key in keys}
            for name in rows if name != baseline}


def claim_table_lines(diffs: Mapping[str, Mapping[str, PairedDifference]], baseline: str,
                      columns: Sequence[tuple[str, str, int]], relative: Sequence[tuple[str, str]],
                      fmt_interval) -> list[str]:
    """The markdown claim table: one row per variant, a ``Δ [95 % CI]`` cell per column, relative changes last.

    ``columns`` = (key, label, digits); ``relative`` = (key, label) of the columns also shown in % of the baseline.
    """
    if not diffs:
        return [f"(no paired comparison: {baseline} and another variant are needed)"]
    head = " | ".join(f"Δ {label} [95 % CI]" for _, label, _ in columns)
    rel_head = " | ".join(f"{label} change" for _, label in relative)
    lines = [f"| variant − {baseline} | seeds | {head} | {rel_head} |",
             "|---|---|" + "---|" * (len(columns) + len(relative))]
    for name, d in diffs.items():
        cells = " | ".join(fmt_interval(d[key], digits) for key, _, digits in columns)
        rel = " | ".join(relative_cell(d[key]) for key, _ in relative)
        lines.append(f"| {name} | {d[columns[0][0]].n} | {cells} | {rel} |")
    return lines
