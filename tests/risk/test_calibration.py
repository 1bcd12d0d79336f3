"""Calibration: continuous signal scales, split-conformal tier thresholds and their finite-sample
guarantee (by simulation over seeds), and the tier invariants as hypothesis properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certrisk.risk.calibration import (
    FLOORED,
    TierCalibration,
    TierCut,
    calibrate_tiers,
    signal_scale,
    tier_ranks,
)
from certrisk.risk.score import CERTIFICATE_FACTORS, combine_factors, weight_vector
from certrisk.risk.tiering import assign_tiers
from certrisk.schemas.columns import FACTORS
from certrisk.schemas.enums import Tier
from certrisk.schemas.errors import InputError
from certrisk.schemas.policy import ScoringSpec

SCORING = ScoringSpec()
HIGH, MEDIUM, CRITICAL = Tier.HIGH.rank, Tier.MEDIUM.rank, Tier.CRITICAL.rank


# ---------------------------------------------------------------------------- scales


def test_signal_scale_by_hand():
    cal = np.arange(1, 10) / 100.0  # 0.01 .. 0.09, n = 9: q at tail 0.2 is the ceil(10 * 0.8) = 8th, 0.08
    got = signal_scale(cal, np.array([0.0, 0.05, 0.08, 0.29, 0.5, 0.9]), tail=0.2)
    np.testing.assert_allclose(got, [0.0, 0.0, 0.0, 0.5, 1.0, 1.0])
    # the whole calibration set with tail 1: from its smallest score
    np.testing.assert_allclose(signal_scale(cal, np.array([0.01, 0.255]), tail=1.0), [0.0, 0.5])
    # clean scores already beyond the boundary: the scale runs to 1 instead
    high = np.full(5, 0.6)
    np.testing.assert_allclose(signal_scale(high, np.array([0.6, 0.8, 1.0]), tail=0.2), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(signal_scale(np.ones(3), np.array([0.9, 1.0]), tail=0.2), [0.0, 1.0])
    with pytest.raises(InputError, match="finite and not empty"):
        signal_scale(np.array([]), np.array([0.5]), tail=0.2)
    with pytest.raises(InputError, match="tail"):
        signal_scale(cal, np.array([0.5]), tail=0.0)


@settings(deadline=None, max_examples=100)
@given(
    st.lists(st.floats(0.0, 0.99, allow_subnormal=False), min_size=1, max_size=40),
    st.lists(st.floats(0.0, 1.0, allow_subnormal=False), min_size=2, max_size=40),
    st.floats(0.01, 1.0),
)
def test_signal_scale_is_monotone_and_quiet_on_most_calibration_samples(cal, values, tail):
    c = np.asarray(cal)
    f = signal_scale(c, np.sort(np.asarray(values)), tail=tail)
    assert ((0 <= f) & (f <= 1)).all() and (np.diff(f) >= 0).all()
    # at most the tail share of the calibration samples (plus the conformal rounding) is above 0
    assert (signal_scale(c, c, tail=tail) > 0).mean() <= tail + 1 / (len(c) + 1) + 1e-9
    assert (signal_scale(c, np.array([1.0]), tail=tail) == 1.0).all()  # full disagreement counts fully


# ---------------------------------------------------------------------------- thresholds


def test_thresholds_by_hand_and_strict_comparison():
    risk = np.r_[np.zeros(75), np.full(20, 0.1), np.full(4, 0.3), [0.6]]  # n = 100
    cal = calibrate_tiers(risk, np.zeros(100, dtype=int), SCORING)
    # high: k = ceil(101 * 0.95) = 96 -> 0.3; medium: k = ceil(101 * 0.8) = 81 -> 0.1
    assert cal.conformal_high == 0.3 and cal.conformal_medium == 0.1
    assert cal.high == TierCut(0.3, True, "conformal") and cal.feasible and cal.medium_feasible
    assert cal.critical == TierCut(0.85, False, "policy")
    tiers = assign_tiers(np.array([0.1, 0.1000001, 0.3, 0.3000001, 0.6, 0.85]), SCORING, calibration=cal)
    assert list(tiers) == ["low", "medium", "medium", "high", "high", "critical"]
    assert cal.share_high == pytest.approx(0.01) and cal.share_medium == pytest.approx(0.05)
    assert TierCalibration.from_dict(cal.to_dict()) == cal
    assert "P(such a sample at tier >= high) <= 0.05" in cal.guarantee


def test_abstention_above_the_target_makes_the_high_target_infeasible():
    risk = np.r_[np.zeros(90), np.full(10, 0.6)]  # 10% abstain: more than the 5% target
    cal = calibrate_tiers(risk, np.zeros(100, dtype=int), SCORING)
    assert cal.conformal_high == pytest.approx(0.6) and not cal.feasible
    assert cal.high == TierCut(0.6, False, "abstention_floor")
    assert cal.share_high == pytest.approx(0.1)
    assert (
        "cannot be guaranteed" in cal.guarantee
        and "abstention alone keeps reaching tier high" in cal.guarantee
    )


def test_too_few_samples_keep_the_fixed_threshold_and_say_so():
    cal = calibrate_tiers(np.linspace(0, 0.2, 10), np.zeros(10, dtype=int), SCORING)
    assert cal.conformal_high is None and cal.high == TierCut(0.5, False, "policy") and not cal.feasible
    assert cal.conformal_medium is not None and cal.medium_feasible  # 10 >= 4 samples suffice at 0.2
    assert "too few" in cal.guarantee and "needs >= 19" in cal.guarantee
    with pytest.raises(InputError, match="tier role is empty"):
        calibrate_tiers(np.array([]), np.array([], dtype=int), SCORING)
    with pytest.raises(InputError, match="null"):
        calibrate_tiers(np.zeros(3), np.zeros(3, dtype=int), ScoringSpec(calibration=None))


def test_rule_floors_count_inside_the_guarantee():
    # 4% of the calibration samples failed a critical rule: they count as scores above every risk
    risk = np.linspace(0.0, 0.4, 100)
    floor = np.zeros(100, dtype=int)
    floor[:4] = CRITICAL
    cal = calibrate_tiers(risk, floor, SCORING)
    ranks = tier_ranks(risk, cal.cuts, floor)
    assert (ranks[:4] == CRITICAL).all()
    assert (ranks >= HIGH).mean() <= 0.05 + 1e-12
    scores = np.where(floor >= HIGH, FLOORED, risk)
    assert cal.conformal_high == np.sort(scores)[math.ceil(101 * 0.95) - 1]


# ---------------------------------------------------------------------------- the guarantee


def _clean_risk(rng, n, *, abstain=0.02, critical=0.01):
    """Risks like a model's reference samples: a continuous bulk, an abstained mass at 0.6
    (ties), and a share that failed a critical rule (floored)."""
    risk = 0.5 * rng.beta(2.0, 8.0, size=n)
    u = rng.random(n)
    risk[u < abstain] = 0.6
    floor = np.where(u > 1 - critical, CRITICAL, 0)
    return risk, floor


def test_false_alarm_guarantee_by_simulation_over_seeds():
    """Split conformal: for n = 99 calibration samples the k = 95th smallest score is the high
    threshold and a fresh clean sample exceeds it with probability 5 / 100 = 0.05 (less with ties).
    Over 200 seeds with 1000 fresh samples each, the pooled false-alarm share has mean <= 0.05 and
    standard deviation about 0.0016 (the per-seed rate is Beta(5, 95): sd 0.0217 / sqrt(200);
    binomial noise 0.0005). The test allows 0.05 + 0.0064 (4 sd): it fails by chance with
    probability below 1e-4."""
    n_cal, n_test, seeds = 99, 1000, 200
    alarms = medium = infeasible = 0
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        cal = calibrate_tiers(*_clean_risk(rng, n_cal), SCORING)
        # 3% of the samples sit at the abstention floor or a critical floor: in a few draws five or
        # more of the 99 do, the conformal threshold lands on the floor and the floor applies
        infeasible += not cal.feasible
        risk, floor = _clean_risk(rng, n_test)
        ranks = tier_ranks(risk, cal.cuts, floor)
        alarms += int((ranks >= HIGH).sum())
        medium += int((ranks >= MEDIUM).sum())
    assert alarms / (seeds * n_test) <= 0.05 + 0.0064
    # medium: k = 80 of 99, rate 20 / 100; per-seed Beta(20, 80), sd 0.040 / sqrt(200) = 0.0028
    assert medium / (seeds * n_test) <= 0.2 + 0.0115
    # and it is not vacuous: the calibrated rate is close to its target
    assert alarms / (seeds * n_test) >= 0.05 - 0.0064
    assert infeasible <= 0.25 * seeds  # P(>= 5 of 99 floored) = 0.18 for a 3% share


def test_infeasible_target_records_the_share_it_reaches():
    rng = np.random.default_rng(1)
    cal = calibrate_tiers(*_clean_risk(rng, 400, abstain=0.08), SCORING)
    assert not cal.feasible and cal.high.source == "abstention_floor"
    risk, floor = _clean_risk(rng, 20_000, abstain=0.08)
    share = (tier_ranks(risk, cal.cuts, floor) >= HIGH).mean()
    assert share > 0.05 and abs(share - cal.share_high) < 0.04  # the recorded estimate is honest


# ---------------------------------------------------------------------------- invariants

unit = st.floats(0.0, 1.0, allow_nan=False)
factor_rows = st.lists(unit, min_size=len(FACTORS), max_size=len(FACTORS))
calibrations = st.builds(
    lambda risks, floors, far, gap: calibrate_tiers(
        np.asarray(risks),
        np.asarray(floors[: len(risks)] + [0] * max(0, len(risks) - len(floors))),
        ScoringSpec(calibration={"false_alarm_rate": far, "medium_rate": min(0.99, far + gap)}),
    ),
    st.lists(unit, min_size=1, max_size=120),
    st.lists(st.sampled_from([0, 0, 0, 1, 3]), max_size=120),
    st.floats(0.01, 0.3),
    st.floats(0.01, 0.5),
)
floors = st.sampled_from([0, 1, 3])


def _risk(f) -> float:
    return float(combine_factors(np.array([f]), weight_vector(SCORING))[0])


def _tier(f, cal, floor=0) -> int:
    return int(tier_ranks(np.array([_risk(f)]), cal.cuts, np.array([floor]))[0])


@settings(deadline=None, max_examples=200)
@given(calibrations, factor_rows)
def test_abstention_alone_reaches_high_under_any_calibration(cal, others):
    f = np.zeros(len(FACTORS))
    f[FACTORS.index("abstention")] = 1.0
    assert _tier(f, cal) >= HIGH
    f = np.asarray(others)
    f[FACTORS.index("abstention")] = 1.0
    assert _tier(f, cal) >= HIGH  # with anything else too


@settings(deadline=None, max_examples=200)
@given(calibrations, factor_rows, st.lists(unit, min_size=3, max_size=3))
def test_certificate_factors_alone_never_outrank_abstention(cal, abstained, cert):
    a = np.asarray(abstained)
    a[FACTORS.index("abstention")] = 1.0
    c = np.zeros(len(FACTORS))
    for name, value in zip(CERTIFICATE_FACTORS, cert, strict=True):
        c[FACTORS.index(name)] = value
    assert _risk(c) < _risk(a)
    assert _tier(c, cal) <= _tier(a, cal)


@settings(deadline=None, max_examples=200)
@given(calibrations, factor_rows, st.integers(0, len(FACTORS) - 1), unit, floors)
def test_raising_a_factor_never_lowers_risk_or_tier_under_calibration(cal, factors, which, bump, floor):
    f = np.asarray(factors)
    raised = f.copy()
    raised[which] = max(raised[which], bump)
    assert _risk(raised) >= _risk(f)
    assert _tier(raised, cal, floor) >= _tier(f, cal, floor)


@settings(deadline=None, max_examples=200)
@given(st.one_of(st.none(), calibrations), factor_rows)
def test_a_failed_critical_rule_makes_its_sample_critical(cal, factors):
    risk = np.array([_risk(factors)])
    tiers = assign_tiers(risk, SCORING, calibration=cal, floor=np.array([CRITICAL]))
    assert list(tiers) == ["critical"]
    warned = assign_tiers(risk, SCORING, calibration=cal, floor=np.array([MEDIUM]))
    assert Tier(warned[0]) >= Tier.MEDIUM


def test_limitations_state_the_guarantee_and_where_it_cannot_hold():
    from certrisk.risk.limitations import limitations
    from tests.risk.test_score import POLICY, no_forbidden_words

    text = limitations(POLICY)
    assert "P(such a sample reaches tier high or above) <= 0.05" in text
    assert "says nothing about attacked inputs" in text and "marginal" in text
    infeasible = calibrate_tiers(np.r_[np.zeros(90), np.full(10, 0.6)], np.zeros(100, dtype=int), SCORING)
    text = limitations(POLICY, calibration=infeasible)
    assert "This run: " in text and "the 0.05 target cannot be guaranteed" in text
    assert "reference-neighbour" not in text and "nearest reference samples per class" in text
    no_forbidden_words(text)
    fixed = limitations(POLICY.model_copy(update={"scoring": ScoringSpec(calibration=None)}))
    assert "fixed thresholds (medium 0.25, high 0.5)" in fixed and "Calibrated tiers" not in fixed
