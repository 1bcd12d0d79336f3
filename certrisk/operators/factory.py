"""``certrisk_dag``: a whole certification-aware risk pipeline from a policy, in one call.

::

    from certrisk.operators import certrisk_dag

    dag = certrisk_dag("policies/fraud.yaml", dag_id="fraud_risk", schedule="@daily",
                       batch_uri="s3://bucket/batches/{{ ds }}.parquet")

The DAG: validate -> plan_shards -> certify (mapped over shards, on the policy's queue and pool) -> merge ->
context; rules and drift in parallel; score -> governance write -> report (compliance HTML and PDF artifacts) and alert (fails the run when the
batch tier reaches the policy's alert tier, after the record has landed).

With a ``review`` section in the policy, a human-in-the-loop step follows the governance write:
governance write -> review (waits for a decision when the batch tier reaches ``review.at_tier``,
skips otherwise) -> record_review (the decision on the governance record) -> alert (the reviewer's
decision decides the run's outcome: reject or escalate fail it). Assets: the governance write
updates ``certrisk://<model>/risk`` (and the ``outlets`` you add); the alert task updates
``certrisk://<model>/accepted`` when the batch is accepted (approved, or no review needed and
below the alert tier). With ``evaluate=True`` an
``evaluate`` task, independent of the batch, runs the attack suite through the same scoring path
on the reference's held-out evaluation role and writes the measured detection under the run's
artifacts (``evaluation/evaluation.parquet``, ``evaluation.json``); give an evaluation its own
cadence with a second DAG of the same policy, e.g. ``schedule="@weekly", evaluate=True``.

Only the policy YAML is read at parse time (for the certify queue and pool); models, data and
connections are touched only when tasks run.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Param, TriggerRule

from certrisk.operators.certify import CertifyOperator, MergeCertificatesOperator
from certrisk.operators.evaluate import EvaluateOperator
from certrisk.operators.governance import (
    GovernanceWriteOperator,
    RiskAlertOperator,
    accepted_asset,
    risk_asset,
)
from certrisk.operators.hooks import GovernanceHook
from certrisk.operators.report import ComplianceReportOperator
from certrisk.operators.review import BatchReviewOperator, RecordReviewOperator
from certrisk.operators.score import RiskScoreOperator
from certrisk.operators.signals import ContextOperator, DriftOperator, RuleCheckOperator
from certrisk.operators.validate import PlanShardsOperator, ValidateBatchOperator
from certrisk.schemas.policy import Policy, load_policy


def certrisk_dag(
    policy_path: str,
    *,
    dag_id: str,
    batch_uri: str,
    schedule: Any = "@daily",
    start_date: datetime | None = None,
    catchup: bool = False,
    artifacts_uri: str | None = None,
    certrisk_conn_id: str = GovernanceHook.default_conn_name,
    alert: bool = True,
    report: bool = True,
    write_retries: int = 2,
    shard_size: int | None = None,
    run_key: str | None = None,
    certify_task_kwargs: dict[str, Any] | None = None,
    evaluate: bool = False,
    evaluate_task_kwargs: dict[str, Any] | None = None,
    outlets: Iterable[Any] = (),
    review_task_kwargs: dict[str, Any] | None = None,
    tags: Iterable[str] = ("certrisk",),
    default_args: dict[str, Any] | None = None,
    **dag_kwargs: Any,
) -> DAG:
    """Build a certrisk DAG for one model's policy.

    :param policy_path: the policy YAML (read now for queue and pool; read again by every task).
    :param batch_uri: default of the ``batch_uri`` DAG param: the batch each run scores (templated,
        e.g. ``.../{{ ds }}.parquet``; ``${CERTRISK_HOME}`` expands).
    :param artifacts_uri: root of run artifacts; default ``file://$CERTRISK_HOME/artifacts``.
    :param alert: end the run with a task that fails when the batch tier reaches the alert tier
        (with a review section the task is always there: a rejected batch fails it; with
        ``alert=False`` an unreviewed batch at the alert tier only skips it, unaccepted).
    :param report: write the per-run compliance report as an artifact.
    :param shard_size: samples per certification shard; default the policy's ``certification.shard_size``.
    :param run_key: key the certification seeds derive from (templated); default ``<dag_id>/<run_id>``.
    :param certify_task_kwargs: extra BaseOperator arguments of the mapped certify task, e.g.
        ``executor_config`` (a KubernetesExecutor ``pod_override`` with GPU limits), ``executor``,
        ``pool_slots`` or ``max_active_tis_per_dag`` (a queue or pool named here overrides the policy's).
    :param evaluate: add the ``evaluate`` task (measured detection; off by default: it certifies
        every attacked set, many times a batch's work). It runs on the certify task's queue and pool.
    :param evaluate_task_kwargs: arguments of the EvaluateOperator, e.g. ``labelled``, ``attacks``,
        ``fractions``, ``seed``, ``limit``, ``clip``.
    :param outlets: Assets (or aliases) the governance write updates besides the model's
        ``certrisk://<model>/risk``; each Asset's event carries the run's tier and figures.
    :param review_task_kwargs: extra arguments of the review step (BatchReviewOperator), e.g.
        ``notifiers``, ``top_k`` or ``dashboard_base_url``; used only with a policy ``review``.
    """
    policy = load_policy(policy_path).policy
    cert = policy.certification
    common = {"policy_path": policy_path, "artifacts_uri": artifacts_uri}
    certify_routing = {"queue": cert.queue}
    if cert.pool:
        certify_routing["pool"] = cert.pool
    certify_routing.update(certify_task_kwargs or {})
    with DAG(
        dag_id,
        schedule=schedule,
        start_date=start_date or datetime(2026, 1, 1, tzinfo=UTC),
        catchup=catchup,
        params={
            "batch_uri": Param(
                batch_uri, type="string", description="Batch file (parquet or npz) this run scores."
            ),
        },
        tags=list(tags),
        default_args=default_args or {},
        **dag_kwargs,
    ) as dag:
        validate = ValidateBatchOperator(task_id="validate", batch_uri="{{ params.batch_uri }}", **common)
        shards = PlanShardsOperator(
            task_id="plan_shards", batch=validate.output, shard_size=shard_size, **common
        )
        certify = CertifyOperator.partial(
            task_id="certify", batch=validate.output, run_key=run_key, **certify_routing, **common
        ).expand(shard=shards.output)
        merged = MergeCertificatesOperator(
            task_id="merge_certificates", shard_results=certify.output, **common
        )
        rules = RuleCheckOperator(task_id="rules", batch=validate.output, **common)
        drift = DriftOperator(task_id="drift", batch=validate.output, **common)
        ctx = ContextOperator(task_id="context", batch=validate.output, certified=merged.output, **common)
        scored = RiskScoreOperator(
            task_id="score",
            batch=validate.output,
            certified=merged.output,
            rules=rules.output,
            drift=drift.output,
            context_result=ctx.output,
            **common,
        )
        recorded = GovernanceWriteOperator(
            task_id="governance_write",
            batch=validate.output,
            certified=merged.output,
            scored=scored.output,
            rules=rules.output,
            drift=drift.output,
            certrisk_conn_id=certrisk_conn_id,
            retries=write_retries,
            retry_delay=timedelta(seconds=5),
            outlets=[risk_asset(policy.model.name), *outlets],
            **common,
        )
        if report:
            ComplianceReportOperator(
                task_id="report", recorded=recorded.output, certrisk_conn_id=certrisk_conn_id, **common
            )
        if alert or policy.review is not None:
            _outcome_steps(
                policy,
                validate=validate,
                scored=scored,
                recorded=recorded,
                alert=alert,
                certrisk_conn_id=certrisk_conn_id,
                write_retries=write_retries,
                review_task_kwargs=review_task_kwargs or {},
                common=common,
            )
        if evaluate:
            routing = {k: v for k, v in certify_routing.items() if k in ("queue", "pool", "executor")}
            EvaluateOperator(task_id="evaluate", **routing, **(evaluate_task_kwargs or {}), **common)
    return dag


def _outcome_steps(
    policy: Policy,
    *,
    validate,
    scored,
    recorded,
    alert: bool,
    certrisk_conn_id: str,
    write_retries: int,
    review_task_kwargs: dict[str, Any],
    common: dict[str, Any],
) -> None:
    """The review step (when the policy has a ``review`` section) and the alert task that decides
    the run's outcome and updates the model's ``accepted`` Asset."""
    review = policy.review
    outcome: dict[str, Any] = {}
    upstream = []
    if review is not None:
        asked = BatchReviewOperator(
            task_id="review",
            review=review,
            model=policy.model.name,
            scored=scored.output,
            batch=validate.output,
            recorded=recorded.output,
            **review_task_kwargs,
        )
        decided = RecordReviewOperator(
            task_id="record_review",
            decision=asked.output,
            certrisk_conn_id=certrisk_conn_id,
            retries=write_retries,
            retry_delay=timedelta(seconds=5),
            **common,
        )
        upstream.append(decided)
        # runs when the review was skipped (a batch below the review tier) as well
        outcome = {
            "review_task_id": decided.task_id,
            "review_at_tier": review.at_tier.value,
            "trigger_rule": TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
        }
    decide = RiskAlertOperator(
        task_id="alert",
        scored=scored.output,
        recorded=recorded.output,
        fail_on_alert=alert,
        outlets=[accepted_asset(policy.model.name)],
        **outcome,
        **common,
    )
    for task in upstream:
        task >> decide
