"""GovernanceWriteOperator: record the run in the governance database, exactly once, and the
alert task that fails the DAG run (after the record has landed) when the batch tier reaches the
policy's alert tier."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import pandas as pd
from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

import certrisk
from certrisk.operators.artifacts import read_json, read_parquet, read_text
from certrisk.operators.base import CertriskOperator
from certrisk.operators.hooks import GovernanceHook
from certrisk.risk.score import run_rmf_evidence
from certrisk.schemas.enums import Tier


class GovernanceWriteOperator(CertriskOperator):
    """Write the run's records (samples, certificates, rules, drift, RMF evidence, audit entry)
    in one transaction. Writing the same run again changes nothing ("already recorded").

    :param certrisk_conn_id: governance connection id (default ``certrisk_governance_default``;
        when that is undefined, ``$CERTRISK_DB_URL`` or SQLite under ``$CERTRISK_HOME``).
    """

    template_fields: Sequence[str] = (
        *CertriskOperator.template_fields,
        "batch",
        "certified",
        "rules",
        "drift",
        "scored",
    )

    def __init__(
        self,
        *,
        batch: Any,
        certified: Any,
        scored: Any,
        rules: Any = None,
        drift: Any = None,
        certrisk_conn_id: str = GovernanceHook.default_conn_name,
        supersede: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.batch = batch
        self.certified = certified
        self.scored = scored
        self.rules = rules
        self.drift = drift
        self.certrisk_conn_id = certrisk_conn_id
        self.supersede = supersede

    @cached_property
    def hook(self) -> GovernanceHook:
        return GovernanceHook(certrisk_conn_id=self.certrisk_conn_id)

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

    def run(self, context: Context) -> dict:
        from certrisk.governance import RunRecord

        lp = self.loaded_policy
        pol = lp.policy
        dag_run = context["dag_run"]
        summary = read_json(self.scored["batch_risk"])
        sample_risk = read_parquet(self.scored["sample_risk"])
        empty = pd.DataFrame()
        created = getattr(dag_run, "run_after", None) or getattr(dag_run, "logical_date", None)
        record = RunRecord(
            dag_id=dag_run.dag_id,
            run_id=dag_run.run_id,
            batch_id=self.batch["batch_id"],
            created_at=(created or datetime.now(UTC)).astimezone(UTC),
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
            rule_samples=read_parquet(self.rules["rule_samples"]) if self.rules else empty,
            rule_expectations=read_parquet(self.rules["rule_expectations"]) if self.rules else empty,
            drift_tests=read_parquet(self.drift["drift_tests"]) if self.drift else empty,
            rmf_evidence=list(
                run_rmf_evidence(
                    policy=pol,
                    sample_risk=sample_risk,
                    batch_summary=summary,
                    evidence_kinds=self.evidence_kinds(summary),
                )
            ),
        )
        result = self.hook.get_store().write_run(record, supersede=self.supersede)
        self.log.info(
            "governance: run %s/%s %s (revision %s, manifest %s...)",
            dag_run.dag_id,
            dag_run.run_id,
            result.status,
            result.revision,
            result.manifest_digest[:12],
        )
        return {
            "status": result.status,
            "revision": int(result.revision),
            "manifest_digest": result.manifest_digest,
            "tier": summary["tier"],
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
