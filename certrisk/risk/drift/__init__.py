"""Drift of a batch against the reference set: per-feature tests, kernel MMD, a classifier test,
per-sample novelty, and one verdict corrected across every test family.

Modules
-------
* ``univariate``: ``feature_tests``, Kolmogorov-Smirnov and chi-squared per feature.
* ``kernel``: ``mmd_test``, the Gaussian-kernel MMD permutation test, and its bandwidth and
  permutations.
* ``classifier``: ``classifier_test``, the domain-classifier two-sample test.
* ``correction``: ``bh_qvalues``, ``family_weights``, ``adjust_p_values``: multiple testing.
* ``neighbours``: ``knn_distances`` and per-sample ``novelty``.
* ``detect``: ``detect_drift`` and ``DriftResult``: the tests the policy names, one verdict.
* ``inputs``: the reference and batch as checked float64 matrices.

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

``resolve_device`` and ``DEFAULT_MAX_BYTES`` live in ``certrisk.risk.device``; they are
re-exported here for callers that still import them from drift.
"""

from __future__ import annotations

from certrisk.risk.device import DEFAULT_MAX_BYTES, resolve_device
from certrisk.risk.drift.classifier import ClassifierTestResult, classifier_test
from certrisk.risk.drift.correction import Correction, adjust_p_values, bh_qvalues, family_weights
from certrisk.risk.drift.detect import DriftResult, detect_drift
from certrisk.risk.drift.kernel import (
    BANDWIDTH_SUBSAMPLE,
    MMDResult,
    median_bandwidth,
    mmd_permutation_masks,
    mmd_test,
)
from certrisk.risk.drift.neighbours import knn_distances, novelty
from certrisk.risk.drift.univariate import feature_tests

__all__ = [
    "BANDWIDTH_SUBSAMPLE",
    "DEFAULT_MAX_BYTES",
    "ClassifierTestResult",
    "Correction",
    "DriftResult",
    "MMDResult",
    "adjust_p_values",
    "bh_qvalues",
    "classifier_test",
    "detect_drift",
    "family_weights",
    "feature_tests",
    "knn_distances",
    "median_bandwidth",
    "mmd_permutation_masks",
    "mmd_test",
    "novelty",
    "resolve_device",
]
