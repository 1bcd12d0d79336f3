"""GovernanceWriteOperator: record the run in the governance database, exactly once, and the
alert task that decides the run's outcome after the record has landed.

Assets: the governance write's outlets get one event per run, with the run's tier, batch id,
sample count, abstention rate, dag and run ids in its ``extra``; ``certrisk_dag`` gives it the
model's ``certrisk://<model>/risk`` Asset (``risk_asset``) plus any outlets the caller adds. The
alert task's outlet, ``certrisk://<model>/accepted`` (``accepted_asset``), gets an event only when
the batch is accepted: a reviewer approved it, or it needed no review and its tier is below the
policy's alert tier. A rejected or escalated batch, or an alert, fails the alert task: no event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import pandas as pd
from airflow.sdk import Asset, Context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

import certrisk
from certrisk.operators.artifacts import read_json, read_parquet, read_text
from certrisk.operators.base import CertriskOperator, GovernanceOperator
from certrisk.operators.review import review_required
from certrisk.risk.evidence import run_rmf_evidence
from certrisk.schemas.clock import as_utc, utc_now
from certrisk.schemas.enums import Tier


def certrisk_asset(model: str, kind: str) -> Asset:
    """The Asset ``certrisk://<model>/<kind>`` (``kind``: ``risk`` or ``accepted``)."""
    return Asset(f"certrisk://{quote(model, safe='')}/{kind}")


def risk_asset(model: str) -> Asset:
    """The model's Asset updated by every governance write: ``certrisk://<model>/risk``."""
    return certrisk_asset(model, "risk")


def accepted_asset(model: str) -> Asset:
    """The model's Asset updated when a batch is accepted: ``certrisk://<model>/accepted``."""
    return certrisk_asset(model, "accepted")


def emit_asset_events(context: Context, outlets: Iterable[Any], extra: Mapping[str, Any]) -> int:
    """Put ``extra`` on the event of every Asset among ``outlets`` (Airflow emits the events when
    the task succeeds); returns how many. Asset aliases and other outlets are left alone."""
    assets = [outlet for outlet in outlets if isinstance(outlet, Asset)]
    if assets:
        events = context["outlet_events"]
        for asset in assets:
            events[asset].extra = dict(extra)
    return len(assets)


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

    Every Asset among the task's ``outlets`` gets the run's event (``extra``: model, tier,
    batch_id, n_samples, abstention_rate, mean_risk, dag_id, run_id, revision, manifest_digest).
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
            summary={
                **summary,
                "limitations": read_text(self.scored["limitations"]),
                # the review tier in force: a run at or above it without a decision is "pending"
                **({"review_at_tier": pol.review.at_tier.value} if pol.review else {}),
            },
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
        out = {
            "status": result.status,
            "revision": int(result.revision),
            "manifest_digest": result.manifest_digest,
            "tier": record.summary["tier"],
            "model": record.model_name,
            "batch_id": record.batch_id,
        }
        summary = record.summary
        extra = {
            **{k: out[k] for k in ("model", "tier", "batch_id", "revision", "manifest_digest")},
            "n_samples": int(summary["n_samples"]),
            "abstention_rate": float(summary["abstention_rate"]),
            "mean_risk": float(summary["mean_risk"]),
            "dag_id": record.dag_id,
            "run_id": record.run_id,
        }
        emit_asset_events(context, self.outlets, extra)
        return out


def batch_outcome(
    *, tier: str | Tier, alert_tier: Tier, decision: Mapping[str, Any] | None
) -> tuple[bool, str]:
    """Whether a batch is accepted, and why, in words.

    A recorded review decides: ``approve`` accepts the batch (whatever its tier: a person looked
    at it, and the record says so), ``reject`` and ``escalate`` do not. Without a review, a batch
    is accepted when its tier is below the alert tier.
    """
    tier = Tier(tier)
    if decision is not None:
        who = f"{decision['reviewer']} ({decision['source']})"
        comment = f": {decision['comment']}" if decision.get("comment") else ""
        if decision["decision"] == "approve":
            return True, f"batch tier {tier.value} approved by {who}{comment}"
        verb = {"reject": "rejected", "escalate": "escalated"}[decision["decision"]]
        return False, f"certrisk review: batch tier {tier.value} {verb} by {who}{comment}"
    if tier >= alert_tier:
        return False, f"certrisk alert: batch tier {tier.value} reaches the alert tier {alert_tier.value}"
    return True, f"batch tier {tier.value} is below the alert tier {alert_tier.value}"


