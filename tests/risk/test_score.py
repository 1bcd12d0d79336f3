"""Tests of the composite risk scorer: hand-built cases with known tiers, input checks, the
batch rule, and properties (hypothesis) of the combination rule."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certrisk.risk.batch_facts import (
    AbstentionFinding,
    BatchFacts,
    DriftFinding,
    RuleFinding,
    TierShares,
    abstention_test,
)
from certrisk.risk.calibration import calibrate_tiers
from certrisk.risk.health import assess_model
from certrisk.risk.score import (
    abstention_alone,
    certified_ceiling,
    combine_factors,
    factor_contributions,
    score_samples,
    weight_vector,
)
from certrisk.risk.tiering import BATCH_RULES, assign_tiers, batch_reasons, score_batch
from certrisk.schemas.columns import (
    ABSTAIN,
    CERTIFICATE_COLUMNS,
    CONTEXT_COLUMNS,
    DRIFT_TEST_COLUMNS,
    FACTORS,
    NOVELTY_COLUMNS,
    PREDICTION_COLUMNS,
    RULE_EXPECTATION_COLUMNS,
    RULE_SAMPLE_COLUMNS,
    SAMPLE_RISK_COLUMNS,
    SIGNAL_COLUMNS,
)
from certrisk.schemas.enums import Tier
from certrisk.schemas.errors import InputError
from certrisk.schemas.policy import ScoringSpec, parse_policy
from certrisk.schemas.rmf import catalog

FORBIDDEN = ("safe", "secure", "not attacked", "clean")

POLICY_DATA = {
    "model": {
        "name": "toy",
        "path": "toy.safetensors",
        "factory": "toy:build",
        "input_shape": [1, 8, 8],
        "classes": ["a", "b", "c"],
    },
    "data": {"reference": "ref.parquet"},
    "certification": {"methods": [{"method": "smoothing", "sigma": 0.25, "n": 2000, "alpha": 0.001}]},
    "risk_tolerance": "Abstained samples go to human review.",
}


def make_policy(**scoring):
    data = dict(POLICY_DATA)
    if scoring:
        data["scoring"] = scoring
    return parse_policy(data, source="test-policy.yaml")


POLICY = make_policy()

_LABELS = np.arange(30) % 3
#: Health records of a model that predicts the labels (healthy) and of a constant classifier.
HEALTHY = assess_model(np.eye(3)[_LABELS] * 5.0, _LABELS, ("a", "b", "c")).to_dict()
CONSTANT = assess_model(np.eye(3)[np.zeros(30, dtype=int)] * 5.0, _LABELS, ("a", "b", "c")).to_dict()


def certs(rows):
    """rows: (sample_id, prediction, abstained[, method, sigma])."""
    out = []
    for r in rows:
        sid, pred, abst = r[:3]
        method = r[3] if len(r) > 3 else "smoothing"
        sigma = r[4] if len(r) > 4 else (0.25 if method == "smoothing" else np.nan)
        out.append(
            {
                "sample_id": sid,
                "method": method,
                "norm": "l2",
                "prediction": pred,
                "abstained": abst,
                "radius": 0.0 if abst else 0.5,
                "radius_l1": 0.0 if abst else 0.5,
                "radius_l2": 0.0 if abst else 0.5,
                "radius_linf": 0.0 if abst else 0.0625,
                "p_lower": 0.4 if abst else 0.97,
                "n_forward": 2064,
                "alpha": 0.001,
                "sigma": sigma,
                "eps": np.nan,
                "seed": 1,
                "seconds": 0.01,
                "peak_bytes": 1,
                "device": "cpu",
                "dtype": "float32",
            }
        )
    return pd.DataFrame(out, columns=list(CERTIFICATE_COLUMNS))


def preds(rows):
    return pd.DataFrame(
        [{"sample_id": s, "base_prediction": p, "base_confidence": 0.9} for s, p in rows],
        columns=list(PREDICTION_COLUMNS),
    )


def context(rows, method="smoothing"):
    """rows: (sample_id, radius_over_dist, radius_percentile)."""
    return pd.DataFrame(
        [
            {
                "sample_id": s,
                "method": method,
                "dist_other_class": 1.0,
                "dist_same_class": 0.5,
                "share_ref_in_ball": 0.0,
                "radius_over_dist": ratio,
                "radius_percentile": pct,
            }
            for s, ratio, pct in rows
        ],
        columns=list(CONTEXT_COLUMNS),
    )


def rules(rows):
    return pd.DataFrame(
        [
            {"sample_id": s, "n_failed": int(sev != "none"), "max_severity": sev, "failed": []}
            for s, sev in rows
        ],
        columns=list(RULE_SAMPLE_COLUMNS),
    )


def novelty(rows):
    return pd.DataFrame(
        [
            {"sample_id": s, "knn_distance": 1.0, "novelty_percentile": p, "domain_probability": np.nan}
            for s, p in rows
        ],
        columns=list(NOVELTY_COLUMNS),
    )


def signals(rows):
    """rows: (sample_id, neighbours factor, feature_neighbours factor)."""
    out = []
    for s, fn, ff in rows:
        out.append({"sample_id": s, "signal": "neighbours", "score": fn, "p_value": 1 - fn, "factor": fn})
        out.append(
            {"sample_id": s, "signal": "feature_neighbours", "score": ff, "p_value": 1 - ff, "factor": ff}
        )
    return pd.DataFrame(out, columns=list(SIGNAL_COLUMNS))


#: A calibration with feasible conformal thresholds (medium 0.1, high 0.3) on 100 samples.
CALIBRATED = calibrate_tiers(
    np.r_[np.zeros(75), np.full(20, 0.1), np.full(4, 0.3), [0.6]], np.zeros(100, dtype=int), POLICY.scoring
)


def no_forbidden_words(obj) -> None:
    text = json.dumps(obj, default=str).lower()
    for word in FORBIDDEN:
        assert word not in text, f"{word!r} in {text[:200]}"


# ---------------------------------------------------------------------------- hand-built cases


def test_hand_built_tiers_and_factors():
    ids = ["certified", "abstained", "unstable", "rule_crit", "abstained_rule_novel", "disagree"]
    c = certs(
        [
            ("certified", 1, False),
            ("abstained", ABSTAIN, True),
            ("unstable", 2, False),
            ("rule_crit", 0, False),
            ("abstained_rule_novel", ABSTAIN, True),
            ("disagree", 1, False),
            ("disagree", 2, False, "ibp", np.nan),
        ]
    )
    p = preds(
        [
            ("certified", 1),
            ("abstained", 1),
            ("unstable", 0),
            ("rule_crit", 0),
            ("abstained_rule_novel", 2),
            ("disagree", 1),
        ]
    )
    r = rules([(i, "critical" if i in ("rule_crit", "abstained_rule_novel") else "none") for i in ids])
    nv = novelty([(i, 1.0 if i == "abstained_rule_novel" else 0.0) for i in ids])
    out = score_samples(certificates=c, predictions=p, policy=POLICY, rules=r, novelty=nv)
    assert list(out.columns) == list(SAMPLE_RISK_COLUMNS)
    assert list(out["sample_id"]) == ids
    got = dict(zip(out["sample_id"], out["tier"], strict=True))
    assert got == {
        "certified": "low",  # no factor
        "abstained": "high",  # 0.6
        "unstable": "medium",  # 0.3
        "rule_crit": "critical",  # risk 0.4, but a failed critical rule is a critical floor
        "abstained_rule_novel": "critical",  # 1 - 0.4 * 0.6 * 0.8 = 0.808 < 0.85; critical rule floor
        "disagree": "high",  # methods disagree: method_disagreement, 0.6
    }
    risk = dict(zip(out["sample_id"], out["risk"], strict=True))
    assert risk["certified"] == 0.0
    assert risk["abstained"] == pytest.approx(0.6)
    assert risk["unstable"] == pytest.approx(0.3)
    assert risk["rule_crit"] == pytest.approx(0.4)
    assert risk["abstained_rule_novel"] == pytest.approx(1 - 0.4 * 0.6 * 0.8)
    assert risk["disagree"] == pytest.approx(0.6)
    row = out.set_index("sample_id")
    assert row.loc["abstained", "prediction"] == ABSTAIN == -1 and row.loc["abstained", "abstained"]
    # disagreement is its own factor, not abstention (the reference rate counts abstention only)
    assert not row.loc["disagree", "abstained"] and row.loc["disagree", "prediction"] == 1
    assert row.loc["disagree", "top_factors"] == ["method_disagreement"]
    assert row.loc["disagree", "factor_method_disagreement"] == pytest.approx(0.6)
    assert row.loc["disagree", "factor_abstention"] == 0.0
    assert not row.loc["unstable", "abstained"] and row.loc["unstable", "base_prediction"] == 0
    assert row.loc["certified", "top_factors"] == []
    assert row.loc["abstained_rule_novel", "top_factors"] == ["abstention", "rules", "novelty"]
    contrib = row.loc[:, [f"factor_{f}" for f in FACTORS]].sum(axis=1)
    np.testing.assert_allclose(contrib.to_numpy(), row["risk"].to_numpy())
    assert "MEASURE 2.7" in row.loc["abstained", "rmf_ids"]
    assert "MEASURE 2.1" in row.loc["certified", "rmf_ids"]  # rules were checked
    assert "MEASURE 2.4" in row.loc["certified", "rmf_ids"]  # novelty was measured
    assert set(out.attrs["not_measured"]) == {"radius_rank", "context", "neighbours", "feature_neighbours"}
    no_forbidden_words(out.drop(columns=["risk"]).astype(str).to_dict("list"))


def test_critical_needs_abstention_plus_strong_evidence():
    ids = ["a"]
    c = certs([("a", ABSTAIN, True)])
    p = preds([("a", 0)])
    out = score_samples(
        certificates=c,
        predictions=p,
        policy=POLICY,
        rules=rules([("a", "critical")]),
        novelty=novelty([("a", 1.0)]),
        context=context([("a", np.nan, np.nan)]),
    )
    # abstained + radius 0 + context + critical rule + maximal novelty
    expected = 1 - 0.4 * 0.85 * 0.85 * 0.6 * 0.8
    assert out.loc[0, "risk"] == pytest.approx(expected)
    assert out.loc[0, "tier"] == "critical"
    assert out.loc[0, "top_factors"][0] == "abstention"
    assert out.attrs["not_measured"] == ["neighbours", "feature_neighbours"]
    assert ids == list(out["sample_id"])


def test_context_factors():
    c = certs([("near", 0, False), ("far", 0, False), ("abst", ABSTAIN, True)])
    p = preds([("near", 0), ("far", 0), ("abst", 0)])
    ctx = context([("near", 0.1, 0.2), ("far", 0.6, 0.9), ("abst", np.nan, np.nan)])
    out = score_samples(certificates=c, predictions=p, policy=POLICY, context=ctx).set_index("sample_id")
    # near: radius_rank 0.8, context 1 - 0.2 = 0.8 -> 1 - (1 - 0.12)^2
    assert out.loc["near", "risk"] == pytest.approx(1 - (1 - 0.15 * 0.8) ** 2)
    assert out.loc["far", "risk"] == pytest.approx(0.15 * 0.1)  # context 0 beyond half way
    assert out.loc["far", "top_factors"] == ["radius_rank"]
    assert out.loc["abst", "risk"] == pytest.approx(1 - 0.4 * 0.85 * 0.85)
    assert out.loc["near", "tier"] == "low"


def test_context_of_other_methods_is_ignored():
    c = certs([("a", 0, False), ("a", 0, False, "ibp", np.nan)])
    ctx = pd.concat([context([("a", 0.6, 1.0)]), context([("a", 0.0, 0.0)], method="ibp")])
    out = score_samples(certificates=c, predictions=preds([("a", 0)]), policy=POLICY, context=ctx)
    assert out.loc[0, "risk"] == 0.0


def test_smoothing_at_another_sigma_does_not_drive():
    c = certs([("a", ABSTAIN, True, "smoothing", 0.5), ("a", 1, False)])
    out = score_samples(certificates=c, predictions=preds([("a", 1)]), policy=POLICY)
    assert not out.loc[0, "abstained"] and out.loc[0, "prediction"] == 1


def test_without_smoothing_the_first_method_drives():
    data = dict(POLICY_DATA, certification={"methods": [{"method": "ibp", "eps": 0.1}]})
    policy = parse_policy(data)
    c = certs([("a", ABSTAIN, True, "ibp", np.nan), ("b", 2, False, "ibp", np.nan)])
    out = score_samples(certificates=c, predictions=preds([("a", 0), ("b", 2)]), policy=policy)
    assert list(out["abstained"]) == [True, False]
    assert list(out["prediction"]) == [ABSTAIN, 2]


def test_output_follows_prediction_order():
    c = certs([("b", 0, False), ("a", ABSTAIN, True), ("c", 1, False)])
    p = preds([("c", 1), ("a", 1), ("b", 0)])
    out = score_samples(certificates=c, predictions=p, policy=POLICY)
    assert list(out["sample_id"]) == ["c", "a", "b"]
    assert list(out["abstained"]) == [False, True, False]


# ---------------------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"certificates": certs([("a", 0, False), ("zz", 0, False)])}, "not in the predictions: 'zz'"),
        (
            {"certificates": certs([("a", 0, False)]), "p": [("a", 0), ("b", 0)]},
            "no certificate for 1 sample",
        ),
        ({"certificates": certs([("a", 0, False), ("a", 0, False)])}, "duplicate driving certificate"),
        ({"certificates": certs([("a", 0, False, "smoothing", 0.5)])}, r"sigma=0.25"),
        ({"p": [("a", 0), ("a", 1)]}, "duplicate sample_id"),
        ({"p": []}, "empty batch"),
        ({"novelty": novelty([("a", np.nan)])}, "novelty_percentile"),
        ({"novelty": novelty([("a", 1.5)])}, "novelty_percentile"),
        ({"rules": rules([("a", "fatal")])}, "unknown value"),
        ({"rules": rules([("b", "none")])}, "'b'"),
        ({"context": context([("a", np.nan, 0.5)])}, "radius_over_dist"),
        ({"context": context([("a", 0.5, np.nan)])}, "radius_percentile"),
    ],
)
def test_bad_inputs_raise(kwargs, match):
    c = kwargs.pop("certificates", certs([("a", 0, False)]))
    p = preds(kwargs.pop("p", [("a", 0)]))
    with pytest.raises(InputError, match=match):
        score_samples(certificates=c, predictions=p, policy=POLICY, **kwargs)


def test_missing_column_named():
    c = certs([("a", 0, False)]).drop(columns=["abstained"])
    with pytest.raises(InputError, match="abstained"):
        score_samples(certificates=c, predictions=preds([("a", 0)]), policy=POLICY)


# ---------------------------------------------------------------------------- batch


def _batch(n_abst, n, *, seed=0):
    ids = [f"s{i}" for i in range(n)]
    c = certs([(s, ABSTAIN, True) if i < n_abst else (s, 0, False) for i, s in enumerate(ids)])
    return score_samples(certificates=c, predictions=preds([(s, 0) for s in ids]), policy=POLICY)


def drift_frame(rejected: bool):
    return pd.DataFrame(
        [
            {
                "test": "mmd",
                "family": "multivariate",
                "feature": "*",
                "statistic": 0.1,
                "p_value": 0.001,
                "q_value": 0.002 if rejected else 0.5,
                "effect_size": 0.1,
                "effect_name": "mmd2",
                "drift": rejected,
            }
        ],
        columns=list(DRIFT_TEST_COLUMNS),
    )


def expectations(success: bool, severity="warning", level="row"):
    return pd.DataFrame(
        [
            {
                "expectation": "range:x",
                "expectation_type": "expect_column_values_to_be_between",
                "column": "x",
                "severity": severity,
                "level": level,
                "success": success,
                "observed_value": "{}",
                "unexpected_count": 0 if success else 3,
                "rmf_ids": ["MEASURE 2.1"],
            }
        ],
        columns=list(RULE_EXPECTATION_COLUMNS),
    )


def test_batch_low_when_abstention_matches_reference():
    sr = _batch(5, 200)
    summary = score_batch(
        sr,
        policy=POLICY,
        drift_tests=drift_frame(False),
        rule_expectations=expectations(True),
        reference_abstention_rate=0.03,
        n_reference=None,
        model_health=HEALTHY,
    )
    json.dumps(summary)
    assert summary["tier"] == "low", summary["reasons"]
    assert summary["model_healthy"] is True and summary["model_health"] == HEALTHY
    assert summary["tier_counts"] == {"low": 195, "medium": 0, "high": 5, "critical": 0}
    assert summary["abstention_rate"] == pytest.approx(0.025)
    assert summary["abstention_test"] == "binomial"
    assert not summary["abstention_elevated"] and summary["drift"] is False
    assert summary["rule_pass_rate"] == 1.0
    assert summary["not_measured"] == [
        "radius_rank",
        "context",
        "rules",
        "novelty",
        "neighbours",
        "feature_neighbours",
        "tier_calibration",
    ]
    assert summary["calibration"] is None and summary["thresholds"]["high"] == {
        "value": 0.5,
        "strict": False,
        "source": "policy",
    }
    assert set(summary["risk_quantiles"]) == {"p50", "p90", "p99", "max"}
    assert set(summary["rmf_ids"]) <= set(catalog())
    assert "MEASURE 1.1" in summary["rmf_ids"]  # what was not measured is documented
    no_forbidden_words(summary)


def test_batch_elevated_abstention_is_high_and_with_high_share_critical():
    moderate = score_batch(
        _batch(20, 200),
        policy=POLICY,
        drift_tests=None,
        rule_expectations=None,
        reference_abstention_rate=0.03,
        n_reference=None,
    )
    assert moderate["abstention_elevated"] and moderate["abstention_p_value"] < 0.01
    assert moderate["tier"] == "high"
    assert moderate["reasons"][0].startswith("high: abstention elevated")
    assert "drift" in moderate["not_measured"] and moderate["drift"] is None
    heavy = score_batch(
        _batch(100, 200),
        policy=POLICY,
        drift_tests=None,
        rule_expectations=None,
        reference_abstention_rate=0.03,
        n_reference=None,
    )
    assert heavy["tier"] == "critical"
    assert heavy["high_share"] == pytest.approx(0.5)
    no_forbidden_words([moderate, heavy])


def test_batch_drift_and_rules():
    sr = _batch(0, 100)
    drifted = score_batch(
        sr,
        policy=POLICY,
        drift_tests=drift_frame(True),
        rule_expectations=None,
        reference_abstention_rate=0.03,
        n_reference=None,
    )
    assert drifted["tier"] == "high" and drifted["n_drift_tests_rejected"] == 1
    assert drifted["drift_rejected"] == ["mmd:*"]
    assert "MEASURE 2.4" in drifted["rmf_ids"]
    failed = score_batch(
        sr,
        policy=POLICY,
        drift_tests=None,
        rule_expectations=expectations(False),
        reference_abstention_rate=None,
        n_reference=None,
    )
    assert failed["tier"] == "medium" and failed["rule_pass_rate"] == 0.0
    assert "abstention_test" in failed["not_measured"] and failed["abstention_p_value"] is None
    crit = score_batch(
        sr,
        policy=POLICY,
        drift_tests=None,
        rule_expectations=expectations(False, severity="critical", level="batch"),
        reference_abstention_rate=None,
        n_reference=None,
    )
    assert crit["tier"] == "critical"
    sr_abst = _batch(30, 100)
    both = score_batch(
        sr_abst,
        policy=make_policy(high_share=0.5),
        drift_tests=drift_frame(True),
        rule_expectations=None,
        reference_abstention_rate=0.03,
        n_reference=None,
    )
    assert both["tier"] == "critical"
    assert any("drift detected and abstention elevated" in r for r in both["reasons"])


def test_batch_reasons_text_and_order():
    """Every batch rule fires: reasons are listed highest tier first, table order within a tier,
    word for word."""
    ids = [f"c{i}" for i in range(20)]
    sr = score_samples(
        certificates=certs([(s, ABSTAIN, True) for s in ids]),
        predictions=preds([(s, 0) for s in ids]),
        policy=POLICY,
        rules=rules([(s, "critical") for s in ids]),
        novelty=novelty([(s, 1.0) for s in ids]),
        context=context([(s, np.nan, np.nan) for s in ids]),
        signals=signals([(s, 1.0, 1.0) for s in ids]),
        calibration=CALIBRATED,
    )
    summary = score_batch(
        sr,
        policy=POLICY,
        drift_tests=drift_frame(True),
        rule_expectations=expectations(False, severity="critical", level="batch"),
        reference_abstention_rate=0.1,
        model_health=CONSTANT,
        calibration=CALIBRATED,
    )
    assert summary["tier"] == "critical"
    assert summary["reasons"] == [
        (
            "critical: model health: reference accuracy 0.333 is not better than always predicting the "
            "majority class (0.333; binomial p = 0.568 > 0.01); class recall below 0.05: b 0.000, c 0.000; "
            "class a takes 1.000 of predictions but 0.333 of labels (more than 0.25 over: a constant or "
            "near-constant classifier): no certificate of this model can be trusted"
        ),
        "critical: share of critical samples 1.000 > 0.2",
        (
            "critical: abstention elevated and the share of high or critical samples above 0.2: the "
            "signature of an attack or a shift that defeats certification"
        ),
        "critical: drift detected and abstention elevated: the shift reaches the model's certified behaviour",
        "critical: critical batch-level rule(s) failed: 'range:x'",
        "high: abstention elevated: 20/20 = 1.000 against reference 0.100 (binomial p = 1.00e-20 < 0.01)",
        "high: share of high or critical samples 1.000 > 0.2",
        "high: drift detected: 1 of 1 test(s) rejected after correction ('mmd:*')",
        "medium: share of medium or higher samples 1.000 > 0.2",
        "medium: 1 rule expectation(s) failed: 'range:x (critical)'",
    ]
    assert summary["not_measured"] == [] and summary["notes"] == []
    assert summary["calibration"] == CALIBRATED.to_dict() and "tier_calibration" in summary["evidence_kinds"]
    untested = score_batch(sr, policy=POLICY)
    assert untested["not_measured"] == [
        "model_health",
        "abstention_test",
        "drift",
        "rule_expectations",
        "tier_calibration",
    ]
    assert untested["model_health"] is None and untested["model_healthy"] is None
    assert untested["notes"] == [
        (
            "model_health: no model health record was given: finite outputs, accuracy, class recall and "
            "the share of the most-predicted class on the labelled reference were not checked"
        ),
        (
            "abstention_test: no reference abstention rate (policy scoring.reference_abstention_rate or "
            "measured on the reference): batch abstention was not tested"
        ),
        "drift: no drift tests were given: distribution shift was not tested",
        "rule_expectations: no expectation results were given: batch-level rules were not checked",
        (
            "tier_calibration: the policy asks for calibrated tiers (scoring.calibration) but no calibration "
            "was given (no context step, or a reference without a tier role): the fixed thresholds applied, "
            "with no false-alarm guarantee"
        ),
    ]
    assert untested["evidence_kinds"] == [
        "abstention",
        "certificate",
        "certificate_context",
        "novelty",
        "policy",
        "reference_agreement",
        "risk_tiers",
        "rules",
        "unmeasured",
    ]


def _facts(*, shares=(0.0, 0.0, 0.0), elevated=False, drift=None, failed=(), critical=()):
    """BatchFacts with the share of medium+, high+ and critical samples given; s = 0.2."""
    medium, high, crit = shares
    at_least = {Tier.LOW: 1.0, Tier.MEDIUM: medium, Tier.HIGH: high, Tier.CRITICAL: crit}
    return BatchFacts(
        shares=TierShares({t.value: 0 for t in Tier}, at_least),
        high_share=0.2,
        abstention=AbstentionFinding(30, 100, 0.05, "binomial", 1e-9 if elevated else 0.5, 0.01),
        drift=None if drift is None else DriftFinding(2, ["ks:x"] if drift else []),
        rules=RuleFinding(0.5, list(failed), list(critical)) if failed or critical else None,
    )


@pytest.mark.parametrize(
    "facts, fired",
    [
        (_facts(), set()),
        (_facts(drift=False), set()),
        (_facts(shares=(0.3, 0.0, 0.0)), {"medium_share"}),
        (_facts(shares=(0.3, 0.3, 0.0)), {"medium_share", "high_share"}),
        (_facts(shares=(0.3, 0.3, 0.3)), {"medium_share", "high_share", "critical_share"}),
        (_facts(elevated=True), {"abstention_elevated"}),
        (
            _facts(elevated=True, shares=(0.3, 0.3, 0.0)),
            {"abstention_elevated", "high_share", "medium_share", "abstention_and_high_share"},
        ),
        (_facts(drift=True), {"drift"}),
        (_facts(drift=True, elevated=True), {"drift", "abstention_elevated", "drift_and_abstention"}),
        (_facts(failed=["r (warning)"]), {"expectations_failed"}),
        (_facts(failed=["r (critical)"], critical=["r"]), {"expectations_failed", "critical_batch_rule"}),
    ],
)
def test_each_batch_rule_fires_on_its_facts_alone(facts, fired):
    assert {rule.name for rule in BATCH_RULES if rule.fires(facts)} == fired
    tiers = {rule.name: rule.tier for rule in BATCH_RULES}
    assert [t for t, _ in batch_reasons(facts)] == [tiers[r.name] for r in BATCH_RULES if r.name in fired]


def test_batch_rule_table_matches_the_documented_tiers():
    assert {rule.name: rule.tier.value for rule in BATCH_RULES} == {
        "model_health": "critical",
        "abstention_elevated": "high",
        "critical_share": "critical",
        "high_share": "high",
        "abstention_and_high_share": "critical",
        "medium_share": "medium",
        "drift": "high",
        "drift_and_abstention": "critical",
        "expectations_failed": "medium",
        "critical_batch_rule": "critical",
    }


def test_batch_reference_rate_from_policy():
    summary = score_batch(
        _batch(20, 200),
        policy=make_policy(reference_abstention_rate=0.03),
        drift_tests=None,
        rule_expectations=None,
        reference_abstention_rate=None,
        n_reference=None,
    )
    assert summary["reference_abstention_rate"] == 0.03 and summary["abstention_test"] == "binomial"


def test_estimated_reference_rate_is_tested_conservatively():
    # the same counts are less significant when the reference rate is itself estimated
    p_known, name_known = abstention_test(20, 200, 0.05, None)
    p_est, name_est = abstention_test(20, 200, 0.05, 200)
    assert name_known == "binomial" and name_est == "fisher_exact"
    assert p_est > p_known
    from scipy import stats

    assert p_known == pytest.approx(stats.binomtest(20, 200, 0.05, alternative="greater").pvalue)
    assert p_est == pytest.approx(stats.fisher_exact([[20, 180], [10, 190]], alternative="greater").pvalue)


# ---------------------------------------------------------------------------- defaults by construction


def test_default_policy_guarantees():
    risk, tier = abstention_alone(POLICY)
    assert tier == Tier.HIGH and risk == pytest.approx(0.6)
    assert certified_ceiling(POLICY) < risk
    assert certified_ceiling(POLICY) < POLICY.scoring.thresholds[Tier.HIGH]


# ---------------------------------------------------------------------------- properties

unit = st.floats(0.0, 1.0, allow_nan=False)
factor_rows = st.lists(unit, min_size=len(FACTORS), max_size=len(FACTORS))
weight_rows = st.lists(unit, min_size=len(FACTORS), max_size=len(FACTORS))


@settings(deadline=None, max_examples=200)
@given(factor_rows, weight_rows, st.integers(0, len(FACTORS) - 1), unit)
def test_raising_a_factor_never_lowers_risk_or_tier(factors, weights, which, bump):
    f = np.array([factors])
    w = np.array(weights)
    raised = f.copy()
    raised[0, which] = max(raised[0, which], bump)
    assert combine_factors(raised, w)[0] >= combine_factors(f, w)[0]
    scoring = ScoringSpec()
    before = Tier(assign_tiers(combine_factors(f, w), scoring)[0])
    after = Tier(assign_tiers(combine_factors(raised, w), scoring)[0])
    assert after >= before


@settings(deadline=None, max_examples=200)
@given(factor_rows, weight_rows)
def test_contributions_are_nonnegative_and_sum_to_risk(factors, weights):
    f = np.array([factors])
    w = np.array(weights)
    risk = combine_factors(f, w)
    c = factor_contributions(f, w, risk)
    assert (c >= 0).all()
    assert c.sum() == pytest.approx(risk[0], abs=1e-9)
    assert 0.0 <= risk[0] <= 1.0


@settings(deadline=None, max_examples=200)
@given(factor_rows, unit, unit, unit)
def test_abstained_outranks_certified_with_certificate_factors_only(abst_other, rank, ctx, instab):
    w = weight_vector(POLICY.scoring)
    a = np.array([abst_other])
    a[0, FACTORS.index("abstention")] = 1.0
    c = np.zeros((1, len(FACTORS)))
    c[0, FACTORS.index("radius_rank")] = rank
    c[0, FACTORS.index("context")] = ctx
    c[0, FACTORS.index("instability")] = instab
    ra, rc = combine_factors(a, w)[0], combine_factors(c, w)[0]
    assert ra > rc
    tiers = assign_tiers(np.array([ra, rc]), POLICY.scoring)
    assert Tier(tiers[0]) >= Tier.HIGH > Tier(tiers[1])


@settings(deadline=None, max_examples=40)
@given(
    st.lists(
        st.tuples(st.booleans(), st.sampled_from(["none", "info", "warning", "critical"]), unit, unit, unit),
        min_size=1,
        max_size=30,
    )
)
def test_scored_batches_are_well_formed(rows):
    ids = [f"x{i}" for i in range(len(rows))]
    c = certs([(s, ABSTAIN, True) if r[0] else (s, 1, False) for s, r in zip(ids, rows, strict=True)])
    out = score_samples(
        certificates=c,
        predictions=preds([(s, 1) for s in ids]),
        policy=POLICY,
        rules=rules([(s, r[1]) for s, r in zip(ids, rows, strict=True)]),
        novelty=novelty([(s, r[2]) for s, r in zip(ids, rows, strict=True)]),
        context=context([(s, r[3], r[4]) for s, r in zip(ids, rows, strict=True)]),
    )
    abst = out["abstained"].to_numpy()
    assert (out.loc[abst, "tier"].isin(["high", "critical"])).all()
    if abst.any() and (~abst).any():
        # certified samples whose only factors come from the certificate rank below every abstained one
        cert_only = (~abst) & (out["factor_rules"] == 0).to_numpy() & (out["factor_novelty"] == 0).to_numpy()
        if cert_only.any():
            assert out.loc[cert_only, "risk"].max() < out.loc[abst, "risk"].min()
    for top, row in zip(out["top_factors"], out.itertuples(), strict=True):
        values = [getattr(row, f"factor_{name}") for name in top]
        assert values == sorted(values, reverse=True) and all(v > 0 for v in values)
    ids_all = set(catalog())
    assert all(set(r) <= ids_all for r in out["rmf_ids"])
    summary = score_batch(
        out,
        policy=POLICY,
        drift_tests=None,
        rule_expectations=None,
        reference_abstention_rate=0.05,
        n_reference=1000,
    )
    json.dumps(summary)
    no_forbidden_words(summary)


# ---------------------------------------------------------------------------- limitations


@settings(deadline=None, max_examples=25)
@given(
    st.floats(0.01, 2.0, allow_nan=False),
    st.floats(1e-6, 0.2, allow_nan=False),
    st.integers(10, 200_000),
    st.sampled_from([None, 1, 64, 3072]),
)
def test_limitations_state_norm_sigma_alpha(sigma, alpha, n, dim):
    from certrisk.risk.limitations import limitations

    data = dict(
        POLICY_DATA,
        certification={
            "methods": [
                {"method": "smoothing", "sigma": sigma, "alpha": alpha, "n": n},
                {"method": "ibp", "eps": 0.05},
            ]
        },
    )
    text = limitations(parse_policy(data), dim=dim)
    assert f"sigma = {sigma}" in text and f"alpha = {alpha}" in text and f"n = {n}" in text
    assert "norm l2" in text and "norm linf" in text
    assert "says nothing about whether a sample was attacked" in text
    for threat in ("Geometric", "Poisoning", "Model theft", "Other norms"):
        assert threat in text
    assert f"(d = {dim if dim else 64})" in text
    no_forbidden_words(text)


def test_limitations_translate_radii_like_the_certify_room():
    from certrisk.risk.certify.norms import translate_radius
    from certrisk.risk.certify.stats import clopper_pearson_lower, smoothing_radius
    from certrisk.risk.limitations import limitations

    text = limitations(POLICY)  # sigma 0.25, n 2000, alpha 0.001, d = 64
    r = float(smoothing_radius(clopper_pearson_lower(2000, 2000, 0.001), 0.25))
    assert r == pytest.approx(0.25 * stats_norm_ppf(0.001 ** (1 / 2000)), rel=1e-6)
    assert f"{r:.4g} (l2)" in text
    assert f"{float(translate_radius(r, 'l2', 'linf', 64)):.4g} (linf)" in text
    assert f"{r / 8:.3g}" in text  # linf = r / sqrt(64)
    assert "risk 0.600, tier high" in text


def test_limitations_quote_the_sequential_mode_largest_radius():
    """Sequential mode's last stage bounds at alpha / K (K stages), so its largest radius is below
    fixed mode's; the statement quotes the sequential one."""
    from certrisk.risk.certify import sequential_stages
    from certrisk.risk.certify.stats import clopper_pearson_lower, smoothing_radius
    from certrisk.risk.limitations import limitations

    method = {"method": "smoothing", "sigma": 0.25, "n": 10_000, "alpha": 0.001}
    seq = dict(method, mode="sequential", target_radius=0.3)
    text = limitations(parse_policy(dict(POLICY_DATA, certification={"methods": [seq]})))
    k = len(sequential_stages(10_000))
    assert k == 6
    r_seq = float(smoothing_radius(clopper_pearson_lower(10_000, 10_000, 0.001 / k), 0.25))
    r_fixed = float(smoothing_radius(clopper_pearson_lower(10_000, 10_000, 0.001), 0.25))
    assert f"{r_fixed:.4g}" != f"{r_seq:.4g}"
    assert f"(alpha / K)^(1/n)) with K = 6 stages = {r_seq:.4g} (l2)" in text
    assert f"{r_fixed:.4g} (l2)" not in text
    fixed_text = limitations(parse_policy(dict(POLICY_DATA, certification={"methods": [method]})))
    assert f"sigma * Phi^-1(alpha^(1/n)) = {r_fixed:.4g} (l2)" in fixed_text


