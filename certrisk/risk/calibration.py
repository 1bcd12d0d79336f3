"""Calibration on held-out clean reference samples: a continuous scale for signals, and tier
thresholds with a finite-sample false-alarm guarantee.

Signals. A raw score (reference-neighbour disagreement, in [0, 1], 1/2 where the predicted class's
reference neighbours are no nearer than another class's) means little until it is compared with
clean samples. ``signal_scale`` maps it to a factor that is 0 for the share ``1 - tail`` of
held-out clean calibration samples whose scores are lowest (below their ``1 - tail`` quantile q)
and rises linearly in score units to 1 at the boundary 1/2 (at 1 when q is already at or above
1/2): continuous and non-decreasing, so it adds no noise to most clean samples and keeps the size
of a disagreement, where a rank scale would give the top clean sample of a tight clean
distribution nearly the factor of a sample its neighbours contradict outright. Beyond the
boundary every score counts fully; the tier rule catches such ties at the abstention floor.

Tiers. ``calibrate_tiers`` sets the medium and high thresholds by split conformal on the risks of
the reference's ``tier`` role, scored exactly like a batch. A sample is at a tier or above when
its risk exceeds the tier's threshold (``TierCut``) or a rule severity floors it there. To keep
floors inside the guarantee, a calibration sample floored at a tier counts as a score above every
risk (``FLOORED``) for that tier's threshold. With k = ceil((n + 1)(1 - rate)) the k-th smallest
such score is the threshold and, under exchangeability of clean batch samples with the tier
role, P(a clean sample is at that tier or above) <= rate (``certrisk.risk.conformal``); marginal
over the calibration draw, for clean data like the tier role, and nothing about attacked inputs.

Two limits are stated, not hidden (``TierCalibration.feasible``, ``guarantee``): the high threshold
never exceeds the abstention floor (the risk of abstention alone), so that abstention alone always
reaches high; when the conformal threshold is at or above that floor, the floor is used and the
guarantee cannot hold for abstained clean samples. When the tier role has fewer samples than a
rate needs (``min_calibration_size``), that tier keeps the policy's fixed threshold.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from certrisk.risk.conformal import conformal_threshold, min_calibration_size
from certrisk.schemas.enums import Tier
from certrisk.schemas.errors import InputError
from certrisk.schemas.policy import ScoringSpec

#: Fixed thresholds compare with this tolerance so that a weight equal to a threshold reaches it
#: despite floating-point rounding of 1 - (1 - w).
TIER_TOLERANCE = 1e-12
#: The calibration score of a sample a rule severity floors at a tier: above every risk in [0, 1].
FLOORED = 2.0
#: Sources of a tier threshold.
CONFORMAL, ABSTENTION_FLOOR, POLICY = "conformal", "abstention_floor", "policy"


# --------------------------------------------------------------------------------------------
# continuous scales of signals


def signal_scale(
    calibration: np.ndarray, values: np.ndarray, *, tail: float, boundary: float = 0.5
) -> np.ndarray:
    """Factor of signal scores on the scale calibrated by clean ``calibration`` scores.

    calibration : scores of shape (n,), finite, of held-out clean samples.
    values : scores of shape (m,) in [0, 1].
    tail : share (0, 1] of clean samples whose factor may exceed 0.
    boundary : the score at which the factor reaches 1 (1/2 for neighbour disagreement); 1 when
        the clean ``1 - tail`` quantile already reaches it.
    Returns float64 of shape (m,): ``clip((value - q) / (top - q), 0, 1)`` with q the ``1 - tail``
    quantile of ``calibration`` (its ceil((n + 1)(1 - tail))-th smallest, the largest when that
    exceeds n) and top the boundary (or 1).
    """
    cal = np.sort(np.asarray(calibration, dtype=np.float64).reshape(-1))
    if not len(cal) or not np.isfinite(cal).all():
        raise InputError("signal_scale: the calibration scores must be finite and not empty")
    if not 0.0 < tail <= 1.0:
        raise InputError(f"signal_scale: tail must lie in (0, 1], got {tail}")
    q = float(cal[min(len(cal), math.ceil((len(cal) + 1) * (1.0 - tail))) - 1]) if tail < 1 else float(cal[0])
    top = boundary if q < boundary else 1.0
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if top <= q:  # every clean quantile at the maximum score: only the maximum counts
        return (v >= top).astype(np.float64)
    return np.clip((v - q) / (top - q), 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# tier thresholds


@dataclass(frozen=True)
class TierCut:
    """The risk at which a tier begins: ``risk > value`` when ``strict`` (a conformal threshold),
    else ``risk + TIER_TOLERANCE >= value`` (a fixed threshold or the abstention floor).
    ``source`` says where ``value`` came from: "conformal", "abstention_floor" or "policy"."""

    value: float
    strict: bool
    source: str

    def reached(self, risk: np.ndarray) -> np.ndarray:
        """Bool array: which risks (shape (n,)) reach this cut."""
        r = np.asarray(risk, dtype=np.float64)
        return r > self.value if self.strict else r + TIER_TOLERANCE >= self.value


def fixed_cuts(scoring: ScoringSpec) -> dict[Tier, TierCut]:
    """The policy's fixed thresholds as cuts (``risk >= threshold``), for medium, high and critical."""
    return {
        t: TierCut(float(scoring.thresholds[t]), False, POLICY)
        for t in (Tier.MEDIUM, Tier.HIGH, Tier.CRITICAL)
    }