class RiskAlertOperator(CertriskOperator):
    """Decide the run's outcome once the record (and any review decision) has landed.

    Without a review, the task fails the DAG run when the batch tier reaches the policy's alert
    tier (the message names the tier and the reasons). With ``review_at_tier`` and a batch at or
    above it, the decision that ``review_task_id`` recorded decides instead: approve accepts the
    batch, reject or escalate fails the run. An accepted batch succeeds and puts the run's figures
    (and the decision) on the event of every Asset among its outlets (``certrisk_dag`` gives it the
    model's ``accepted`` Asset); a failed or skipped task emits no event.

    :param scored: the score step's dict; :param recorded: the governance write's dict (templated).
    :param review_task_id: the task whose XCom holds the recorded decision (``record_review``).
    :param review_at_tier: the policy's ``review.at_tier`` (None: no review step).
    :param fail_on_alert: fail the run on an alert (True), or only leave the batch unaccepted
        (False: the task skips, no Asset event, the run does not fail).
    """

    template_fields: Sequence[str] = (*CertriskOperator.template_fields, "scored", "recorded")

    def __init__(
        self,
        *,
        scored: Any,
        recorded: Any = None,
        review_task_id: str | None = None,
        review_at_tier: str | None = None,
        fail_on_alert: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.scored = scored
        self.recorded = recorded
        self.review_task_id = review_task_id
        self.review_at_tier = review_at_tier
        self.fail_on_alert = fail_on_alert

    def recorded_decision(self, context: Context) -> dict | None:
        """The recorded review decision, or None when the batch needed no review."""
        if not self.review_task_id or self.review_at_tier is None:
            return None
        if not review_required(self.scored["tier"], self.review_at_tier):
            return None
        decision = context["ti"].xcom_pull(task_ids=self.review_task_id)
        if not decision:
            raise AirflowFailException(
                f"certrisk review: batch tier {self.scored['tier']} needs a review, but task "
                f"{self.review_task_id!r} recorded no decision"
            )
        return decision

    def run(self, context: Context) -> dict:
        alert_tier = self.loaded_policy.policy.alert_tier
        tier = Tier(self.scored["tier"])
        decision = self.recorded_decision(context)
        accepted, why = batch_outcome(tier=tier, alert_tier=alert_tier, decision=decision)
        if not accepted:
            if decision is None:
                why += ": " + ("; ".join(self.scored.get("reasons", [])) or "no reason recorded")
            if decision is None and not self.fail_on_alert:
                raise AirflowSkipException(f"{why} (batch not accepted; alerts are off)")
            raise AirflowFailException(why)
        self.log.info("outcome: %s; batch accepted", why)
        recorded = self.recorded or {}
        dag_run = context["dag_run"]
        extra = {
            "model": recorded.get("model", self.loaded_policy.policy.model.name),
            "tier": tier.value,
            "batch_id": recorded.get("batch_id"),
            "n_samples": self.scored.get("n_samples"),
            "abstention_rate": self.scored.get("abstention_rate"),
            "dag_id": dag_run.dag_id,
            "run_id": dag_run.run_id,
            "decision": decision["decision"] if decision else None,
            "reviewer": decision["reviewer"] if decision else None,
            "manifest_digest": recorded.get("manifest_digest"),
        }
        emit_asset_events(context, self.outlets, extra)
        return {"alert": False, "accepted": True, "tier": tier.value, "decision": extra["decision"]}
