"""RiskScoreOperator: combine certificates, rules, drift/novelty, context and the signals into
per-sample and per-batch risk (``sample_risk.parquet``, ``batch_risk.json``), tiered with the
context step's calibrated thresholds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context

from certrisk.operators.artifacts import read_parquet, write_json, write_parquet, write_text
from certrisk.operators.base import CertriskOperator
from certrisk.risk.calibration import TierCalibration
from certrisk.risk.limitations import limitations
from certrisk.risk.score import score_samples
from certrisk.risk.tiering import score_batch


class RiskScoreOperator(CertriskOperator):
    """Score every sample and the batch under the policy.

    :param certified: the merge step's dict; :param rules: the rule check's dict;
    :param drift: the drift step's dict; :param context_result: the context step's dict (with the
    run's model health record, which a broken model turns into a critical batch, the signals'
    table and the tier calibration). Any of rules, drift and context_result may be None: their
    factors (and the model's health, the signals, the calibration) are then recorded as not
    measured rather than silently zero, and the policy's fixed thresholds set the tiers. The
    calibration (its size, thresholds, rates, feasibility and guarantee) goes into the batch
    summary and the limitations of every run, and so does the serving parity the certify step
    measured (a warning when it is above ``certification.parity_threshold``).
    """

    template_fields: Sequence[str] = (
        *CertriskOperator.template_fields,
        "batch",
        "certified",
        "rules",
        "drift",
        "context_result",
    )

    def __init__(
        self,
        *,
        batch: Any,
        certified: Any,
        rules: Any = None,
        drift: Any = None,
        context_result: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.batch = batch
        self.certified = certified
        self.rules = rules
        self.drift = drift
        self.context_result = context_result

    def run(self, context: Context) -> dict:
        pol = self.loaded_policy.policy
        ctx = self.context_result or {}
        calibration = TierCalibration.from_dict(ctx["calibration"]) if ctx.get("calibration") else None
        sample_risk = score_samples(
            certificates=read_parquet(self.certified["certificates"]),
            predictions=read_parquet(self.certified["predictions"]),
            policy=pol,
            rules=read_parquet(self.rules["rule_samples"]) if self.rules else None,
            novelty=read_parquet(self.drift["novelty"]) if self.drift else None,
            context=read_parquet(ctx["context"]) if ctx else None,
            signals=read_parquet(ctx["signals"]) if ctx.get("signals") else None,
            calibration=calibration,
        )
        summary = score_batch(
            sample_risk,
            policy=pol,
            drift_tests=read_parquet(self.drift["drift_tests"]) if self.drift else None,
            rule_expectations=read_parquet(self.rules["rule_expectations"]) if self.rules else None,
            reference_abstention_rate=(
                self.context_result["reference_abstention_rate"] if self.context_result else None
            ),
            n_reference=self.context_result["n_reference"] if self.context_result else None,
            model_health=ctx.get("model_health"),
            calibration=calibration,
        )
        root = self.run_dir(context)
        parity = self.certified.get("serving_parity")
        statement = limitations(pol, calibration=calibration, parity=parity)
        summary = {
            **summary,
            "batch_id": self.batch["batch_id"],
            "batch_sha256": self.batch["batch_sha256"],
            # the key the certificate seeds derived from (the certify task's, which may be overridden)
            "run_key": self.certified.get("run_key") or self.run_key(context),
            "certification_costs": self.certified.get("costs", {}),
            "devices": self.certified.get("devices", []),
            "n_shards": self.certified.get("n_shards", 1),
            "serving_parity": parity,
        }
        if parity and parity.get("above_threshold"):
            self.log.warning(
                "serving parity %.2f%% at %s vs serving %s is above the policy's threshold %.2f%%: the "
                "certificates describe a model that predicts differently from the served one on that share",
                100 * parity["share"],
                parity["precision"],
                parity["serving_precision"],
                100 * parity["threshold"],
            )
        out = {
            "sample_risk": write_parquet(root / "sample_risk.parquet", sample_risk),
            "batch_risk": write_json(root / "batch_risk.json", summary),
            "limitations": write_text(root / "limitations.md", statement),
            "tier": summary["tier"],
            "mean_risk": float(summary["mean_risk"]),
            "abstention_rate": float(summary["abstention_rate"]),
            "n_samples": int(summary["n_samples"]),
            "reasons": list(summary.get("reasons", [])),
        }
        self.log.info(
            "risk: batch tier %s; mean risk %.3f; abstention %.1f%%; tiers %s; reasons: %s",
            out["tier"],
            out["mean_risk"],
            100 * out["abstention_rate"],
            summary.get("tier_counts"),
            "; ".join(out["reasons"]) or "none",
        )
        return out