def tier_ranks(risk: np.ndarray, cuts: dict[Tier, TierCut], floor: np.ndarray | None = None) -> np.ndarray:
    """Tier ranks (Tier.rank: 0 low .. 3 critical) of risks of shape (n,): the highest tier whose
    cut the risk reaches, raised to ``floor`` (int ranks of shape (n,), e.g. from rule severities)."""
    r = np.asarray(risk, dtype=np.float64)
    ranks = np.zeros(len(r), dtype=np.int64)
    for tier in (Tier.MEDIUM, Tier.HIGH, Tier.CRITICAL):  # in rising order: a higher cut overrides
        ranks[cuts[tier].reached(r)] = tier.rank
    if floor is not None:
        ranks = np.maximum(ranks, np.asarray(floor, dtype=np.int64))
    return ranks


@dataclass(frozen=True)
class TierCalibration:
    """Tier thresholds calibrated on ``n_calibration`` clean tier-role samples.

    ``medium``, ``high``, ``critical``: the cuts in force. ``conformal_medium`` and
    ``conformal_high``: the split-conformal thresholds (None when the tier role is too small for
    the rate). ``feasible``: the high cut is the conformal threshold, so P(clean at >= high) <=
    ``false_alarm_rate`` under exchangeability; ``medium_feasible`` likewise at ``medium_rate``.
    ``share_high`` and ``share_medium``: the tier role's own share at >= high and >= medium under
    these cuts (an estimate of the clean false-alarm share, a guarantee only when feasible).
    """

    n_calibration: int
    false_alarm_rate: float
    medium_rate: float
    medium: TierCut
    high: TierCut
    critical: TierCut
    conformal_medium: float | None
    conformal_high: float | None
    feasible: bool
    medium_feasible: bool
    share_high: float
    share_medium: float

    @property
    def cuts(self) -> dict[Tier, TierCut]:
        return {Tier.MEDIUM: self.medium, Tier.HIGH: self.high, Tier.CRITICAL: self.critical}

    @property
    def guarantee(self) -> str:
        """The finite-sample statement this calibration supports, in words."""
        return calibration_statement(self)

    def to_dict(self) -> dict:
        """JSON-able (no inf or NaN): every field, plus ``method`` and the ``guarantee`` text."""
        out = asdict(self)
        return {"method": "split_conformal", **out, "guarantee": self.guarantee}

    @classmethod
    def from_dict(cls, data: dict) -> TierCalibration:
        """Inverse of ``to_dict`` (extra keys ignored); InputError on a missing key."""
        names = [f for f in cls.__dataclass_fields__]
        missing = [f for f in names if f not in data]
        if missing:
            raise InputError(f"tier calibration: missing key(s) {missing}")
        values = {f: data[f] for f in names}
        for tier in ("medium", "high", "critical"):
            values[tier] = TierCut(**values[tier]) if isinstance(values[tier], dict) else values[tier]
        return cls(**values)


def _conformal(scores: np.ndarray, rate: float) -> float | None:
    """The split-conformal threshold at ``rate``, or None when there are too few scores for it."""
    t = conformal_threshold(scores, rate)
    return t.value if t.feasible else None


