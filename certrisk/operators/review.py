"""Human review of a batch: an Airflow human-in-the-loop step after the governance write, and
the task that puts the decision on the record.

``BatchReviewOperator`` is Airflow's ``HITLOperator`` (standard provider) with certrisk's three
options (Approve, Reject, Escalate) and a comment field. When the batch tier reaches the policy's
``review.at_tier`` it asks the assigned users, in the UI's Required Actions page or over the REST
API, with a body that shows the tier, the reasons, the highest-risk samples (ids, tiers and
factors; never a radius or a certificate) and a link to the run's report. Below ``at_tier`` it
skips at once, so the run does not wait. With no answer within ``timeout_hours`` Airflow's
scheduler applies the default option, the policy's ``default_outcome``, which is recorded as
decided by ``system`` with source ``timeout``.

``RecordReviewOperator`` writes the decision as an append-only review record (hash-chained with
the run's record) through ``GovernanceStore.record_review``, keyed by the review step's dag, run,
task and try, so a retried write records it once. The ``alert`` task after it turns the decision
into the run's outcome (see ``certrisk.operators.governance.RiskAlertOperator``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Context, Param, ParamsDict, conf
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from certrisk.operators.artifacts import read_parquet
from certrisk.operators.base import GovernanceOperator
from certrisk.reports.dashboard_urls import run_page
from certrisk.schemas.clock import as_utc_timestamp
from certrisk.schemas.enums import Tier
from certrisk.schemas.errors import CertriskError
from certrisk.schemas.review import DECISIONS, SYSTEM_REVIEWER, ReviewSpec

#: The HITL option label of each decision, and back.
OPTION_OF: Mapping[str, str] = {decision: decision.capitalize() for decision in DECISIONS}
DECISION_OF: Mapping[str, str] = {label: decision for decision, label in OPTION_OF.items()}

#: The sources (``REVIEW_SOURCES``) a decision is recorded with: taken in Airflow (the Required
#: Actions page or the REST API), or the policy's default outcome once the request timed out
#: (recorded under ``SYSTEM_REVIEWER``).
AIRFLOW_SOURCE, TIMEOUT_SOURCE = "airflow-hitl", "timeout"

#: The sample_risk columns the review body may show: ids, tiers and factors, no certificate value.
BODY_COLUMNS = ("sample_id", "tier", "risk", "top_factors")

#: What each option means, in the body.
OPTION_MEANING = {
    "approve": "the batch is accepted: the run succeeds and the model's `accepted` Asset is updated.",
    "reject": "the batch is not accepted: the run fails after the decision is recorded.",
    "escalate": "a decision above yours is needed: the run fails like a rejection, recorded as escalated.",
}


def review_required(tier: str | Tier, at_tier: str | Tier) -> bool:
    """Whether a batch of ``tier`` waits for a reviewer (its tier reaches ``at_tier``)."""
    return Tier(tier) >= Tier(at_tier)


def report_url(dag_id: str, run_id: str, base_url: str | None = None) -> str:
    """The dashboard page of one run's report, ``<base_url>/certrisk/runs/<dag_id>/<run_id>``
    (path parts quoted; relative when no base URL is configured)."""
    return run_page(dag_id, run_id, base_url or "")


def top_risk_table(sample_risk: pd.DataFrame, top_k: int) -> str:
    """A Markdown table of the ``top_k`` highest-risk samples: id, tier, risk score and the factors
    that contributed, largest first. Only ``BODY_COLUMNS`` are read: no radius, no bound."""
    rows = sample_risk.loc[:, list(BODY_COLUMNS)].sort_values(
        ["risk", "sample_id"], ascending=[False, True], kind="stable"
    )
    lines = ["| sample | tier | risk score | factors (largest first) |", "| --- | --- | --- | --- |"]
    for sample_id, tier, risk, factors in rows.head(top_k).itertuples(index=False):
        names = ", ".join(str(f) for f in factors) if factors is not None and len(factors) else "none"
        lines.append(f"| `{sample_id}` | {tier} | {risk:.3f} | {names} |")
    return "\n".join(lines)


def review_body(
    *,
    model: str,
    batch_id: str,
    scored: Mapping[str, Any],
    sample_risk: pd.DataFrame,
    at_tier: str | Tier,
    url: str,
    top_k: int = 10,
) -> str:
    """The Markdown a reviewer reads: tier, reasons, figures, top-risk samples, the report link."""
    reasons = list(scored.get("reasons") or []) or ["no reason recorded"]
    n = int(scored.get("n_samples", len(sample_risk)))
    shown = min(top_k, len(sample_risk))
    abstention = 100 * float(scored.get("abstention_rate", 0.0))
    parts = [
        (
            f"Batch `{batch_id}` of model **{model}** reached tier **{scored['tier']}** "
            f"(batches at or above **{Tier(at_tier).value}** are reviewed)."
        ),
        (
            f"- samples: {n}; abstention rate: {abstention:.1f}%; "
            f"mean risk score: {float(scored.get('mean_risk', 0.0)):.3f}"
        ),
        "",
        "**Why this tier**",
        *(f"- {reason}" for reason in reasons),
        "",
        f"**Highest-risk samples** ({shown} of {n}):",
        "",
        top_risk_table(sample_risk, top_k),
        "",
        f"[Open the run's report]({url})",
        "",
        "**Options**",
        *(f"- {OPTION_OF[d]}: {OPTION_MEANING[d]}" for d in DECISIONS),
        "",
        "Your decision, comment, name and time are written to the governance record.",
    ]
    return "\n".join(parts)


def review_decision(
    response: Mapping[str, Any], *, timed_out: bool, timeout_hours: float, review_key: str
) -> dict:
    """The decision to record from a HITL response (``HITLOperator.execute_complete``'s payload).

    A timed-out request carries the policy's default option and no user: it is recorded as
    decided by ``system`` with source ``timeout``. A human answer names its user (id, else name).
    """
    chosen = list(response["chosen_options"])
    if len(chosen) != 1 or chosen[0] not in DECISION_OF:
        raise AirflowFailException(f"review: expected one of {list(DECISION_OF)}, got {chosen}")
    comment = str((response.get("params_input") or {}).get("comment") or "").strip()
    user = response.get("responded_by_user") or {}
    if timed_out:
        reviewer, source = SYSTEM_REVIEWER, TIMEOUT_SOURCE
        comment = comment or f"no decision within {timeout_hours:g} h: the policy's default outcome"
    else:
        reviewer, source = str(user.get("id") or user.get("name") or ""), AIRFLOW_SOURCE
        if not reviewer:
            raise AirflowFailException("review: the response names no user; nothing was recorded")
    decided = response.get("responded_at")
    return {
        "decision": DECISION_OF[chosen[0]],
        "reviewer": reviewer,
        "reviewer_name": str(user.get("name") or reviewer),
        "comment": comment,
        "decided_at": as_utc_timestamp(decided).isoformat() if decided is not None else None,
        "source": source,
        "review_key": review_key,
    }


class BatchReviewOperator(HITLOperator):
    """Ask a person to approve, reject or escalate a batch whose tier reaches ``review.at_tier``.

    :param review: the policy's ``review`` section (options, defaults, assignees and the timeout
        are fixed when the DAG is built, as Airflow's HITL operators require).
    :param model: the model's name (the subject's ``{model}``).
    :param scored: the score step's dict (tier, reasons, figures, ``sample_risk`` path; templated).
    :param batch: the validate step's dict (``batch_id``; templated).
    :param recorded: the governance write's dict (templated): the review follows the record.
    :param top_k: how many of the highest-risk samples the body lists.
    :param dashboard_base_url: base of the report link; default ``[api] base_url``.
    """

    template_fields: Sequence[str] = (*HITLOperator.template_fields, "scored", "batch", "recorded")
    ui_color = "#fde7c8"

    def __init__(
        self,
        *,
        review: ReviewSpec,
        model: str,
        scored: Any,
        batch: Any,
        recorded: Any = None,
        top_k: int = 10,
        dashboard_base_url: str | None = None,
        **kwargs: Any,
    ) -> None:
        # Airflow passes the DAG's params in (HITLOperator keeps only the step's own, "task" ones).
        params = ParamsDict(kwargs.pop("params", None) or {})
        params["comment"] = Param(
            "",
            type="string",
            title="Comment",
            description="Why you decide so; recorded with your decision.",
            source="task",
        )
        super().__init__(
            subject=review.subject,
            options=[OPTION_OF[d] for d in DECISIONS],
            defaults=OPTION_OF[review.default_outcome],
            multiple=False,
            params=params,
            assigned_users=[{"id": user, "name": user} for user in review.assigned_users] or None,
            response_timeout=timedelta(hours=review.timeout_hours),
            **kwargs,
        )
        self.review = review
        self.model = model
        self.scored = scored
        self.batch = batch
        self.recorded = recorded
        self.top_k = top_k
        self.dashboard_base_url = dashboard_base_url

    def execute(self, context: Context) -> Any:
        tier = self.scored["tier"]
        at_tier = self.review.at_tier
        if not review_required(tier, at_tier):
            raise AirflowSkipException(f"batch tier {tier} is below the review tier {at_tier.value}")
        dag_run = context["dag_run"]
        base = self.dashboard_base_url or conf.get("api", "base_url", fallback="")
        try:
            sample_risk = read_parquet(self.scored["sample_risk"])
        except CertriskError as exc:
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
        fields = {"batch_id": self.batch["batch_id"], "model": self.model, "tier": tier}
        self.subject = self.review.subject.format(**fields, run_id=dag_run.run_id)
        self.body = review_body(
            model=self.model,
            batch_id=self.batch["batch_id"],
            scored=self.scored,
            sample_risk=sample_risk,
            at_tier=at_tier,
            url=report_url(dag_run.dag_id, dag_run.run_id, base),
            top_k=self.top_k,
        )
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict:
        """The response (or the timeout's default) as the decision the next task records."""
        timed_out = bool(event.get("timedout"))
        response = super().execute_complete(context=context, event=event)
        ti = context["ti"]
        key = f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/{ti.map_index}/try-{ti.try_number}"
        decision = review_decision(
            response, timed_out=timed_out, timeout_hours=self.review.timeout_hours, review_key=key
        )
        self.log.info(
            "review: %s by %s (%s)%s",
            decision["decision"],
            decision["reviewer"],
            decision["source"],
            f": {decision['comment']}" if decision["comment"] else "",
        )
        return decision


class RecordReviewOperator(GovernanceOperator):
    """Write the review step's decision to the governance record, once (idempotent on the
    decision's ``review_key``; the task's retries reuse it).

    :param decision: the review step's dict (templated, usually its XComArg).
    :param certrisk_conn_id: see ``GovernanceOperator``.
    """

    template_fields: Sequence[str] = (*GovernanceOperator.template_fields, "decision")

    def __init__(self, *, decision: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.decision = decision

    def run(self, context: Context) -> dict:
        d = self.decision
        dag_run = context["dag_run"]
        decided_at: datetime | None = (
            as_utc_timestamp(d["decided_at"]).to_pydatetime() if d.get("decided_at") else None
        )
        record = self.hook.get_store().record_review(
            dag_id=dag_run.dag_id,
            run_id=dag_run.run_id,
            decision=d["decision"],
            reviewer=d["reviewer"],
            comment=d.get("comment", ""),
            decided_at=decided_at,
            source=d["source"],
            review_key=d["review_key"],
        )
        self.log.info(
            "review recorded: %s by %s for %s/%s",
            d["decision"],
            d["reviewer"],
            dag_run.dag_id,
            dag_run.run_id,
        )
        return {**d, "status": str(record.get("status", "recorded"))}
