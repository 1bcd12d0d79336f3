"""NIST AI RMF evidence of scoring: which evidence kinds a sample, a batch and a run produce, the
rows the governance store records for a run, and a run's coverage of the 72 subcategories.

Evidence kinds and the subcategories they support live in ``certrisk.schemas.rmf`` (EVIDENCE,
FACTOR_EVIDENCE); coverage is computed by ``certrisk.schemas.rmf.coverage``, the one place that
turns evidence rows into per-subcategory coverage. Details are aggregates only (counts, rates,
tiers): no radius or confidence bound (DESIGN.md, Principle 4).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from certrisk.schemas.errors import InputError
from certrisk.schemas.factors import FACTOR_EVIDENCE
from certrisk.schemas.policy import Policy
from certrisk.schemas.rmf import EVIDENCE, EVIDENCE_DESCRIPTIONS, catalog, coverage, evidence_ids

#: Evidence kinds every scored batch gives: its certificates, its risk tiers and the policy.
BATCH_KINDS = ("certificate", "risk_tiers", "policy")

#: Columns of ``rmf_coverage``'s frame.
COVERAGE_COLUMNS = ("id", "function", "category", "evidenced", "evidence", "note")


# --------------------------------------------------------------------------------------------
# evidence kinds of a sample, a batch, a run


def sample_evidence_kinds(abstained: bool, measured: Iterable[str]) -> tuple[str, ...]:
    """Evidence kinds behind one sample's record: its certificate, measured factors, its tier."""
    kinds = {"certificate", "risk_tiers"}
    kinds.update(FACTOR_EVIDENCE[name] for name in measured if name != "abstention")
    if abstained:
        kinds.add(FACTOR_EVIDENCE["abstention"])
    return tuple(sorted(kinds))


def sample_rmf_ids(abstained: np.ndarray, measured: Iterable[str]) -> np.ndarray:
    """RMF subcategory ids per sample: object array of shape (n_samples,) holding lists, one list
    object shared by every certified sample and one by every abstained sample.

    ``abstained`` is a bool array of shape (n_samples,); ``measured`` names the measured factors.
    """
    measured = list(measured)
    choices = np.empty(2, dtype=object)
    choices[0] = list(evidence_ids(*sample_evidence_kinds(False, measured)))
    choices[1] = list(evidence_ids(*sample_evidence_kinds(True, measured)))
    return choices[np.asarray(abstained, dtype=np.int64)]


def batch_evidence_kinds(
    *, measured_factors: Iterable[str], test_kinds: Iterable[str], unmeasured: bool
) -> tuple[str, ...]:
    """Evidence kinds of a batch summary, sorted: BATCH_KINDS, the kinds of the measured factors
    and of the batch tests that ran, and "unmeasured" when anything was not measured."""
    kinds = set(BATCH_KINDS)
    kinds.update(FACTOR_EVIDENCE[name] for name in measured_factors)
    kinds.update(test_kinds)
    if unmeasured:
        kinds.add("unmeasured")
    return tuple(sorted(kinds))


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


# --------------------------------------------------------------------------------------------
# NIST AI RMF coverage of a run


def rmf_coverage(
    *,
    policy: Policy,
    sample_risk: pd.DataFrame | None,
    batch_summary: Mapping | None,
    evidence_kinds: Iterable[str] = (),
) -> pd.DataFrame:
    """Which of the 72 NIST AI RMF 1.0 subcategories a run evidences, and which it cannot.

    Returns a DataFrame with one row per subcategory, in Core order: ``id``, ``function``,
    ``category``, ``evidenced`` (bool), ``evidence`` (the certrisk evidence behind it, "kind:
    description" joined by "; ", "" when none) and ``note``: for a subcategory certrisk can
    evidence but this run did not, the missing evidence; for one outside certrisk's reach, why,
    and what a person must document instead (MEASURE 1.1 asks that what is not measured be
    documented: this table is that record, and MEASURE 1.1's note lists what was not measured).
    Computed by ``certrisk.schemas.rmf.coverage`` over the run's evidence kinds.
    """
    kinds = run_evidence_kinds(
        sample_risk=sample_risk, batch_summary=batch_summary, evidence_kinds=evidence_kinds
    )
    rows = [(sid, kind, EVIDENCE_DESCRIPTIONS[kind]) for kind in kinds for sid in EVIDENCE[kind]]
    not_measured = list((batch_summary or {}).get("not_measured", ()))
    table = []
    for cov in coverage(rows):
        sid = cov.subcategory.id
        note = cov.note
        if cov.evidenced and sid == "MEASURE 1.1" and not_measured:
            note = f"not measured in this run: {', '.join(not_measured)}"
        sub = cov.subcategory
        table.append((sid, sub.function, sub.category, cov.evidenced, "; ".join(cov.evidence), note))
    return pd.DataFrame(table, columns=list(COVERAGE_COLUMNS))


