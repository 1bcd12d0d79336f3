"""Human review under a real scheduler: ``certrisk_digits_reviewed`` on the first 32 samples of
the attacked batch (tier critical), driven over the REST API of a local deployment (api-server,
scheduler with LocalExecutor, dag-processor; PostgreSQL metadata and governance databases).

Two runs share one deployment: the first is approved, the second rejected, both through the
HITL endpoint a client (or the UI's Required Actions page) uses. The second run starts once the
first has passed its context step, so it finds the reference certificates in the cache instead
of computing them at the same time. The approved run succeeds and
updates the model's ``accepted`` Asset, which triggers ``certrisk_downstream``; the rejected run
fails (its alert task, after the decision landed) and leaves that Asset alone. Each decision is
recorded once, the audit chain verifies, and the run's report states the decision.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.conftest import REPO, require_postgres
from tests.factories import head_batch
from tests.integration.cluster import local_deployment

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

DAG_ID = "certrisk_digits_reviewed"
DOWNSTREAM = "certrisk_downstream"
RISK_URI, ACCEPTED_URI = "certrisk://digits-cnn/risk", "certrisk://digits-cnn/accepted"
N_SAMPLES = 32
RUN_TIMEOUT_S = 600  # generous: the whole test takes a few minutes on an idle 2-core machine


def _hitl_path(af, run_id: str) -> str:
    return af.run_path(DAG_ID, run_id) + "/taskInstances/review/-1/hitlDetails"


def _check_request(af, run_id: str) -> None:
    """The review request: certrisk's options and comment field, a body with tier, reasons,
    top-risk samples and the report link, and no certificate value."""
    status, detail = af.request("GET", _hitl_path(af, run_id))
    assert status == 200, detail
    assert detail["options"] == ["Approve", "Reject", "Escalate"] and detail["defaults"] == ["Reject"]
    assert detail["subject"].startswith("certrisk: review batch ") and "(tier critical)" in detail["subject"]
    body = detail["body"]
    assert "tier **critical**" in body and "**Why this tier**" in body
    assert "| sample | tier | risk score |" in body
    assert f"/certrisk/runs/{DAG_ID}/{quote(run_id, safe='')}" in body
    # factors are named ("radius_rank" is the factor of a radius's percentile); no radius value is shown
    assert "radius" not in body.lower().replace("radius_rank", "") and "p_lower" not in body
    assert set(detail["params"]) == {"comment"}


def _wait_parked(af, run_id: str) -> None:
    """Wait until the scheduler has taken the executor's event for the review task's parking exit.

    Answering before that loses a race in Airflow 3.3 (LocalExecutor): the response requeues the
    task under the same key, the parking exit's late "success" event then finds it queued, and the
    scheduler fails the task ("finished with state success, but the task instance's state
    attribute is queued"). A person never answers within those seconds; a script can.
    """
    event = (
        "Received executor event with state success for task instance "
        f"TaskInstanceKey(dag_id='{DAG_ID}', task_id='review', run_id='{run_id}'"
    )
    log = af.home / "scheduler.log"
    af.wait_for(f"the scheduler to see {run_id}'s review parked", lambda: event in log.read_text(), 60)


def _respond(af, run_id: str, option: str, comment: str) -> dict:
    status, body = af.request(
        "PATCH", _hitl_path(af, run_id), {"chosen_options": [option], "params_input": {"comment": comment}}
    )
    assert status == 200, body
    return body


def _asset_events(af) -> list[dict]:
    status, body = af.request("GET", f"/api/v2/assets/events?source_dag_id={DAG_ID}&limit=100")
    assert status == 200, body
    return body["asset_events"]


def _downstream_result(af) -> dict:
    """The return value of the downstream DAG's first successful run (waits for it)."""

    def succeeded():
        runs = af.request("GET", f"/api/v2/dags/{DOWNSTREAM}/dagRuns")[1].get("dag_runs", [])
        done = [r["dag_run_id"] for r in runs if r["state"] == "success"]
        return done[0] if done else None

    run_id = af.wait_for("the downstream DAG's run", succeeded, 120, interval=2.0)
    status, xcom = af.request(
        "GET", af.run_path(DOWNSTREAM, run_id) + "/taskInstances/use_accepted_batch/xcomEntries/return_value"
    )
    assert status == 200, xcom
    return xcom["value"]


def _retry_record_task(af, run_id: str) -> None:
    """Clear the approved run's record_review task (its retry, try 2, reads the same decision)."""
    status, body = af.request(
        "POST",
        f"/api/v2/dags/{DAG_ID}/clearTaskInstances",
        {"dag_run_id": run_id, "task_ids": ["record_review"], "dry_run": False, "only_failed": False},
    )
    assert status == 200 and len(body["task_instances"]) == 1, body

    def retried():
        ti = af.request("GET", af.run_path(DAG_ID, run_id) + "/taskInstances/record_review")[1]
        return ti if ti.get("try_number") == 2 and ti.get("state") in ("success", "failed") else None

    assert (
        af.wait_for("record_review's second try", retried, RUN_TIMEOUT_S, interval=2.0)["state"] == "success"
    )


def _check_record(gov_url: str, approved: str, rejected: str, reviewer: str) -> None:
    from certrisk.governance import GovernanceStore
    from certrisk.reports.build import build_run_report
    from certrisk.reports.rendering import render

    gov = GovernanceStore(gov_url)
    try:
        reviews = gov.reviews(dag_id=DAG_ID)
        assert sorted(reviews["run_id"]) == sorted([approved, rejected])  # one record per decision
        by_run = reviews.set_index("run_id")
        assert (by_run.loc[approved, "decision"], by_run.loc[approved, "reviewer"]) == ("approve", reviewer)
        assert by_run.loc[approved, "comment"] == "abstentions explained by the known sensor fault"
        assert by_run.loc[approved, "source"] == "airflow-hitl"
        assert by_run.loc[rejected, "decision"] == "reject"
        assert by_run.loc[approved, "review_key"] == f"{DAG_ID}/{approved}/review/-1/try-1"
        assert gov.verify().ok
        html = render(build_run_report(gov, approved, dag_id=DAG_ID), "html").decode()
        assert "approved by" in html and reviewer in html
        html = render(build_run_report(gov, rejected, dag_id=DAG_ID), "html").decode()
        assert "rejected by" in html
    finally:
        gov.dispose()


def _check_pending(gov_url: str, run_ids: tuple[str, ...]) -> None:
    """Before anyone decides, the recorded runs read "pending" (the policy's review tier is recorded)."""
    from certrisk.governance import GovernanceStore

    gov = GovernanceStore(gov_url)
    try:
        runs = gov.list_runs().set_index("run_id")
        assert [runs.loc[r, "review"] for r in run_ids] == ["pending"] * len(run_ids)
    finally:
        gov.dispose()


def test_a_reviewer_approves_and_rejects_batches_over_the_rest_api(tmp_path, demo_assets):
    require_postgres()
    batch = str(head_batch(demo_assets.batches["attacked"], N_SAMPLES, tmp_path / "attacked.parquet"))
    # the scheduler creates asset-triggered runs only with use_job_schedule on (every other DAG
    # stays paused, so no scheduled run starts)
    schedule_on = {"AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "True"}
    with local_deployment(tmp_path, dags_folder=REPO / "dags", extra=schedule_on) as (af, gov_url):
        af.login()
        af.unpause_when_parsed(DAG_ID)
        af.unpause_when_parsed(DOWNSTREAM)
        approved = af.trigger(DAG_ID, {"batch_uri": batch})
        done = {"success", "failed", "upstream_failed"}
        assert af.wait_task_state(DAG_ID, approved, "context", done, RUN_TIMEOUT_S) == "success"
        rejected = af.trigger(DAG_ID, {"batch_uri": batch})
        for run_id in (approved, rejected):
            waiting = {"awaiting_input", "skipped", "upstream_failed", "failed"}
            assert af.wait_task_state(DAG_ID, run_id, "review", waiting, RUN_TIMEOUT_S) == "awaiting_input"
        _check_request(af, approved)
        for run_id in (approved, rejected):
            _wait_parked(af, run_id)
        _check_pending(gov_url, (approved, rejected))

        answer = _respond(af, approved, "Approve", "abstentions explained by the known sensor fault")
        reviewer = answer["responded_by"]["id"]
        _respond(af, rejected, "Reject", "too many abstentions")
        assert af.wait_run(DAG_ID, approved, RUN_TIMEOUT_S) == "success"
        assert af.wait_run(DAG_ID, rejected, RUN_TIMEOUT_S) == "failed"
        states = af.task_states(DAG_ID, rejected)
        assert states[("record_review", -1)] == "success" and states[("alert", -1)] == "failed", states
        assert states[("governance_write", -1)] == "success", states

        events = _asset_events(af)
        by_run = {(e["source_run_id"], e["uri"]): e for e in events}
        assert set(by_run) == {(approved, RISK_URI), (rejected, RISK_URI), (approved, ACCEPTED_URI)}
        accepted = by_run[(approved, ACCEPTED_URI)]["extra"]
        assert (accepted["decision"], accepted["reviewer"], accepted["tier"]) == (
            "approve",
            reviewer,
            "critical",
        )
        risk = by_run[(rejected, RISK_URI)]["extra"]
        assert risk["tier"] == "critical" and risk["run_id"] == rejected and risk["n_samples"] == N_SAMPLES

        assert _downstream_result(af) == {
            "batch_id": accepted["batch_id"],
            "tier": "critical",
            "decision": "approve",
            "dag_id": DAG_ID,
            "run_id": approved,
        }
        _retry_record_task(af, approved)
        _check_record(gov_url, approved, rejected, reviewer)
