"""Drift: scipy references for the feature tests, a brute-force permutation test for MMD, seeded
null simulations with binomial tolerances, and the shifted-digits batch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.distance import cdist
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors

from certrisk.risk.drift import (
    adjust_p_values,
    bh_qvalues,
    classifier_test,
    detect_drift,
    family_weights,
    feature_tests,
    knn_distances,
    mmd_permutation_masks,
    mmd_test,
    novelty,
)
from certrisk.schemas.columns import DRIFT_TEST_COLUMNS, NOVELTY_COLUMNS
from certrisk.schemas.errors import InputError
from certrisk.schemas.policy import DriftSpec


@pytest.fixture(scope="module")
def digits():
    """Digits pixels in [0, 1], split at random into a reference and a clean batch, plus a shifted
    batch (contrast 0.6 x + 0.2, Gaussian noise 0.1, clipped)."""
    x = load_digits().data / 16.0
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(x))
    ref, clean = x[perm[:900]], x[perm[900:1500]]
    shifted = np.clip(0.6 * clean + 0.2 + rng.normal(0.0, 0.1, clean.shape), 0.0, 1.0)
    return ref, clean, shifted


def _binomial_bounds(n: int, p: float, tail: float) -> tuple[int, int]:
    """[lo, hi] holding Binomial(n, p) with probability >= 1 - 2 * tail."""
    return int(stats.binom.ppf(tail, n, p)), int(stats.binom.isf(tail, n, p))


def test_ks_and_chi2_match_scipy():
    rng = np.random.default_rng(1)
    ref = pd.DataFrame(
        {"a": rng.normal(size=300), "b": rng.exponential(size=300), "c": rng.choice(list("xyz"), 300)}
    )
    bat = pd.DataFrame(
        {"a": rng.normal(0.3, 1, 200), "b": rng.exponential(size=200), "c": rng.choice(list("xyzz"), 200)}
    )
    out = feature_tests(ref, bat, features=["a", "b", "c"], categorical=["c"])
    assert list(out.columns) == list(DRIFT_TEST_COLUMNS)
    assert out["feature"].tolist() == ["a", "b", "c"]
    for f in ("a", "b"):
        want = stats.ks_2samp(ref[f], bat[f])
        row = out.set_index("feature").loc[f]
        assert row["test"] == "ks"
        assert row["p_value"] == want.pvalue and row["statistic"] == want.statistic
    table = pd.crosstab(np.r_[np.zeros(300), np.ones(200)], np.r_[ref["c"], bat["c"]]).to_numpy()
    want = stats.chi2_contingency(table, correction=False)
    row = out.set_index("feature").loc["c"]
    assert row["test"] == "chi2"
    assert row["p_value"] == pytest.approx(want.pvalue, rel=1e-12)
    assert row["effect_size"] == pytest.approx(np.sqrt(want.statistic / 500))
    assert np.allclose(out["q_value"], bh_qvalues(out["p_value"].to_numpy()))

    # arrays in feature order give the same numbers
    arr = feature_tests(ref[["a", "b"]].to_numpy(), bat[["a", "b"]].to_numpy(), features=["a", "b"])
    assert np.array_equal(arr["p_value"].to_numpy(), out["p_value"].to_numpy()[:2])


def _bh_direct(p):
    """Benjamini-Hochberg by its definition: q_(i) = min_{j >= i} m p_(j) / j, capped at 1."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    q = [0.0] * m
    for rank, i in enumerate(order, start=1):
        q[i] = min(1.0, min(m * p[order[j - 1]] / j for j in range(rank, m + 1)))
    return np.array(q)


def test_bh_qvalues_equal_direct_implementation():
    rng = np.random.default_rng(2)
    p = np.r_[rng.uniform(size=40), rng.uniform(0, 1e-3, 10), [0.02, 0.02, 1.0]]
    rng.shuffle(p)
    assert np.allclose(bh_qvalues(p), _bh_direct(p), rtol=0, atol=1e-15)
    assert np.allclose(bh_qvalues(p), stats.false_discovery_control(p, method="bh"))
    assert np.allclose(adjust_p_values(p, "by"), stats.false_discovery_control(p, method="by"))
    holm = adjust_p_values(p, "holm")
    order = np.argsort(p)
    direct = np.maximum.accumulate(np.minimum(1, p[order] * (len(p) - np.arange(len(p)))))
    assert np.allclose(holm[order], direct)


