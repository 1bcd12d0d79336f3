"""What a batch's tier is decided from: the model's health, the share of samples at each tier,
the abstention test against the reference, the drift tests and the rule expectations, gathered
into ``BatchFacts`` (which ``certrisk.risk.tiering``'s batch rules read), and the batch tests that
were not run.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from scipy import stats

from certrisk.schemas.columns import DRIFT_TEST_COLUMNS, RULE_EXPECTATION_COLUMNS, conform
from certrisk.schemas.enums import Severity, Tier
from certrisk.schemas.errors import InputError
from certrisk.schemas.policy import ScoringSpec


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


@dataclass(frozen=True)
class TierShares:
    """Sample counts per tier value (low..critical) and the share of samples at each tier or above."""

    counts: dict[str, int]
    at_least: dict[Tier, float]


@dataclass(frozen=True)
class AbstentionFinding:
    """k of n samples abstained; tested against ``reference_rate`` (None: not tested) at ``level``."""

    k: int
    n: int
    reference_rate: float | None
    test: str | None
    p_value: float | None
    level: float

    @property
    def tested(self) -> bool:
        return self.p_value is not None

    @property
    def elevated(self) -> bool:
        return self.p_value is not None and bool(self.p_value < self.level)


@dataclass(frozen=True)
class DriftFinding:
    """``n_tests`` drift tests ran; ``rejected`` names the rejected ones ("test:feature")."""

    n_tests: int
    rejected: list[str]

    @property
    def detected(self) -> bool:
        return len(self.rejected) > 0


@dataclass(frozen=True)
class RuleFinding:
    """Rule expectations: pass rate (None when none ran), failed ones ("name (severity)") and the
    names of failed critical batch-level ones."""

    pass_rate: float | None
    failed: list[str]
    critical_batch: list[str]


@dataclass(frozen=True)
class HealthFinding:
    """Model health: the problems of the health record (``certrisk.risk.health.ModelHealth``, as
    its dict; None when no record was given) and the ids of the batch's samples whose base logits
    were not finite. ``record`` is the health dict as given, for the summary."""

    record: dict | None
    problems: list[str]
    nonfinite_ids: list[str]

    @property
    def checked(self) -> bool:
        return self.record is not None

    @property
    def unhealthy(self) -> bool:
        return bool(self.problems) or bool(self.nonfinite_ids)


@dataclass(frozen=True)
class BatchFacts:
    """What the batch rules read. ``drift`` and ``rules`` are None when their inputs were not given."""

    shares: TierShares
    high_share: float
    abstention: AbstentionFinding
    drift: DriftFinding | None
    rules: RuleFinding | None
    health: HealthFinding = HealthFinding(None, [], [])

    @property
    def tests_run(self) -> dict[str, bool]:
        """Whether each batch test of BATCH_TESTS ran, by name."""
        return {
            "model_health": self.health.checked,
            "abstention_test": self.abstention.tested,
            "drift": self.drift is not None,
            "rule_expectations": self.rules is not None,
        }


def _tier_shares(sr: pd.DataFrame) -> TierShares:
    n = len(sr)
    tiers = sr["tier"].to_numpy(dtype=object)
    unknown = sorted(set(pd.unique(tiers)) - {t.value for t in Tier})
    if unknown:
        raise InputError(f"sample_risk: column 'tier' holds unknown value(s) {unknown}")
    counts = {t.value: int((tiers == t.value).sum()) for t in Tier}
    at_least = {t: sum(counts[u.value] for u in Tier if u >= t) / n for t in Tier}
    return TierShares(counts, at_least)


def _abstention_finding(
    sr: pd.DataFrame, scoring: ScoringSpec, reference_rate: float | None, n_reference: int | None
) -> AbstentionFinding:
    k, n = int(sr["abstained"].to_numpy(dtype=bool).sum()), len(sr)
    rate = reference_rate if reference_rate is not None else scoring.reference_abstention_rate
    if rate is not None and not 0.0 <= rate <= 1.0:
        raise InputError(f"reference_abstention_rate must lie in [0, 1], got {rate!r}")
    if n_reference is not None and n_reference < 1:
        raise InputError(f"n_reference must be a positive count, got {n_reference!r}")
    if rate is None:
        return AbstentionFinding(k, n, None, None, None, scoring.abstention_p)
    # a rate from the policy counts as known; one measured on the reference carries its count
    n_ref = None if reference_rate is None else n_reference
    p_value, test = abstention_test(k, n, float(rate), n_ref)
    return AbstentionFinding(k, n, float(rate), test, p_value, scoring.abstention_p)


def _health_finding(model_health: dict | None, nonfinite_ids) -> HealthFinding:
    if model_health is not None and not isinstance(model_health, dict):
        raise InputError(f"model_health must be the health record's dict, got {type(model_health).__name__}")
    problems = [] if model_health is None else model_health.get("problems")
    if not isinstance(problems, list | tuple) or not all(isinstance(p, str) for p in problems):
        raise InputError(f"model_health: 'problems' must be a list of strings, got {problems!r}")
    return HealthFinding(model_health, list(problems), [str(i) for i in nonfinite_ids])


def _drift_finding(drift_tests: pd.DataFrame | None) -> DriftFinding | None:
    if drift_tests is None:
        return None
    dt = conform(drift_tests, DRIFT_TEST_COLUMNS, table="drift_tests")
    rejected = dt["drift"].to_numpy(dtype=bool)
    names = [f"{t}:{feat}" for t, feat in zip(dt["test"][rejected], dt["feature"][rejected], strict=True)]
    return DriftFinding(len(dt), names)


def _rule_finding(rule_expectations: pd.DataFrame | None) -> RuleFinding | None:
    if rule_expectations is None:
        return None
    re_ = conform(rule_expectations, RULE_EXPECTATION_COLUMNS, table="rule_expectations")
    if not len(re_):
        return RuleFinding(None, [], [])
    success = re_["success"].to_numpy(dtype=bool)
    failed = re_.loc[~success]
    crit = failed.loc[(failed["severity"] == Severity.CRITICAL.value) & (failed["level"] == "batch")]
    return RuleFinding(
        float(success.mean()),
        [f"{e} ({sev})" for e, sev in zip(failed["expectation"], failed["severity"], strict=True)],
        list(crit["expectation"]),
    )


@dataclass(frozen=True)
class BatchTest:
    """A batch-level measurement: the evidence kind it gives, and why it is missing when it is."""

    name: str
    evidence: str
    not_measured: str


#: The batch-level measurements, in the order the summary lists what was not measured.
BATCH_TESTS: tuple[BatchTest, ...] = (
    BatchTest(
        "model_health",
        "model_health",
        "no model health record was given: finite outputs, accuracy, class recall and the share "
        "of the most-predicted class on the labelled reference were not checked",
    ),
    BatchTest(
        "abstention_test",
        "abstention",
        "no reference abstention rate (policy scoring.reference_abstention_rate or measured on the "
        "reference): batch abstention was not tested",
    ),
    BatchTest("drift", "drift", "no drift tests were given: distribution shift was not tested"),
    BatchTest(
        "rule_expectations",
        "rules",
        "no expectation results were given: batch-level rules were not checked",
    ),
)


def gather_batch_facts(
    sample_risk: pd.DataFrame,
    scoring: ScoringSpec,
    *,
    drift_tests: pd.DataFrame | None,
    rule_expectations: pd.DataFrame | None,
    reference_abstention_rate: float | None,
    n_reference: int | None,
    model_health: dict | None = None,
    nonfinite_ids=(),
) -> BatchFacts:
    """The facts of a batch. ``sample_risk`` is conformed to SAMPLE_RISK_COLUMNS and not empty;
    ``nonfinite_ids`` names its samples whose base logits were not finite; the other arguments
    are ``score_batch``'s. Raises InputError on unknown tiers, a reference rate outside [0, 1], a
    non-positive ``n_reference``, a drift or expectation table missing columns, or a health
    record without a list of problems.
    """
    return BatchFacts(
        shares=_tier_shares(sample_risk),
        high_share=scoring.high_share,
        abstention=_abstention_finding(sample_risk, scoring, reference_abstention_rate, n_reference),
        drift=_drift_finding(drift_tests),
        rules=_rule_finding(rule_expectations),
        health=_health_finding(model_health, nonfinite_ids),
    )


__all__ = [
    "BATCH_TESTS",
    "AbstentionFinding",
    "BatchFacts",
    "BatchTest",
    "DriftFinding",
    "HealthFinding",
    "RuleFinding",
    "TierShares",
    "abstention_test",
    "gather_batch_facts",
]
