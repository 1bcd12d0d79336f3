"""Composite risk: per sample and per batch, explainable, policy-driven, mapped to the NIST AI RMF.

Per sample (``score_samples``), six factors, each in [0, 1] (FACTORS in certrisk.schemas.columns):

* ``abstention``: 1 when the driving certificate abstained, or when the certification methods
  disagree on the class (two methods that each gave a class gave different ones); else 0. The
  driving certificate is the policy's first smoothing method at its sigma and alpha; without a
  smoothing method, the policy's first method. Abstention is the one reliable signal a
  certificate gives (DESIGN.md, Principle 2), so it weighs most.
* ``radius_rank``: 1 - the percentile (0..1) of the driving radius against the reference
  distribution of radii (CONTEXT_COLUMNS.radius_percentile). A radius only ranks. For an
  abstained sample without a percentile the radius is 0 and the factor is 1. Not measured (0)
  when no context is given.
* ``context``: how small the radius is against the distance to the nearest reference sample of
  another class: ``clip(1 - 2 * radius / dist_other_class, 0, 1)``. A ball reaching half way to
  that sample (the farthest a decision boundary between the two can be expected) gives 0; a
  radius of 0 gives 1. Abstained samples without a ratio get 1. Not measured (0) without context.
* ``rules``: the highest severity among the row-level rules the sample failed: none 0, info 1/3,
  warning 2/3, critical 1. Not measured (0) without rule results.
* ``novelty``: the percentile (0..1) of the sample's k-NN distance to the reference among the
  reference's own leave-one-out distances. Not measured (0) without novelty results.
* ``instability``: 1 when the base model's prediction differs from the driving (smoothed)
  prediction of a sample that was not abstained; else 0.

They combine as ``risk = 1 - prod_i (1 - w_i * f_i)`` with the policy's weights (ScoringSpec
documents why the default weights make abstention alone reach tier high and keep a certified
sample with certificate factors only below any abstained one). The rule is monotone: raising any
factor never lowers the risk. Each factor's contribution is its share of the risk in log space,
``risk * L_i / sum_j L_j`` with ``L_i = -log(1 - w_i f_i)``; contributions are non-negative and
sum to the risk.

No factor, record or message here states that a sample was not attacked: a certificate bounds
the distance to a class change, not to an adversarial input.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import stats

from certrisk.risk.limitations import limitations
from certrisk.schemas.columns import (
    CERTIFICATE_COLUMNS,
    CONTEXT_COLUMNS,
    DRIFT_TEST_COLUMNS,
    FACTORS,
    NOVELTY_COLUMNS,
    PREDICTION_COLUMNS,
    RULE_EXPECTATION_COLUMNS,
    RULE_SAMPLE_COLUMNS,
    SAMPLE_ID,
    SAMPLE_RISK_COLUMNS,
    conform,
)
from certrisk.schemas.enums import Method, Severity, Tier
from certrisk.schemas.errors import InputError
from certrisk.schemas.policy import Policy, ScoringSpec
from certrisk.schemas.rmf import (
    EVIDENCE,
    EVIDENCE_DESCRIPTIONS,
    FACTOR_EVIDENCE,
    catalog,
    evidence_ids,
    unevidenced_note,
)

#: Factor value of each rule severity.
SEVERITY_FACTOR = {
    Severity.NONE.value: 0.0,
    Severity.INFO.value: 1.0 / 3.0,
    Severity.WARNING.value: 2.0 / 3.0,
    Severity.CRITICAL.value: 1.0,
}

#: Tier thresholds compare with this tolerance so that a weight equal to a threshold reaches it
#: despite floating-point rounding of 1 - (1 - w).
TIER_TOLERANCE = 1e-12

#: Why a factor is 0 when its input is missing (the batch summary lists these).
NOT_MEASURED_NOTES = {
    "radius_rank": "no certificate context was given: radii were not ranked against the reference",
    "context": "no certificate context was given: radii were not compared with the reference geometry",
    "rules": "no per-sample rule results were given: rules contribute nothing",
    "novelty": "no novelty results were given: distance to the reference contributes nothing",
}

_IDS_SHOWN = 5


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


def assign_tiers(risk: np.ndarray, scoring: ScoringSpec) -> np.ndarray:
    """Tier values (strings) for risks of shape (n_samples,), from the policy's thresholds."""
    t = scoring.thresholds
    r = np.asarray(risk, dtype=np.float64) + TIER_TOLERANCE
    return np.select(
        [r >= t[Tier.CRITICAL], r >= t[Tier.HIGH], r >= t[Tier.MEDIUM]],
        [Tier.CRITICAL.value, Tier.HIGH.value, Tier.MEDIUM.value],
        default=Tier.LOW.value,
    ).astype(object)