def _mmd2_unbiased(K, mask):
    a, b = np.flatnonzero(mask), np.flatnonzero(~mask)
    kxx, kyy = K[np.ix_(a, a)], K[np.ix_(b, b)]
    m1, m2 = len(a), len(b)
    return (
        (kxx.sum() - np.trace(kxx)) / (m1 * (m1 - 1))
        + (kyy.sum() - np.trace(kyy)) / (m2 * (m2 - 1))
        - 2 * K[np.ix_(a, b)].mean()
    )


@pytest.mark.parametrize("max_bytes", [None, 27 * 8 * 7])  # one pass; many row blocks and passes
def test_mmd_equals_brute_force_permutation_test(max_bytes):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(15, 4)), rng.normal(0.4, 1.0, size=(12, 4))
    kwargs = {} if max_bytes is None else {"max_bytes": max_bytes}
    res = mmd_test(x, y, n_permutations=300, seed=7, device="cpu", **kwargs)

    z = np.concatenate([x, y])
    assert res.bandwidth == pytest.approx(np.median(cdist(z, z)[np.triu_indices(len(z), 1)]))
    K = np.exp(-cdist(z, z, "sqeuclidean") / (2 * res.bandwidth**2))
    observed = _mmd2_unbiased(K, np.r_[np.ones(15, bool), np.zeros(12, bool)])
    perms = np.array([_mmd2_unbiased(K, m) for m in mmd_permutation_masks(15, 12, 300, seed=7)])
    assert res.statistic == pytest.approx(observed, rel=1e-10, abs=1e-14)
    assert res.p_value == (np.count_nonzero(perms >= observed) + 1) / 301
    assert res.p_value > 0


def test_mmd_null_rejection_rate_within_binomial_tolerance():
    # Under exchangeability the permutation p-value has P(p <= 0.05) = 5/100 exactly with 99
    # permutations (continuous data, no ties). 300 seeded simulations; the bounds hold with
    # probability >= 0.999 under Binomial(300, 0.05), so a valid test fails here at most 0.1%
    # of seeds.
    rng = np.random.default_rng(4)
    n_sim = 300
    rejections = 0
    for i in range(n_sim):
        z = rng.normal(size=(40, 3))
        rejections += mmd_test(z[:20], z[20:], n_permutations=99, seed=i, device="cpu").p_value <= 0.05
    lo, hi = _binomial_bounds(n_sim, 0.05, 5e-4)
    assert lo <= rejections <= hi, (rejections, lo, hi)


def test_mmd_rejects_shifted_digits(digits):
    ref, _clean, shifted = digits
    res = mmd_test(ref[:400], shifted[:300], n_permutations=200, seed=0)
    assert res.p_value == 1 / 201
    assert res.statistic > 0


def test_classifier_test_rejects_shift_and_is_valid_under_null(digits):
    ref, _clean, shifted = digits
    res = classifier_test(ref[:400], shifted[:300], seed=0, classifier=LogisticRegression(max_iter=500))
    assert res.auc > 0.95 and res.p_value < 1e-10
    assert res.batch_probabilities.shape == (300,)
    assert res.p_value == pytest.approx(min(1.0, 5 * min(res.fold_p_values)))

    # Null: Bonferroni over folds is conservative, so only the upper tail matters. 120 seeded
    # simulations; the bound fails a valid test with probability <= 1e-3.
    rng = np.random.default_rng(5)
    n_sim = 120
    rejections = 0
    for i in range(n_sim):
        z = rng.normal(size=(80, 2))
        rejections += classifier_test(z[:40], z[40:], seed=i, classifier=LogisticRegression()).p_value <= 0.05
    assert rejections <= int(stats.binom.isf(1e-3, n_sim, 0.05)), rejections


