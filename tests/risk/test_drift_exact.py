"""The categorical drift test holds its level at small expected counts: its exact null size,
computed by enumerating every table under the null, is at most alpha.

Under the null both rows of the 2 x K table are multinomial with the same category
probabilities pi. Summing over the column totals C ~ Multinomial(N, pi) and, given C, the batch
row x (multivariate hypergeometric), the size is

    sum_C P(C) sum_x P(x | C) 1[p(table) <= alpha]

over every table whose probability is above 1e-13; the probability left out is added to the
size, so the bound checked is an upper bound on the true size.
"""

from __future__ import annotations

import itertools
from math import comb, prod

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from certrisk.risk.drift import contingency, feature_tests
from certrisk.risk.drift.contingency import (
    MIN_EXPECTED,
    categorical_test,
    exact_pvalue,
    pearson_statistic,
    permutation_pvalue,
)
from certrisk.schemas.errors import InputError

FLOOR = 1e-13
ALPHAS = (0.05, 0.01, 0.001)


def _null_tables(pi, n_ref: int, n_batch: int):
    """Every 2 x K table (reference row, batch row) with null probability above FLOOR, with that
    probability; and the probability of the tables left out."""
    pi = np.asarray(pi, dtype=np.float64)
    n = n_ref + n_batch
    kept = 0.0
    out = []
    for head in itertools.product(range(n + 1), repeat=len(pi) - 1):
        if sum(head) > n:
            continue
        cols = np.r_[head, n - sum(head)].astype(np.int64)
        p_cols = stats.multinomial.pmf(cols, n, pi)
        if p_cols < FLOOR:
            continue
        for x_head in itertools.product(*(range(min(c, n_batch) + 1) for c in cols[:-1])):
            last = n_batch - sum(x_head)
            if not 0 <= last <= cols[-1]:
                continue
            x = np.r_[x_head, last].astype(np.int64)
            p = p_cols * prod([comb(int(c), int(k)) for c, k in zip(cols, x, strict=True)]) / comb(n, n_batch)
            if p < FLOOR:
                continue
            kept += p
            out.append((np.vstack([cols - x, x]), p))
    return out, 1.0 - kept


def _size_bounds(pvalue, pi, n_ref, n_batch):
    """Upper bound on the null size at each of ALPHAS of the test whose p-value is ``pvalue``."""
    tables, left_out = _null_tables(pi, n_ref, n_batch)
    assert -1e-9 < left_out < 1e-6  # the enumeration covers the null
    left_out = max(left_out, 0.0)
    p_values = np.array([pvalue(t) for t, _ in tables])
    probs = np.array([p for _, p in tables])
    return {a: float(probs[p_values <= a].sum()) + left_out for a in ALPHAS}


def _asymptotic(table):
    t = table[:, table.sum(axis=0) > 0]
    return 1.0 if t.shape[1] < 2 else stats.chi2_contingency(t, correction=False).pvalue


def _ours(table):
    return categorical_test(table).p_value


SETTINGS_2x2 = [
    ((0.99, 0.01), 200, 30),  # the issue's first reproduction
    ((0.99, 0.01), 500, 50),  # its second
    ((0.95, 0.05), 100, 20),
    ((0.8, 0.2), 30, 8),
    ((0.5, 0.5), 12, 6),
]
SETTINGS_2x3 = [
    ((0.6, 0.35, 0.05), 30, 10),
    ((0.8, 0.15, 0.05), 40, 8),
    ((1 / 3, 1 / 3, 1 / 3), 12, 6),
]


def test_asymptotic_chi2_exceeds_its_level_where_the_issue_says():
    """The harness can tell: the plain Pearson p-value's exact size is 0.046 at alpha 0.01 (200 vs
    30 rows, a 1% category) and 0.0075 at alpha 0.001 (500 vs 50)."""
    first = _size_bounds(_asymptotic, (0.99, 0.01), 200, 30)
    second = _size_bounds(_asymptotic, (0.99, 0.01), 500, 50)
    assert first[0.01] == pytest.approx(0.0462, abs=5e-4)
    assert second[0.001] == pytest.approx(0.00748, abs=5e-5)


