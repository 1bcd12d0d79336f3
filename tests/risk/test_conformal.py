"""Split-conformal calibration against what is known exactly and by simulation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from certrisk.risk.conformal import conformal_pvalues, conformal_threshold, min_calibration_size
from certrisk.schemas.errors import InputError


def test_pvalues_by_hand():
    cal = np.array([0.1, 0.2, 0.3, 0.4])
    p = conformal_pvalues(cal, np.array([0.0, 0.2, 0.35, 1.0]))
    assert p.tolist() == pytest.approx([5 / 5, 4 / 5, 2 / 5, 1 / 5])


def test_threshold_rank():
    cal = np.arange(1, 20, dtype=float)  # n = 19, rate 0.1 -> k = ceil(20 * 0.9) = 18
    t = conformal_threshold(cal, 0.1)
    assert t.feasible and t.rank == 18 and t.value == 18.0
    small = conformal_threshold(np.arange(5.0), 0.05)
    assert not small.feasible and small.value == np.inf
    assert min_calibration_size(0.05) == 19
    assert conformal_threshold(np.arange(19.0), 0.05).feasible


def test_threshold_guarantee_by_simulation():
    """Over 2000 seeds (n = 100 calibration, 200 test, heavy ties from rounding), the mean
    exceedance is <= rate plus 4 standard errors of the mean, the standard error estimated from
    the independent trials (false failure < 1e-4 by the normal approximation; conservative, since
    the exact mean for continuous scores is 1 - 96/101 = 0.0495 < rate and ties lower it)."""
    rate, n_cal, n_test, trials = 0.05, 100, 200, 2000
    rng = np.random.default_rng(0)
    rates = np.empty(trials)
    for i in range(trials):
        z = np.round(rng.standard_normal(n_cal + n_test), 1)  # ties
        t = conformal_threshold(z[:n_cal], rate)
        rates[i] = (z[n_cal:] > t.value).mean()
    se = rates.std(ddof=1) / np.sqrt(trials)
    assert rates.mean() <= rate + 4 * se
    # and it is not vacuous: exact expected exceedance for continuous scores is 1 - k/(n+1)
    assert rates.mean() > 0.02


def test_pvalues_are_superuniform():
    """One test point per calibration draw, so the 4000 p-values are independent."""
    rng = np.random.default_rng(1)
    ps = np.concatenate(
        [conformal_pvalues(rng.standard_normal(50), rng.standard_normal(1)) for _ in range(4000)]
    )
    for a in (0.05, 0.1, 0.5):
        k = int((ps <= a).sum())
        # one-sided exact binomial test of P(p <= a) > a at level 1e-4 (false failure < 1e-4 each)
        assert stats.binomtest(k, len(ps), a, alternative="greater").pvalue > 1e-4


def test_bad_input():
    with pytest.raises(InputError):
        conformal_threshold(np.array([]), 0.1)
    with pytest.raises(InputError):
        conformal_threshold(np.array([np.nan]), 0.1)
    with pytest.raises(InputError):
        conformal_threshold(np.array([1.0]), 1.5)