def stats_norm_ppf(p):
    from scipy.stats import norm

    return norm.ppf(p)


# ---------------------------------------------------------------------------- NIST AI RMF


def _run():
    c = certs([("a", ABSTAIN, True), ("b", 0, False)])
    sr = score_samples(
        certificates=c,
        predictions=preds([("a", 0), ("b", 0)]),
        policy=POLICY,
        rules=rules([("a", "none"), ("b", "warning")]),
    )
    summary = score_batch(
        sr,
        policy=POLICY,
        drift_tests=drift_frame(False),
        rule_expectations=expectations(True),
        reference_abstention_rate=0.05,
        n_reference=500,
    )
    return sr, summary


def test_rmf_coverage_lists_all_72_with_notes():
    from certrisk.risk.evidence import rmf_coverage

    sr, summary = _run()
    cov = rmf_coverage(
        policy=POLICY,
        sample_risk=sr,
        batch_summary=summary,
        evidence_kinds=["run_record", "limitations", "test_sets"],
    )
    assert list(cov.columns) == ["id", "function", "category", "evidenced", "evidence", "note"]
    assert list(cov["id"]) == list(catalog())
    assert len(cov) == 72
    ev = cov.set_index("id")
    for sid in (
        "MEASURE 2.7",
        "MEASURE 2.6",
        "MEASURE 2.4",
        "MAP 1.5",
        "GOVERN 1.3",
        "MANAGE 4.1",
        "GOVERN 1.5",
        "MEASURE 2.5",
        "MAP 2.2",
        "MEASURE 2.1",
        "MEASURE 1.1",
    ):
        assert ev.loc[sid, "evidenced"], sid
        assert ev.loc[sid, "evidence"]
    assert not ev.loc["GOVERN 1.4", "evidenced"]  # audit chain not named by the caller
    assert "audit_chain" in ev.loc["GOVERN 1.4", "note"]
    assert ev.loc["MEASURE 2.11", "note"].startswith("Not evidenced by certrisk")
    assert (cov.loc[~cov["evidenced"], "note"].str.len() > 0).all()
    assert "radius_rank" in ev.loc["MEASURE 1.1", "note"]  # what was not measured is stated
    no_forbidden_words(cov.to_dict("list"))


