"""Confidence bounds and conservative rounding, all in float64.

Clopper-Pearson bounds are exact binomial bounds (Clopper and Pearson 1934): for k successes in
n trials, ``P(p_lower(k, n, a) > p) <= a`` for every true p, whatever p is. Rounding goes toward
zero so that float error can only make a certificate smaller.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import beta, norm

#: Relative safety margin applied before the final step toward zero. scipy's ``beta.ppf`` and
#: ``norm.ppf`` are accurate to a few ulps; 1e-12 covers that many times over.
_SAFETY = 1e-12


def round_down(values) -> np.ndarray:
    """Shrink non-negative float64 values toward zero by a relative 1e-12 and one ulp.

    Used on every radius and lower bound certrisk reports, so that float error in the closed forms
    (ppf evaluations, divisions) cannot make a reported number larger than the exact one.
    """
    v = np.asarray(values, dtype=np.float64)
    out = np.nextafter(v * (1.0 - _SAFETY), 0.0)
    return np.where(v > 0, out, np.where(v < 0, v, 0.0))


def clopper_pearson_lower(k, n, alpha: float) -> np.ndarray:
    """One-sided Clopper-Pearson lower bound on a binomial proportion at level ``alpha``.

    k, n : arrays of shape (B,), successes and trials (n >= 1). Returns float64 (B,) with
    ``P(bound > p) <= alpha``; 0 where k == 0. Rounded down.
    """
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        lo = beta.ppf(alpha, k, n - k + 1.0)
    lo = np.where(k <= 0, 0.0, np.nan_to_num(lo, nan=0.0))
    return round_down(lo)


def clopper_pearson_upper(k, n, alpha: float) -> np.ndarray:
    """One-sided Clopper-Pearson upper bound at level ``alpha``; 1 where k == n. Rounded up."""
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        hi = beta.ppf(1.0 - alpha, k + 1.0, n - k)
    hi = np.where(k >= n, 1.0, np.nan_to_num(hi, nan=1.0))
    return np.minimum(np.nextafter(hi * (1.0 + _SAFETY), np.inf), 1.0)


def smoothing_radius(p_lower, sigma: float) -> np.ndarray:
    """l2 radius ``sigma * Phi^-1(p_lower)`` of Cohen et al. (Theorem 1), 0 where p_lower <= 0.5.

    p_lower : array of shape (B,), float64. Returns float64 (B,), rounded down.
    """
    p = np.asarray(p_lower, dtype=np.float64)
    with np.errstate(divide="ignore"):
        r = float(sigma) * norm.ppf(np.clip(p, 0.0, 1.0))
    r = np.where(p > 0.5, r, 0.0)
    r = np.where(np.isfinite(r), r, 0.0)
    return round_down(r)