@pytest.mark.parametrize("pi, n_ref, n_batch", SETTINGS_2x2 + SETTINGS_2x3)
def test_exact_null_size_is_at_most_alpha(pi, n_ref, n_batch):
    sizes = _size_bounds(_ours, pi, n_ref, n_batch)
    for alpha, size in sizes.items():
        assert size <= alpha, f"null size {size:.5f} > alpha {alpha} for pi={pi}, {n_ref} vs {n_batch}"


def test_permutation_path_holds_its_level_too(monkeypatch):
    """Forced onto the permutation p-value (no exact budget), the size is still at most alpha."""
    monkeypatch.setattr(contingency, "MAX_EXACT_STATES", 0)
    assert categorical_test(np.array([[198, 2], [28, 2]])).test == "chi2_permutation"
    sizes = _size_bounds(_ours, (0.99, 0.01), 200, 30)
    assert all(size <= alpha for alpha, size in sizes.items()), sizes


def _brute_force_pvalue(table):
    """P(X2 >= observed | margins) by listing every batch row with the table's margins."""
    cols, n_batch, n = table.sum(axis=0), int(table[1].sum()), int(table.sum())
    observed = pearson_statistic(table)
    p = 0.0
    for x in itertools.product(*(range(min(c, n_batch) + 1) for c in cols)):
        if sum(x) != n_batch:
            continue
        t = np.vstack([cols - np.array(x), np.array(x)])
        if pearson_statistic(t) >= observed * (1 - 1e-9):
            p += prod([comb(int(c), int(k)) for c, k in zip(cols, x, strict=True)]) / comb(n, n_batch)
    return p


def test_exact_pvalue_matches_brute_force_enumeration():
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(40):
        k = int(rng.integers(2, 5))
        pi = rng.dirichlet(np.ones(k))
        t = np.vstack(
            [rng.multinomial(int(rng.integers(5, 40)), pi), rng.multinomial(int(rng.integers(3, 15)), pi)]
        )
        t = t[:, t.sum(axis=0) > 0]
        if t.shape[1] < 2:
            continue
        assert exact_pvalue(t) == pytest.approx(_brute_force_pvalue(t), abs=1e-9), t
        checked += 1
    assert checked >= 30


def test_permutation_pvalue_agrees_with_the_exact_one_and_is_reproducible():
    t = np.array([[180, 15, 5], [25, 3, 2]])
    exact = exact_pvalue(t)
    mc = permutation_pvalue(t)
    # B = 9999 draws: the Monte Carlo standard error is below 0.005
    assert mc == pytest.approx(exact, abs=0.025)
    assert permutation_pvalue(t) == mc
    assert permutation_pvalue(np.array([[100, 0], [0, 100]]), permutations=99) == pytest.approx(1 / 100)


def test_which_p_value_is_used():
    big = np.array([[300, 200, 100], [150, 100, 50]])
    res = categorical_test(big)
    want = stats.chi2_contingency(big, correction=False)
    assert res.test == "chi2" and res.p_value == pytest.approx(want.pvalue, rel=1e-12)
    assert res.statistic == pytest.approx(want.statistic, rel=1e-12)
    small = np.array([[198, 2], [28, 2]])
    expected = np.outer(small.sum(axis=1), small.sum(axis=0)) / small.sum()
    assert expected.min() < MIN_EXPECTED
    assert categorical_test(small).test == "chi2_exact"
    assert categorical_test(np.array([[5], [3]])) == contingency.TableTest(0.0, 1.0, "chi2")
    with pytest.raises(InputError, match=r"shape \(2, K\)"):
        categorical_test(np.array([[1.5, 2.0], [1.0, 1.0]]))


def test_feature_tests_use_the_exact_p_value_for_a_rare_category():
    ref = pd.DataFrame({"c": ["x"] * 198 + ["y"] * 2})
    bat = pd.DataFrame({"c": ["x"] * 28 + ["y"] * 2})
    row = feature_tests(ref, bat, features=["c"], categorical=["c"]).iloc[0]
    assert row["test"] == "chi2_exact"
    assert row["p_value"] == pytest.approx(_brute_force_pvalue(np.array([[198, 2], [28, 2]])), abs=1e-12)
    assert row["p_value"] > stats.chi2_contingency([[198, 2], [28, 2]], correction=False).pvalue