def test_rmf_coverage_agrees_with_the_recorded_evidence():
    """The coverage table and the rows the store records evidence the same subcategories, with the
    notes of schemas.rmf.coverage (the one place coverage is computed)."""
    from certrisk.risk.evidence import rmf_coverage, run_rmf_evidence
    from certrisk.schemas.rmf import coverage

    sr, summary = _run()
    kw = {"policy": POLICY, "sample_risk": sr, "batch_summary": summary, "evidence_kinds": ["run_record"]}
    cov = rmf_coverage(**kw).set_index("id")
    recorded = coverage(run_rmf_evidence(**kw))
    assert [c.subcategory.id for c in recorded] == list(cov.index)
    for c in recorded:
        assert cov.loc[c.subcategory.id, "evidenced"] == c.evidenced
        assert [e.split(":")[0] for e in cov.loc[c.subcategory.id, "evidence"].split("; ") if e] == list(
            c.kinds
        )
        if c.subcategory.id != "MEASURE 1.1":
            assert cov.loc[c.subcategory.id, "note"] == c.note
    assert cov.loc["MEASURE 1.1", "note"] == f"not measured in this run: {', '.join(summary['not_measured'])}"


def test_run_rmf_evidence_rows():
    from certrisk.risk.evidence import run_rmf_evidence

    sr, summary = _run()
    rows = run_rmf_evidence(
        policy=POLICY, sample_risk=sr, batch_summary=summary, evidence_kinds=["run_record"]
    )
    assert all(len(r) == 3 and all(isinstance(x, str) and x for x in r) for r in rows)
    assert {r[0] for r in rows} <= set(catalog())
    kinds = {r[1] for r in rows}
    assert {
        "certificate",
        "abstention",
        "drift",
        "rules",
        "policy",
        "risk_tiers",
        "run_record",
        "unmeasured",
    } <= kinds
    detail = {r[1]: r[2] for r in rows}
    assert "fisher_exact" in detail["abstention"]
    assert "radius" not in " ".join(r[2] for r in rows if r[1] != "unmeasured")  # aggregates only
    no_forbidden_words(rows)
    from certrisk.schemas.errors import InputError as _InputError

    with pytest.raises(_InputError, match="nonsense"):
        run_rmf_evidence(policy=POLICY, sample_risk=sr, batch_summary=summary, evidence_kinds=["nonsense"])