def tier_of(risk: float, scoring: ScoringSpec) -> Tier:
    """The tier of one risk value."""
    return Tier(assign_tiers(np.array([risk]), scoring)[0])


# --------------------------------------------------------------------------------------------
# input checks


def _some(ids: Iterable) -> str:
    ids = list(ids)
    shown = ", ".join(repr(str(i)) for i in ids[:_IDS_SHOWN])
    more = f" and {len(ids) - _IDS_SHOWN} more" if len(ids) > _IDS_SHOWN else ""
    return f"{shown}{more}"


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
        raise InputError(f"{table}: {len(unknown)} sample_id(s) not in the predictions: {_some(unknown)}")
    return pos


def _one_per_sample(pos: np.ndarray, n: int, ids: np.ndarray, table: str, what: str) -> None:
    counts = np.bincount(pos, minlength=n)
    if (counts == 0).any():
        raise InputError(
            f"{table}: no {what} row for {int((counts == 0).sum())} sample(s): {_some(ids[counts == 0])}"
        )
    if (counts > 1).any():
        raise InputError(
            f"{table}: duplicate {what} rows for {int((counts > 1).sum())} sample(s): {_some(ids[counts > 1])}"
        )


def _in_unit(values: np.ndarray, ids: np.ndarray, table: str, column: str) -> None:
    bad = np.isnan(values) | (values < 0) | (values > 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{table}: column {column!r} must lie in [0, 1] without NaN; row {row} (sample_id "
            f"{str(ids[row])!r}) holds {values[row]!r}; {int(bad.sum())} row(s) affected"
        )


def _driving(certs: pd.DataFrame, policy: Policy) -> tuple[np.ndarray, str, str]:
    """Mask of the driving certificate rows, the method name and a description for messages."""
    method = certs["method"]
    smoothing = policy.certification.smoothing
    if smoothing is not None:
        sigma = certs["sigma"].to_numpy(dtype=np.float64)
        alpha = certs["alpha"].to_numpy(dtype=np.float64)
        mask = (
            method.eq(Method.SMOOTHING.value).fillna(False).to_numpy(dtype=bool)
            & np.isclose(sigma, smoothing.sigma, rtol=1e-9, atol=0.0)
            & np.isclose(alpha, smoothing.alpha, rtol=1e-9, atol=0.0)
        )
        return mask, Method.SMOOTHING.value, f"smoothing (sigma={smoothing.sigma}, alpha={smoothing.alpha})"
    first = policy.certification.methods[0].method
    name = first.value if isinstance(first, Method) else str(first)
    return method.eq(name).fillna(False).to_numpy(dtype=bool), name, name


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
    ``prediction`` is the driving certificate's class (-1 when it abstained); ``abstained`` is
    true when it abstained or the methods disagree on the class (the prediction is then kept,
    so a reviewer sees what the smoothed classifier said). ``factor_<name>`` holds contributions
    (summing to ``risk``); ``top_factors`` the factors with a positive contribution, largest
    first; ``rmf_ids`` the NIST AI RMF subcategories the sample's evidence supports. Rows of
    ``top_factors`` and ``rmf_ids`` with equal content share one list object. ``attrs`` holds
    ``measured`` and ``not_measured`` (factor names), which ``score_batch`` reports.

    Raises
    ------
    InputError on missing columns, empty or duplicate sample ids, sample_id mismatches between
    the tables (naming a few ids), missing driving certificates, NaN or out-of-range factors.
    """
    preds = conform(predictions, PREDICTION_COLUMNS, table="predictions")
    id_series = _id_series(preds, "predictions")
    n = len(id_series)
    if n == 0:
        raise InputError("predictions: empty batch (no samples to score)")
    index = pd.Index(id_series)
    ids = id_series.to_numpy(dtype=object)  # for messages
    if not index.is_unique:
        dup = pd.unique(ids[index.duplicated()])
        raise InputError(f"predictions: duplicate sample_id(s): {_some(dup)}")

    # certificates: driving row per sample, disagreement across all rows
    certs = conform(certificates, CERTIFICATE_COLUMNS, table="certificates")
    cert_pos = _positions(index, _id_series(certs, "certificates"), "certificates")
    missing = np.bincount(cert_pos, minlength=n) == 0
    if missing.any():
        raise InputError(
            f"certificates: no certificate for {int(missing.sum())} sample(s): {_some(ids[missing])}"
        )
    cert_pred = certs["prediction"].to_numpy(dtype=np.int64)
    cert_abst = certs["abstained"].to_numpy(dtype=bool) | (cert_pred < 0)
    drive_mask, drive_method, drive_what = _driving(certs, policy)
    drive_pos = cert_pos[drive_mask]
    _one_per_sample(drive_pos, n, ids, "certificates", f"driving certificate ({drive_what})")
    prediction = np.empty(n, dtype=np.int64)
    prediction[drive_pos] = cert_pred[drive_mask]
    drive_abst = np.empty(n, dtype=bool)
    drive_abst[drive_pos] = cert_abst[drive_mask]
    prediction[drive_abst] = -1

    gave = ~cert_abst
    lo = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    hi = np.full(n, -1, dtype=np.int64)
    np.minimum.at(lo, cert_pos[gave], cert_pred[gave])
    np.maximum.at(hi, cert_pos[gave], cert_pred[gave])
    disagree = (hi >= 0) & (lo != hi)
    abstained = drive_abst | disagree

    base_prediction = preds["base_prediction"].to_numpy(dtype=np.int64)
    f = np.zeros((n, len(FACTORS)), dtype=np.float64, order="F")
    col = {name: i for i, name in enumerate(FACTORS)}
    f[:, col["abstention"]] = abstained
    f[:, col["instability"]] = (~drive_abst) & (base_prediction != prediction)

    measured = ["abstention", "instability"]
    if context is not None:
        ctx = conform(context, CONTEXT_COLUMNS, table="context")
        ctx = ctx.loc[ctx["method"].eq(drive_method).fillna(False).to_numpy(dtype=bool)]
        ctx_pos = _positions(index, _id_series(ctx, "context"), "context")
        _one_per_sample(ctx_pos, n, ids, "context", f"{drive_method!r}")
        pct = np.empty(n, dtype=np.float64)
        pct[ctx_pos] = ctx["radius_percentile"].to_numpy(dtype=np.float64)
        ratio = np.empty(n, dtype=np.float64)
        ratio[ctx_pos] = ctx["radius_over_dist"].to_numpy(dtype=np.float64)
        pct[drive_abst & np.isnan(pct)] = 0.0
        ratio[drive_abst & np.isnan(ratio)] = 0.0
        _in_unit(pct, ids, "context", "radius_percentile")
        bad = np.isnan(ratio) | (ratio < 0)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"context: column 'radius_over_dist' must be >= 0 without NaN for certified samples; "
                f"row {row} (sample_id {str(ids[row])!r}) holds {ratio[row]!r}"
            )
        f[:, col["radius_rank"]] = 1.0 - pct
        f[:, col["context"]] = np.clip(1.0 - 2.0 * ratio, 0.0, 1.0)
        measured += ["radius_rank", "context"]

    if rules is not None:
        rs = conform(rules, RULE_SAMPLE_COLUMNS, table="rules")
        rs_pos = _positions(index, _id_series(rs, "rules"), "rules")
        _one_per_sample(rs_pos, n, ids, "rules", "rule result")
        codes, uniques = pd.factorize(rs["max_severity"].fillna("<missing>"))
        unknown = [u for u in uniques if u not in SEVERITY_FACTOR]
        if unknown:
            raise InputError(
                f"rules: column 'max_severity' holds unknown value(s) {unknown}; known: {list(SEVERITY_FACTOR)}"
            )
        values = np.array([SEVERITY_FACTOR[u] for u in uniques], dtype=np.float64)
        f[rs_pos, col["rules"]] = values[codes]
        measured.append("rules")

    if novelty is not None:
        nv = conform(novelty, NOVELTY_COLUMNS, table="novelty")
        nv_pos = _positions(index, _id_series(nv, "novelty"), "novelty")
        _one_per_sample(nv_pos, n, ids, "novelty", "novelty")
        pct = np.empty(n, dtype=np.float64)
        pct[nv_pos] = nv["novelty_percentile"].to_numpy(dtype=np.float64)
        _in_unit(pct, ids, "novelty", "novelty_percentile")
        f[:, col["novelty"]] = pct
        measured.append("novelty")

    weights = weight_vector(policy.scoring)
    risk = combine_factors(f, weights)
    contrib = factor_contributions(f, weights, risk)
    out = pd.DataFrame(
        {
            SAMPLE_ID: preds[SAMPLE_ID],
            "risk": risk,
            "tier": assign_tiers(risk, policy.scoring),
            "abstained": abstained,
            "prediction": prediction,
            "base_prediction": base_prediction,
            **{f"factor_{name}": contrib[:, i] for i, name in enumerate(FACTORS)},
            "top_factors": _top_factors(contrib),
            "rmf_ids": _sample_rmf_ids(abstained, measured),
        }
    )
    out = conform(out, SAMPLE_RISK_COLUMNS, table="sample_risk")
    out.attrs["measured"] = [name for name in FACTORS if name in measured]
    out.attrs["not_measured"] = [name for name in FACTORS if name not in measured]
    return out


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


def sample_evidence_kinds(abstained: bool, measured: Iterable[str]) -> tuple[str, ...]:
    """Evidence kinds behind one sample's record: its certificate, measured factors, its tier."""
    kinds = {"certificate", "risk_tiers"}
    kinds.update(FACTOR_EVIDENCE[name] for name in measured if name != "abstention")
    if abstained:
        kinds.add(FACTOR_EVIDENCE["abstention"])
    return tuple(sorted(kinds))


def _sample_rmf_ids(abstained: np.ndarray, measured: list[str]) -> np.ndarray:
    choices = np.empty(2, dtype=object)
    choices[0] = list(evidence_ids(*sample_evidence_kinds(False, measured)))
    choices[1] = list(evidence_ids(*sample_evidence_kinds(True, measured)))
    return choices[abstained.astype(np.int64)]


# --------------------------------------------------------------------------------------------
# per-batch score


def abstention_test(k: int, n: int, reference_rate: float, n_reference: int | None) -> tuple[float, str]:
    """One-sided p-value that the batch abstains more often than the reference, and the test's name.

    With a known reference rate (``n_reference`` None): exact binomial test of k abstentions in
    n against ``reference_rate`` (scipy.stats.binomtest, alternative "greater"). With a rate
    estimated on ``n_reference`` samples, its own uncertainty counts: Fisher's exact test,
    one-sided, on the 2x2 table (batch abstained / certified against reference abstained /
    certified, the reference count being round(rate * n_reference)). Fisher's test conditions on
    the margins and is conservative (its size never exceeds the level).
    """
    if n_reference is None:
        return float(
            stats.binomtest(int(k), int(n), float(reference_rate), alternative="greater").pvalue
        ), "binomial"
    k_ref = round(reference_rate * n_reference)
    table = [[int(k), int(n - k)], [k_ref, int(n_reference - k_ref)]]
    return float(stats.fisher_exact(table, alternative="greater").pvalue), "fisher_exact"


def score_batch(
    sample_risk: pd.DataFrame,
    *,
    policy: Policy,
    drift_tests: pd.DataFrame | None = None,
    rule_expectations: pd.DataFrame | None = None,
    reference_abstention_rate: float | None = None,
    n_reference: int | None = None,
    not_measured: Iterable[str] | None = None,
) -> dict:
    """Summarise a batch and give it a tier with the reasons.

    Parameters
    ----------
    sample_risk : DataFrame with SAMPLE_RISK_COLUMNS (``score_samples`` output).
    policy : the Policy (thresholds, high_share, abstention_p, drift alpha).
    drift_tests : DataFrame with DRIFT_TEST_COLUMNS (``drift`` already after correction), or None.
    rule_expectations : DataFrame with RULE_EXPECTATION_COLUMNS, or None.
    reference_abstention_rate : abstention rate of the reference; None falls back to the
        policy's ``scoring.reference_abstention_rate``; if both are None the test is not run.
    n_reference : number of reference samples ``reference_abstention_rate`` was measured on
        (None: the rate is taken as known). A rate from the policy counts as known and ignores
        ``n_reference``. See ``abstention_test`` for the test each case uses.
    not_measured : factors that were not measured; default ``sample_risk.attrs["not_measured"]``.

    The batch tier is the highest of these rules, each listed in ``reasons`` when it fires
    (s = policy.scoring.high_share):

    * critical: share of critical samples > s; abstention elevated and share of high+ samples
      > s; drift detected and abstention elevated; a critical batch-level rule failed.
    * high: share of high+ samples > s; abstention elevated (p < abstention_p); drift detected.
    * medium: share of medium+ samples > s; any rule expectation failed.
    * low otherwise.

    Returns a JSON-able dict: n_samples, abstention_rate, reference_abstention_rate,
    abstention_test, abstention_p_value, abstention_elevated, mean_risk, risk_quantiles
    {p50, p90, p99, max}, tier_counts {low, medium, high, critical}, high_share, drift,
    n_drift_tests, n_drift_tests_rejected, drift_rejected (test:feature names),
    rule_pass_rate, failed_expectations, tier, reasons, not_measured, notes, evidence_kinds,
    rmf_ids. Values that were not measured are None.
    """
    sr = conform(sample_risk, SAMPLE_RISK_COLUMNS, table="sample_risk")
    n = len(sr)
    if n == 0:
        raise InputError("sample_risk: empty batch")
    scoring = policy.scoring
    risk = sr["risk"].to_numpy(dtype=np.float64)
    abstained = sr["abstained"].to_numpy(dtype=bool)
    tiers = sr["tier"].to_numpy(dtype=object)
    known = {t.value for t in Tier}
    unknown = sorted(set(pd.unique(tiers)) - known)
    if unknown:
        raise InputError(f"sample_risk: column 'tier' holds unknown value(s) {unknown}")
    tier_counts = {t.value: int((tiers == t.value).sum()) for t in Tier}
    share_at_least = {t: sum(tier_counts[u.value] for u in Tier if u >= t) / n for t in Tier}

    if not_measured is None:
        not_measured = sample_risk.attrs.get("not_measured", [])
    missing = [name for name in FACTORS if name in set(not_measured)]
    notes = [f"{name}: {NOT_MEASURED_NOTES.get(name, 'not measured')}" for name in missing]
    kinds = {"certificate", "risk_tiers", "policy"}
    kinds.update(FACTOR_EVIDENCE[name] for name in FACTORS if name not in missing)

    k = int(abstained.sum())
    ref_rate = (
        reference_abstention_rate
        if reference_abstention_rate is not None
        else scoring.reference_abstention_rate
    )
    if ref_rate is not None and not 0.0 <= ref_rate <= 1.0:
        raise InputError(f"reference_abstention_rate must lie in [0, 1], got {ref_rate!r}")
    if n_reference is not None and n_reference < 1:
        raise InputError(f"n_reference must be a positive count, got {n_reference!r}")
    if ref_rate is None:
        p_value, test_name, elevated = None, None, False
        missing.append("abstention_test")
        notes.append(
            "abstention_test: no reference abstention rate (policy scoring.reference_abstention_rate or "
            "measured on the reference): batch abstention was not tested"
        )
    else:
        n_ref = None if reference_abstention_rate is None else n_reference
        p_value, test_name = abstention_test(k, n, float(ref_rate), n_ref)
        elevated = bool(p_value < scoring.abstention_p)
        kinds.add("abstention")

    reasons: list[tuple[Tier, str]] = []
    s = scoring.high_share
    if elevated:
        reasons.append(
            (
                Tier.HIGH,
                (
                    f"abstention elevated: {k}/{n} = {k / n:.3f} against reference {ref_rate:.3f} "
                    f"({test_name} p = {p_value:.2e} < {scoring.abstention_p})"
                ),
            )
        )
    if share_at_least[Tier.CRITICAL] > s:
        reasons.append(
            (Tier.CRITICAL, f"share of critical samples {share_at_least[Tier.CRITICAL]:.3f} > {s}")
        )
    if share_at_least[Tier.HIGH] > s:
        reasons.append(
            (Tier.HIGH, f"share of high or critical samples {share_at_least[Tier.HIGH]:.3f} > {s}")
        )
        if elevated:
            reasons.append(
                (
                    Tier.CRITICAL,
                    (
                        "abstention elevated and the share of high or critical samples above "
                        f"{s}: the signature of an attack or a shift that defeats certification"
                    ),
                )
            )
    if share_at_least[Tier.MEDIUM] > s:
        reasons.append(
            (Tier.MEDIUM, f"share of medium or higher samples {share_at_least[Tier.MEDIUM]:.3f} > {s}")
        )

    drift = None
    n_drift_tests = n_rejected = None
    drift_rejected: list[str] = []
    if drift_tests is None:
        missing.append("drift")
        notes.append("drift: no drift tests were given: distribution shift was not tested")
    else:
        dt = conform(drift_tests, DRIFT_TEST_COLUMNS, table="drift_tests")
        rejected = dt["drift"].to_numpy(dtype=bool)
        n_drift_tests, n_rejected = len(dt), int(rejected.sum())
        drift = bool(n_rejected > 0)
        drift_rejected = [
            f"{t}:{feat}" for t, feat in zip(dt["test"][rejected], dt["feature"][rejected], strict=True)
        ]
        kinds.add("drift")
        if drift:
            reasons.append(
                (
                    Tier.HIGH,
                    (
                        f"drift detected: {n_rejected} of {n_drift_tests} test(s) rejected after "
                        f"correction ({_some(drift_rejected)})"
                    ),
                )
            )
            if elevated:
                reasons.append(
                    (
                        Tier.CRITICAL,
                        (
                            "drift detected and abstention elevated: the shift reaches the "
                            "model's certified behaviour"
                        ),
                    )
                )

    rule_pass_rate = None
    failed_expectations: list[str] = []
    if rule_expectations is None:
        missing.append("rule_expectations")
        notes.append(
            "rule_expectations: no expectation results were given: batch-level rules were not checked"
        )
    else:
        re_ = conform(rule_expectations, RULE_EXPECTATION_COLUMNS, table="rule_expectations")
        if len(re_):
            success = re_["success"].to_numpy(dtype=bool)
            rule_pass_rate = float(success.mean())
            failed = re_.loc[~success]
            failed_expectations = [
                f"{e} ({sev})" for e, sev in zip(failed["expectation"], failed["severity"], strict=True)
            ]
            if len(failed):
                reasons.append(
                    (Tier.MEDIUM, f"{len(failed)} rule expectation(s) failed: {_some(failed_expectations)}")
                )
            crit = failed.loc[(failed["severity"] == Severity.CRITICAL.value) & (failed["level"] == "batch")]
            if len(crit):
                reasons.append(
                    (Tier.CRITICAL, f"critical batch-level rule(s) failed: {_some(crit['expectation'])}")
                )
        kinds.add("rules")

    tier = max((t for t, _ in reasons), default=Tier.LOW)
    if missing:
        kinds.add("unmeasured")
    kinds = {kind for kind in kinds if kind in EVIDENCE}
    reasons_sorted = sorted(reasons, key=lambda r: r[0].rank, reverse=True)
    quant = np.quantile(risk, [0.5, 0.9, 0.99])
    return {
        "n_samples": int(n),
        "abstention_rate": k / n,
        "reference_abstention_rate": None if ref_rate is None else float(ref_rate),
        "abstention_test": test_name,
        "abstention_p_value": p_value,
        "abstention_elevated": elevated,
        "mean_risk": float(risk.mean()),
        "risk_quantiles": {
            "p50": float(quant[0]),
            "p90": float(quant[1]),
            "p99": float(quant[2]),
            "max": float(risk.max()),
        },
        "tier_counts": tier_counts,
        "high_share": float(share_at_least[Tier.HIGH]),
        "drift": drift,
        "n_drift_tests": n_drift_tests,
        "n_drift_tests_rejected": n_rejected,
        "drift_rejected": drift_rejected,
        "rule_pass_rate": rule_pass_rate,
        "failed_expectations": failed_expectations,
        "tier": tier.value,
        "reasons": [f"{t.value}: {text}" for t, text in reasons_sorted],
        "not_measured": missing,
        "notes": notes,
        "evidence_kinds": sorted(kinds),
        "rmf_ids": list(evidence_ids(*sorted(kinds))),
    }


def abstention_alone(policy: Policy) -> tuple[float, Tier]:
    """Risk and tier of a sample whose only factor is abstention, under ``policy``."""
    f = np.zeros((1, len(FACTORS)))
    f[0, FACTORS.index("abstention")] = 1.0
    risk = float(combine_factors(f, weight_vector(policy.scoring))[0])
    return risk, tier_of(risk, policy.scoring)


def certified_ceiling(policy: Policy) -> float:
    """Highest risk a certified sample reaches from certificate factors alone (radius, context, instability)."""
    f = np.zeros((1, len(FACTORS)))
    for name in ("radius_rank", "context", "instability"):
        f[0, FACTORS.index(name)] = 1.0
    return float(combine_factors(f, weight_vector(policy.scoring))[0])


# --------------------------------------------------------------------------------------------
# NIST AI RMF coverage of a run


def run_evidence_kinds(
    *, sample_risk: pd.DataFrame | None, batch_summary: Mapping | None, evidence_kinds: Iterable[str] = ()
) -> tuple[str, ...]:
    """Evidence kinds a run produced: the scorer's (policy, certificates, tiers, measured
    factors and tests, the documented unmeasured list) plus ``evidence_kinds`` named by the caller
    (e.g. "run_record", "audit_chain", "limitations", "test_sets", "alert", "model_inventory")."""
    kinds = {"policy", "unmeasured"}
    kinds.update(evidence_kinds)
    if sample_risk is not None and len(sample_risk):
        kinds.update({"certificate", "risk_tiers"})
        measured = sample_risk.attrs.get("measured")
        if measured is not None:
            kinds.update(FACTOR_EVIDENCE[name] for name in measured)
    if batch_summary:
        kinds.update(batch_summary.get("evidence_kinds", ()))
    unknown = sorted(kinds - set(EVIDENCE))
    if unknown:
        raise InputError(f"unknown RMF evidence kind(s) {unknown}; known: {sorted(EVIDENCE)}")
    return tuple(sorted(kinds))


def rmf_coverage(
    *,
    policy: Policy,
    sample_risk: pd.DataFrame | None,
    batch_summary: Mapping | None,
    evidence_kinds: Iterable[str] = (),
) -> pd.DataFrame:
    """Which of the 72 NIST AI RMF 1.0 subcategories a run evidences, and which it cannot.

    Returns a DataFrame with one row per subcategory, in Core order: ``id``, ``function``,
    ``category``, ``evidenced`` (bool), ``evidence`` (the certrisk evidence behind it, "" when
    none) and ``note``: for a subcategory certrisk can evidence but this run did not, the missing
    evidence; for one outside certrisk's reach, why, and what a person must document instead
    (MEASURE 1.1 asks that what is not measured be documented: this table is that record).
    """
    kinds = run_evidence_kinds(
        sample_risk=sample_risk, batch_summary=batch_summary, evidence_kinds=evidence_kinds
    )
    by_id: dict[str, list[str]] = {}
    for kind in kinds:
        for sid in EVIDENCE[kind]:
            by_id.setdefault(sid, []).append(kind)
    possible: dict[str, list[str]] = {}
    for kind, ids in EVIDENCE.items():
        for sid in ids:
            possible.setdefault(sid, []).append(kind)
    not_measured = list((batch_summary or {}).get("not_measured", ()))
    rows = []
    for sid, sub in catalog().items():
        have = by_id.get(sid, [])
        if have:
            evidence = "; ".join(f"{kind}: {EVIDENCE_DESCRIPTIONS[kind]}" for kind in have)
            note = ""
            if sid == "MEASURE 1.1" and not_measured:
                note = f"not measured in this run: {', '.join(not_measured)}"
        elif sid in possible:
            evidence = ""
            note = (
                f"certrisk evidences this with {', '.join(possible[sid])} evidence, which this run did not "
                "produce or record"
            )
        else:
            evidence = ""
            note = unevidenced_note(sid)
        rows.append(
            {
                "id": sid,
                "function": sub.function,
                "category": sub.category,
                "evidenced": bool(have),
                "evidence": evidence,
                "note": note,
            }
        )
    return pd.DataFrame(rows, columns=["id", "function", "category", "evidenced", "evidence", "note"])


def _evidence_detail(kind: str, policy: Policy, sample_risk: pd.DataFrame | None, summary: Mapping) -> str:
    n = summary.get("n_samples", len(sample_risk) if sample_risk is not None else 0)
    if kind == "certificate":
        methods = ", ".join(f"{m.method.value} ({m.norm.value})" for m in policy.certification.methods)
        return f"{n} sample(s) certified with {methods}"
    if kind == "abstention":
        rate = summary.get("abstention_rate")
        ref = summary.get("reference_abstention_rate")
        if rate is None:
            return EVIDENCE_DESCRIPTIONS[kind]
        if ref is None:
            return f"abstention rate {rate:.4f}; no reference rate, not tested"
        return (
            f"abstention rate {rate:.4f} against reference {ref:.4f} ({summary.get('abstention_test')} test, "
            f"p = {summary.get('abstention_p_value'):.3g}, elevated: {summary.get('abstention_elevated')})"
        )
    if kind == "drift" and summary.get("n_drift_tests") is not None:
        return f"{summary['n_drift_tests_rejected']} of {summary['n_drift_tests']} drift test(s) rejected after correction"
    if kind == "rules" and summary.get("rule_pass_rate") is not None:
        return f"rule expectation pass rate {summary['rule_pass_rate']:.3f}"
    if kind == "risk_tiers" and summary.get("tier_counts"):
        counts = ", ".join(f"{t} {c}" for t, c in summary["tier_counts"].items())
        return f"batch tier {summary.get('tier')}; sample tiers: {counts}"
    if kind == "policy":
        return f"policy of model {policy.model.name}: weights, thresholds, alert tier {policy.alert_tier.value}, risk tolerance stated"
    if kind == "unmeasured":
        missing = summary.get("not_measured") or []
        return (
            f"not measured in this run: {', '.join(missing)}"
            if missing
            else "every factor and test was measured"
        )
    return EVIDENCE_DESCRIPTIONS[kind]


def run_rmf_evidence(
    *,
    policy: Policy,
    sample_risk: pd.DataFrame | None,
    batch_summary: Mapping | None,
    evidence_kinds: Iterable[str] = (),
) -> list[tuple[str, str, str]]:
    """Rows for the governance store's rmf_evidence table: (subcategory_id, evidence_kind, detail).

    One row per evidence kind of the run (``run_evidence_kinds``) and subcategory it supports,
    in Core order. Details are aggregates only (counts, rates, tiers): no radius or confidence
    bound (DESIGN.md, Principle 4).
    """
    kinds = run_evidence_kinds(
        sample_risk=sample_risk, batch_summary=batch_summary, evidence_kinds=evidence_kinds
    )
    summary = dict(batch_summary or {})
    order = {sid: i for i, sid in enumerate(catalog())}
    rows = [
        (sid, kind, _evidence_detail(kind, policy, sample_risk, summary))
        for kind in kinds
        for sid in EVIDENCE[kind]
    ]
    return sorted(rows, key=lambda r: (order[r[0]], r[1]))


__all__ = [
    "NOT_MEASURED_NOTES",
    "SEVERITY_FACTOR",
    "abstention_alone",
    "abstention_test",
    "assign_tiers",
    "certified_ceiling",
    "combine_factors",
    "factor_contributions",
    "limitations",
    "rmf_coverage",
    "run_evidence_kinds",
    "run_rmf_evidence",
    "sample_evidence_kinds",
    "score_batch",
    "score_samples",
    "tier_of",
    "weight_vector",
]
