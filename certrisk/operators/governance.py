"""GovernanceWriteOperator: record the run in the governance database, exactly once, and the
alert task that fails the DAG run (after the record has landed) when the batch tier reaches the
policy's alert tier."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

import certrisk
from certrisk.operators.artifacts import read_json, read_parquet, read_text
from certrisk.operators.base import CertriskOperator, GovernanceOperator
from certrisk.risk.evidence import run_rmf_evidence
from certrisk.schemas.clock import as_utc, utc_now
from certrisk.schemas.enums import Tier


class GovernanceWriteOperator(GovernanceOperator):
    """Write the run's records (samples, certificates, rules, drift, RMF evidence, audit entry)
    in one transaction. Writing the same run again changes nothing ("already recorded").

    :param batch: the validate step's dict; :param certified: the merge step's dict;
    :param scored: the score step's dict; :param rules: the rule check's dict (optional);
    :param drift: the drift step's dict (optional); all templated, usually XComArgs.
    :param supersede: record a different payload for an already recorded run as a new revision
        (the connection's role must be the reviser on PostgreSQL).
    :param supersede_reason: why the revision is made; required with ``supersede`` (templated);
        reports, the dashboard and ``certrisk runs`` show it with the previous tier.
    :param certrisk_conn_id: see ``GovernanceOperator``.
    """

    template_fields: Sequence[str] = (
        *GovernanceOperator.template_fields,
        "batch",
        "certified",
        "rules",
        "drift",
        "scored",
        "supersede_reason",
    )

    def __init__(
        self,
        *,
        batch: Any,
        certified: Any,
        scored: Any,
        rules: Any = None,
        drift: Any = None,
        supersede: bool = False,
        supersede_reason: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.batch = batch
        self.certified = certified
        self.scored = scored
        self.rules = rules
        self.drift = drift
        self.supersede = supersede
        self.supersede_reason = supersede_reason

    def evidence_kinds(self, summary: dict) -> list[str]:
        """Run-level evidence this record itself provides, beyond the per-sample signals."""
        kinds = [
            "run_record",
            "audit_chain",
            "limitations",
            "test_sets",
            "model_inventory",
            "policy",
            "risk_tiers",
        ]
        if Tier(summary["tier"]) >= self.loaded_policy.policy.alert_tier:
            kinds.append("alert")
        return kinds

    def _optional(self, step: dict | None, key: str) -> pd.DataFrame:
        """The table ``key`` of an optional step's dict, or an empty frame when the step did not run."""
        return read_parquet(step[key]) if step else pd.DataFrame()

    def build_record(self, context: Context):
        """The run's RunRecord from the artifacts the upstream steps wrote (nothing is written yet)."""
        from certrisk.governance import RunRecord

        lp = self.loaded_policy
        pol = lp.policy
        dag_run = context["dag_run"]
        summary = read_json(self.scored["batch_risk"])
        sample_risk = read_parquet(self.scored["sample_risk"])
        created = getattr(dag_run, "run_after", None) or getattr(dag_run, "logical_date", None)
        return RunRecord(
            dag_id=dag_run.dag_id,
            run_id=dag_run.run_id,
            batch_id=self.batch["batch_id"],
            created_at=as_utc(created or utc_now()),
            model_name=pol.model.name,
            model_sha256=self.certified["model_sha256"],
            model_format=pol.model.format,
            policy_name=pol.model.name,
            policy_sha256=lp.sha256,
            policy_text=lp.text,
            package_version=certrisk.__version__,
            summary={**summary, "limitations": read_text(self.scored["limitations"])},
            sample_risk=sample_risk,
            certificates=read_parquet(self.certified["certificates"]),
            rule_samples=self._optional(self.rules, "rule_samples"),
            rule_expectations=self._optional(self.rules, "rule_expectations"),
            drift_tests=self._optional(self.drift, "drift_tests"),
            rmf_evidence=list(
                run_rmf_evidence(
                    policy=pol,
                    sample_risk=sample_risk,
                    batch_summary=summary,
                    evidence_kinds=self.evidence_kinds(summary),
                )
            ),
        )

    def run(self, context: Context) -> dict:
        record = self.build_record(context)
        result = self.hook.get_store().write_run(
            record, supersede=self.supersede, reason=self.supersede_reason or None
        )
        self.log.info(
            "governance: run %s/%s %s (revision %s, manifest %s...)",
            record.dag_id,
            record.run_id,
            result.status,
            result.revision,
            result.manifest_digest[:12],
        )
        return {
            "status": result.status,
            "revision": int(result.revision),
            "manifest_digest": result.manifest_digest,
            "tier": record.summary["tier"],
        }


class RiskAlertOperator(CertriskOperator):
    """Fail the DAG run when the batch tier reaches the policy's alert tier.

    Runs after the governance write, so the record always lands first. The failure message names
    the tier and the reasons; ``on_failure_callback`` and other callbacks stay user-configurable.
    """

    template_fields: Sequence[str] = (*CertriskOperator.template_fields, "scored", "recorded")

    def __init__(self, *, scored: Any, recorded: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scored = scored
        self.recorded = recorded

    def run(self, context: Context) -> dict:
        alert_tier = self.loaded_policy.policy.alert_tier
        tier = Tier(self.scored["tier"])
        if tier >= alert_tier:
            reasons = "; ".join(self.scored.get("reasons", [])) or "no reason recorded"
            raise AirflowFailException(
                f"certrisk alert: batch tier {tier.value} reaches the alert tier {alert_tier.value}: {reasons}"
            )
        self.log.info("alert: batch tier %s is below the alert tier %s", tier.value, alert_tier.value)
        return {"alert": False, "tier": tier.value}
