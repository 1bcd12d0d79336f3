"""Per-feature two-sample tests (the "univariate" family): Kolmogorov-Smirnov for continuous
features, chi-squared for categorical ones.

Each p-value is valid for its own feature under the null that the feature's marginal
distribution is unchanged: Kolmogorov-Smirnov from scipy; chi-squared asymptotic from scipy
where every expected count is at least 5, else exact conditional on the margins or by
permutation (``certrisk.risk.drift.contingency``), so that small expected counts cannot inflate
the test's size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from certrisk.risk.drift.contingency import categorical_test
from certrisk.risk.drift.correction import bh_qvalues
from certrisk.risk.drift.inputs import check_same_features, feature_matrix
from certrisk.schemas.columns import DRIFT_TEST_COLUMNS, conform
from certrisk.schemas.errors import InputError


def feature_tests(
    reference: np.ndarray | pd.DataFrame,
    batch: np.ndarray | pd.DataFrame,
    *,
    features: Sequence[str],
    categorical: Sequence[str] = (),
) -> pd.DataFrame:
    """Per-feature two-sample tests, BH-corrected across the features.

    Continuous features: ``scipy.stats.ks_2samp`` (two-sided, method "auto"); effect size the
    Wasserstein-1 distance over the pooled standard deviation (0 when both samples are the same
    constant). Categorical features: Pearson's chi-squared test of the 2 x K contingency table
    of category counts (``contingency.categorical_test``): asymptotic (``scipy.stats.
    chi2_contingency``, test "chi2") when every expected count is at least 5, else exact given
    the margins ("chi2_exact") or by permutation ("chi2_permutation"); effect size Cramer's V.

    Parameters
    ----------
    reference : array of shape (n_reference, n_features) or DataFrame
    batch : array of shape (n_batch, n_features) or DataFrame
        Arrays hold the features in the order of ``features``; DataFrames are selected by name.
    features : sequence of str
        Feature names, one per column.
    categorical : sequence of str
        Names among ``features`` tested with chi-squared; their values may be any hashable
        (strings in DataFrames, integer codes in arrays).

    Returns
    -------
    DataFrame
        DRIFT_TEST_COLUMNS, one row per feature in ``features`` order, family "univariate".
        ``q_value`` is BH within these tests; ``detect_drift`` recomputes it across families.
        ``drift`` is False here (no alpha is known).
    """
    features = [str(f) for f in features]
    unknown = [c for c in categorical if c not in features]
    if unknown:
        raise InputError(f"categorical feature(s) {unknown} are not among the features")
    cat = set(categorical)
    continuous = [f for f in features if f not in cat]
    check_same_features(reference, batch, features)
    ref_cat, bat_cat = _categorical_columns(reference, batch, features, cat)
    if continuous:
        idx = [features.index(f) for f in continuous]
        ref_num = _numeric_view(reference, features, continuous, idx, what="reference")
        bat_num = _numeric_view(batch, features, continuous, idx, what="batch")
    rows = []
    num_pos = {f: i for i, f in enumerate(continuous)}
    for f in features:
        if f in cat:
            rows.append(_chi2_row(f, ref_cat[f], bat_cat[f]))
        else:
            i = num_pos[f]
            rows.append(_ks_row(f, ref_num[:, i], bat_num[:, i]))
    frame = pd.DataFrame(rows)
    frame["q_value"] = bh_qvalues(frame["p_value"].to_numpy())
    frame["drift"] = False
    return conform(frame, DRIFT_TEST_COLUMNS, table="drift_tests")


def _numeric_view(data, features, names, idx, *, what) -> np.ndarray:
    if isinstance(data, pd.DataFrame):
        return feature_matrix(data, names, what=what)
    arr = np.asarray(data)
    if arr.ndim != 2 or arr.shape[1] != len(features):
        shape = arr.shape
        raise InputError(
            f"{what}: expected shape (n, {len(features)}) for features {features[:5]}..., got {shape}"
        )
    return feature_matrix(arr[:, idx], names, what=what)


def _categorical_columns(reference, batch, features, cat) -> tuple[dict, dict]:
    out = ({}, {})
    for side, (data, what) in enumerate(((reference, "reference"), (batch, "batch"))):
        for f in cat:
            if isinstance(data, pd.DataFrame):
                if f not in data.columns:
                    raise InputError(f"{what}: missing feature column(s) {[f]}")
                col = data[f]
            else:
                col = pd.Series(np.asarray(data)[:, features.index(f)])
            if len(col) == 0:
                raise InputError(f"{what}: empty (0 rows)")
            if col.isna().any():
                row = int(np.flatnonzero(col.isna().to_numpy())[0])
                raise InputError(f"{what}: categorical feature {f!r} is missing in row {row}")
            out[side][f] = col.astype(str).to_numpy()
    return out


def _ks_row(feature: str, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    res = stats.ks_2samp(x, y)
    pooled = np.concatenate([x, y]).std()
    w1 = stats.wasserstein_distance(x, y)
    effect = 0.0 if pooled == 0 else w1 / pooled
    return {
        "test": "ks",
        "family": "univariate",
        "feature": feature,
        "statistic": float(res.statistic),
        "p_value": float(res.pvalue),
        "effect_size": float(effect),
        "effect_name": "wasserstein_over_pooled_std",
    }


def _chi2_row(feature: str, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    levels, codes = np.unique(np.concatenate([x, y]), return_inverse=True)
    table = np.zeros((2, len(levels)), dtype=np.int64)
    np.add.at(table[0], codes[: len(x)], 1)
    np.add.at(table[1], codes[len(x) :], 1)
    result = categorical_test(table)
    return {
        "test": result.test,
        "family": "univariate",
        "feature": feature,
        "statistic": result.statistic,
        "p_value": result.p_value,
        "effect_size": math.sqrt(result.statistic / table.sum()),  # Cramer's V: min(rows, cols) - 1 = 1
        "effect_name": "cramers_v",
    }
