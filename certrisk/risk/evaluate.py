"""Measured detection: what the production risk catches of an attack suite, and what it misses.

``evaluate_detection`` attacks a labelled, held-out evaluation set with the families of
``FAMILIES`` (``certrisk.risk.attacks``), pushes every attacked set through a caller-given
``score`` callable (the production scoring path: certification, rules, drift, novelty, context,
score, tiers) and measures, per family and budget, what reaches each tier
(DESIGN.md, Principle 8). It is pure: no Airflow, no database, no files; the caller's ``score``
does the I/O (``certrisk.operators.evaluate`` runs the pipeline's operators in-process).

Budgets come from the data's geometry: ``eps = fraction * median_i min_j ||x_i - r_j||`` over the
evaluation samples x_i and the reference samples r_j of another class, in the attack's norm.
Fractions up to ``SCORED_FRACTION`` (one half) are scored; larger ones are reported apart, since
the input may then genuinely belong to another class.

Per family and budget (one row of the result frame), over the evaluation samples the base model
classifies correctly (``n_attacked``) and those the attack moved to another class (successful):
success rate, abstention among the successful, per-sample AUROC of risk (successful attacks
against every clean evaluation sample), the share of successful attacks at tier >= high and
>= medium, the clean false-alarm share (clean at >= high), the batch tier of the attacked set,
and the same for a certificate-only score (abstention and radius rank alone, the policy's
weights for those two factors, thresholded at the split-conformal ``1 - false_alarm_rate``
quantile of the clean calibration set's certificate-only risk, a sample above it strictly being
at ">= high"), so the gain is visible. The attacked set is every evaluation sample after the
attack, successful or not (a PGD that fails returns its input), and the batch tier is that set's;
``shift`` moves every input, so all correctly classified ones count as successful.

A family that catches little here is a measured miss, not a bug; an attack that fails proves
nothing about robustness; the adaptive family is reported as measured and sets no target.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from torch import nn

from certrisk.risk.attack_suite import (
    FAMILIES,
    NORMS,
    AttackSetting,
    Family,
    LabelledSet,
    base_predictions,
    class_geometry,
    run_attack,
)
from certrisk.risk.conformal import Threshold, conformal_threshold
from certrisk.risk.score import combine_factors, weight_vector
from certrisk.schemas.columns import FACTORS, SAMPLE_ID
from certrisk.schemas.enums import Tier
from certrisk.schemas.errors import InputError
from certrisk.schemas.policy import Policy

#: Budget fractions of the geometry scored against the targets; larger ones are reported apart.
SCORED_FRACTION = 0.5
DEFAULT_FRACTIONS = (0.25, 0.5)
#: The certificate-only score: the driving certificate's own factors.
CERTIFICATE_ONLY_FACTORS = ("abstention", "radius_rank")


@dataclass(frozen=True)
class ScoredSet:
    """What the production path gave a set: ``sample_risk`` (SAMPLE_RISK_COLUMNS), the batch
    ``summary`` (its ``tier`` at least) and ``context`` (CONTEXT_COLUMNS) for the certificate-only
    score."""

    sample_risk: pd.DataFrame
    summary: dict
    context: pd.DataFrame


#: ``score(name, ids, x) -> ScoredSet``: x of shape (n, *input_shape), float32.
Scorer = Callable[[str, np.ndarray, np.ndarray], ScoredSet]


@dataclass(frozen=True)
class DetectionEvaluation:
    """The result: ``frame`` (one row per family and budget, ``DETECTION_COLUMNS``) and
    ``metadata`` (JSON-able: provenance, geometry, budgets, seeds, sizes, thresholds)."""

    frame: pd.DataFrame
    metadata: dict


# --------------------------------------------------------------------------------------------
# scores and metrics


def tier_at_least(tiers, tier: Tier) -> np.ndarray:
    """Bool array: which of ``tiers`` (tier strings, shape (n,)) are at ``tier`` or above."""
    ranks = {t.value: t.rank for t in Tier}
    return np.array([ranks[str(t)] >= tier.rank for t in tiers], dtype=bool)


def certificate_only_risk(scored: ScoredSet, policy: Policy) -> np.ndarray:
    """The certificate-only risk of each sample, float64 of shape (n,) in sample_risk's order.

    Abstention (``sample_risk.abstained``) and radius rank (1 - the driving method's
    ``radius_percentile`` in ``context``, the percentile taken as 0 for an abstained sample
    without one, as ``certrisk.risk.score`` defines the factor), combined as the scorer combines
    factors, with the policy's weights for these two factors only.
    """
    sr = scored.sample_risk
    method = policy.certification.driving.method.value
    ctx = scored.context.loc[scored.context["method"].astype(str) == method]
    pct = ctx.set_index(ctx[SAMPLE_ID].astype(str))["radius_percentile"]
    ids = sr[SAMPLE_ID].astype(str)
    missing = ~ids.isin(pct.index)
    if missing.any():
        raise InputError(f"context: no {method!r} row for sample {ids[missing].iloc[0]!r}")
    abstained = sr["abstained"].to_numpy(dtype=bool)
    percentile = np.array(pct.reindex(ids).to_numpy(dtype=np.float64))
    percentile[abstained & np.isnan(percentile)] = 0.0
    if np.isnan(percentile).any():
        row = int(np.flatnonzero(np.isnan(percentile))[0])
        raise InputError(f"context: radius_percentile is NaN for certified sample {ids.iloc[row]!r}")
    rank = 1.0 - percentile
    f = np.zeros((len(sr), len(FACTORS)), dtype=np.float64)
    f[:, FACTORS.index("abstention")] = abstained
    f[:, FACTORS.index("radius_rank")] = np.clip(rank, 0.0, 1.0)
    w = weight_vector(policy.scoring)
    keep = np.isin(np.asarray(FACTORS), CERTIFICATE_ONLY_FACTORS)
    return combine_factors(f, np.where(keep, w, 0.0))


def _auroc(attack: np.ndarray, clean: np.ndarray) -> float:
    """Per-sample AUROC of scores: attacks (positives) against clean samples; NaN without both."""
    from sklearn.metrics import roc_auc_score

    if len(attack) == 0 or len(clean) == 0:
        return float("nan")
    y = np.r_[np.ones(len(attack)), np.zeros(len(clean))]
    return float(roc_auc_score(y, np.r_[attack, clean]))


def _share(mask: np.ndarray) -> float:
    return float(mask.mean()) if len(mask) else float("nan")


@dataclass(frozen=True)
class CleanBaseline:
    """The clean evaluation set as scored, and the certificate-only thresholds from calibration."""

    risk: np.ndarray
    tiers: np.ndarray
    certificate_only: np.ndarray
    high: Threshold
    medium: Threshold
    summary: dict


def detection_metrics(
    scored: ScoredSet, success: np.ndarray, clean: CleanBaseline, certificate_only: np.ndarray
) -> dict:
    """Metrics of one attacked set: ``success`` (bool (n,), in sample_risk's order) marks the
    successful attacks; ``certificate_only`` is their certificate-only risk (float64 (n,))."""
    sr = scored.sample_risk
    hit = np.asarray(success, dtype=bool)
    tiers = sr["tier"].astype(str).to_numpy()[hit]
    cert = certificate_only[hit]
    return {
        "n_successful": int(hit.sum()),
        "abstention_rate": _share(sr["abstained"].to_numpy(dtype=bool)[hit]),
        "auroc": _auroc(sr["risk"].to_numpy(dtype=np.float64)[hit], clean.risk),
        "share_high": _share(tier_at_least(tiers, Tier.HIGH)),
        "share_medium": _share(tier_at_least(tiers, Tier.MEDIUM)),
        "clean_false_alarm": _share(tier_at_least(clean.tiers, Tier.HIGH)),
        "batch_tier": str(scored.summary["tier"]),
        "cert_auroc": _auroc(cert, clean.certificate_only),
        "cert_share_high": _share(cert > clean.high.value),
        "cert_share_medium": _share(cert > clean.medium.value),
        "cert_clean_false_alarm": _share(clean.certificate_only > clean.high.value),
    }


DETECTION_COLUMNS = (
    "family", "norm", "budget_fraction", "eps", "scored", "adaptive", "n_attacked", "n_successful", "success_rate",
    "misclassified_rate", "abstention_rate", "auroc", "share_high", "share_medium", "clean_false_alarm",
    "batch_tier", "cert_auroc", "cert_share_high", "cert_share_medium", "cert_clean_false_alarm", "seconds",
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# the harness


def calibration_rates(policy: Policy) -> tuple[float, float]:
    """(false-alarm rate at tier >= high, rate at >= medium) of the certificate-only thresholds:
    the policy's ``scoring.calibration`` (the rates its own tiers are calibrated to), else 0.05
    and 0.2."""
    cal = policy.scoring.calibration
    if cal is None:
        return 0.05, 0.2
    return float(cal.false_alarm_rate), float(cal.medium_rate)


def _aligned(scored: ScoredSet, ids: np.ndarray, name: str) -> ScoredSet:
    """``scored`` with sample_risk in the order of ``ids``; InputError when a sample is missing."""
    sr = scored.sample_risk.set_index(scored.sample_risk[SAMPLE_ID].astype(str), drop=False)
    missing = [i for i in ids if i not in sr.index]
    if missing:
        raise InputError(f"scored set {name!r}: no sample_risk row for sample {missing[0]!r}")
    return ScoredSet(sr.loc[list(ids)].reset_index(drop=True), scored.summary, scored.context)


def _clean_baseline(
    score: Scorer, policy: Policy, evaluation: LabelledSet, calibration: LabelledSet
) -> CleanBaseline:
    far, medium_rate = calibration_rates(policy)
    cal = _aligned(score("calibration", calibration.ids, calibration.x), calibration.ids, "calibration")
    cal_cert = certificate_only_risk(cal, policy)
    clean = _aligned(score("clean", evaluation.ids, evaluation.x), evaluation.ids, "clean")
    return CleanBaseline(
        risk=clean.sample_risk["risk"].to_numpy(dtype=np.float64),
        tiers=clean.sample_risk["tier"].astype(str).to_numpy(),
        certificate_only=certificate_only_risk(clean, policy),
        high=conformal_threshold(cal_cert, far),
        medium=conformal_threshold(cal_cert, medium_rate),
        summary=clean.summary,
    )


def _settings(families: Sequence[str], fractions: Sequence[float]) -> list[tuple[Family, float | None]]:
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise InputError(f"attacks: unknown famil(ies) {unknown}; choose from {list(FAMILIES)}")
    bad = [f for f in fractions if not (np.isfinite(f) and f > 0)]
    if bad or not fractions:
        raise InputError(f"fractions: budget fractions must be finite and > 0, got {list(fractions)}")
    out: list[tuple[Family, float | None]] = []
    for name in families:
        fam = FAMILIES[name]
        out.extend([(fam, None)] if fam.norm is None else [(fam, float(f)) for f in fractions])
    return out


def evaluate_detection(
    model: nn.Module,
    policy: Policy,
    *,
    evaluation: LabelledSet,
    calibration: LabelledSet,
    setting: AttackSetting,
    score: Scorer,
    families: Sequence[str] = tuple(FAMILIES),
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    provenance: dict | None = None,
) -> DetectionEvaluation:
    """Run the attack suite on ``evaluation`` and measure what ``score`` catches.

    Parameters
    ----------
    model : the policy's model (eval mode), attacked white-box; x of shape (B, *input_shape).
    policy : the model's Policy (weights, driving method, calibration rates).
    evaluation : the held-out labelled set, never used for calibration.
    calibration : clean samples (e.g. the reference's ``tier`` role) that set the
        certificate-only thresholds; disjoint from ``evaluation``.
    setting : the attacks' box, reference (geometry and the adaptive attack's target samples),
        seed and steps.
    score : the production scoring path (see ``Scorer``); called once for the calibration set,
        once for the clean evaluation set and once per family and budget.
    families, fractions : which attacks, at which fractions of the geometry (shift has no budget).
    provenance : JSON-able facts copied into the metadata (model, policy, reference hashes).

    Returns
    -------
    DetectionEvaluation: ``frame`` with DETECTION_COLUMNS, one row per family and budget;
    ``metadata`` with the geometry (median distances per norm), budgets, seed, sizes, the
    certificate-only thresholds, the clean set's batch tier and the provenance.
    """
    plan = _settings(families, fractions)
    geometry = class_geometry(evaluation, setting.reference)
    clean = _clean_baseline(score, policy, evaluation, calibration)
    correct = base_predictions(model, evaluation.x) == evaluation.labels
    rows = []
    for family, fraction in plan:
        t0 = time.perf_counter()
        eps = None if fraction is None else fraction * geometry[family.norm]
        x_adv, moved = run_attack(model, family, evaluation, eps or 0.0, setting)
        tag = family.name if fraction is None else f"{family.name}@{fraction:g}"
        ids = np.array([f"{tag}:{i}" for i in evaluation.ids], dtype=object)
        scored = _aligned(score(tag, ids, x_adv), ids, tag)
        success = correct & moved
        metrics = detection_metrics(scored, success, clean, certificate_only_risk(scored, policy))
        rows.append(
            {
                "family": family.name,
                "norm": family.norm,
                "budget_fraction": fraction,
                "eps": eps,
                "scored": fraction is None or fraction <= SCORED_FRACTION,
                "adaptive": family.adaptive,
                "n_attacked": int(correct.sum()),
                "success_rate": _share(moved[correct]),
                "misclassified_rate": float((base_predictions(model, x_adv) != evaluation.labels).mean()),
                **metrics,
                "seconds": time.perf_counter() - t0,
            }
        )
    frame = pd.DataFrame(rows, columns=list(DETECTION_COLUMNS))
    metadata = _metadata(geometry, fractions, setting, evaluation, calibration, clean, correct, provenance)
    return DetectionEvaluation(frame, metadata)


def _threshold(t: Threshold) -> dict:
    """A threshold as strict JSON: ``value`` None when infeasible (too few calibration samples)."""
    value = t.value if np.isfinite(t.value) else None
    return {"rate": t.rate, "value": value, "n_calibration": t.n_calibration, "feasible": t.feasible}


def _metadata(geometry, fractions, setting, evaluation, calibration, clean, correct, provenance) -> dict:
    return {
        **(provenance or {}),
        "geometry": {"median_nearest_other_class": geometry, "n_reference": len(setting.reference.ids)},
        "budgets": {n: {f"{f:g}": f * geometry[n] for f in fractions} for n in NORMS},
        "fractions": [float(f) for f in fractions],
        "scored_fraction": SCORED_FRACTION,
        "seed": int(setting.seed),
        "seeds": {"attacks": int(setting.seed)},
        "steps": int(setting.steps),
        "kappa": float(setting.kappa),
        "n_clean": len(evaluation.ids),
        "n_clean_correct": int(correct.sum()),
        "n_calibration": len(calibration.ids),
        "certificate_only": {
            "factors": list(CERTIFICATE_ONLY_FACTORS),
            "high": _threshold(clean.high),
            "medium": _threshold(clean.medium),
        },
        "clean": {
            "batch_tier": str(clean.summary["tier"]),
            "abstention_rate": clean.summary.get("abstention_rate"),
            "false_alarm": _share(tier_at_least(clean.tiers, Tier.HIGH)),
            "at_medium": _share(tier_at_least(clean.tiers, Tier.MEDIUM)),
            "not_measured": list(clean.summary.get("not_measured", [])),
        },
    }


def _plain(value):
    """A JSON-able Python value: numpy scalars as Python numbers, NaN as None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def evaluation_records(result: DetectionEvaluation) -> list[dict]:
    """The frame's rows as JSON-able dicts (numbers as Python numbers, NaN as None), each carrying
    the metadata's keys that identify what was evaluated (model, policy, reference and evaluation
    set hashes, seed): rows ready to be stored."""
    keys = ("model_sha256", "policy_sha256", "reference_sha256", "evaluation_sha256", "seed")
    ident = {k: result.metadata[k] for k in keys if k in result.metadata}
    return [
        {**ident, **{k: _plain(v) for k, v in row.items()}} for row in result.frame.to_dict(orient="records")
    ]


#: Targets of measured detection for every scored (within half the geometry budget),
#: non-adaptive family: share of successful attacks at tier >= high, per-sample AUROC, and the
#: clean false-alarm share at tier >= high (an upper bound).
TARGETS = {"share_high": 0.90, "auroc": 0.97, "clean_false_alarm": 0.05}


def target_gaps(frame: pd.DataFrame, targets: dict[str, float] = TARGETS) -> list[str]:
    """One line per scored, non-adaptive row of ``frame`` (DETECTION_COLUMNS) and missed target,
    naming the family, budget, measured value and target; empty when every target is met."""
    lines = []
    rows = frame[frame["scored"].astype(bool) & ~frame["adaptive"].astype(bool)]
    for row in rows.itertuples(index=False):
        fraction = row.budget_fraction
        where = row.family if pd.isna(fraction) else f"{row.family} at {fraction:g} of the geometry"
        for key, target in targets.items():
            value = getattr(row, key)
            upper = key == "clean_false_alarm"
            if pd.isna(value):
                lines.append(f"{where}: {key} not measured (no successful attack)")
            elif (value > target) if upper else (value < target):
                lines.append(f"{where}: {key} {value:.3f} {'>' if upper else '<'} target {target:g}")
    return lines


def _pct(value) -> str:
    return "-" if pd.isna(value) else f"{100 * value:.0f}%"


def family_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The detection frame for people: one row per family and budget, percentages and AUROCs as
    strings, the production score beside the certificate-only one; budgets beyond one half of
    the geometry are marked "beyond (class change?)" and the adaptive family "adaptive"."""

    def budget(row) -> str:
        if pd.isna(row["budget_fraction"]):
            return "-"
        return f"{row['budget_fraction']:g} ({row['norm']} {row['eps']:.3g})"

    def note(row) -> str:
        return "; ".join(
            n
            for n, on in (("adaptive", row["adaptive"]), ("beyond (class change?)", not row["scored"]))
            if on
        )

    def auc(value) -> str:
        return "-" if pd.isna(value) else f"{value:.3f}"

    return pd.DataFrame(
        {
            "family": frame["family"],
            "budget": frame.apply(budget, axis=1),
            "success": frame["success_rate"].map(_pct),
            "abstain": frame["abstention_rate"].map(_pct),
            ">=high": frame["share_high"].map(_pct),
            ">=medium": frame["share_medium"].map(_pct),
            "AUROC": frame["auroc"].map(auc),
            "clean FA": frame["clean_false_alarm"].map(_pct),
            "batch": frame["batch_tier"],
            "cert >=high": frame["cert_share_high"].map(_pct),
            "cert AUROC": frame["cert_auroc"].map(auc),
            "cert clean FA": frame["cert_clean_false_alarm"].map(_pct),
            "note": frame.apply(note, axis=1),
        }
    )
