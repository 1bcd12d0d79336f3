"""Per-sample composite risk: factors, their combination and each factor's contribution.

Per sample (``score_samples``), the factors of ``certrisk.schemas.factors.FACTOR_SPECS``, each
in [0, 1] and defined there: ``abstention`` (the driving certificate abstained, or the base
logits were not finite), ``radius_rank``, ``context``, ``rules``, ``novelty``, ``instability``,
``method_disagreement`` (two methods certified different classes) and the signals that do not
trust the certificate, ``neighbours`` and ``feature_neighbours`` (reference-neighbour
disagreement, read from the context step's SIGNAL_COLUMNS table). The driving certificate is
``CertificationSpec.driving``'s: for a smoothing method, the row at its sigma and alpha. A factor
whose input is not given is not measured: 0, and listed as such. ``abstained`` counts what the
reference abstention rate counts (the driving certificate's abstention), so the batch test
compares like with like; disagreement is a factor of its own.

They combine as ``risk = 1 - prod_i (1 - w_i * f_i)`` with the policy's weights (ScoringSpec
documents why the default weights make abstention alone reach tier high and keep a certified
sample with certificate factors only below any abstained one). The rule is monotone: raising any
factor never lowers the risk. Each factor's contribution is its share of the risk in log space,
``risk * L_i / sum_j L_j`` with ``L_i = -log(1 - w_i f_i)``; contributions are non-negative and
sum to the risk. Tiers come from ``certrisk.risk.tiering``: the calibrated thresholds of a
``TierCalibration`` when one is given (else the policy's fixed ones), each sample raised to the
tier floor of the worst rule it failed (``rule_floors``); RMF evidence from
``certrisk.risk.evidence``.

No factor, record or message here states that a sample was not attacked: a certificate bounds
the distance to a class change, not to an adversarial input.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from certrisk.risk.calibration import TierCalibration
from certrisk.risk.evidence import sample_rmf_ids
from certrisk.risk.score_inputs import (
    Driving,
    SampleSet,
    driving_certificates,
    id_series,
    in_unit,
    one_per_sample,
    positions,
    sample_set,
    scatter,
)
from certrisk.risk.tiering import assign_tiers, tier_of
from certrisk.schemas.columns import (
    ABSTAIN,
    CONTEXT_COLUMNS,
    FACTORS,
    NONFINITE_LOGITS_ATTR,
    NOVELTY_COLUMNS,
    RULE_SAMPLE_COLUMNS,
    SAMPLE_ID,
    SAMPLE_RISK_COLUMNS,
    SIGNAL_COLUMNS,
    conform,
)
from certrisk.schemas.enums import Tier
from certrisk.schemas.errors import InputError
from certrisk.schemas.factors import NOT_MEASURED_NOTES, SEVERITY_FACTOR, SEVERITY_TIER_FLOOR, SIGNAL_FACTORS
from certrisk.schemas.policy import Policy, ScoringSpec

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


def abstention_alone(policy: Policy, calibration: TierCalibration | None = None) -> tuple[float, Tier]:
    """Risk and tier of a sample whose only factor is abstention, under ``policy`` (and the tier
    ``calibration`` when given; else the fixed thresholds)."""
    risk = _risk_of(policy, ("abstention",))
    return risk, tier_of(risk, policy.scoring, calibration)


def certified_ceiling(policy: Policy) -> float:
    """Highest risk a certified sample reaches from certificate factors alone (radius, context, instability)."""
    return _risk_of(policy, CERTIFICATE_FACTORS)


# --------------------------------------------------------------------------------------------
# factors from the optional inputs: each returns {factor name: array of shape (n_samples,)}


def _context_factors(context: pd.DataFrame, samples: SampleSet, drive: Driving) -> dict[str, np.ndarray]:
    n, ids = samples.n, samples.ids
    ctx = conform(context, CONTEXT_COLUMNS, table="context")
    ctx = ctx.loc[ctx["method"].eq(drive.method).fillna(False).to_numpy(dtype=bool)]
    pos = positions(samples.index, id_series(ctx, "context"), "context")
    one_per_sample(pos, n, ids, "context", f"{drive.method!r}")
    pct = scatter(pos, ctx["radius_percentile"], n)
    ratio = scatter(pos, ctx["radius_over_dist"], n)
    pct[drive.abstained & np.isnan(pct)] = 0.0
    ratio[drive.abstained & np.isnan(ratio)] = 0.0
    in_unit(pct, ids, "context", "radius_percentile")
    bad = np.isnan(ratio) | (ratio < 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"context: column 'radius_over_dist' must be >= 0 without NaN for certified samples; "
            f"row {row} (sample_id {str(ids[row])!r}) holds {ratio[row]!r}"
        )
    return {"radius_rank": 1.0 - pct, "context": np.clip(1.0 - 2.0 * ratio, 0.0, 1.0)}


def _severities(rules: pd.DataFrame, samples: SampleSet) -> tuple[np.ndarray, np.ndarray]:
    """(positions, max_severity values) of a RULE_SAMPLE_COLUMNS frame, one row per sample, checked."""
    rs = conform(rules, RULE_SAMPLE_COLUMNS, table="rules")
    pos = positions(samples.index, id_series(rs, "rules"), "rules")
    one_per_sample(pos, samples.n, samples.ids, "rules", "rule result")
    severity = rs["max_severity"].fillna("<missing>").to_numpy(dtype=object)
    unknown = sorted(set(severity) - set(SEVERITY_FACTOR))
    if unknown:
        raise InputError(
            f"rules: column 'max_severity' holds unknown value(s) {unknown}; known: {list(SEVERITY_FACTOR)}"
        )
    return pos, severity


def _rule_factors(rules: pd.DataFrame, samples: SampleSet) -> dict[str, np.ndarray]:
    pos, severity = _severities(rules, samples)
    codes, uniques = pd.factorize(severity)
    values = np.array([SEVERITY_FACTOR[u] for u in uniques], dtype=np.float64)
    return {"rules": scatter(pos, values[codes], samples.n)}


def rule_floors(rules: pd.DataFrame | None, predictions: pd.DataFrame) -> np.ndarray:
    """Each sample's tier floor from the rules it failed (SEVERITY_TIER_FLOOR, as Tier.rank), int64
    of shape (n_samples,) in the order of ``predictions``; zeros (low) when ``rules`` is None."""
    samples = sample_set(predictions)
    floor = np.zeros(samples.n, dtype=np.int64)
    if rules is not None:
        pos, severity = _severities(rules, samples)
        floor[pos] = [SEVERITY_TIER_FLOOR[v].rank for v in severity]
    return floor


def _novelty_factors(novelty: pd.DataFrame, samples: SampleSet) -> dict[str, np.ndarray]:
    nv = conform(novelty, NOVELTY_COLUMNS, table="novelty")
    pos = positions(samples.index, id_series(nv, "novelty"), "novelty")
    one_per_sample(pos, samples.n, samples.ids, "novelty", "novelty")
    pct = scatter(pos, nv["novelty_percentile"], samples.n)
    in_unit(pct, samples.ids, "novelty", "novelty_percentile")
    return {"novelty": pct}


def _signal_factors(signals: pd.DataFrame, samples: SampleSet) -> dict[str, np.ndarray]:
    """The factor of every signal the SIGNAL_COLUMNS frame holds (one row per sample each)."""
    sg = conform(signals, SIGNAL_COLUMNS, table="signals")
    names = sg["signal"].fillna("<missing>").to_numpy(dtype=object)
    unknown = sorted(set(names) - set(SIGNAL_FACTORS))
    if unknown:
        raise InputError(
            f"signals: column 'signal' holds unknown value(s) {unknown}; known: {list(SIGNAL_FACTORS)}"
        )
    out = {}
    for name in SIGNAL_FACTORS:
        rows = sg.loc[names == name]
        if not len(rows):
            continue
        pos = positions(samples.index, id_series(rows, "signals"), "signals")
        one_per_sample(pos, samples.n, samples.ids, "signals", f"{name!r} signal")
        values = scatter(pos, rows["factor"], samples.n)
        in_unit(values, samples.ids, "signals", f"factor of {name!r}")
        out[name] = values
    return out


# --------------------------------------------------------------------------------------------
# per-sample score


def _factor_values(samples: SampleSet, drive: Driving, abstained: np.ndarray, inputs: dict) -> dict:
    """{factor name: values of shape (n_samples,)} of every measured factor."""
    base_prediction = samples.preds["base_prediction"].to_numpy(dtype=np.int64)
    prediction = np.where(abstained, ABSTAIN, drive.prediction)
    values = {
        "abstention": abstained,
        "instability": (~abstained) & (base_prediction != prediction),
        "method_disagreement": drive.disagree,
    }
    readers = {
        "context": lambda frame: _context_factors(frame, samples, drive),
        "rules": lambda frame: _rule_factors(frame, samples),
        "novelty": lambda frame: _novelty_factors(frame, samples),
        "signals": lambda frame: _signal_factors(frame, samples),
    }
    for name, read in readers.items():
        if inputs.get(name) is not None:
            values.update(read(inputs[name]))
    return values


def score_samples(
    *,
    certificates: pd.DataFrame,
    predictions: pd.DataFrame,
    policy: Policy,
    rules: pd.DataFrame | None = None,
    novelty: pd.DataFrame | None = None,
    context: pd.DataFrame | None = None,
    signals: pd.DataFrame | None = None,
    calibration: TierCalibration | None = None,
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
        Besides the ``rules`` factor, each sample's worst failed severity is a tier floor
        (SEVERITY_TIER_FLOOR: critical makes the sample critical, warning at least medium).
    novelty : DataFrame with NOVELTY_COLUMNS, one row per sample, or None (not measured).
    context : DataFrame with CONTEXT_COLUMNS, one row per sample for the driving method (other
        methods' rows are ignored), or None (radius_rank and context not measured).
    signals : DataFrame with SIGNAL_COLUMNS, one row per sample for each signal it holds (the
        factors of SIGNAL_FACTORS it lacks are not measured), or None (none measured).
    calibration : the tier calibration (``certrisk.risk.calibration.calibrate_tiers``) whose
        thresholds set the tiers, or None: the policy's fixed thresholds.

    Returns
    -------
    DataFrame with SAMPLE_RISK_COLUMNS, one row per sample in the order of ``predictions``.
    ``prediction`` is the driving certificate's class (ABSTAIN, -1, when the sample abstained);
    ``abstained`` is true when the driving certificate abstained or the base model's logits for
    the sample were not all finite (``nonfinite_base``): the definition the reference abstention
    rate uses. Method disagreement is the ``method_disagreement`` factor; the prediction of a
    disagreeing sample is kept, so a reviewer sees what the driving certificate said.
    ``factor_<name>`` holds contributions (summing to ``risk``); ``top_factors`` the factors
    with a positive contribution, largest first; ``rmf_ids`` the NIST AI RMF subcategories the
    sample's evidence supports. Rows of ``top_factors`` and ``rmf_ids`` with equal content share
    one list object. ``attrs`` holds ``measured`` and ``not_measured`` (factor names) and
    ``nonfinite_logits`` (ids of the samples that abstained because their base logits were not
    finite), which ``score_batch`` reports.

    Raises
    ------
    InputError on missing columns, empty or duplicate sample ids, sample_id mismatches between
    the tables (naming a few ids), missing driving certificates, NaN or out-of-range factors.
    """
    samples = sample_set(predictions)
    drive = driving_certificates(certificates, samples, policy)
    nonfinite = nonfinite_base(samples.preds)
    abstained = drive.abstained | nonfinite
    inputs = {"context": context, "rules": rules, "novelty": novelty, "signals": signals}
    values = _factor_values(samples, drive, abstained, inputs)
    measured = [name for name in FACTORS if name in values]
    f = np.zeros((samples.n, len(FACTORS)), dtype=np.float64, order="F")
    for i, name in enumerate(FACTORS):
        if name in values:
            f[:, i] = values[name]
    weights = weight_vector(policy.scoring)
    risk = combine_factors(f, weights)
    contrib = factor_contributions(f, weights, risk)
    floor = rule_floors(rules, samples.preds)
    out = pd.DataFrame(
        {
            SAMPLE_ID: samples.preds[SAMPLE_ID],
            "risk": risk,
            "tier": assign_tiers(risk, policy.scoring, calibration=calibration, floor=floor),
            "abstained": abstained,
            "prediction": np.where(abstained, ABSTAIN, drive.prediction),
            "base_prediction": samples.preds["base_prediction"].to_numpy(dtype=np.int64),
            **{f"factor_{name}": contrib[:, i] for i, name in enumerate(FACTORS)},
            "top_factors": _top_factors(contrib),
            "rmf_ids": sample_rmf_ids(abstained, measured),
        }
    )
    out = conform(out, SAMPLE_RISK_COLUMNS, table="sample_risk")
    out.attrs["measured"] = measured
    out.attrs["not_measured"] = [name for name in FACTORS if name not in measured]
    out.attrs[NONFINITE_LOGITS_ATTR] = [str(i) for i in samples.ids[nonfinite]]
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
    "rule_floors",
    "score_samples",
    "weight_vector",
]
