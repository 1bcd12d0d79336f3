"""One drift verdict per batch: run the policy's tests, correct their p-values together across
families, and score per-sample novelty.

The steps of ``detect_drift``: check the batch against its ids and the features
(``_check_batch``), take the numeric features as matrices and subsample the reference
(``_numeric_matrices``), run each test the policy names (``_run_tests``), adjust all p-values
together (``_corrected``), then score novelty on the same numeric matrices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from certrisk.risk.drift.classifier import ClassifierTestResult, classifier_test
from certrisk.risk.drift.correction import Correction, adjust_p_values
from certrisk.risk.drift.inputs import check_same_features, paired_matrices, select_columns
from certrisk.risk.drift.kernel import MMDResult, mmd_test
from certrisk.risk.drift.neighbours import novelty
from certrisk.risk.drift.univariate import feature_tests
from certrisk.schemas.columns import DRIFT_TEST_COLUMNS, conform
from certrisk.schemas.errors import InputError
from certrisk.schemas.policy import DriftSpec


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
    weighted Benjamini-Hochberg with an equal share per family, see
    ``certrisk.risk.drift.correction``): drift when any adjusted q < ``spec.alpha``. The
    reference is subsampled (seeded) to ``spec.max_reference`` when set. Novelty uses
    ``spec.novelty_k``. ``classifier``: the domain classifier of the "classifier" test (see
    ``classifier_test``).

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
    _check_batch(reference_X, batch_X, features, ids)
    categorical = [c for c in categorical if c in features]
    x_num, y_num, ref_all = _numeric_matrices(
        reference_X, batch_X, features, categorical, ids, max_reference=spec.max_reference, seed=seed
    )
    parts, mmd, clf = _run_tests(
        spec,
        ref_all,
        batch_X,
        x_num,
        y_num,
        features=features,
        categorical=categorical,
        seed=seed,
        device=device,
        classifier=classifier,
    )
    tests = _corrected(parts, correction, spec.alpha)
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


def _check_batch(reference_X, batch_X, features: list[str], ids: list[str]) -> None:
    """InputError naming the features one side lacks, an empty batch, or an id count mismatch."""
    check_same_features(reference_X, batch_X, features)
    if len(batch_X) == 0:
        raise InputError("batch: empty (0 rows)")
    if len(ids) != len(batch_X):
        raise InputError(f"batch: {len(ids)} id(s) for {len(batch_X)} sample(s)")


def _numeric_matrices(
    reference_X,
    batch_X,
    features: list[str],
    categorical: list[str],
    ids: list[str],
    *,
    max_reference: int | None,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, Any]:
    """The non-categorical features as float64 matrices (n_reference', d') and (n_batch, d'),
    and the reference in its own layout, both subsampled to ``max_reference`` rows.

    The subsample is seeded by ``seed`` and keeps the reference's row order.
    """
    numeric = [f for f in features if f not in set(categorical)]
    x_num, y_num = paired_matrices(
        select_columns(reference_X, features, numeric),
        select_columns(batch_X, features, numeric),
        numeric,
        batch_ids=ids,
    )
    ref_all = reference_X
    rng = np.random.default_rng(seed)
    if max_reference is not None and len(x_num) > max_reference:
        keep = np.sort(rng.choice(len(x_num), size=max_reference, replace=False))
        x_num = x_num[keep]
        ref_all = (
            reference_X.iloc[keep] if isinstance(reference_X, pd.DataFrame) else np.asarray(reference_X)[keep]
        )
    return x_num, y_num, ref_all


def _run_tests(
    spec: DriftSpec,
    reference,
    batch,
    x_num: np.ndarray,
    y_num: np.ndarray,
    *,
    features: list[str],
    categorical: list[str],
    seed: int,
    device: str | torch.device | None,
    classifier,
) -> tuple[list[pd.DataFrame], MMDResult | None, ClassifierTestResult | None]:
    """Each test ``spec.tests`` names, as DRIFT_TEST_COLUMNS parts (q-values not yet corrected).

    ``reference`` and ``batch`` are in the caller's layout (arrays in ``features`` order or
    DataFrames), for the per-feature tests; ``x_num`` (n_reference, d') and ``y_num``
    (n_batch, d') are the numeric float64 matrices, for the multivariate tests.
    """
    parts = []
    mmd = clf = None
    if "ks" in spec.tests:
        parts.append(feature_tests(reference, batch, features=features, categorical=categorical))
    if "mmd" in spec.tests:
        mmd = mmd_test(x_num, y_num, n_permutations=spec.mmd_permutations, seed=seed, device=device)
        parts.append(pd.DataFrame([mmd.test_row()]))
    if "classifier" in spec.tests:
        clf = classifier_test(x_num, y_num, seed=seed, classifier=classifier)
        parts.append(pd.DataFrame([clf.test_row()]))
    return parts, mmd, clf


def _corrected(parts: list[pd.DataFrame], correction: Correction, alpha: float) -> pd.DataFrame:
    """The tests of every family in one DRIFT_TEST_COLUMNS frame, ``q_value`` adjusted across all
    of them and ``drift = q_value < alpha``."""
    if not parts:
        tests = pd.DataFrame({c: pd.Series(dtype="object") for c in DRIFT_TEST_COLUMNS})
        return conform(tests, DRIFT_TEST_COLUMNS, table="drift_tests")
    tests = pd.concat(
        [p.drop(columns=["q_value", "drift"], errors="ignore") for p in parts], ignore_index=True
    )
    tests["q_value"] = adjust_p_values(
        tests["p_value"].to_numpy(), correction, families=tests["family"].tolist()
    )
    tests["drift"] = tests["q_value"] < alpha
    return conform(tests, DRIFT_TEST_COLUMNS, table="drift_tests")
