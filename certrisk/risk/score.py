"""Per-sample composite risk: factors, their combination and each factor's contribution.

Per sample (``score_samples``), the factors of ``certrisk.schemas.factors.FACTOR_SPECS``, each
in [0, 1] and defined there: ``abstention`` (the driving certificate abstained, or the base
logits were not finite), ``radius_rank``, ``context``, ``rules``, ``novelty``, ``instability`` and
``method_disagreement`` (two methods certified different classes). The driving certificate is
``CertificationSpec.driving``'s: for a smoothing method, the row at its sigma and alpha. A factor
whose input is not given is not measured: 0, and listed as such. ``abstained`` counts what the
reference abstention rate counts (the driving certificate's abstention), so the batch test
compares like with like; disagreement is a factor of its own.

They combine as ``risk = 1 - prod_i (1 - w_i * f_i)`` with the policy's weights (ScoringSpec
documents why the default weights make abstention alone reach tier high and keep a certified
sample with certificate factors only below any abstained one). The rule is monotone: raising any
factor never lowers the risk. Each factor's contribution is its share of the risk in log space,
``risk * L_i / sum_j L_j`` with ``L_i = -log(1 - w_i f_i)``; contributions are non-negative and
sum to the risk. Tiers come from ``certrisk.risk.tiering``; RMF evidence from
``certrisk.risk.evidence``.

No factor, record or message here states that a sample was not attacked: a certificate bounds
the distance to a class change, not to an adversarial input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from certrisk.risk.evidence import sample_rmf_ids
from certrisk.risk.tiering import assign_tiers, some_ids, tier_of
from certrisk.schemas.columns import (
    ABSTAIN,
    CERTIFICATE_COLUMNS,
    CONTEXT_COLUMNS,
    FACTORS,
    NONFINITE_LOGITS_ATTR,
    NOVELTY_COLUMNS,
    PREDICTION_COLUMNS,
    RULE_SAMPLE_COLUMNS,
    SAMPLE_ID,
    SAMPLE_RISK_COLUMNS,
    conform,
)
from certrisk.schemas.enums import Tier
from certrisk.schemas.errors import InputError
from certrisk.schemas.factors import NOT_MEASURED_NOTES, SEVERITY_FACTOR
from certrisk.schemas.policy import Policy, ScoringSpec, SmoothingSpec

#: The factors a certified sample's own certificate gives (radius, context, instability).
CERTIFICATE_FACTORS = ("radius_rank", "context", "instability")


# --------------------------------------------------------------------------------------------
# combination (pure, vectorised)


def weight_vector(scoring: ScoringSpec) -> np.ndarray:
    """The policy's weights as an array of shape (len(FACTORS),), in FACTORS order."""
    return np.array([float(scoring.weights.get(name, 0.0)) for name in FACTORS], dtype=np.float64)


