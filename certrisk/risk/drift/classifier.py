"""Classifier two-sample test (the "classifier" family): a domain classifier tells batch from
reference on cross-validation folds; its held-out probabilities give one p-value per fold, the
folds combined with Bonferroni (valid under any dependence between folds)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from certrisk.risk.drift.inputs import paired_matrices
from certrisk.schemas.errors import InputError


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

    def test_row(self) -> dict[str, Any]:
        """This test as one DRIFT_TEST_COLUMNS row of family "classifier" (no q-value yet); the
        statistic is the AUC, the effect size ``2 AUC - 1``."""
        return {
            "test": "classifier",
            "family": "classifier",
            "feature": "*",
            "statistic": self.auc,
            "p_value": self.p_value,
            "effect_size": 2.0 * self.auc - 1.0,
            "effect_name": "auc_advantage",
        }


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

    x, y = paired_matrices(reference, batch, features)
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
