"""The two-sample test of a categorical feature: reference against batch on the 2 x K table of
category counts, with a p-value that holds its level at small expected counts.

Pearson's chi-squared p-value is asymptotic. With small expected counts it is too small: with a
1% category, 200 reference against 30 batch rows reject a true null 4.6% of the time at level
0.01 (the exact null size). So whenever an expected count is below ``MIN_EXPECTED`` (5, Cochran's
rule) the p-value is exact instead, conditional on the table's margins (the Freeman-Halton
extension of Fisher's test to 2 x K, with tables ordered by Pearson's statistic):

    p = P(X2(T) >= X2(t) | row and column totals of t)

under the null that reference and batch rows are exchangeable, where T is hypergeometric given
the margins. Since P(p <= a | margins) <= a for every a, the test's size is at most its level for
any sample sizes and category probabilities. The sum runs over the batch row x of the table by
the network algorithm (Mehta and Patel 1983): columns one at a time, a branch settled at once when
the least or the largest statistic its remaining columns can reach decides it, branches with the
same remaining count and partial statistic merged. When that would take more than
``MAX_EXACT_STATES`` states, the p-value is a Monte Carlo permutation p-value ``(b + 1) / (B + 1)``
over ``PERMUTATIONS`` tables drawn from the same hypergeometric law (b of them at least as extreme),
also valid at every level for any sample size, with its draws seeded by the table itself so a
rerun reproduces it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.special import gammaln

from certrisk.schemas.errors import InputError

#: Below this expected count in any cell the asymptotic chi-squared p-value is not used.
MIN_EXPECTED = 5.0
#: Most branches the exact p-value's network may expand, all columns together; beyond it the
#: permutation p-value is used (the budget bounds the exact path's time to about a second).
MAX_EXACT_STATES = 1_000_000
#: Most cells of the bound tables (remaining count by value per column) the exact path computes.
MAX_BOUND_CELLS = 20_000_000
#: Tables drawn by the permutation p-value.
PERMUTATIONS = 9_999
#: Statistics within this relative distance of the observed one count as ties (as extreme):
#: rounding in the partial sums cannot make a tied table look less extreme.
TIE_TOLERANCE = 1e-7


@dataclass(frozen=True)
class TableTest:
    """Pearson's statistic of a 2 x K table, its p-value, and how the p-value was computed:
    ``"chi2"`` (asymptotic), ``"chi2_exact"`` (exact, conditional on the margins) or
    ``"chi2_permutation"`` (Monte Carlo over the same conditional law)."""

    statistic: float
    p_value: float
    test: str


def _check(table) -> np.ndarray:
    t = np.asarray(table)
    if t.ndim != 2 or t.shape[0] != 2 or not np.issubdtype(t.dtype, np.integer) or (t < 0).any():
        raise InputError(
            f"contingency table: need non-negative integer counts of shape (2, K), got {t.shape}"
        )
    if (t.sum(axis=1) == 0).any():
        raise InputError("contingency table: both rows need at least one count")
    return t[:, t.sum(axis=0) > 0].astype(np.int64)


def pearson_statistic(table) -> float:
    """Pearson's X2 of a 2 x K table of counts (columns with no count dropped)."""
    t = _check(table)
    expected = np.outer(t.sum(axis=1), t.sum(axis=0)) / t.sum()
    return float(((t - expected) ** 2 / expected).sum())


def categorical_test(table) -> TableTest:
    """Test of a 2 x K table of counts (row 0 reference, row 1 batch; K categories).

    Asymptotic chi-squared (``scipy.stats.chi2_contingency`` without continuity correction) when
    every expected count is at least ``MIN_EXPECTED``; otherwise the exact conditional p-value
    (``exact_pvalue``), or the permutation p-value where the exact one is too large to compute.
    A table with one category has statistic 0 and p-value 1.
    """
    t = _check(table)
    if t.shape[1] < 2:
        return TableTest(0.0, 1.0, "chi2")
    statistic = pearson_statistic(t)
    expected = np.outer(t.sum(axis=1), t.sum(axis=0)) / t.sum()
    if expected.min() >= MIN_EXPECTED:
        return TableTest(statistic, float(stats.chi2.sf(statistic, t.shape[1] - 1)), "chi2")
    p = exact_pvalue(t, max_states=MAX_EXACT_STATES)
    if p is not None:
        return TableTest(statistic, p, "chi2_exact")
    return TableTest(statistic, permutation_pvalue(t), "chi2_permutation")


def _log_choose(n, k):
    return gammaln(np.asarray(n) + 1.0) - gammaln(np.asarray(k) + 1.0) - gammaln(np.asarray(n) - k + 1.0)