def combine_factors(factors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Risk in [0, 1] from factors of shape (n_samples, n_factors) and weights of shape (n_factors,).

    ``risk = 1 - prod_i (1 - w_i f_i)``. Non-decreasing in every factor for weights in [0, 1].
    """
    f = np.asarray(factors, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    survive = np.ones(f.shape[0], dtype=np.float64)
    for i in range(f.shape[1]):  # column by column: f is Fortran-ordered in score_samples
        if w[i] > 0:
            survive *= 1.0 - w[i] * f[:, i]
    return np.clip(1.0 - survive, 0.0, 1.0)


def factor_contributions(factors: np.ndarray, weights: np.ndarray, risk: np.ndarray) -> np.ndarray:
    """Each factor's share of the risk, shape (n_samples, n_factors); rows sum to ``risk``.

    The share is proportional to ``-log(1 - w_i f_i)``, the factor's term of ``-log(1 - risk)``.
    """
    f = np.asarray(factors, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    logs = np.zeros(f.shape, dtype=np.float64, order="F")
    for i in range(f.shape[1]):
        if w[i] > 0:
            logs[:, i] = -np.log1p(-np.minimum(w[i] * f[:, i], 1.0 - 1e-15))
    total = logs.sum(axis=1)
    scale = np.divide(np.asarray(risk, dtype=np.float64), total, out=np.zeros_like(total), where=total > 0)
    return logs * scale[:, None]


def _risk_of(policy: Policy, ones: tuple[str, ...]) -> float:
    """Risk of one sample whose factors ``ones`` are 1 and the others 0."""
    f = np.zeros((1, len(FACTORS)))
    for name in ones:
        f[0, FACTORS.index(name)] = 1.0
    return float(combine_factors(f, weight_vector(policy.scoring))[0])


def abstention_alone(policy: Policy) -> tuple[float, Tier]:
    """Risk and tier of a sample whose only factor is abstention, under ``policy``."""
    risk = _risk_of(policy, ("abstention",))
    return risk, tier_of(risk, policy.scoring)


def certified_ceiling(policy: Policy) -> float:
    """Highest risk a certified sample reaches from certificate factors alone (radius, context, instability)."""
    return _risk_of(policy, CERTIFICATE_FACTORS)


# --------------------------------------------------------------------------------------------
# input checks


def _id_series(frame: pd.DataFrame, table: str) -> pd.Series:
    col = frame[SAMPLE_ID]
    missing = col.isna().to_numpy()
    if missing.any():
        raise InputError(f"{table}: missing sample_id in row {int(np.flatnonzero(missing)[0])}")
    return col


def _positions(index: pd.Index, ids: pd.Series, table: str) -> np.ndarray:
    """Row positions of ``ids`` in the predictions' index; raise naming unknown ids."""
    pos = index.get_indexer(ids)
    if (pos < 0).any():
        unknown = pd.unique(ids.to_numpy(dtype=object)[pos < 0])
        raise InputError(f"{table}: {len(unknown)} sample_id(s) not in the predictions: {some_ids(unknown)}")
    return pos


def _one_per_sample(pos: np.ndarray, n: int, ids: np.ndarray, table: str, what: str) -> None:
    counts = np.bincount(pos, minlength=n)
    if (counts == 0).any():
        raise InputError(
            f"{table}: no {what} row for {int((counts == 0).sum())} sample(s): {some_ids(ids[counts == 0])}"
        )
    if (counts > 1).any():
        raise InputError(
            f"{table}: duplicate {what} rows for {int((counts > 1).sum())} sample(s): {some_ids(ids[counts > 1])}"
        )


def _in_unit(values: np.ndarray, ids: np.ndarray, table: str, column: str) -> None:
    bad = np.isnan(values) | (values < 0) | (values > 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{table}: column {column!r} must lie in [0, 1] without NaN; row {row} (sample_id "
            f"{str(ids[row])!r}) holds {values[row]!r}; {int(bad.sum())} row(s) affected"
        )


def _scatter(pos: np.ndarray, values, n: int) -> np.ndarray:
    """float64 array of shape (n,) holding ``values`` at row positions ``pos``."""
    out = np.empty(n, dtype=np.float64)
    out[pos] = np.asarray(values, dtype=np.float64)
    return out


@dataclass(frozen=True)
class _Batch:
    """The sample set fixed by the predictions: ids in order (for messages) and their index."""

    preds: pd.DataFrame
    index: pd.Index
    ids: np.ndarray

    @property
    def n(self) -> int:
        return len(self.index)


def _batch(predictions: pd.DataFrame) -> _Batch:
    preds = conform(predictions, PREDICTION_COLUMNS, table="predictions")
    id_series = _id_series(preds, "predictions")
    if len(id_series) == 0:
        raise InputError("predictions: empty batch (no samples to score)")
    index = pd.Index(id_series)
    ids = id_series.to_numpy(dtype=object)
    if not index.is_unique:
        raise InputError(
            f"predictions: duplicate sample_id(s): {some_ids(pd.unique(ids[index.duplicated()]))}"
        )
    return _Batch(preds, index, ids)


# --------------------------------------------------------------------------------------------
# certificates: the driving row per sample, disagreement across all rows


@dataclass(frozen=True)
class _Driving:
    """Per sample, arrays of shape (n_samples,): the driving certificate's class (ABSTAIN when it
    abstained), whether it abstained, and whether the methods that gave a class disagree."""

    method: str
    prediction: np.ndarray
    abstained: np.ndarray
    disagree: np.ndarray


def _driving_rows(certs: pd.DataFrame, policy: Policy) -> tuple[np.ndarray, str, str]:
    """Mask of the driving method's certificate rows (for smoothing: at the policy's sigma and
    alpha), the method name and a description for messages."""
    spec = policy.certification.driving
    name = spec.method.value
    mask = certs["method"].eq(name).fillna(False).to_numpy(dtype=bool)
    if not isinstance(spec, SmoothingSpec):
        return mask, name, name
    sigma = certs["sigma"].to_numpy(dtype=np.float64)
    alpha = certs["alpha"].to_numpy(dtype=np.float64)
    mask &= np.isclose(sigma, spec.sigma, rtol=1e-9, atol=0.0)
    mask &= np.isclose(alpha, spec.alpha, rtol=1e-9, atol=0.0)
    return mask, name, f"{name} (sigma={spec.sigma}, alpha={spec.alpha})"


def _methods_disagree(pos: np.ndarray, pred: np.ndarray, gave: np.ndarray, n: int) -> np.ndarray:
    """True where two certificates of a sample that each gave a class gave different ones."""
    lo = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    hi = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(lo, pos[gave], pred[gave])
    np.maximum.at(hi, pos[gave], pred[gave])
    return (np.bincount(pos[gave], minlength=n) > 0) & (lo != hi)


def _driving(certificates: pd.DataFrame, batch: _Batch, policy: Policy) -> _Driving:
    certs = conform(certificates, CERTIFICATE_COLUMNS, table="certificates")
    n, ids = batch.n, batch.ids
    pos = _positions(batch.index, _id_series(certs, "certificates"), "certificates")
    missing = np.bincount(pos, minlength=n) == 0
    if missing.any():
        raise InputError(
            f"certificates: no certificate for {int(missing.sum())} sample(s): {some_ids(ids[missing])}"
        )
    pred = certs["prediction"].to_numpy(dtype=np.int64)
    abst = certs["abstained"].to_numpy(dtype=bool) | (pred < 0)  # ABSTAIN, or any negative class
    mask, method, what = _driving_rows(certs, policy)
    drive_pos = pos[mask]
    _one_per_sample(drive_pos, n, ids, "certificates", f"driving certificate ({what})")
    prediction = np.empty(n, dtype=np.int64)
    prediction[drive_pos] = pred[mask]
    drive_abst = np.empty(n, dtype=bool)
    drive_abst[drive_pos] = abst[mask]
    prediction[drive_abst] = ABSTAIN
    return _Driving(method, prediction, drive_abst, _methods_disagree(pos, pred, ~abst, n))


# --------------------------------------------------------------------------------------------
# factors from the optional inputs: each returns {factor name: array of shape (n_samples,)}


def _context_factors(context: pd.DataFrame, batch: _Batch, drive: _Driving) -> dict[str, np.ndarray]:
    n, ids = batch.n, batch.ids
    ctx = conform(context, CONTEXT_COLUMNS, table="context")
    ctx = ctx.loc[ctx["method"].eq(drive.method).fillna(False).to_numpy(dtype=bool)]
    pos = _positions(batch.index, _id_series(ctx, "context"), "context")
    _one_per_sample(pos, n, ids, "context", f"{drive.method!r}")
    pct = _scatter(pos, ctx["radius_percentile"], n)
    ratio = _scatter(pos, ctx["radius_over_dist"], n)
    pct[drive.abstained & np.isnan(pct)] = 0.0
    ratio[drive.abstained & np.isnan(ratio)] = 0.0
    _in_unit(pct, ids, "context", "radius_percentile")
    bad = np.isnan(ratio) | (ratio < 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"context: column 'radius_over_dist' must be >= 0 without NaN for certified samples; "
            f"row {row} (sample_id {str(ids[row])!r}) holds {ratio[row]!r}"
        )
    return {"radius_rank": 1.0 - pct, "context": np.clip(1.0 - 2.0 * ratio, 0.0, 1.0)}


def _rule_factors(rules: pd.DataFrame, batch: _Batch) -> dict[str, np.ndarray]:
    rs = conform(rules, RULE_SAMPLE_COLUMNS, table="rules")
    pos = _positions(batch.index, _id_series(rs, "rules"), "rules")
    _one_per_sample(pos, batch.n, batch.ids, "rules", "rule result")
    codes, uniques = pd.factorize(rs["max_severity"].fillna("<missing>"))
    unknown = [u for u in uniques if u not in SEVERITY_FACTOR]
    if unknown:
        raise InputError(
            f"rules: column 'max_severity' holds unknown value(s) {unknown}; known: {list(SEVERITY_FACTOR)}"
        )
    values = np.array([SEVERITY_FACTOR[u] for u in uniques], dtype=np.float64)
    return {"rules": _scatter(pos, values[codes], batch.n)}


def _novelty_factors(novelty: pd.DataFrame, batch: _Batch) -> dict[str, np.ndarray]:
    nv = conform(novelty, NOVELTY_COLUMNS, table="novelty")
    pos = _positions(batch.index, _id_series(nv, "novelty"), "novelty")
    _one_per_sample(pos, batch.n, batch.ids, "novelty", "novelty")
    pct = _scatter(pos, nv["novelty_percentile"], batch.n)
    _in_unit(pct, batch.ids, "novelty", "novelty_percentile")
    return {"novelty": pct}


# --------------------------------------------------------------------------------------------
# per-sample score


def score_samples(
    *,
    certificates: pd.DataFrame,
    predictions: pd.DataFrame,
    policy: Policy,
    rules: pd.DataFrame | None = None,
    novelty: pd.DataFrame | None = None,
    context: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Score every sample of a batch.

    Parameters
    ----------
    certificates : DataFrame with CERTIFICATE_COLUMNS, one row per sample and method. Every
        sample needs exactly one driving row (see the module docstring).
    predictions : DataFrame with PREDICTION_COLUMNS, one row per sample; fixes the sample set
        and the output order.
    policy : the model's Policy (weights, thresholds, certification methods).
    rules : DataFrame with RULE_SAMPLE_COLUMNS, one row per sample, or None (not measured).
    novelty : DataFrame with NOVELTY_COLUMNS, one row per sample, or None (not measured).
    context : DataFrame with CONTEXT_COLUMNS, one row per sample for the driving method (other
        methods' rows are ignored), or None (radius_rank and context not measured).

    Returns
    -------
    DataFrame with SAMPLE_RISK_COLUMNS, one row per sample in the order of ``predictions``.
    ``prediction`` is the driving certificate's class (ABSTAIN, -1, when the sample abstained);
    ``abstained`` is true when the driving certificate abstained or the base model's logits for
    the sample were not all finite (``nonfinite_base``): the definition the reference abstention
    rate uses. Method disagreement is the ``method_disagreement`` factor; the prediction of a
    disagreeing sample is kept, so a reviewer sees what the driving certificate said. ``factor_<name>`` holds
    contributions (summing to ``risk``); ``top_factors`` the factors with a positive contribution,
    largest first; ``rmf_ids`` the NIST AI RMF subcategories the sample's evidence supports. Rows
    of ``top_factors`` and ``rmf_ids`` with equal content share one list object. ``attrs`` holds
    ``measured`` and ``not_measured`` (factor names) and ``nonfinite_logits`` (ids of the samples
    that abstained because their base logits were not finite), which ``score_batch`` reports.

    Raises
    ------
    InputError on missing columns, empty or duplicate sample ids, sample_id mismatches between
    the tables (naming a few ids), missing driving certificates, NaN or out-of-range factors.
    """
    batch = _batch(predictions)
    drive = _driving(certificates, batch, policy)
    base_prediction = batch.preds["base_prediction"].to_numpy(dtype=np.int64)
    nonfinite = nonfinite_base(batch.preds)
    abstained = drive.abstained | nonfinite
    prediction = np.where(abstained, ABSTAIN, drive.prediction)
    values = {
        "abstention": abstained,
        "instability": (~abstained) & (base_prediction != prediction),
        "method_disagreement": drive.disagree,
    }
    if context is not None:
        values.update(_context_factors(context, batch, drive))
    if rules is not None:
        values.update(_rule_factors(rules, batch))
    if novelty is not None:
        values.update(_novelty_factors(novelty, batch))
    measured = [name for name in FACTORS if name in values]

    f = np.zeros((batch.n, len(FACTORS)), dtype=np.float64, order="F")
    for i, name in enumerate(FACTORS):
        if name in values:
            f[:, i] = values[name]
    weights = weight_vector(policy.scoring)
    risk = combine_factors(f, weights)
    contrib = factor_contributions(f, weights, risk)
    out = pd.DataFrame(
        {
            SAMPLE_ID: batch.preds[SAMPLE_ID],
            "risk": risk,
            "tier": assign_tiers(risk, policy.scoring),
            "abstained": abstained,
            "prediction": prediction,
            "base_prediction": base_prediction,
            **{f"factor_{name}": contrib[:, i] for i, name in enumerate(FACTORS)},
            "top_factors": _top_factors(contrib),
            "rmf_ids": sample_rmf_ids(abstained, measured),
        }
    )
    out = conform(out, SAMPLE_RISK_COLUMNS, table="sample_risk")
    out.attrs["measured"] = measured
    out.attrs["not_measured"] = [name for name in FACTORS if name not in measured]
    out.attrs[NONFINITE_LOGITS_ATTR] = [str(i) for i in batch.ids[nonfinite]]
    return out


def nonfinite_base(predictions: pd.DataFrame) -> np.ndarray:
    """Bool array of shape (n_samples,): rows of a PREDICTION_COLUMNS frame whose base logits were
    not all finite (``base_confidence`` NaN or inf, or ``base_prediction`` negative, i.e. ABSTAIN)."""
    conf = predictions["base_confidence"].to_numpy(dtype=np.float64)
    return ~np.isfinite(conf) | (predictions["base_prediction"].to_numpy(dtype=np.int64) < 0)


def _top_factors(contrib: np.ndarray) -> np.ndarray:
    """Object array of lists: factor names with positive contribution, largest first."""
    n, k = contrib.shape
    order = np.argsort(-contrib, axis=1, kind="stable")
    positive = np.take_along_axis(contrib, order, axis=1) > 0
    code = np.zeros(n, dtype=np.int64)
    for j in range(k):  # positives come first in `order`, so the code is unique per list
        code = code * (k + 1) + np.where(positive[:, j], order[:, j] + 1, 0)
    uniq, inverse = np.unique(code, return_inverse=True)
    lists = np.empty(len(uniq), dtype=object)
    for u, c in enumerate(uniq):
        digits = []
        for _ in range(k):
            c, d = divmod(int(c), k + 1)
            digits.append(d)
        lists[u] = [FACTORS[d - 1] for d in reversed(digits) if d > 0]
    return lists[inverse.reshape(-1)]


__all__ = [
    "CERTIFICATE_FACTORS",
    "NOT_MEASURED_NOTES",
    "SEVERITY_FACTOR",
    "abstention_alone",
    "certified_ceiling",
    "combine_factors",
    "factor_contributions",
    "nonfinite_base",
    "score_samples",
    "weight_vector",
]