def test_knn_distances_match_sklearn_in_small_blocks():
    rng = np.random.default_rng(6)
    ref, q = rng.normal(size=(50, 3)), rng.normal(size=(23, 3))
    ours = knn_distances(q, ref, k=4, max_bytes=50 * 8 * 2 * 3, device="cpu")  # 3 rows per block
    want, _ = NearestNeighbors(n_neighbors=4).fit(ref).kneighbors(q)
    assert np.allclose(ours, want)
    loo = knn_distances(ref, ref, k=2, exclude_self=True, max_bytes=50 * 8 * 2 * 7, device="cpu")
    want_loo, _ = NearestNeighbors(n_neighbors=3).fit(ref).kneighbors(ref)
    assert np.allclose(loo, want_loo[:, 1:])


def test_novelty_closed_form_on_a_line():
    ref = np.arange(10.0)[:, None]  # leave-one-out 1-NN distance is 1 for every point
    batch = np.array([[0.5], [4.0], [20.0]])
    out = novelty(ref, batch, k=1, ids=["a", "b", "c"], device="cpu")
    assert list(out.columns) == list(NOVELTY_COLUMNS)
    assert out["knn_distance"].tolist() == [0.5, 0.0, 11.0]
    assert out["novelty_percentile"].tolist() == [0.0, 0.0, 1.0]
    assert out["domain_probability"].isna().all()
    # k = 2: reference LOO distances are 1 except at 0 and 9 (distance 2)
    out2 = novelty(ref, batch, k=2, ids=["a", "b", "c"], device="cpu")
    assert out2["knn_distance"].tolist() == [0.5, 1.0, 12.0]
    assert out2["novelty_percentile"].tolist() == [0.0, 0.8, 1.0]


def test_detect_drift_corrects_across_families(digits):
    ref, clean, shifted = digits
    features = [f"px{i}" for i in range(64)]
    spec = DriftSpec(alpha=0.01, tests=("ks", "mmd", "classifier"), mmd_permutations=200, novelty_k=5)
    ids = [f"b:{i}" for i in range(300)]
    res = detect_drift(
        ref,
        shifted[:300],
        spec=spec,
        features=features,
        batch_ids=ids,
        seed=0,
        device="cpu",
        classifier=LogisticRegression(max_iter=500),
    )
    t = res.tests
    assert list(t.columns) == list(DRIFT_TEST_COLUMNS)
    assert len(t) == 66 and set(t["family"]) == {"univariate", "kernel", "classifier"}
    # one weighted BH over all 66: each of the 3 families carries weight 66/3 in total
    w = np.where(t["family"] == "univariate", 66 / (3 * 64), 66 / 3)
    assert np.allclose(t["q_value"], np.minimum(bh_qvalues(t["p_value"].to_numpy() / w), 1.0))
    assert (t["drift"] == (t["q_value"] < 0.01)).all()
    assert res.drift
    # the permutation p-value floor no longer drowns MMD among 64 KS tests: q <= 3 / 201 * rank
    mmd_row = t.set_index("test").loc["mmd"]
    assert mmd_row["p_value"] == 1 / 201 and mmd_row["q_value"] < 66 / 201
    nov = res.novelty
    assert nov["sample_id"].tolist() == ids
    assert nov["domain_probability"].between(0, 1).all()
    assert nov["novelty_percentile"].median() > 0.9
    summary = res.summary()
    assert summary["drift"] is True and summary["n_tests"] == 66 and summary["classifier"]["auc"] > 0.95

    # a clean batch from the same distribution: no drift at this seed (BH/Simes level 0.01)
    clean_res = detect_drift(
        ref,
        clean[:300],
        spec=DriftSpec(alpha=0.01, tests=("ks", "mmd"), mmd_permutations=200, max_reference=600),
        features=features,
        batch_ids=ids,
        seed=0,
        device="cpu",
    )
    assert not clean_res.drift and clean_res.n_reference == 600
    assert clean_res.novelty["domain_probability"].isna().all()
    assert 0.2 < clean_res.novelty["novelty_percentile"].median() < 0.8


