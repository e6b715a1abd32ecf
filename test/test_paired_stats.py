"""The distillation benchmark's paired statistics (bench/paired_stats.py) on hand-computed inputs."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # bench scripts are not a package
from paired_stats import T_975, paired_difference, t_quantile_975


def _t_cdf(x: float, df: int) -> float:
    """CDF of Student's t by integrating its density (Simpson on a fine grid): an independent check."""
    grid = np.linspace(0.0, x, 200_001)
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    pdf = np.exp(log_c - (df + 1) / 2 * np.log1p(grid * grid / df))
    h = grid[1] - grid[0]
    simpson = h / 3 * (pdf[0] + pdf[-1] + 4 * pdf[1:-1:2].sum() + 2 * pdf[2:-1:2].sum())
    return 0.5 + simpson


@pytest.mark.parametrize("df", range(1, 31))
def test_tabulated_t_quantiles_are_the_975_percent_points(df: int) -> None:
    assert _t_cdf(t_quantile_975(df), df) == pytest.approx(0.975, abs=2e-5)


def test_t_quantile_outside_the_table_is_refused() -> None:
    assert len(T_975) == 30
    for df in (0, 31):
        with pytest.raises(ValueError, match="degrees of freedom"):
            t_quantile_975(df)


def test_paired_difference_known_interval() -> None:
    """Differences -0.02, -0.03, -0.01: mean -0.02, sd 0.01, half width 4.3027 * 0.01 / sqrt 3 = 0.0248.

    A consistent 7 % improvement that three seeds cannot yet tell from zero: t(0.975, 2) is 4.3.
    """
    baseline = [0.30, 0.25, 0.35]
    variant = [0.28, 0.22, 0.34]
    d = paired_difference(variant, baseline)
    half = 4.3027 * 0.01 / math.sqrt(3)
    assert d.n == 3
    assert d.mean == pytest.approx(-0.02)
    assert d.sd == pytest.approx(0.01)
    assert (d.low, d.high) == pytest.approx((-0.02 - half, -0.02 + half))
    assert d.baseline_mean == pytest.approx(0.30)
    assert d.relative(d.mean) == pytest.approx(-100 * 0.02 / 0.30)
    assert d.low < 0 < d.high and not d.excludes_zero


def test_pairing_cancels_the_seed_scatter_that_an_unpaired_view_would_keep() -> None:
    """Baselines scatter by 0.1 between seeds; the variant is always 0.01 lower: the paired sd is 0."""
    baseline = [0.2, 0.3, 0.4, 0.5]
    d = paired_difference([b - 0.01 for b in baseline], baseline)
    assert d.mean == pytest.approx(-0.01)
    assert d.sd == pytest.approx(0.0, abs=1e-12)
    assert d.low == pytest.approx(-0.01) and d.high == pytest.approx(-0.01)
    assert d.excludes_zero


def test_a_worse_variant_has_an_interval_above_zero() -> None:
    """Differences +0.05, +0.06, +0.04: mean 0.05 ± 0.0248, all above zero."""
    d = paired_difference([0.35, 0.31, 0.44], [0.30, 0.25, 0.40])
    assert d.mean == pytest.approx(0.05)
    assert d.low == pytest.approx(0.05 - 4.3027 * 0.01 / math.sqrt(3)) and d.low > 0
    assert d.excludes_zero


def test_a_failed_run_drops_its_pair_only() -> None:
    """Seed 1 of the variant failed (None) and seed 2 of the baseline gave NaN: only seeds 0 and 3 pair."""
    d = paired_difference([0.20, None, 0.25, 0.30], [0.22, 0.24, math.nan, 0.36])
    assert d.n == 2
    assert d.mean == pytest.approx(-0.04)
    assert d.baseline_mean == pytest.approx(0.29)
    half = 12.7062 * d.sd / math.sqrt(2)
    assert (d.low, d.high) == pytest.approx((d.mean - half, d.mean + half))


def test_fewer_than_two_pairs_give_no_interval() -> None:
    one = paired_difference([0.2, None], [0.3, 0.3])
    assert one.n == 1 and one.mean == pytest.approx(-0.1)
    assert math.isnan(one.low) and math.isnan(one.high) and not one.excludes_zero
    none = paired_difference([None], [0.3])
    assert none.n == 0 and math.isnan(none.mean)


def test_samples_of_different_length_are_refused() -> None:
    with pytest.raises(ValueError, match="length"):
        paired_difference([0.1, 0.2], [0.1])
