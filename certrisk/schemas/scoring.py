"""The policy's scoring: factor weights, tier thresholds and their calibration, and the signals
that do not trust the certificate (``Policy.scoring``, ``Policy.signals``).

Validated like the rest of the policy (``certrisk.schemas.policy``, which re-exports these
names): unknown keys are rejected and values are checked where they are read.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from certrisk.schemas import factors
from certrisk.schemas.enums import Tier
from certrisk.schemas.factors import FACTORS


class StrictSpec(BaseModel):
    """A policy section: unknown keys rejected, frozen, enums kept as enums."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class SignalsSpec(StrictSpec):
    """Signals that do not trust the certificate: does the prediction agree with the reference?

    The labels of each sample's k nearest index samples (reference role ``index`` plus
    ``data.index``) against its prediction, in input space and on the model's penultimate
    representation, on a scale calibrated on the held-out ``signal`` role (factors
    ``neighbours`` and ``feature_neighbours`` of ``certrisk.schemas.factors``)."""

    k: int = Field(default=5, ge=1, description="Nearest index samples per class the disagreement averages.")
    tail: float = Field(
        default=0.2, gt=0, le=1, description="Share of signal-role samples with a factor above 0."
    )
    features: bool = Field(default=True, description="Also measure it on the penultimate representation.")


class CalibrationSpec(StrictSpec):
    """Tier thresholds set by split-conformal calibration on the reference's ``tier`` role.

    The tier role's clean samples are scored exactly like a batch (the same factors against the
    same index). ``high`` is their ``ceil((n + 1)(1 - false_alarm_rate))``-th smallest risk and a
    sample is at high or above when its risk exceeds it (strictly); ``medium`` likewise at
    ``medium_rate``. Under exchangeability of clean batch samples with the tier role, P(a clean
    sample is at tier >= high) <= false_alarm_rate (marginal over the calibration draw; nothing
    about attacked inputs). The high threshold never exceeds the abstention floor (the risk of
    abstention alone, which so still reaches high); where the conformal threshold is at or above
    it, the floor is used and the summary records ``feasible: false``. A tier role too small for
    a rate (under 1 / rate - 1 samples) keeps that tier's fixed threshold; critical keeps its own.
    """

    false_alarm_rate: float = Field(default=0.05, gt=0, lt=1, description="Clean share at high or above.")
    medium_rate: float = Field(default=0.2, gt=0, lt=1, description="Clean share at medium or above.")

    @model_validator(mode="after")
    def _medium_above_high(self) -> CalibrationSpec:
        if not self.medium_rate > self.false_alarm_rate:
            raise ValueError(
                f"medium_rate ({self.medium_rate}) must exceed false_alarm_rate ({self.false_alarm_rate})"
            )
        return self


#: Default factor weights, from certrisk.schemas.factors (see ScoringSpec for why these values).
DEFAULT_WEIGHTS = dict(factors.DEFAULT_WEIGHTS)

#: Default tier thresholds on the per-sample risk in [0, 1].
DEFAULT_THRESHOLDS = {Tier.MEDIUM: 0.25, Tier.HIGH: 0.5, Tier.CRITICAL: 0.85}


class ScoringSpec(StrictSpec):
    """Per-sample factor weights, tier thresholds and the batch rule.

    The scorer (``certrisk.risk.score``) combines factors f_i in [0, 1] with weights w_i in [0, 1]
    as ``risk = 1 - prod_i (1 - w_i * f_i)``: monotone in every factor, 0 when no factor is
    present, at least ``max_i w_i f_i``. Tiers: risk >= thresholds[critical] is critical, else
    >= high is high, else >= medium is medium, else low.

    Why the defaults (``certrisk.schemas.factors``; by construction, not by tuning):

    * abstention alone reaches tier high: an abstained sample has risk >= w_abstention = 0.6,
      and 0.6 >= thresholds[high] = 0.5;
    * a certified sample with no other factor never ranks above an abstained one: the
      certificate-derived factors of a certified sample (radius_rank, context, instability) give
      at most 1 - (1 - 0.15)(1 - 0.15)(1 - 0.3) = 0.494 < 0.6 <= the risk of any abstained
      sample. It also stays below tier high (0.494 < 0.5): only abstention, method
      disagreement, failed rules or novelty lift a sample to high;
    * method disagreement (two certificates of one sample certify different classes) weighs like
      abstention, 0.6, so it alone reaches tier high too: contradicting certificates are no more
      to be relied on than none (its own factor, so the batch abstention test counts one event);
      reference-neighbour disagreement (``neighbours``) weighs 0.6 for the same reason.

    ``calibration`` (CalibrationSpec, on by default; ``null``: the fixed thresholds, as
    ``risk >= threshold``) replaces the medium and high thresholds. Rule severities are tier
    floors (``certrisk.schemas.factors.SEVERITY_TIER_FLOOR``): a failed row-level rule of
    severity critical makes its sample critical, one of severity warning at least medium.

    ``weights`` may name a subset of the factors: the others keep their default weight (set a
    weight to 0 to switch a factor off). ``high_share``: a batch whose share of samples at tier
    high or above exceeds it is at least high (critical samples: critical). ``abstention_p``:
    the level of the one-sided test that the batch abstains more often than the reference.
    """

    weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    thresholds: dict[Tier, float] = Field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    reference_abstention_rate: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Known abstention rate on held-out data; default: measured on the reference.",
    )
    abstention_p: float = Field(default=0.01, gt=0, lt=1, description="Batch abstention test level.")
    high_share: float = Field(
        default=0.2, gt=0, le=1, description="Share of high+ samples that makes the batch high."
    )
    calibration: CalibrationSpec | None = Field(
        default_factory=CalibrationSpec,
        description="Split-conformal tier thresholds on the reference's tier role; null: fixed thresholds.",
    )

    @field_validator("weights")
    @classmethod
    def _known_factors(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(FACTORS))
        if unknown:
            raise ValueError(f"unknown factor(s) {unknown}; known: {list(FACTORS)}")
        bad = {k: v for k, v in value.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"weights must lie in [0, 1], got {bad}")
        return {name: float(value.get(name, DEFAULT_WEIGHTS[name])) for name in FACTORS}

    @field_validator("thresholds")
    @classmethod
    def _increasing(cls, value: dict[Tier, float]) -> dict[Tier, float]:
        need = {Tier.MEDIUM, Tier.HIGH, Tier.CRITICAL}
        if set(value) != need:
            raise ValueError(f"thresholds need exactly medium, high, critical; got {sorted(map(str, value))}")
        m, h, c = value[Tier.MEDIUM], value[Tier.HIGH], value[Tier.CRITICAL]
        if not 0 < m < h < c <= 1:
            raise ValueError(f"thresholds must satisfy 0 < medium < high < critical <= 1, got {m}, {h}, {c}")
        return value


__all__ = [
    "DEFAULT_THRESHOLDS",
    "DEFAULT_WEIGHTS",
    "CalibrationSpec",
    "ScoringSpec",
    "SignalsSpec",
    "StrictSpec",
]