def test_bad_input_names_the_fault():
    rng = np.random.default_rng(8)
    ref = pd.DataFrame(rng.normal(size=(30, 3)), columns=["f0", "f1", "f2"])
    bat = pd.DataFrame(rng.normal(size=(10, 2)), columns=["f0", "f1"])
    spec = DriftSpec(tests=("ks",), novelty_k=2)
    ids = [f"s{i}" for i in range(10)]
    with pytest.raises(InputError, match=r"batch lacks feature\(s\) \['f2'\]"):
        detect_drift(ref, bat, spec=spec, features=["f0", "f1", "f2"], batch_ids=ids)
    with pytest.raises(InputError, match=r"batch lacks feature\(s\) \['f2'\]"):
        feature_tests(ref, bat, features=["f0", "f1", "f2"])
    with pytest.raises(InputError, match="batch has 2 feature column"):
        mmd_test(ref.to_numpy(), bat.to_numpy(), features=["f0", "f1", "f2"])
    with pytest.raises(InputError, match="feature sets differ: reference has 3 features, batch has 2"):
        mmd_test(ref.to_numpy(), bat.to_numpy())
    with pytest.raises(InputError, match="empty"):
        detect_drift(ref, ref.iloc[:0], spec=spec, features=["f0", "f1", "f2"], batch_ids=[])
    with pytest.raises(InputError, match="empty"):
        novelty(ref.to_numpy(), np.empty((0, 3)), ids=[])
    nan = ref.iloc[:10].copy()
    nan.iloc[4, 1] = np.nan
    with pytest.raises(InputError, match=r"batch: NaN or inf in row 4 \(sample_id 's4'\)"):
        detect_drift(ref, nan, spec=spec, features=["f0", "f1", "f2"], batch_ids=ids)
    with pytest.raises(InputError, match="categorical feature"):
        feature_tests(ref, ref, features=["f0"], categorical=["zz"])


def test_family_weights_and_weighted_bh():
    fams = ["u"] * 4 + ["k"]
    w = family_weights(fams)
    assert np.allclose(w, [5 / 8] * 4 + [5 / 2]) and np.isclose(w.mean(), 1.0)
    p = np.array([0.2, 0.5, 0.04, 0.9, 0.001])
    # direct weighted BH (Genovese et al. 2006): sort p/w, q_(i) = min_{j>=i} m * (p/w)_(j) / j
    r = p / w
    order = np.argsort(r)
    direct = np.empty(5)
    running = 1.0
    for rank in range(5, 0, -1):
        i = order[rank - 1]
        running = min(running, 5 * r[i] / rank)
        direct[i] = running
    assert np.allclose(adjust_p_values(p, "family-bh", families=fams), direct)
    # one family: weighted BH is plain BH
    assert np.allclose(adjust_p_values(p, "family-bh", families=["u"] * 5), bh_qvalues(p))
    with pytest.raises(InputError, match="one family name per p-value"):
        adjust_p_values(p, "family-bh")


def test_mmd_alone_can_decide_with_family_weights():
    """A multivariate shift invisible to every marginal: KS finds nothing, MMD alone says drift."""
    rng = np.random.default_rng(3)
    n, d = 300, 64
    ref = rng.normal(size=(n, d))
    z = rng.normal(size=(n, 1))
    batch = np.sqrt(0.5) * rng.normal(size=(n, d)) + np.sqrt(0.5) * z  # same N(0,1) marginals, correlated
    features = [f"f{i}" for i in range(d)]
    res = detect_drift(
        ref,
        batch,
        spec=DriftSpec(alpha=0.01, tests=("ks", "mmd"), mmd_permutations=500),
        features=features,
        batch_ids=[f"b{i}" for i in range(n)],
        seed=0,
        device="cpu",
    )
    t = res.tests.set_index("test")
    assert not res.tests.loc[res.tests["family"] == "univariate", "drift"].any()
    assert res.drift and bool(t.loc["mmd", "drift"])
    pooled = detect_drift(
        ref,
        batch,
        spec=DriftSpec(alpha=0.01, tests=("ks", "mmd"), mmd_permutations=500),
        features=features,
        batch_ids=[f"b{i}" for i in range(n)],
        seed=0,
        device="cpu",
        correction="bh",
    )
    assert not pooled.drift  # pooled BH drowns the one multivariate test: q >= 65/501 > 0.01
