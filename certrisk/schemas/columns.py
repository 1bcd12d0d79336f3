"""Column specs of every per-sample and per-test table (artifacts and database alike).

One place for each name: producers build frames with exactly these columns in this order and
consumers select by these names. dtypes are pandas/numpy dtype strings; ``object`` columns hold
Python lists of strings (parquet list<string>, JSON in the database).
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np
import pandas as pd

from certrisk.schemas.errors import InputError
from certrisk.schemas.factors import FACTORS

SAMPLE_ID = "sample_id"
# The prediction a certificate records when it abstains (no class certified).
ABSTAIN = -1

#: One row per sample and certification method (DESIGN.md, Contracts).
#: ``radius`` is in the method's ``norm`` (0 when abstained); radius_l1/l2/linf are the radii in
#: those norms that the certificate still covers (Cullen et al., Theorem 2).
#: ``seconds`` is the method's wall time on the batch amortised per sample; ``peak_bytes`` the
#: batch's peak memory; ``n_forward`` the forward passes spent on this sample (selection and
#: estimation); ``sigma`` or ``eps`` is NaN where it does not apply. Provenance: ``device`` and
#: ``dtype`` (the model's parameters), ``precision`` (the arithmetic the model ran in: fp32, or
#: bf16/fp16 autocast), ``compile`` (torch.compile mode or "off"), ``worker`` (host) and ``queue``
#: (the Airflow queue of the certify task); "" where not applicable (reference certificates).
CERTIFICATE_COLUMNS = MappingProxyType(
    {
        SAMPLE_ID: "string",
        "method": "string",
        "norm": "string",
        "prediction": "int64",
        "abstained": "bool",
        "radius": "float64",
        "radius_l1": "float64",
        "radius_l2": "float64",
        "radius_linf": "float64",
        "p_lower": "float64",
        "n_forward": "int64",
        "alpha": "float64",
        "sigma": "float64",
        "eps": "float64",
        "seed": "int64",
        "seconds": "float64",
        "peak_bytes": "int64",
        "device": "string",
        "dtype": "string",
        "precision": "string",
        "compile": "string",
        "worker": "string",
        "queue": "string",
    }
)

#: Base (unsmoothed) model output per sample; feeds the instability factor. Where the base
#: model's logits for a sample are not all finite, ``base_confidence`` is NaN (and
#: ``base_prediction`` should be ABSTAIN): the sample abstains (``certrisk.risk.score``).
PREDICTION_COLUMNS = MappingProxyType(
    {SAMPLE_ID: "string", "base_prediction": "int64", "base_confidence": "float64"}
)

#: Per-sample rule outcome. ``max_severity`` is a Severity value ("none" when nothing failed);
#: ``failed`` lists the names of the row-level expectations the sample failed.
RULE_SAMPLE_COLUMNS = MappingProxyType(
    {SAMPLE_ID: "string", "n_failed": "int64", "max_severity": "string", "failed": "object"}
)

#: Per-expectation outcome. ``level`` is "row" (per-sample results exist) or "batch" (aggregate
#: expectations such as means and quantiles: batch-level result only). ``observed_value`` is JSON.
RULE_EXPECTATION_COLUMNS = MappingProxyType(
    {
        "expectation": "string",
        "expectation_type": "string",
        "column": "string",
        "severity": "string",
        "level": "string",
        "success": "bool",
        "observed_value": "string",
        "unexpected_count": "int64",
        "rmf_ids": "object",
    }
)

#: One row per drift test (per feature for feature tests, "*" for multivariate tests).
#: ``q_value`` is the p-value after correction across all test families of the batch.
DRIFT_TEST_COLUMNS = MappingProxyType(
    {
        "test": "string",
        "family": "string",
        "feature": "string",
        "statistic": "float64",
        "p_value": "float64",
        "q_value": "float64",
        "effect_size": "float64",
        "effect_name": "string",
        "drift": "bool",
    }
)

#: Per-sample novelty: distance to the k-th nearest reference sample, its percentile among the
#: reference's own leave-one-out k-NN distances (0..1), and the domain classifier's out-of-fold
#: probability that the sample comes from the batch rather than the reference (NaN if not run).
NOVELTY_COLUMNS = MappingProxyType(
    {
        SAMPLE_ID: "string",
        "knn_distance": "float64",
        "novelty_percentile": "float64",
        "domain_probability": "float64",
    }
)

#: Certificate context per sample and method (distances in the certificate's norm).
CONTEXT_COLUMNS = MappingProxyType(
    {
        SAMPLE_ID: "string",
        "method": "string",
        "dist_other_class": "float64",
        "dist_same_class": "float64",
        "share_ref_in_ball": "float64",
        "radius_over_dist": "float64",
        "radius_percentile": "float64",
    }
)

#: Signals that do not trust the certificate, one row per sample and signal (``signal`` names a
#: factor of SIGNAL_FACTORS): the raw ``score`` (reference-neighbour disagreement in [0, 1]), its
#: conformal ``p_value`` among the reference's signal role (explanation only; discrete) and the
#: ``factor`` in [0, 1] the scorer weighs (a continuous calibrated scale of the score).
SIGNAL_COLUMNS = MappingProxyType(
    {SAMPLE_ID: "string", "signal": "string", "score": "float64", "p_value": "float64", "factor": "float64"}
)

#: Per-sample risk record. ``factor_<name>`` columns hold each factor's contribution, one per
#: factor of ``FACTORS`` (risk factors in [0, 1], defined in certrisk.schemas.factors);
#: ``top_factors`` lists factor names with a positive contribution, largest first;
#: ``rmf_ids`` lists the NIST AI RMF subcategories the sample's evidence supports.
#: ``abstained``: the driving certificate abstained or the base logits were not finite (the
#: definition the reference abstention rate uses; method disagreement is its own factor).
SAMPLE_RISK_COLUMNS = MappingProxyType(
    {
        SAMPLE_ID: "string",
        "risk": "float64",
        "tier": "string",
        "abstained": "bool",
        "prediction": "int64",
        "base_prediction": "int64",
        **{f"factor_{name}": "float64" for name in FACTORS},
        "top_factors": "object",
        "rmf_ids": "object",
    }
)

#: One row per attack family and budget of an evaluation of measured detection
#: (``certrisk.risk.evaluate``'s result, recorded by ``GovernanceStore.write_evaluation``):
#: the budget (``budget_fraction`` of the data's geometry, ``eps`` in the family's ``norm``),
#: counts, rates and shares in [0, 1], the AUROC of sample risk (successful attacks against clean
#: samples), the batch tier of the attacked set, and the same for the certificate-only score
#: (``cert_*``). Aggregates only: no radius, no confidence bound.
EVALUATION_COLUMNS = MappingProxyType(
    {
        "family": "string",
        "norm": "string",
        "budget_fraction": "float64",
        "eps": "float64",
        "scored": "bool",
        "adaptive": "bool",
        "n_attacked": "int64",
        "n_successful": "int64",
        "success_rate": "float64",
        "misclassified_rate": "float64",
        "abstention_rate": "float64",
        "auroc": "float64",
        "share_high": "float64",
        "share_medium": "float64",
        "clean_false_alarm": "float64",
        "batch_tier": "string",
        "cert_auroc": "float64",
        "cert_share_high": "float64",
        "cert_share_medium": "float64",
        "cert_clean_false_alarm": "float64",
        "seconds": "float64",
    }
)
#: Columns of EVALUATION_COLUMNS a result frame may leave out (stored as NULL).
OPTIONAL_EVALUATION_COLUMNS = frozenset(
    {"scored", "adaptive", "misclassified_rate", "cert_share_medium", "seconds"}
)

#: ``attrs`` key of a scored sample_risk frame: ids of the samples that abstained because their
#: base logits were not finite (``certrisk.risk.score`` sets it, the batch summary reports it).
NONFINITE_LOGITS_ATTR = "nonfinite_logits"


def empty_frame(spec) -> pd.DataFrame:
    """An empty frame with the columns and dtypes of ``spec``."""
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in spec.items()})


def conform(frame: pd.DataFrame, spec, *, table: str) -> pd.DataFrame:
    """Select and cast ``frame`` to ``spec`` (column order and dtypes).

    Raises InputError naming the table and the missing columns.
    """
    missing = [name for name in spec if name not in frame.columns]
    if missing:
        raise InputError(f"{table}: missing column(s) {missing}; expected {list(spec)}")
    out = frame.loc[:, list(spec)].copy()
    for name, dtype in spec.items():
        if dtype == "object":
            continue
        try:
            out[name] = out[name].astype(dtype)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{table}: column {name!r} cannot be cast to {dtype}: {exc}") from exc
    out.reset_index(drop=True, inplace=True)
    return out


def finite_or_raise(values: np.ndarray, *, what: str, ids=None) -> None:
    """Raise InputError naming the first row (and sample id) holding NaN or inf."""
    arr = np.asarray(values)
    if arr.size == 0 or not np.issubdtype(arr.dtype, np.floating):
        return
    bad = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1) if arr.ndim > 1 else ~np.isfinite(arr)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        who = f" (sample_id {ids[row]!r})" if ids is not None else ""
        raise InputError(f"{what}: NaN or inf in row {row}{who}; {int(bad.sum())} row(s) affected")
