"""``BatchFacts``: the figures of a run's batch summary, as a report states them.

The batch summary (``certrisk.risk.score.score_batch``, recorded with each run) holds the figures
a report needs: abstention against the reference, drift and rule counts, tier counts, risk
quantiles. ``v_run_summary`` exposes them as columns (migrations 0001 to 0003), so every edition,
the compliance edition included, reads the same numbers instead of parsing reasons or evidence
text. None of them is a radius or a confidence bound.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

from certrisk.schemas.enums import Tier
from certrisk.schemas.review import DECISION_WORDS

#: v_run_summary columns ``BatchFacts`` is read from (all compliance-visible).
FACT_COLUMNS = (
    "n_samples",
    "abstention_rate",
    "mean_risk",
    "tier",
    "drift",
    "tier_counts",
    "risk_quantiles",
    "high_share",
    "reference_abstention_rate",
    "abstention_test",
    "abstention_p_value",
    "abstention_elevated",
    "n_drift_tests",
    "n_drift_tests_rejected",
    "rule_pass_rate",
    "not_measured",
)


@dataclass(frozen=True)
class BatchFacts:
    """A run's batch figures. None (or an empty dict): the run's summary does not record it
    (a test that was not run, or a run recorded by an older certrisk).

    Attributes
    ----------
    n_samples : samples in the batch.
    abstention_rate, mean_risk : share of abstained samples (0..1), mean sample risk (0..1).
    tier : the batch tier ("low", "medium", "high", "critical").
    drift : whether any drift test rejected after correction.
    tier_counts : samples per tier, {tier: count}, as recorded.
    risk_quantiles : sample-risk quantiles, {name: value} (e.g. "p50", "p90", "p99", "max"), as
        recorded.
    high_share : share of samples at tier high or above (0..1).
    reference_abstention_rate : abstention rate of the reference set (0..1).
    abstention_test : name of the one-sided test of abstention against the reference.
    abstention_p_value : its p-value.
    abstention_elevated : whether it rejected (the batch abstains more than the reference).
    n_drift_tests, n_drift_tests_rejected : drift tests run, and rejected after correction.
    rule_pass_rate : share of rule expectations that passed (0..1).
    not_measured : names of the factors and tests the run did not measure.
    """

    n_samples: int
    abstention_rate: float
    mean_risk: float
    tier: str
    drift: bool
    tier_counts: dict[str, int]
    risk_quantiles: dict[str, float]
    high_share: float | None = None
    reference_abstention_rate: float | None = None
    abstention_test: str | None = None
    abstention_p_value: float | None = None
    abstention_elevated: bool | None = None
    n_drift_tests: int | None = None
    n_drift_tests_rejected: int | None = None
    rule_pass_rate: float | None = None
    not_measured: tuple[str, ...] | None = None

    @classmethod
    def from_row(cls, row: Mapping) -> BatchFacts:
        """The facts of one ``v_run_summary`` row (a mapping with every ``FACT_COLUMNS`` key;
        JSON columns as text or parsed)."""
        return cls(
            n_samples=int(row["n_samples"]),
            abstention_rate=float(row["abstention_rate"]),
            mean_risk=float(row["mean_risk"]),
            tier=str(row["tier"]),
            drift=bool(row["drift"]),
            tier_counts=_object(row["tier_counts"]),
            risk_quantiles=_object(row["risk_quantiles"]),
            high_share=_number(row["high_share"]),
            reference_abstention_rate=_number(row["reference_abstention_rate"]),
            abstention_test=row["abstention_test"],
            abstention_p_value=_number(row["abstention_p_value"]),
            abstention_elevated=None
            if row["abstention_elevated"] is None
            else bool(row["abstention_elevated"]),
            n_drift_tests=_count(row["n_drift_tests"]),
            n_drift_tests_rejected=_count(row["n_drift_tests_rejected"]),
            rule_pass_rate=_number(row["rule_pass_rate"]),
            not_measured=_names(row["not_measured"]),
        )


def _object(value) -> dict:
    """A JSON object column (text on SQLite, parsed on PostgreSQL) as a dict; {} when absent."""
    if isinstance(value, str):
        value = json.loads(value)
    return dict(value) if isinstance(value, dict) else {}


def _names(value) -> tuple[str, ...] | None:
    """A JSON array column of names as a tuple of str; None when absent."""
    if isinstance(value, str):
        value = json.loads(value)
    return None if value is None else tuple(str(v) for v in value)


def _number(value) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _count(value) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def revision_trail(run: Mapping) -> str:
    """A run's supersede trail in words ("" for a first revision): "revised: revision 2 replaces
    tier high; by alice: relabelled batch". ``run`` is a v_run_summary row (``revision``,
    ``previous_tier``, ``recorded_by``, ``revision_reason``)."""
    revision = int(run.get("revision") or 1)
    if revision <= 1:
        return ""
    previous = run.get("previous_tier") or "unknown"
    who = run.get("recorded_by") or "unknown (recorded before certrisk kept it)"
    why = run.get("revision_reason") or "no reason recorded"
    return f"revised: revision {revision} replaces tier {previous}; by {who}: {why}"


#: v_run_summary columns ``review_state`` reads (migration 0007).
REVIEW_COLUMNS = (
    "review_at_tier",
    "review_decision",
    "review_reviewer",
    "review_source",
    "review_decided_at",
)


def _tier_or_none(value) -> Tier | None:
    try:
        return Tier(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _word(value) -> str | None:
    """A text column's value; None for NULL (which a frame may hold as NaN)."""
    return value if isinstance(value, str) and value else None


def review_state(run: Mapping) -> str:
    """A run revision's review state in words: its latest decision ("approved by alice",
    "rejected by system (timeout)", "escalated by bob"); "pending" where the run's summary
    records a ``review_at_tier`` (the policy asked for review from that tier) that its tier
    reaches and nobody has decided yet; "" where no review was asked for. ``run`` is a
    v_run_summary row (``tier`` and ``REVIEW_COLUMNS``)."""
    decision = _word(run.get("review_decision"))
    if decision:
        who = _word(run.get("review_reviewer")) or "unknown"
        timeout = " (timeout)" if run.get("review_source") == "timeout" else ""
        return f"{DECISION_WORDS.get(decision, decision)} by {who}{timeout}"
    at, tier = _tier_or_none(run.get("review_at_tier")), _tier_or_none(run.get("tier"))
    return "pending" if at is not None and tier is not None and tier >= at else ""
