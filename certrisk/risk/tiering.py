"""Tiers: of one sample from its risk, and of a batch from a table of named rules.

A sample's tier compares its risk with the tier thresholds (``assign_tiers``): the calibrated
ones of a ``certrisk.risk.calibration.TierCalibration`` (split conformal on the reference's tier
role, ``risk > threshold``) when one is given, else the policy's fixed ones (``risk >=
threshold``), and is raised to its rule-severity floor. A batch's
tier is the highest tier among the rules of ``BATCH_RULES`` that fire on the batch's facts
(``certrisk.risk.batch_facts``: model health, tier shares, the abstention test against the
reference, drift tests, rule expectations); each rule that fires gives a reason. A broken model
(non-finite logits, a constant or chance-level classifier on the labelled reference) makes the
batch critical before anything else is read (DESIGN.md, Principle 7). ``score_batch`` gathers the facts,
evaluates the table in order and returns the batch summary.

No rule, reason or summary here states that a batch was not attacked: a certificate bounds the
distance to a class change, not to an adversarial input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from certrisk.risk.batch_facts import (
    BATCH_TESTS,
    AbstentionFinding,
    BatchFacts,
    DriftFinding,
    HealthFinding,
    RuleFinding,
    gather_batch_facts,
)
from certrisk.risk.calibration import TIER_TOLERANCE, TierCalibration, fixed_cuts, tier_ranks
from certrisk.risk.evidence import batch_evidence_kinds
from certrisk.schemas.columns import FACTORS, NONFINITE_LOGITS_ATTR, SAMPLE_RISK_COLUMNS, conform
from certrisk.schemas.enums import Tier
from certrisk.schemas.errors import InputError
from certrisk.schemas.factors import NOT_MEASURED_NOTES
from certrisk.schemas.policy import Policy, ScoringSpec
from certrisk.schemas.rmf import evidence_ids

_IDS_SHOWN = 5


def some_ids(ids: Iterable) -> str:
    """A few of ``ids`` for a message: the first five quoted, then how many more there are."""
    ids = list(ids)
    shown = ", ".join(repr(str(i)) for i in ids[:_IDS_SHOWN])
    more = f" and {len(ids) - _IDS_SHOWN} more" if len(ids) > _IDS_SHOWN else ""
    return f"{shown}{more}"


# --------------------------------------------------------------------------------------------
# sample tiers


_TIER_VALUES = np.array([t.value for t in Tier], dtype=object)


def assign_tiers(
    risk: np.ndarray,
    scoring: ScoringSpec,
    *,
    calibration: TierCalibration | None = None,
    floor: np.ndarray | None = None,
) -> np.ndarray:
    """Tier values (strings, object array of shape (n_samples,)) for risks of shape (n_samples,).

    The thresholds are ``calibration``'s cuts when given, else the policy's fixed thresholds
    (``risk >= threshold``, with TIER_TOLERANCE); ``floor`` (int Tier ranks of shape (n_samples,),
    e.g. ``rule_floors``) raises a sample's tier to at least its floor.
    """
    cuts = calibration.cuts if calibration is not None else fixed_cuts(scoring)
    return _TIER_VALUES[tier_ranks(risk, cuts, floor)]


def tier_of(risk: float, scoring: ScoringSpec, calibration: TierCalibration | None = None) -> Tier:
    """The tier of one risk value (no floor)."""
    return Tier(assign_tiers(np.array([risk]), scoring, calibration=calibration)[0])


# --------------------------------------------------------------------------------------------
# batch rules: each a named predicate on the facts, and the reason it gives when it fires


@dataclass(frozen=True)
class BatchRule:
    """A batch rule: when ``fires(facts)``, the batch is at least ``tier`` for ``reason(facts)``."""

    name: str
    tier: Tier
    fires: Callable[[BatchFacts], bool]
    reason: Callable[[BatchFacts], str]


def _model_unhealthy(b: BatchFacts) -> bool:
    return b.health.unhealthy


def _say_model_unhealthy(b: BatchFacts) -> str:
    h = b.health
    parts = list(h.problems)
    if h.nonfinite_ids:
        parts.append(
            f"non-finite base logits on {len(h.nonfinite_ids)} batch sample(s), which abstain: "
            f"{some_ids(h.nonfinite_ids)}"
        )
    return f"model health: {'; '.join(parts)}: no certificate of this model can be trusted"


def _abstention_elevated(b: BatchFacts) -> bool:
    return b.abstention.elevated


def _say_abstention_elevated(b: BatchFacts) -> str:
    a = b.abstention
    return (
        f"abstention elevated: {a.k}/{a.n} = {a.k / a.n:.3f} against reference {a.reference_rate:.3f} "
        f"({a.test} p = {a.p_value:.2e} < {a.level})"
    )


def _critical_share(b: BatchFacts) -> bool:
    return b.shares.at_least[Tier.CRITICAL] > b.high_share


def _say_critical_share(b: BatchFacts) -> str:
    return f"share of critical samples {b.shares.at_least[Tier.CRITICAL]:.3f} > {b.high_share}"


def _high_share(b: BatchFacts) -> bool:
    return b.shares.at_least[Tier.HIGH] > b.high_share


def _say_high_share(b: BatchFacts) -> str:
    return f"share of high or critical samples {b.shares.at_least[Tier.HIGH]:.3f} > {b.high_share}"


def _abstention_and_high_share(b: BatchFacts) -> bool:
    return _abstention_elevated(b) and _high_share(b)


def _say_abstention_and_high_share(b: BatchFacts) -> str:
    return (
        f"abstention elevated and the share of high or critical samples above {b.high_share}: "
        "the signature of an attack or a shift that defeats certification"
    )


def _medium_share(b: BatchFacts) -> bool:
    return b.shares.at_least[Tier.MEDIUM] > b.high_share


def _say_medium_share(b: BatchFacts) -> str:
    return f"share of medium or higher samples {b.shares.at_least[Tier.MEDIUM]:.3f} > {b.high_share}"


def _drift_detected(b: BatchFacts) -> bool:
    return b.drift is not None and b.drift.detected


def _say_drift_detected(b: BatchFacts) -> str:
    d = b.drift
    return (
        f"drift detected: {len(d.rejected)} of {d.n_tests} test(s) rejected after correction "
        f"({some_ids(d.rejected)})"
    )


def _drift_and_abstention(b: BatchFacts) -> bool:
    return _drift_detected(b) and _abstention_elevated(b)


def _say_drift_and_abstention(b: BatchFacts) -> str:
    return "drift detected and abstention elevated: the shift reaches the model's certified behaviour"


def _expectations_failed(b: BatchFacts) -> bool:
    return b.rules is not None and bool(b.rules.failed)


def _say_expectations_failed(b: BatchFacts) -> str:
    return f"{len(b.rules.failed)} rule expectation(s) failed: {some_ids(b.rules.failed)}"


def _critical_batch_rule_failed(b: BatchFacts) -> bool:
    return b.rules is not None and bool(b.rules.critical_batch)


def _say_critical_batch_rule_failed(b: BatchFacts) -> str:
    return f"critical batch-level rule(s) failed: {some_ids(b.rules.critical_batch)}"


#: The batch rules, evaluated in this order; ``reasons`` keeps this order within a tier.
BATCH_RULES: tuple[BatchRule, ...] = (
    BatchRule("model_health", Tier.CRITICAL, _model_unhealthy, _say_model_unhealthy),
    BatchRule("abstention_elevated", Tier.HIGH, _abstention_elevated, _say_abstention_elevated),
    BatchRule("critical_share", Tier.CRITICAL, _critical_share, _say_critical_share),
    BatchRule("high_share", Tier.HIGH, _high_share, _say_high_share),
    BatchRule(
        "abstention_and_high_share", Tier.CRITICAL, _abstention_and_high_share, _say_abstention_and_high_share
    ),
    BatchRule("medium_share", Tier.MEDIUM, _medium_share, _say_medium_share),
    BatchRule("drift", Tier.HIGH, _drift_detected, _say_drift_detected),
    BatchRule("drift_and_abstention", Tier.CRITICAL, _drift_and_abstention, _say_drift_and_abstention),
    BatchRule("expectations_failed", Tier.MEDIUM, _expectations_failed, _say_expectations_failed),
    BatchRule(
        "critical_batch_rule", Tier.CRITICAL, _critical_batch_rule_failed, _say_critical_batch_rule_failed
    ),
)


def batch_reasons(facts: BatchFacts) -> list[tuple[Tier, str]]:
    """(tier, reason) of every rule of BATCH_RULES that fires on ``facts``, in table order."""
    return [(rule.tier, rule.reason(facts)) for rule in BATCH_RULES if rule.fires(facts)]


# --------------------------------------------------------------------------------------------
# batch summary


def _abstention_fields(a: AbstentionFinding) -> dict:
    return {
        "n_samples": int(a.n),
        "abstention_rate": a.k / a.n,
        "reference_abstention_rate": a.reference_rate,
        "abstention_test": a.test,
        "abstention_p_value": a.p_value,
        "abstention_elevated": a.elevated,
    }


def _health_fields(h: HealthFinding) -> dict:
    return {
        "model_health": h.record,
        "model_healthy": None if not h.checked else not h.unhealthy,
        "n_nonfinite_logits": len(h.nonfinite_ids),
        "nonfinite_logits": h.nonfinite_ids,
    }


def _drift_and_rule_fields(d: DriftFinding | None, r: RuleFinding | None) -> dict:
    return {
        "drift": None if d is None else d.detected,
        "n_drift_tests": None if d is None else d.n_tests,
        "n_drift_tests_rejected": None if d is None else len(d.rejected),
        "drift_rejected": [] if d is None else d.rejected,
        "rule_pass_rate": None if r is None else r.pass_rate,
        "failed_expectations": [] if r is None else r.failed,
    }


#: Name of the tier calibration in the summary's ``not_measured`` list when the policy asks for
#: calibrated tiers and none was given.
TIER_CALIBRATION = "tier_calibration"
_UNCALIBRATED = (
    "the policy asks for calibrated tiers (scoring.calibration) but no calibration was given (no "
    "context step, or a reference without a tier role): the fixed thresholds applied, with no "
    "false-alarm guarantee"
)


def _thresholds(policy: Policy, calibration: TierCalibration | None) -> dict:
    """The cuts in force, JSON-able: {tier: {"value", "strict", "source"}}."""
    cuts = calibration.cuts if calibration is not None else fixed_cuts(policy.scoring)
    return {t.value: {"value": c.value, "strict": c.strict, "source": c.source} for t, c in cuts.items()}


def _summary(
    sr: pd.DataFrame,
    facts: BatchFacts,
    reasons: list[tuple[Tier, str]],
    unmeasured: list[str],
    calibration: TierCalibration | None,
    policy: Policy,
) -> dict:
    ran = facts.tests_run
    uncalibrated = calibration is None and policy.scoring.calibration is not None
    missing = unmeasured + [t.name for t in BATCH_TESTS if not ran[t.name]]
    notes = [f"{name}: {NOT_MEASURED_NOTES.get(name, 'not measured')}" for name in unmeasured]
    notes += [f"{t.name}: {t.not_measured}" for t in BATCH_TESTS if not ran[t.name]]
    if uncalibrated:
        missing.append(TIER_CALIBRATION)
        notes.append(f"{TIER_CALIBRATION}: {_UNCALIBRATED}")
    elif calibration is not None and not (calibration.feasible and calibration.medium_feasible):
        notes.append(f"{TIER_CALIBRATION}: {calibration.guarantee}")
    kinds = batch_evidence_kinds(
        measured_factors=[name for name in FACTORS if name not in unmeasured],
        test_kinds=[t.evidence for t in BATCH_TESTS if ran[t.name]]
        + (["tier_calibration"] if calibration is not None else []),
        unmeasured=bool(missing),
    )
    risk = sr["risk"].to_numpy(dtype=np.float64)
    quant = np.quantile(risk, [0.5, 0.9, 0.99])
    ranked = sorted(reasons, key=lambda r: r[0].rank, reverse=True)
    return {
        **_abstention_fields(facts.abstention),
        **_health_fields(facts.health),
        "mean_risk": float(risk.mean()),
        "risk_quantiles": {
            "p50": float(quant[0]),
            "p90": float(quant[1]),
            "p99": float(quant[2]),
            "max": float(risk.max()),
        },
        "tier_counts": facts.shares.counts,
        "high_share": float(facts.shares.at_least[Tier.HIGH]),
        **_drift_and_rule_fields(facts.drift, facts.rules),
        "tier": max((t for t, _ in reasons), default=Tier.LOW).value,
        "reasons": [f"{t.value}: {text}" for t, text in ranked],
        "thresholds": _thresholds(policy, calibration),
        "calibration": None if calibration is None else calibration.to_dict(),
        "not_measured": missing,
        "notes": notes,
        "evidence_kinds": list(kinds),
        "rmf_ids": list(evidence_ids(*kinds)),
    }


def score_batch(
    sample_risk: pd.DataFrame,
    *,
    policy: Policy,
    drift_tests: pd.DataFrame | None = None,
    rule_expectations: pd.DataFrame | None = None,
    reference_abstention_rate: float | None = None,
    n_reference: int | None = None,
    not_measured: Iterable[str] | None = None,
    model_health: dict | None = None,
    calibration: TierCalibration | None = None,
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
        ``n_reference``. See ``batch_facts.abstention_test`` for the test each case uses.
    not_measured : factors that were not measured; default ``sample_risk.attrs["not_measured"]``.
    model_health : the run's model health record (``certrisk.risk.health.ModelHealth.to_dict()``:
        figures on the labelled reference and ``problems``), or None (health not checked: listed
        as not measured). Samples whose base logits were not finite are read from
        ``sample_risk.attrs["nonfinite_logits"]`` (``score_samples`` sets it).
    calibration : the tier calibration the samples were tiered with (``score_samples``'s), or
        None: the fixed thresholds applied (listed as not measured, ``tier_calibration``, when
        the policy asks for calibration).

    The batch tier is the highest tier of the rules of BATCH_RULES that fire, each listed in
    ``reasons`` (highest tier first, table order within a tier; s = policy.scoring.high_share):

    * critical: the model is unhealthy (a problem in ``model_health``, or non-finite base logits
      on any batch sample); share of critical samples > s; abstention elevated and share of high+ samples
      > s; drift detected and abstention elevated; a critical batch-level rule failed.
    * high: share of high+ samples > s; abstention elevated (p < abstention_p); drift detected.
    * medium: share of medium+ samples > s; any rule expectation failed.
    * low otherwise.

    Returns a JSON-able dict: n_samples, abstention_rate, reference_abstention_rate,
    abstention_test, abstention_p_value, abstention_elevated, model_health (the record as given),
    model_healthy, n_nonfinite_logits, nonfinite_logits (sample ids), mean_risk, risk_quantiles
    {p50, p90, p99, max}, tier_counts {low, medium, high, critical}, high_share, drift,
    n_drift_tests, n_drift_tests_rejected, drift_rejected (test:feature names),
    rule_pass_rate, failed_expectations, tier, reasons, thresholds (the cuts in force per tier:
    value, strict, source), calibration (``TierCalibration.to_dict()``: n_calibration, rates,
    cuts, conformal thresholds, feasible, shares on the tier role, guarantee; None when not
    calibrated), not_measured, notes, evidence_kinds, rmf_ids. Values that were not measured are
    None.
    """
    sr = conform(sample_risk, SAMPLE_RISK_COLUMNS, table="sample_risk")
    if len(sr) == 0:
        raise InputError("sample_risk: empty batch")
    if not_measured is None:
        not_measured = sample_risk.attrs.get("not_measured", [])
    unmeasured = [name for name in FACTORS if name in set(not_measured)]
    facts = gather_batch_facts(
        sr,
        policy.scoring,
        drift_tests=drift_tests,
        rule_expectations=rule_expectations,
        reference_abstention_rate=reference_abstention_rate,
        n_reference=n_reference,
        model_health=model_health,
        nonfinite_ids=sample_risk.attrs.get(NONFINITE_LOGITS_ATTR, []),
    )
    return _summary(sr, facts, batch_reasons(facts), unmeasured, calibration, policy)


__all__ = [
    "BATCH_RULES",
    "TIER_CALIBRATION",
    "TIER_TOLERANCE",
    "BatchRule",
    "assign_tiers",
    "batch_reasons",
    "score_batch",
    "some_ids",
    "tier_of",
]