# --------------------------------------------------------------------------------------------
# rows of the rmf_evidence table


def _certificate_detail(policy: Policy, n: int, summary: Mapping) -> str:
    methods = ", ".join(f"{m.method.value} ({m.norm.value})" for m in policy.certification.methods)
    return f"{n} sample(s) certified with {methods}"


def _abstention_detail(policy: Policy, n: int, summary: Mapping) -> str | None:
    rate = summary.get("abstention_rate")
    ref = summary.get("reference_abstention_rate")
    if rate is None:
        return None
    if ref is None:
        return f"abstention rate {rate:.4f}; no reference rate, not tested"
    return (
        f"abstention rate {rate:.4f} against reference {ref:.4f} ({summary.get('abstention_test')} test, "
        f"p = {summary.get('abstention_p_value'):.3g}, elevated: {summary.get('abstention_elevated')})"
    )


def _drift_detail(policy: Policy, n: int, summary: Mapping) -> str | None:
    if summary.get("n_drift_tests") is None:
        return None
    return f"{summary['n_drift_tests_rejected']} of {summary['n_drift_tests']} drift test(s) rejected after correction"


def _rules_detail(policy: Policy, n: int, summary: Mapping) -> str | None:
    if summary.get("rule_pass_rate") is None:
        return None
    return f"rule expectation pass rate {summary['rule_pass_rate']:.3f}"


def _risk_tiers_detail(policy: Policy, n: int, summary: Mapping) -> str | None:
    if not summary.get("tier_counts"):
        return None
    counts = ", ".join(f"{t} {c}" for t, c in summary["tier_counts"].items())
    return f"batch tier {summary.get('tier')}; sample tiers: {counts}"


def _policy_detail(policy: Policy, n: int, summary: Mapping) -> str:
    return (
        f"policy of model {policy.model.name}: weights, thresholds, alert tier {policy.alert_tier.value}, "
        "risk tolerance stated"
    )


def _unmeasured_detail(policy: Policy, n: int, summary: Mapping) -> str:
    missing = summary.get("not_measured") or []
    return (
        f"not measured in this run: {', '.join(missing)}" if missing else "every factor and test was measured"
    )


#: Run-specific detail per evidence kind; None (or a kind not listed) falls back to the kind's
#: description in EVIDENCE_DESCRIPTIONS.
_DETAILS: Mapping[str, Callable[[Policy, int, Mapping], str | None]] = {
    "certificate": _certificate_detail,
    "abstention": _abstention_detail,
    "drift": _drift_detail,
    "rules": _rules_detail,
    "risk_tiers": _risk_tiers_detail,
    "policy": _policy_detail,
    "unmeasured": _unmeasured_detail,
}


def _evidence_detail(kind: str, policy: Policy, sample_risk: pd.DataFrame | None, summary: Mapping) -> str:
    n = summary.get("n_samples", len(sample_risk) if sample_risk is not None else 0)
    detail = _DETAILS[kind](policy, n, summary) if kind in _DETAILS else None
    return EVIDENCE_DESCRIPTIONS[kind] if detail is None else detail


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
    "BATCH_KINDS",
    "COVERAGE_COLUMNS",
    "batch_evidence_kinds",
    "rmf_coverage",
    "run_evidence_kinds",
    "run_rmf_evidence",
    "sample_evidence_kinds",
    "sample_rmf_ids",
]