def _suffix_bounds(cols: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Least and largest sum_{i >= j} x_i^2 / c_i over x_i in [0, c_i] with sum_{i >= j} x_i = r:
    arrays of shape (K + 1, b + 1), inf / -inf where r cannot be placed."""
    k = len(cols)
    lo = np.full((k + 1, b + 1), np.inf)
    hi = np.full((k + 1, b + 1), -np.inf)
    lo[k, 0] = hi[k, 0] = 0.0
    for j in range(k - 1, -1, -1):
        c = int(cols[j])
        for x in range(min(c, b) + 1):
            term = x * x / c
            np.minimum(lo[j, x:], lo[j + 1, : b + 1 - x] + term, out=lo[j, x:])
            np.maximum(hi[j, x:], hi[j + 1, : b + 1 - x] + term, out=hi[j, x:])
    return lo, hi


def _merge(r: np.ndarray, s: np.ndarray, w: np.ndarray, unit: float):
    """Merge states with the same remaining count and partial statistic (to within ``unit``),
    adding their probabilities and keeping the largest statistic (the conservative one)."""
    key = np.floor(s / unit).astype(np.int64)
    order = np.lexsort((key, r))
    r, key, s, w = r[order], key[order], s[order], w[order]
    start = np.flatnonzero(np.r_[True, (r[1:] != r[:-1]) | (key[1:] != key[:-1])])
    return r[start], np.maximum.reduceat(s, start), np.add.reduceat(w, start)


def exact_pvalue(table, *, max_states: int = MAX_EXACT_STATES) -> float | None:
    """Exact conditional p-value P(X2 >= observed | margins) of a 2 x K table; None when it would
    need more than ``max_states`` branches or ``MAX_BOUND_CELLS`` bound cells.

    Given the margins, X2 = N^2 / (n_0 n_1) (sum_j x_j^2 / c_j - n_1^2 / N) for the row x of total
    n_1 and column totals c_j, so tables are ordered by S = sum_j x_j^2 / c_j; x is hypergeometric
    (``scipy.stats.hypergeom`` column by column). Ties within ``TIE_TOLERANCE`` count as extreme.
    """
    t = _check(table)
    if t.shape[1] < 2:
        return 1.0
    row = int(np.argmin(t.sum(axis=1)))  # walk the smaller row: fewer states
    cols = t.sum(axis=0)
    order = np.argsort(-cols, kind="stable")
    cols, x_obs = cols[order], t[row, order]
    b = int(x_obs.sum())
    if (b + 1) * int(np.minimum(cols, b).sum() + len(cols)) > MAX_BOUND_CELLS:
        return None
    lo, hi = _suffix_bounds(cols, b)
    remaining = np.r_[np.cumsum(cols[::-1])[::-1], 0]
    s_obs = float((x_obs.astype(np.float64) ** 2 / cols).sum())
    threshold = s_obs - TIE_TOLERANCE * max(1.0, s_obs)
    unit = TIE_TOLERANCE * max(1.0, s_obs) / 4
    r, s, w = np.array([b]), np.array([0.0]), np.array([1.0])
    p, seen = 0.0, 0
    for j, c in enumerate(cols):
        extreme = s + lo[j, r] >= threshold
        p += float(w[extreme].sum())
        live = ~extreme & (s + hi[j, r] >= threshold)
        r, s, w = r[live], s[live], w[live]
        if not len(r):
            break
        xs = np.arange(min(int(c), int(r.max())) + 1)
        seen += len(r) * len(xs)
        if seen > max_states:
            return None
        rr, xx = np.broadcast_arrays(r[:, None], xs[None, :])
        ok = (xx <= rr) & (rr - xx <= remaining[j + 1])
        rr, xx = rr[ok], xx[ok]
        log_pmf = _log_choose(c, xx) + _log_choose(remaining[j + 1], rr - xx) - _log_choose(remaining[j], rr)
        r, s, w = _merge(
            rr - xx,
            np.repeat(s, ok.sum(axis=1)) + xx * xx / c,
            np.repeat(w, ok.sum(axis=1)) * np.exp(log_pmf),
            unit,
        )
    return float(min(1.0, p))


def permutation_pvalue(table, *, permutations: int = PERMUTATIONS) -> float:
    """Monte Carlo p-value ``(b + 1) / (B + 1)`` of a 2 x K table: b of B tables drawn with the
    table's margins (multivariate hypergeometric) reach its statistic (ties within
    ``TIE_TOLERANCE`` count). Seeded by the table's counts: the same table gives the same value."""
    t = _check(table)
    if t.shape[1] < 2:
        return 1.0
    cols = t.sum(axis=0)
    row = int(np.argmin(t.sum(axis=1)))
    seed = int.from_bytes(hashlib.sha256(t.tobytes()).digest()[:8], "little")
    draws = np.random.default_rng(seed).multivariate_hypergeometric(
        cols, int(t[row].sum()), size=permutations
    )
    s_obs = float((t[row].astype(np.float64) ** 2 / cols).sum())
    s = (draws.astype(np.float64) ** 2 / cols).sum(axis=1)
    hits = int((s >= s_obs - TIE_TOLERANCE * max(1.0, s_obs)).sum())
    return (hits + 1) / (permutations + 1)


__all__ = [
    "MIN_EXPECTED",
    "PERMUTATIONS",
    "TableTest",
    "categorical_test",
    "exact_pvalue",
    "pearson_statistic",
    "permutation_pvalue",
]
