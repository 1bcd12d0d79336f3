"""Split-conformal calibration: p-values and thresholds with a finite-sample guarantee.

Calibration scores are computed on clean samples held out from everything else (the reference
index, the evaluation set). If a new clean sample's score is exchangeable with them:

* ``conformal_pvalues``: P(p <= a) <= a for every a in [0, 1] (the p-value is super-uniform);
* ``conformal_threshold``: P(score > threshold) <= rate, for the k-th smallest calibration
  score with k = ceil((n + 1)(1 - rate)) (Vovk et al. 2005; Angelopoulos and Bates 2021). Ties
  only make it more conservative. When k > n the guarantee needs more calibration samples than
  there are: the threshold is +inf (nothing is flagged by score alone) and ``feasible`` is False.

The guarantee is marginal (over the draw of the calibration set and the new sample), holds for
clean data like the calibration set, and says nothing about attacked inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from certrisk.schemas.errors import InputError


def _scores(values, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if not len(arr):
        raise InputError(f"{what}: no calibration scores")
    if not np.isfinite(arr).all():
        raise InputError(f"{what}: calibration scores must be finite")
    return arr


def conformal_pvalues(calibration: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """p-values of ``scores`` (shape (m,)) against ``calibration`` scores (shape (n,)).

    ``p = (1 + #{calibration >= score}) / (n + 1)``: a larger score is more unusual; p lies in
    [1/(n+1), 1]. Returns float64 of shape (m,).
    """
    cal = np.sort(_scores(calibration, "conformal_pvalues"))
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    at_least = len(cal) - np.searchsorted(cal, s, side="left")
    return (1.0 + at_least) / (len(cal) + 1.0)


@dataclass(frozen=True)
class Threshold:
    """A split-conformal threshold: P(clean score > value) <= rate when ``feasible``."""

    rate: float
    value: float
    n_calibration: int
    rank: int
    feasible: bool


def conformal_threshold(calibration: np.ndarray, rate: float) -> Threshold:
    """The threshold whose exceedance rate on clean samples is at most ``rate``.

    calibration : scores of shape (n,) on held-out clean samples. rate in (0, 1).
    """
    if not 0.0 < rate < 1.0:
        raise InputError(f"conformal_threshold: rate must lie in (0, 1), got {rate}")
    cal = np.sort(_scores(calibration, "conformal_threshold"))
    n = len(cal)
    k = math.ceil((n + 1) * (1.0 - rate))
    if k > n:
        return Threshold(rate=rate, value=math.inf, n_calibration=n, rank=k, feasible=False)
    return Threshold(rate=rate, value=float(cal[k - 1]), n_calibration=n, rank=k, feasible=True)


def min_calibration_size(rate: float) -> int:
    """The fewest calibration samples for which ``conformal_threshold(., rate)`` is feasible."""
    return math.ceil(1.0 / rate) - 1
