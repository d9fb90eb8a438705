"""Referee: the report-level and seed-level bootstrap against exhaustive enumeration.

On a tiny case every resample can be listed: ``n`` reports drawn with replacement give
``n^n`` equally likely ordered draws, and ``m`` seeds drawn with replacement ``m^m``. The
bootstrap's replicates must follow that exact distribution (compared through its CDF at every
atom, within Monte-Carlo error), the seed level must be the distribution of the **mean** over
resampled seeds (the value printed as the point), and all rows of a report move together.
"""

import itertools

import numpy as np
import pytest

from helpers.analysis import metrics as M


def _exact(values):
    """Every ordered resample of ``values`` with replacement: the means, equally likely."""
    n = len(values)
    return np.array([np.mean([values[i] for i in draw])
                     for draw in itertools.product(range(n), repeat=n)])


def _max_cdf_gap(sample, exact):
    atoms = np.unique(exact)
    return max(abs((sample <= a + 1e-12).mean() - (exact <= a + 1e-12).mean()) for a in atoms)


def test_report_level_replicates_follow_the_exact_distribution():
    x = np.array([0.0, 1.0, 3.0, 7.0])  # one value per report
    _, reps = M.bootstrap_replicates(lambda idx, r: x[idx].mean(), np.arange(4), (1,), 20000)
    assert _max_cdf_gap(reps, _exact(x)) < 0.015  # MC error of 20,000 draws: about 0.004


def test_rows_of_one_report_move_together():
    """Two rows per report, equal within a report: the same distribution as one row each."""
    x = np.array([0.0, 0.0, 1.0, 1.0, 3.0, 3.0])
    groups = np.array([5, 5, 9, 9, 2, 2])
    _, reps = M.bootstrap_replicates(lambda idx, r: x[idx].mean(), groups, (1,), 20000)
    assert _max_cdf_gap(reps, _exact(np.array([0.0, 1.0, 3.0]))) < 0.015


def test_seed_level_is_the_mean_over_resampled_seeds():
    """One report, three seeds: the replicate is the mean of 3 seeds drawn with replacement."""
    per_seed = np.array([0.2, 0.5, 0.9])
    point, reps = M.bootstrap_replicates(lambda idx, r: per_seed[r[0]], np.arange(1), (3,), 20000)
    assert point == pytest.approx(per_seed.mean())
    assert _max_cdf_gap(reps, _exact(per_seed)) < 0.015
    # not one seed per replicate (an interval for a single new run): the old behaviour
    assert not set(np.round(reps, 6)) <= set(np.round(per_seed, 6))


def test_two_levels_together_by_enumeration():
    """2 reports x 2 seeds: reports and seeds resampled independently, exactly enumerated."""
    v = np.array([[0.0, 1.0], [2.0, 5.0]])  # v[report, seed]
    exact = [np.mean([v[g, s] for g in gd for s in sd])
             for gd in itertools.product(range(2), repeat=2)
             for sd in itertools.product(range(2), repeat=2)]
    _, reps = M.bootstrap_replicates(lambda idx, r: v[idx, r[0]].mean(), np.arange(2), (2,), 40000)
    assert _max_cdf_gap(reps, np.array(exact)) < 0.015


def test_paired_sources_resample_seeds_each():
    """A difference of two trained sides (3 seeds each) is the difference of their resampled
    means; a one-run side contributes no seed variance."""
    a = np.array([1.0, 2.0, 3.0])
    diff = lambda idx, r: a[r[0]] - 0.5  # noqa: E731
    point, reps = M.bootstrap_replicates(diff, np.arange(1), (3, 1), 20000)
    assert point == pytest.approx(1.5)
    assert _max_cdf_gap(reps + 0.5, _exact(a)) < 0.015


def test_percentile_interval_of_constant_and_nan_replicates():
    lo, hi = M.percentile_ci(np.full(50, 0.3))
    assert lo == hi == pytest.approx(0.3)
    lo, hi = M.percentile_ci(np.r_[np.full(10, np.nan), np.linspace(0, 1, 101)])
    assert (lo, hi) == pytest.approx((0.025, 0.975))
    assert np.isnan(M.percentile_ci(np.full(5, np.nan))[0])
