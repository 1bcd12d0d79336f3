"""The per-factor facts: one entry per factor, and every other statement of them derived from it."""

from __future__ import annotations

from certrisk.schemas import columns, policy, rmf
from certrisk.schemas.enums import Severity, Tier
from certrisk.schemas.factors import (
    DEFAULT_WEIGHTS,
    FACTOR_EVIDENCE,
    FACTOR_SPECS,
    FACTORS,
    NOT_MEASURED_NOTES,
    SEVERITY_FACTOR,
    SEVERITY_TIER_FLOOR,
    SIGNAL_FACTORS,
)


def test_factor_entries_are_complete_and_unique():
    assert FACTORS == (
        "abstention",
        "radius_rank",
        "context",
        "rules",
        "novelty",
        "instability",
        "method_disagreement",
        "neighbours",
        "feature_neighbours",
    )
    assert len(set(FACTORS)) == len(FACTORS)
    for spec in FACTOR_SPECS:
        assert 0.0 <= spec.weight <= 1.0, spec.name
        assert spec.evidence in rmf.EVIDENCE, spec.name
        assert len(spec.definition) > 40, spec.name
        for word in ("safe", "secure", "not attacked"):
            assert word not in spec.definition.lower(), spec.name


def test_other_statements_derive_from_the_entries():
    assert columns.FACTORS is FACTORS
    assert [c for c in columns.SAMPLE_RISK_COLUMNS if c.startswith("factor_")] == [
        f"factor_{f}" for f in FACTORS
    ]
    assert policy.DEFAULT_WEIGHTS == dict(DEFAULT_WEIGHTS) == {f.name: f.weight for f in FACTOR_SPECS}
    assert policy.ScoringSpec().weights == policy.DEFAULT_WEIGHTS
    assert rmf.FACTOR_EVIDENCE is FACTOR_EVIDENCE
    assert dict(FACTOR_EVIDENCE) == {f.name: f.evidence for f in FACTOR_SPECS}
    # factors computed from the certificates and predictions are always measured: no note
    assert set(NOT_MEASURED_NOTES) == set(FACTORS) - {"abstention", "instability", "method_disagreement"}


def test_signal_factors_and_severity_floors():
    assert SIGNAL_FACTORS == ("neighbours", "feature_neighbours") and set(SIGNAL_FACTORS) <= set(FACTORS)
    assert {f.name: f.evidence for f in FACTOR_SPECS if f.name in SIGNAL_FACTORS} == {
        "neighbours": "reference_agreement",
        "feature_neighbours": "reference_agreement",
    }
    assert set(rmf.evidence_ids("reference_agreement")) == {"MEASURE 2.7", "MEASURE 2.6"}
    # neighbours weighs like abstention: disagreement beyond every held-out sample alone reaches high
    assert DEFAULT_WEIGHTS["neighbours"] == DEFAULT_WEIGHTS["abstention"]
    # severities are tier floors: critical makes a sample critical, warning at least medium
    assert dict(SEVERITY_TIER_FLOOR) == {
        "none": Tier.LOW,
        "info": Tier.LOW,
        "warning": Tier.MEDIUM,
        "critical": Tier.CRITICAL,
    }
    assert list(SEVERITY_TIER_FLOOR) == list(SEVERITY_FACTOR)


def test_severity_factor_rises_with_severity():
    values = [SEVERITY_FACTOR[s.value] for s in Severity]
    assert list(SEVERITY_FACTOR) == [s.value for s in Severity]
    assert values[0] == 0.0 and values[-1] == 1.0
    assert values == sorted(values) and len(set(values)) == len(values)
