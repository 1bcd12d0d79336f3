"""Drift of a batch against the reference set: per-feature tests, kernel MMD, a classifier test,
per-sample novelty, and one verdict corrected across every test family.

What the statistics guarantee
-----------------------------
* ``feature_tests``: two-sample Kolmogorov-Smirnov (continuous) and chi-squared (categorical)
  p-values from scipy; each is valid for its own feature under the null that the feature's
  marginal distribution is unchanged.
* ``mmd_test``: a permutation test. Its p-value ``(b + 1) / (B + 1)`` (b of B random
  permutations reach the observed statistic) satisfies P(p <= a) <= a for every a under the null
  that reference and batch samples are exchangeable (e.g. i.i.d. from one distribution), for any
  sample size, kernel and bandwidth; it is never 0, and never below 1 / (B + 1).
* ``classifier_test``: per cross-validation fold, a one-sided Mann-Whitney test of the held-out
  probabilities (held-out samples are independent of the model that scores them, so each fold's
  p-value is valid); the folds are combined with Bonferroni, valid under any dependence between
  folds.
* ``detect_drift``: q-values over all tests of all families together. The default,
  ``correction="family-bh"``, is the weighted Benjamini-Hochberg procedure (Genovese, Roeder and
  Wasserman 2006) with weights that give every test family the same share of the error budget:
  with F families of sizes m_f among m tests, a test of family f has weight m / (F m_f) (the
  weights average 1) and ``q = BH(p / w)``. It controls the false discovery rate at alpha under
  independence, and the verdict "any q < alpha" is a weighted Simes global test. Plain ``"bh"``
  pools the p-values with equal weights (FDR under independence or PRDS); ``"by"``
  (Benjamini-Yekutieli) and ``"holm"`` (family-wise error) hold under any dependence, at a cost
  in power.

Why weight by family: a permutation p-value is at least 1 / (B + 1), so after a pooled correction
over m tests a multivariate test alone can only reach q = m / (B + 1) (with 64 features, alpha
0.01 needs B > 6,500 permutations): one kernel test would drown among 64 per-feature tests. With
family weights it needs q = F / (B + 1), so 1,000 permutations suffice at alpha 0.01 with up to
three families.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from scipy import stats

from certrisk.schemas.columns import DRIFT_TEST_COLUMNS, NOVELTY_COLUMNS, SAMPLE_ID, conform, finite_or_raise
from certrisk.schemas.errors import InputError
from certrisk.schemas.policy import DriftSpec

#: Default memory bound (bytes) of any intermediate matrix built by the kernel and k-NN code.
DEFAULT_MAX_BYTES = 256 * 2**20
#: Points used to estimate the median-heuristic bandwidth (pairwise distances: n^2 / 2 of them).
BANDWIDTH_SUBSAMPLE = 1000

Correction = Literal["family-bh", "bh", "by", "holm"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as given, else cuda when available, else cpu (chosen at run time)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# --------------------------------------------------------------------------------------------
# input checks


def _matrix(
    data: np.ndarray | pd.DataFrame, features: Sequence[str] | None, *, what: str, ids=None
) -> np.ndarray:
    """Float64 array of shape (n, n_features); InputError names the feature or row at fault."""
    if isinstance(data, pd.DataFrame):
        if features is None:
            raise InputError(f"{what}: a DataFrame needs the feature names")
        missing = [f for f in features if f not in data.columns]
        if missing:
            raise InputError(f"{what}: missing feature column(s) {missing}")
        try:
            arr = data.loc[:, list(features)].to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{what}: features must be numeric: {exc}") from None
    else:
        arr = np.asarray(data, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            arr = arr.reshape(arr.shape[0], -1)
        if features is not None and arr.shape[1] != len(features):
            raise InputError(
                f"{what}: {arr.shape[1]} feature column(s), but {len(features)} feature name(s) given"
            )
    if arr.shape[0] == 0:
        raise InputError(f"{what}: empty (0 rows)")
    finite_or_raise(arr, what=what, ids=ids)
    return arr


def _check_same_features(reference, batch, features: Sequence[str] | None) -> None:
    """Name the features one side lacks (DataFrames), or the width mismatch (arrays)."""
    if features is None:
        return
    features = list(features)
    sides = (("reference", reference, "batch"), ("batch", batch, "reference"))
    for what, data, other in sides:
        if isinstance(data, pd.DataFrame):
            missing = [f for f in features if f not in data.columns]
            if missing:
                raise InputError(
                    f"feature sets differ: {what} lacks feature(s) {missing} (expected like the {other})"
                )
        else:
            arr = np.asarray(data)
            width = int(np.prod(arr.shape[1:])) if arr.ndim > 1 else 1
            if arr.ndim >= 1 and width != len(features):
                raise InputError(
                    f"feature sets differ: {what} has {width} feature column(s), expected {len(features)} "
                    f"({features[:3]}...)"
                )


def _pair(reference, batch, features=None, *, batch_ids=None) -> tuple[np.ndarray, np.ndarray]:
    _check_same_features(reference, batch, features)
    x = _matrix(reference, features, what="reference")
    y = _matrix(batch, features, what="batch", ids=batch_ids)
    if x.shape[1] != y.shape[1]:
        raise InputError(f"feature sets differ: reference has {x.shape[1]} features, batch has {y.shape[1]}")
    return x, y


# --------------------------------------------------------------------------------------------
# multiple testing


def bh_qvalues(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), same order as the input.

    ``q_(i) = min_{j >= i} min(1, m p_(j) / j)`` over the sorted p-values. Rejecting q < alpha
    controls the FDR at alpha under independence or PRDS.
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    q = np.empty(m)
    q[order] = q_sorted
    return q


def family_weights(families: Sequence[str]) -> np.ndarray:
    """Weights giving each family the same total weight; they average 1.

    A test of family f (m_f tests of m in all, F families) gets weight m / (F * m_f).
    """
    fam = pd.Series(list(families), dtype="object")
    if fam.empty:
        return np.empty(0)
    sizes = fam.map(fam.value_counts()).to_numpy(dtype=np.float64)
    return len(fam) / (fam.nunique() * sizes)


def adjust_p_values(
    p_values: np.ndarray, method: Correction = "bh", *, families: Sequence[str] | None = None
) -> np.ndarray:
    """Adjusted p-values: ``family-bh`` (weighted BH with equal weight per family, FDR under
    independence; needs ``families``), ``bh`` (FDR, PRDS), ``by`` (FDR, any dependence),
    ``holm`` (FWER)."""
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    if m == 0:
        return p.copy()
    if method == "family-bh":
        if families is None or len(families) != m:
            raise InputError("family-bh correction needs one family name per p-value")
        return np.minimum(bh_qvalues(p / family_weights(families)), 1.0)
    if method == "bh":
        return bh_qvalues(p)
    if method == "by":
        return np.minimum(bh_qvalues(p) * np.sum(1.0 / np.arange(1, m + 1)), 1.0)
    if method == "holm":
        order = np.argsort(p, kind="stable")
        scaled = np.minimum(p[order] * (m - np.arange(m)), 1.0)
        q = np.empty(m)
        q[order] = np.maximum.accumulate(scaled)
        return q
    raise InputError(f"unknown correction {method!r}; known: family-bh, bh, by, holm")


# --------------------------------------------------------------------------------------------
# per-feature tests


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
    constant). Categorical features: chi-squared test of the 2 x K contingency table of category
    counts (``scipy.stats.chi2_contingency``); effect size Cramer's V.

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
    _check_same_features(reference, batch, features)
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
        return _matrix(data, names, what=what)
    arr = np.asarray(data)
    if arr.ndim != 2 or arr.shape[1] != len(features):
        shape = arr.shape
        raise InputError(
            f"{what}: expected shape (n, {len(features)}) for features {features[:5]}..., got {shape}"
        )
    return _matrix(arr[:, idx], names, what=what)


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
    if len(levels) < 2:
        stat, p, v = 0.0, 1.0, 0.0
    else:
        res = stats.chi2_contingency(table, correction=False)
        stat, p = float(res.statistic), float(res.pvalue)
        v = math.sqrt(stat / table.sum())  # Cramer's V with min(rows, cols) - 1 = 1
    return {
        "test": "chi2",
        "family": "univariate",
        "feature": feature,
        "statistic": stat,
        "p_value": p,
        "effect_size": v,
        "effect_name": "cramers_v",
    }


# --------------------------------------------------------------------------------------------
# MMD permutation test


@dataclass(frozen=True)
class MMDResult:
    """Kernel two-sample test.

    statistic: unbiased MMD^2 (may be slightly negative under the null), Gaussian kernel
    ``exp(-||x - y||_2^2 / (2 bandwidth^2))``; p_value: ``(b + 1) / (n_permutations + 1)``;
    bandwidth: in the features' units (l2).
    """

    statistic: float
    p_value: float
    bandwidth: float
    n_permutations: int
    seconds: float = 0.0
    device: str = "cpu"


def median_bandwidth(z: np.ndarray, *, seed: int = 0, max_points: int = BANDWIDTH_SUBSAMPLE) -> float:
    """Median heuristic: the median l2 distance between distinct points of ``z``.

    ``z`` has shape (n, d); above ``max_points`` points a seeded subsample is used. Falls back
    to the mean nonzero distance, then 1.0, when the median is 0 (many duplicate points).
    """
    from scipy.spatial.distance import pdist

    z = np.asarray(z, dtype=np.float64)
    if len(z) > max_points:
        rng = np.random.default_rng(seed)
        z = z[rng.choice(len(z), size=max_points, replace=False)]
    d = pdist(z)
    if d.size == 0:
        return 1.0
    med = float(np.median(d))
    if med > 0:
        return med
    nz = d[d > 0]
    return float(nz.mean()) if nz.size else 1.0


def mmd_permutation_masks(
    n_reference: int, n_batch: int, n_permutations: int, *, seed: int = 0
) -> np.ndarray:
    """The permutations ``mmd_test`` uses, as boolean masks of shape (n_permutations, n).

    Row j is True at the pooled positions permutation j assigns to the reference side; pooled
    order is reference rows then batch rows. Provided so baselines can replay the same test.
    """
    return np.stack([m.numpy() for m in _permutation_masks(n_reference, n_batch, n_permutations, seed)])


def _permutation_masks(
    n_reference: int, n_batch: int, n_permutations: int, seed: int
) -> Iterator[torch.Tensor]:
    """Random reference-side masks of the pooled sample, from a seeded CPU generator (so the
    permutations are the same on every device)."""
    n = n_reference + n_batch
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    for _ in range(n_permutations):
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.randperm(n, generator=g)[:n_reference]] = True
        yield mask


def _mmd2_from_forms(aka, ra, total, m1, m2):
    """Unbiased MMD^2 from a^T K a, r^T a (r = K 1) and 1^T K 1, with unit kernel diagonal."""
    bkb = total - 2.0 * ra + aka
    akb = ra - aka
    return (aka - m1) / (m1 * (m1 - 1)) + (bkb - m2) / (m2 * (m2 - 1)) - 2.0 * akb / (m1 * m2)


def mmd_test(
    reference: np.ndarray | pd.DataFrame,
    batch: np.ndarray | pd.DataFrame,
    *,
    n_permutations: int = 1000,
    seed: int = 0,
    device: str | torch.device | None = None,
    features: Sequence[str] | None = None,
    bandwidth: float | None = None,
    dtype: torch.dtype = torch.float64,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> MMDResult:
    """Gaussian-kernel MMD^2 permutation test.

    The pooled kernel matrix is never held whole: its rows are computed in blocks on ``device``
    and multiplied with a block of permutation indicator columns, so every statistic is a
    quadratic form ``a^T K a`` (a = the reference-side indicator of one permutation). The (n x P)
    indicator block takes max_bytes / 2 and a (rows x n) kernel block max_bytes / 4 (two
    temporaries of that size exist while it is built), so the peak stays under 2 x max_bytes
    plus the pooled data; when P permutations do not fit in one pass the kernel blocks are
    recomputed per pass. For 10,000 x 10,000 samples (n = 20,000) in float64 at the default
    bound: P = 800 permutations per pass, 400 kernel rows per block.

    Parameters
    ----------
    reference : array of shape (n_reference, n_features), n_reference >= 2
    batch : array of shape (n_batch, n_features), n_batch >= 2
    n_permutations : int
        B random permutations (from ``mmd_permutation_masks(..., seed=seed)``).
    seed : int
        Seeds the permutations and the bandwidth subsample.
    device : torch device or None
        None picks cuda when available, else cpu.
    bandwidth : float or None
        Kernel bandwidth in feature units; None: the median heuristic on the pooled sample.
    dtype : torch dtype
        float64 by default: the statistic is a small difference of large sums.
    max_bytes : int
        Memory bound of the intermediate blocks.

    Returns
    -------
    MMDResult
        p_value ``(b + 1) / (B + 1)`` with b the permutations whose statistic is >= the observed
        one: exactly valid under exchangeability, never 0.
    """
    import time

    if n_permutations < 1:
        raise InputError(f"n_permutations must be >= 1, got {n_permutations}")
    x, y = _pair(reference, batch, features)
    m1, m2 = len(x), len(y)
    if m1 < 2 or m2 < 2:
        raise InputError(f"mmd_test needs at least 2 samples per side, got reference {m1}, batch {m2}")
    start = time.perf_counter()
    dev = resolve_device(device)
    pooled = np.concatenate([x, y])
    sigma = float(bandwidth) if bandwidth is not None else median_bandwidth(pooled, seed=seed)
    if not sigma > 0:
        raise InputError(f"bandwidth must be > 0, got {sigma}")
    gamma = 1.0 / (2.0 * sigma * sigma)
    z = torch.as_tensor(pooled, dtype=dtype, device=dev)
    n = m1 + m2
    item = torch.finfo(dtype).bits // 8
    cols = int(max(1, min(n_permutations + 1, (max_bytes // 2) // (n * item))))
    rows = int(max(1, min(n, (max_bytes // 4) // (n * item))))
    sq = (z * z).sum(dim=1)

    identity = torch.zeros(n, dtype=torch.bool)
    identity[:m1] = True
    masks = _permutation_masks(m1, m2, n_permutations, seed)

    row_sums: torch.Tensor | None = None
    stats_all = []
    first = True
    remaining = n_permutations + 1
    while remaining > 0:
        width = min(cols, remaining)
        block = [identity] if first else []
        block.extend(next(masks) for _ in range(width - len(block)))
        a = torch.stack(block, dim=1).to(device=dev, dtype=dtype)  # (n, P)
        aka = torch.zeros(a.shape[1], dtype=dtype, device=dev)
        sums = torch.empty(n, dtype=dtype, device=dev) if row_sums is None else None
        for i in range(0, n, rows):
            j = min(i + rows, n)
            d2 = (sq[i:j, None] + sq[None, :] - 2.0 * (z[i:j] @ z.T)).clamp_min_(0.0)
            k = torch.exp_(d2.mul_(-gamma))  # (rows, n)
            if sums is not None:
                sums[i:j] = k.sum(dim=1)
            aka += (a[i:j] * (k @ a)).sum(dim=0)
        if sums is not None:
            row_sums = sums
        ra = row_sums @ a
        stats_all.append(_mmd2_from_forms(aka, ra, row_sums.sum(), m1, m2).cpu())
        remaining -= width
        first = False
    values = torch.cat(stats_all).numpy()
    observed = float(values[0])
    b = int(np.count_nonzero(values[1:] >= observed))
    return MMDResult(
        statistic=observed,
        p_value=(b + 1) / (n_permutations + 1),
        bandwidth=sigma,
        n_permutations=n_permutations,
        seconds=time.perf_counter() - start,
        device=str(dev),
    )


# --------------------------------------------------------------------------------------------
# classifier two-sample test


@dataclass(frozen=True)
class ClassifierTestResult:
    """Domain-classifier two-sample test.

    auc: ROC AUC of the out-of-fold probabilities (0.5 = indistinguishable); p_value: Bonferroni
    over folds of one-sided Mann-Whitney p-values; batch_probabilities: array of shape
    (n_batch,), each batch sample's out-of-fold probability of coming from the batch.
    """

    auc: float
    p_value: float
    batch_probabilities: np.ndarray = field(repr=False)
    fold_p_values: tuple[float, ...] = ()
    n_folds: int = 5


def classifier_test(
    reference: np.ndarray | pd.DataFrame,
    batch: np.ndarray | pd.DataFrame,
    *,
    seed: int = 0,
    n_folds: int = 5,
    classifier=None,
    features: Sequence[str] | None = None,
) -> ClassifierTestResult:
    """Classifier two-sample test with cross-validated out-of-fold probabilities.

    A classifier learns to tell batch (label 1) from reference (label 0) on ``n_folds``
    stratified folds; each sample is scored by the model that did not see it. Within fold k the
    held-out scores are independent of model k, so under the null (same distribution) the
    one-sided Mann-Whitney test "batch scores exceed reference scores" gives a valid p_k; the
    reported p-value is ``min(1, n_folds * min_k p_k)`` (Bonferroni: valid under any dependence
    between folds).

    Parameters
    ----------
    reference : array of shape (n_reference, n_features)
    batch : array of shape (n_batch, n_features)
    seed : int
        Seeds the folds and the classifier.
    n_folds : int
        Cross-validation folds (>= 2, <= the smaller side).
    classifier : scikit-learn classifier or None
        Any estimator with ``predict_proba``; None: HistGradientBoostingClassifier.

    Returns
    -------
    ClassifierTestResult
    """
    from sklearn.base import clone
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    x, y = _pair(reference, batch, features)
    if min(len(x), len(y)) < n_folds or n_folds < 2:
        raise InputError(
            f"classifier_test needs n_folds >= 2 and at least n_folds samples per side; "
            f"got n_folds={n_folds}, reference {len(x)}, batch {len(y)}"
        )
    data = np.concatenate([x, y])
    labels = np.r_[np.zeros(len(x), dtype=np.int64), np.ones(len(y), dtype=np.int64)]
    model = (
        classifier
        if classifier is not None
        else HistGradientBoostingClassifier(max_iter=100, random_state=seed)
    )
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    proba = np.empty(len(data))
    fold_p = []
    for train, test in folds.split(data, labels):
        fitted = clone(model)
        if "random_state" in fitted.get_params():
            fitted.set_params(random_state=seed)
        fitted.fit(data[train], labels[train])
        proba[test] = fitted.predict_proba(data[test])[:, 1]
        held_labels = labels[test]
        res = stats.mannwhitneyu(
            proba[test][held_labels == 1], proba[test][held_labels == 0], alternative="greater"
        )
        fold_p.append(float(res.pvalue))
    auc = float(roc_auc_score(labels, proba))
    p = min(1.0, n_folds * min(fold_p))
    return ClassifierTestResult(
        auc=auc,
        p_value=p,
        batch_probabilities=proba[len(x) :].copy(),
        fold_p_values=tuple(fold_p),
        n_folds=n_folds,
    )


# --------------------------------------------------------------------------------------------
# nearest neighbours and novelty


def knn_distances(
    queries: np.ndarray,
    reference: np.ndarray,
    *,
    k: int = 1,
    p: float = 2.0,
    exclude_self: bool = False,
    device: str | torch.device | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> np.ndarray:
    """Distances to the k nearest reference points, sorted ascending, shape (n_queries, k).

    Distances are lp (``p`` = 1, 2 or inf), float64, computed with ``torch.cdist`` in row
    blocks of at most ``max_bytes`` (never a full n_queries x n_reference matrix beyond it).
    ``exclude_self``: queries are the reference itself (same order) and each row skips its own
    index (leave-one-out); duplicates of a point still count at distance 0.
    """
    q = torch.as_tensor(np.asarray(queries, dtype=np.float64))
    r = torch.as_tensor(np.asarray(reference, dtype=np.float64))
    n_ref = r.shape[0]
    avail = n_ref - (1 if exclude_self else 0)
    if not 1 <= k <= avail:
        raise InputError(f"k must lie in [1, {avail}] for a reference of {n_ref} samples, got {k}")
    dev = resolve_device(device)
    r = r.to(dev)
    rows = int(max(1, (max_bytes // 2) // max(1, n_ref * 8)))
    out = np.empty((q.shape[0], k))
    for i in range(0, q.shape[0], rows):
        j = min(i + rows, q.shape[0])
        d = torch.cdist(q[i:j].to(dev), r, p=p)
        if exclude_self:
            d[torch.arange(j - i, device=dev), torch.arange(i, j, device=dev)] = float("inf")
        out[i:j] = torch.topk(d, k, dim=1, largest=False).values.cpu().numpy()
    return out


def novelty(
    reference: np.ndarray | pd.DataFrame,
    batch: np.ndarray | pd.DataFrame,
    *,
    k: int = 5,
    ids: Sequence[str],
    features: Sequence[str] | None = None,
    domain_probability: np.ndarray | None = None,
    device: str | torch.device | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> pd.DataFrame:
    """Per-sample novelty against the reference set.

    ``knn_distance``: l2 distance from each batch sample to its k-th nearest reference sample.
    ``novelty_percentile``: the share of reference samples whose own leave-one-out k-th nearest
    neighbour distance is <= that distance (0..1; under exchangeability with the reference,
    ``1 - percentile`` is a conservative conformal p-value up to a 1 / (n_reference + 1) term).
    ``domain_probability``: the classifier test's out-of-fold probability, NaN when not given.

    Parameters
    ----------
    reference : array of shape (n_reference, n_features), n_reference > k
    batch : array of shape (n_batch, n_features)
    ids : sequence of str, length n_batch
    domain_probability : array of shape (n_batch,) or None

    Returns
    -------
    DataFrame
        NOVELTY_COLUMNS, one row per batch sample, in batch order.
    """
    ids = [str(i) for i in ids]
    x, y = _pair(reference, batch, features, batch_ids=ids)
    if len(ids) != len(y):
        raise InputError(f"novelty: {len(ids)} id(s) for {len(y)} batch sample(s)")
    if len(x) <= k:
        raise InputError(f"novelty: reference of {len(x)} samples is too small for k={k}")
    ref_loo = np.sort(knn_distances(x, x, k=k, exclude_self=True, device=device, max_bytes=max_bytes)[:, -1])
    dist = knn_distances(y, x, k=k, device=device, max_bytes=max_bytes)[:, -1]
    pct = np.searchsorted(ref_loo, dist, side="right") / len(ref_loo)
    if domain_probability is None:
        dom = np.full(len(y), np.nan)
    else:
        dom = np.asarray(domain_probability, dtype=np.float64)
        if dom.shape != (len(y),):
            raise InputError(f"novelty: domain_probability has shape {dom.shape}, expected ({len(y)},)")
    frame = pd.DataFrame(
        {SAMPLE_ID: ids, "knn_distance": dist, "novelty_percentile": pct, "domain_probability": dom}
    )
    return conform(frame, NOVELTY_COLUMNS, table="novelty")


# --------------------------------------------------------------------------------------------
# orchestration


@dataclass(frozen=True)
class DriftResult:
    """All drift evidence of one batch.

    tests: DRIFT_TEST_COLUMNS, ``q_value`` adjusted across every test of every family and
    ``drift = q_value < alpha``; novelty: NOVELTY_COLUMNS in batch order; drift: the verdict
    (any test drifted).
    """

    tests: pd.DataFrame
    novelty: pd.DataFrame
    drift: bool
    alpha: float
    correction: str
    mmd: MMDResult | None = None
    classifier: ClassifierTestResult | None = None
    n_reference: int = 0
    n_batch: int = 0

    def summary(self) -> dict[str, Any]:
        """Small JSON-able summary (Python scalars, short lists) for XCom and the batch record."""
        t = self.tests
        drifted = t.loc[t["drift"]].sort_values("q_value")
        out: dict[str, Any] = {
            "drift": bool(self.drift),
            "alpha": float(self.alpha),
            "correction": self.correction,
            "n_reference": int(self.n_reference),
            "n_batch": int(self.n_batch),
            "n_tests": len(t),
            "n_drifted": len(drifted),
            "min_q_value": float(t["q_value"].min()) if len(t) else 1.0,
            "drifted": [
                {"test": r.test, "feature": r.feature, "q_value": float(r.q_value)}
                for r in drifted.head(10).itertuples()
            ],
            "median_novelty_percentile": float(self.novelty["novelty_percentile"].median()),
        }
        if self.mmd is not None:
            out["mmd"] = {
                "statistic": self.mmd.statistic,
                "p_value": self.mmd.p_value,
                "bandwidth": self.mmd.bandwidth,
                "n_permutations": self.mmd.n_permutations,
            }
        if self.classifier is not None:
            out["classifier"] = {"auc": self.classifier.auc, "p_value": self.classifier.p_value}
        return out


def detect_drift(
    reference_X: np.ndarray | pd.DataFrame,
    batch_X: np.ndarray | pd.DataFrame,
    *,
    spec: DriftSpec,
    features: Sequence[str],
    batch_ids: Sequence[str],
    seed: int = 0,
    device: str | torch.device | None = None,
    categorical: Sequence[str] = (),
    correction: Correction = "family-bh",
    classifier=None,
) -> DriftResult:
    """Run the policy's drift tests and per-sample novelty; one verdict over all families.

    Tests named in ``spec.tests``: "ks" (per feature; chi-squared for ``categorical``), "mmd"
    (``spec.mmd_permutations`` permutations) and "classifier" (its out-of-fold probabilities
    fill ``domain_probability``). All p-values are adjusted together (``correction``, default
    weighted Benjamini-Hochberg with an equal share per family, see the module docstring): drift
    when any adjusted q < ``spec.alpha``. The reference is
    subsampled (seeded) to ``spec.max_reference`` when set. Novelty uses ``spec.novelty_k``.
    ``classifier``: the domain classifier of the "classifier" test (see ``classifier_test``).

    Parameters
    ----------
    reference_X : array of shape (n_reference, n_features) or DataFrame
    batch_X : array of shape (n_batch, n_features) or DataFrame
    features : sequence of str, length n_features
    batch_ids : sequence of str, length n_batch

    Returns
    -------
    DriftResult
    """
    ids = [str(i) for i in batch_ids]
    features = [str(f) for f in features]
    _check_same_features(reference_X, batch_X, features)
    if len(batch_X) == 0:
        raise InputError("batch: empty (0 rows)")
    if len(ids) != len(batch_X):
        raise InputError(f"batch: {len(ids)} id(s) for {len(batch_X)} sample(s)")
    cat = [c for c in categorical if c in features]
    numeric = [f for f in features if f not in set(cat)]
    x_num, y_num = _pair(
        _select(reference_X, features, numeric), _select(batch_X, features, numeric), numeric, batch_ids=ids
    )
    ref_all = reference_X
    rng = np.random.default_rng(seed)
    if spec.max_reference is not None and len(x_num) > spec.max_reference:
        keep = np.sort(rng.choice(len(x_num), size=spec.max_reference, replace=False))
        x_num = x_num[keep]
        ref_all = (
            reference_X.iloc[keep] if isinstance(reference_X, pd.DataFrame) else np.asarray(reference_X)[keep]
        )

    parts = []
    mmd = clf = None
    if "ks" in spec.tests:
        parts.append(feature_tests(ref_all, batch_X, features=features, categorical=cat))
    if "mmd" in spec.tests:
        mmd = mmd_test(x_num, y_num, n_permutations=spec.mmd_permutations, seed=seed, device=device)
        parts.append(
            pd.DataFrame(
                [
                    {
                        "test": "mmd",
                        "family": "kernel",
                        "feature": "*",
                        "statistic": mmd.statistic,
                        "p_value": mmd.p_value,
                        "effect_size": math.sqrt(max(mmd.statistic, 0.0)),
                        "effect_name": "mmd",
                    }
                ]
            )
        )
    if "classifier" in spec.tests:
        clf = classifier_test(x_num, y_num, seed=seed, classifier=classifier)
        parts.append(
            pd.DataFrame(
                [
                    {
                        "test": "classifier",
                        "family": "classifier",
                        "feature": "*",
                        "statistic": clf.auc,
                        "p_value": clf.p_value,
                        "effect_size": 2.0 * clf.auc - 1.0,
                        "effect_name": "auc_advantage",
                    }
                ]
            )
        )
    if parts:
        tests = pd.concat(
            [p.drop(columns=["q_value", "drift"], errors="ignore") for p in parts], ignore_index=True
        )
        tests["q_value"] = adjust_p_values(
            tests["p_value"].to_numpy(), correction, families=tests["family"].tolist()
        )
        tests["drift"] = tests["q_value"] < spec.alpha
    else:
        tests = pd.DataFrame({c: pd.Series(dtype="object") for c in DRIFT_TEST_COLUMNS})
    tests = conform(tests, DRIFT_TEST_COLUMNS, table="drift_tests")
    nov = novelty(
        x_num,
        y_num,
        k=spec.novelty_k,
        ids=ids,
        domain_probability=None if clf is None else clf.batch_probabilities,
        device=device,
    )
    return DriftResult(
        tests=tests,
        novelty=nov,
        drift=bool(tests["drift"].any()),
        alpha=spec.alpha,
        correction=correction,
        mmd=mmd,
        classifier=clf,
        n_reference=len(x_num),
        n_batch=len(y_num),
    )


def _select(data, features: list[str], names: list[str]):
    """The columns ``names`` of an array laid out as ``features`` (DataFrames pass through)."""
    if isinstance(data, pd.DataFrame) or names == features:
        return data
    arr = np.asarray(data)
    return arr[:, [features.index(f) for f in names]]