def calibrate_tiers(risk: np.ndarray, floor: np.ndarray, scoring: ScoringSpec) -> TierCalibration:
    """Tier thresholds from the risks of clean calibration samples scored like a batch.

    risk : float array of shape (n,) in [0, 1], the tier role's risks (``score_samples``).
    floor : int array of shape (n,), each sample's tier floor (Tier.rank) from rule severities.
    scoring : the policy's ScoringSpec; its ``calibration`` gives the rates (InputError when None).
    """
    spec = scoring.calibration
    if spec is None:
        raise InputError("calibrate_tiers: the policy's scoring.calibration is null (fixed thresholds)")
    r = np.asarray(risk, dtype=np.float64).reshape(-1)
    fl = np.asarray(floor, dtype=np.int64).reshape(-1)
    if fl.shape != r.shape:
        raise InputError(f"calibrate_tiers: {len(fl)} floor(s) for {len(r)} risk(s)")
    if not len(r):
        raise InputError("calibrate_tiers: no calibration samples (the reference's tier role is empty)")
    fixed = fixed_cuts(scoring)
    weight = float(scoring.weights["abstention"])
    abstention_floor = weight if weight > 0 else math.inf  # abstention switched off: no floor
    conf_high = _conformal(np.where(fl >= Tier.HIGH.rank, FLOORED, r), spec.false_alarm_rate)
    conf_medium = _conformal(np.where(fl >= Tier.MEDIUM.rank, FLOORED, r), spec.medium_rate)
    if conf_high is not None and conf_high < abstention_floor - TIER_TOLERANCE:
        high = TierCut(conf_high, True, CONFORMAL)
    elif conf_high is None and fixed[Tier.HIGH].value <= abstention_floor:
        high = fixed[Tier.HIGH]
    else:  # the high threshold never exceeds the abstention floor: abstention alone reaches high
        high = TierCut(abstention_floor, False, ABSTENTION_FLOOR)
    medium = fixed[Tier.MEDIUM] if conf_medium is None else TierCut(conf_medium, True, CONFORMAL)
    if medium.value >= high.value:  # medium never starts above high
        medium = TierCut(high.value, high.strict, high.source)
    cuts = {Tier.MEDIUM: medium, Tier.HIGH: high, Tier.CRITICAL: fixed[Tier.CRITICAL]}
    ranks = tier_ranks(r, cuts, fl)
    return TierCalibration(
        n_calibration=len(r),
        false_alarm_rate=float(spec.false_alarm_rate),
        medium_rate=float(spec.medium_rate),
        medium=medium,
        high=high,
        critical=cuts[Tier.CRITICAL],
        conformal_medium=conf_medium,
        conformal_high=conf_high,
        feasible=high.source == CONFORMAL,
        medium_feasible=medium.source == CONFORMAL,
        share_high=float((ranks >= Tier.HIGH.rank).mean()),
        share_medium=float((ranks >= Tier.MEDIUM.rank).mean()),
    )


def _tier_statement(name: str, rate: float, cut: TierCut, conformal: float | None, n: int) -> str:
    if cut.source == CONFORMAL:
        return f"P(such a sample at tier >= {name}) <= {rate:g} (threshold: risk > {cut.value:.4f})"
    if conformal is None:
        floor = " (the abstention floor, below the fixed threshold)" if cut.source == ABSTENTION_FLOOR else ""
        return (
            f"tier {name}: {n} tier-role sample(s) are too few for a split-conformal threshold at {rate:g} "
            f"(needs >= {min_calibration_size(rate)}); the threshold {cut.value:g}{floor or ' of the policy'} "
            "applies, with no false-alarm guarantee"
        )
    what = "abstention floor" if cut.source == ABSTENTION_FLOOR else "high threshold"
    return (
        f"tier {name}: the conformal threshold {conformal:.4f} at {rate:g} is at or above the {what} "
        f"{cut.value:.4f}, which applies instead: the {rate:g} target cannot be guaranteed"
        + (" (abstention alone keeps reaching tier high)" if cut.source == ABSTENTION_FLOOR else "")
    )


def calibration_statement(c: TierCalibration) -> str:
    """The calibration's finite-sample guarantee and its limits, in words."""
    parts = [
        _tier_statement("high", c.false_alarm_rate, c.high, c.conformal_high, c.n_calibration),
        _tier_statement("medium", c.medium_rate, c.medium, c.conformal_medium, c.n_calibration),
    ]
    return (
        f"Split-conformal calibration on the {c.n_calibration} held-out samples of the reference's tier "
        "role, scored like a batch. For batch samples exchangeable with them (unmodified samples drawn "
        "like the reference): "
        + "; ".join(parts)
        + f". On the tier role itself {c.share_high:.3f} reach high and {c.share_medium:.3f} medium. "
        "The guarantee is marginal (over the draw of the calibration samples), holds only for data like "
        "the reference, and says nothing about attacked inputs. Critical keeps the policy's threshold "
        f"{c.critical.value:g}; a failed critical rule makes a sample critical."
    )


__all__ = [
    "ABSTENTION_FLOOR",
    "CONFORMAL",
    "FLOORED",
    "POLICY",
    "TIER_TOLERANCE",
    "TierCalibration",
    "TierCut",
    "calibrate_tiers",
    "calibration_statement",
    "fixed_cuts",
    "signal_scale",
    "tier_ranks",
]
