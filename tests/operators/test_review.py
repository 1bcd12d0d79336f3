"""The review step (decision mapping, the body a reviewer reads), the task that records the
decision, the alert task's outcome with and without a review, and the Asset events."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from types import SimpleNamespace

import pandas as pd
import pytest
from airflow.sdk import Asset
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from certrisk.operators.governance import (
    RiskAlertOperator,
    accepted_asset,
    batch_outcome,
    emit_asset_events,
    risk_asset,
)
from certrisk.operators.review import (
    BatchReviewOperator,
    RecordReviewOperator,
    report_url,
    review_body,
    review_decision,
    review_required,
)
from certrisk.schemas.enums import Tier
from certrisk.schemas.review import ReviewSpec
from tests.conftest import REPO

POLICY = str(REPO / "dags" / "policies" / "digits.yaml")
RADIUS = 0.123456789  # a value only the (forbidden) radius column holds


def _sample_risk() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": ["b:0", "b:1", "b:2", "b:3"],
            "risk": [0.2, 0.9, 0.55, 0.9],
            "tier": ["low", "critical", "medium", "critical"],
            "top_factors": [["novelty"], ["abstention", "rule_failures"], [], ["abstention"]],
            "radius": [RADIUS] * 4,
            "p_lower": [RADIUS] * 4,
        }
    )


SCORED = {
    "tier": "critical",
    "reasons": ["abstention rate 40.0% exceeds the reference's 5.0%", "drift: ks rejected"],
    "n_samples": 4,
    "abstention_rate": 0.5,
    "mean_risk": 0.6375,
}


def _response(option, *, user=("u7", "Ada"), comment="looked at it", at=datetime(2026, 5, 1, 12, tzinfo=UTC)):
    return {
        "chosen_options": [option],
        "params_input": {"comment": comment},
        "responded_at": at,
        "responded_by_user": {"id": user[0], "name": user[1]} if user else None,
    }


@pytest.mark.parametrize(
    ("option", "decision"), [("Approve", "approve"), ("Reject", "reject"), ("Escalate", "escalate")]
)
def test_a_human_decision_maps_to_its_record(option, decision):
    d = review_decision(_response(option), timed_out=False, timeout_hours=24, review_key="k")
    assert d == {
        "decision": decision,
        "reviewer": "u7",
        "reviewer_name": "Ada",
        "comment": "looked at it",
        "decided_at": "2026-05-01T12:00:00+00:00",
        "source": "airflow-hitl",
        "review_key": "k",
    }


def test_a_timeout_is_recorded_as_the_systems_default_outcome():
    d = review_decision(
        _response("Reject", user=None, comment=""), timed_out=True, timeout_hours=2, review_key="k"
    )
    assert (d["decision"], d["reviewer"], d["source"]) == ("reject", "system", "timeout")
    assert d["comment"] == "no decision within 2 h: the policy's default outcome"


def test_the_sources_are_the_stores():
    from certrisk.operators.review import AIRFLOW_SOURCE, TIMEOUT_SOURCE
    from certrisk.schemas.review import REVIEW_SOURCES

    assert {AIRFLOW_SOURCE, TIMEOUT_SOURCE} <= set(REVIEW_SOURCES)


def test_unknown_options_and_unattributed_answers_are_refused():
    with pytest.raises(AirflowFailException, match="expected one of"):
        review_decision(_response("Maybe"), timed_out=False, timeout_hours=1, review_key="k")
    with pytest.raises(AirflowFailException, match="names no user"):
        review_decision(_response("Approve", user=None), timed_out=False, timeout_hours=1, review_key="k")


def test_review_is_required_at_and_above_the_review_tier():
    assert [review_required(t, "high") for t in ("low", "medium", "high", "critical")] == [
        False,
        False,
        True,
        True,
    ]


def test_the_body_shows_tier_reasons_top_samples_and_the_report_link_but_no_certificate():
    url = report_url("certrisk_digits", "manual__2026-05-01T12:00:00+00:00", "http://af:8080/")
    assert url == "http://af:8080/certrisk/runs/certrisk_digits/manual__2026-05-01T12%3A00%3A00%2B00%3A00"
    body = review_body(
        model="digits-cnn",
        batch_id="b",
        scored=SCORED,
        sample_risk=_sample_risk(),
        at_tier="high",
        url=url,
        top_k=3,
    )
    assert "tier **critical**" in body and "at or above **high**" in body
    assert all(f"- {reason}" in body for reason in SCORED["reasons"])
    assert "abstention rate: 50.0%" in body
    lines = [line for line in body.splitlines() if line.startswith("| `")]
    # highest risk first, ties by id; factors named; the lowest-risk sample is not among the top 3
    assert [line.split("`")[1] for line in lines] == ["b:1", "b:3", "b:2"]
    assert "abstention, rule_failures" in lines[0] and lines[2].endswith("| none |")
    assert f"[Open the run's report]({url})" in body
    assert "radius" not in body.lower() and "p_lower" not in body and "0.1234" not in body


def _review_op(**spec):
    return BatchReviewOperator(
        task_id="review",
        review=ReviewSpec(**spec),
        model="digits-cnn",
        scored={**SCORED, "sample_risk": "unused"},
        batch={"batch_id": "b"},
    )


def test_the_step_is_built_from_the_policy_section():
    op = _review_op(
        at_tier="high", assigned_users=["ada", "bob"], timeout_hours=6, default_outcome="escalate"
    )
    assert op.options == ["Approve", "Reject", "Escalate"] and op.multiple is False
    assert op.defaults == ["Escalate"]  # applied by Airflow's scheduler when nobody answers in time
    assert op.assigned_users == [{"id": "ada", "name": "ada"}, {"id": "bob", "name": "bob"}]
    assert op.response_timeout.total_seconds() == 6 * 3600
    assert set(op.serialized_params) == {"comment"}
    assert _review_op().assigned_users is None  # empty list: anyone allowed on the DAG decides


def _context(tmp_path=None, *, xcom=None, try_number=1):
    ti = SimpleNamespace(
        id="ti-1",
        dag_id="d",
        run_id="r",
        task_id="review",
        map_index=-1,
        try_number=try_number,
        xcom_pull=lambda task_ids: xcom,
    )
    return {
        "ti": ti,
        "task_instance": ti,
        "dag_run": SimpleNamespace(dag_id="d", run_id="r"),
        "outlet_events": defaultdict(lambda: SimpleNamespace(extra={})),
    }


def test_below_the_review_tier_the_step_skips_without_asking(monkeypatch):
    asked = []
    monkeypatch.setattr(
        "airflow.providers.standard.operators.hitl.upsert_hitl_detail", lambda **kw: asked.append(kw)
    )
    op = _review_op(at_tier="critical")
    op.scored = {**SCORED, "tier": "high"}
    with pytest.raises(AirflowSkipException, match="below the review tier critical"):
        op.execute(_context())
    assert asked == []


def test_at_the_review_tier_the_step_asks_with_the_filled_subject_and_body(monkeypatch, tmp_path):
    from airflow.sdk.exceptions import TaskAwaitingInput

    asked = []
    monkeypatch.setattr(
        "airflow.providers.standard.operators.hitl.upsert_hitl_detail", lambda **kw: asked.append(kw)
    )
    path = tmp_path / "sample_risk.parquet"
    _sample_risk().to_parquet(path)
    op = _review_op(at_tier="high")
    op.scored = {**SCORED, "sample_risk": str(path)}
    with pytest.raises(TaskAwaitingInput):
        op.execute(_context())
    (req,) = asked
    assert req["subject"] == "certrisk: review batch b of digits-cnn (tier critical)"
    assert "`b:1`" in req["body"] and "/certrisk/runs/d/r" in req["body"] and "0.1234" not in req["body"]
    assert req["options"] == ["Approve", "Reject", "Escalate"] and req["defaults"] == ["Reject"]


def test_the_response_becomes_a_decision_keyed_by_the_steps_try():
    op = _review_op()
    event = {**_response("Reject", comment="too many abstentions"), "timedout": False}
    d = op.execute_complete(_context(try_number=2), event)
    assert (d["decision"], d["reviewer"], d["comment"]) == ("reject", "u7", "too many abstentions")
    assert d["review_key"] == "d/r/review/-1/try-2"
    timed_out = {**_response("Reject", user=None, comment=""), "timedout": True}
    assert op.execute_complete(_context(), timed_out)["reviewer"] == "system"


class _Store:
    def __init__(self):
        self.calls = []

    def record_review(self, **kw):
        self.calls.append(kw)
        return {"status": "recorded"}


def test_the_record_task_writes_the_decision_with_its_key():
    op = RecordReviewOperator(task_id="record_review", policy_path=POLICY, decision=None)
    store = _Store()
    op.hook = SimpleNamespace(get_store=lambda: store)
    op.decision = review_decision(
        _response("Approve"), timed_out=False, timeout_hours=1, review_key="d/r/review/-1/try-1"
    )
    out = op.execute(_context())
    (call,) = store.calls
    assert call == {
        "dag_id": "d",
        "run_id": "r",
        "decision": "approve",
        "reviewer": "u7",
        "comment": "looked at it",
        "decided_at": datetime(2026, 5, 1, 12, tzinfo=UTC),
        "source": "airflow-hitl",
        "review_key": "d/r/review/-1/try-1",
    }
    assert out["status"] == "recorded" and out["decision"] == "approve"


def test_outcome_rule():
    approve = {"decision": "approve", "reviewer": "ada", "source": "airflow-hitl", "comment": "ok"}
    reject = {**approve, "decision": "reject", "comment": "no"}
    assert batch_outcome(tier="critical", alert_tier=Tier.CRITICAL, decision=approve)[0] is True
    accepted, why = batch_outcome(tier="high", alert_tier=Tier.CRITICAL, decision=reject)
    assert not accepted and why == "certrisk review: batch tier high rejected by ada (airflow-hitl): no"
    assert (
        "escalated"
        in batch_outcome(tier="low", alert_tier=Tier.CRITICAL, decision={**reject, "decision": "escalate"})[1]
    )
    assert batch_outcome(tier="high", alert_tier=Tier.CRITICAL, decision=None)[0] is True
    assert batch_outcome(tier="critical", alert_tier=Tier.CRITICAL, decision=None)[0] is False


def _alert(**kw):
    return RiskAlertOperator(
        task_id="alert",
        policy_path=POLICY,  # alert tier critical
        scored=SCORED,
        recorded={"model": "digits-cnn", "batch_id": "b", "manifest_digest": "m"},
        outlets=[accepted_asset("digits-cnn")],
        **kw,
    )


def test_an_approved_critical_batch_is_accepted_and_updates_the_accepted_asset():
    ctx = _context(xcom={"decision": "approve", "reviewer": "ada", "source": "airflow-hitl", "comment": ""})
    out = _alert(review_task_id="record_review", review_at_tier="high").execute(ctx)
    assert out == {"alert": False, "accepted": True, "tier": "critical", "decision": "approve"}
    extra = ctx["outlet_events"][accepted_asset("digits-cnn")].extra
    assert extra["decision"] == "approve" and extra["reviewer"] == "ada" and extra["tier"] == "critical"
    assert (extra["batch_id"], extra["run_id"], extra["n_samples"]) == ("b", "r", 4)


@pytest.mark.parametrize("decision", ["reject", "escalate"])
def test_a_rejected_or_escalated_batch_fails_the_run_without_an_asset_event(decision):
    ctx = _context(xcom={"decision": decision, "reviewer": "ada", "source": "airflow-hitl", "comment": "no"})
    with pytest.raises(AirflowFailException, match=f"certrisk review: batch tier critical {decision}"):
        _alert(review_task_id="record_review", review_at_tier="high").execute(ctx)
    assert ctx["outlet_events"] == {}


def test_a_missing_decision_fails_rather_than_passing_the_batch():
    with pytest.raises(AirflowFailException, match="recorded no decision"):
        _alert(review_task_id="record_review", review_at_tier="high").execute(_context(xcom=None))


def test_without_a_review_the_alert_tier_decides():
    ctx = _context(xcom={"decision": "approve"})  # never read: no review below the review tier
    with pytest.raises(AirflowFailException, match="certrisk alert: batch tier critical reaches"):
        _alert().execute(ctx)
    with pytest.raises(AirflowSkipException, match="not accepted; alerts are off"):
        _alert(fail_on_alert=False).execute(ctx)
    op = _alert(review_task_id="record_review", review_at_tier="critical")
    op.scored = {**SCORED, "tier": "high"}
    assert op.execute(ctx)["decision"] is None
    assert ctx["outlet_events"][accepted_asset("digits-cnn")].extra["decision"] is None


def test_asset_events_carry_the_extra_on_every_asset_outlet():
    events = defaultdict(lambda: SimpleNamespace(extra={}))
    user = Asset("s3://bucket/scores")
    n = emit_asset_events(
        {"outlet_events": events}, [risk_asset("digits-cnn"), user, "not an asset"], {"tier": "low"}
    )
    assert n == 2 and events[risk_asset("digits-cnn")].extra == {"tier": "low"} == events[user].extra
    assert risk_asset("digits-cnn").uri == "certrisk://digits-cnn/risk"
    assert accepted_asset("my model").uri == "certrisk://my%20model/accepted"


def test_the_factory_wires_review_outlets_and_the_outcome_task():
    from airflow.sdk import TriggerRule

    from certrisk.operators import certrisk_dag

    extra_outlet = Asset("s3://bucket/digits-scores")
    reviewed = REPO / "dags" / "policies" / "digits_reviewed.yaml"
    dag = certrisk_dag(str(reviewed), dag_id="t", batch_uri="b.parquet", alert=False, outlets=[extra_outlet])
    assert dag.get_task("governance_write").outlets == [risk_asset("digits-cnn"), extra_outlet]
    alert = dag.get_task("alert")  # kept with alerts off: a rejected batch still fails the run
    assert (alert.fail_on_alert, alert.review_task_id, alert.review_at_tier) == (
        False,
        "record_review",
        "high",
    )
    assert alert.trigger_rule == TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS
    assert dag.get_task("record_review").retries == 2
    plain = certrisk_dag(POLICY, dag_id="p", batch_uri="b.parquet", alert=False)
    assert not {"review", "record_review", "alert"} & set(plain.task_ids)
