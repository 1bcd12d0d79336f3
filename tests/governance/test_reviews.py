"""Review decisions on the record: recorded once per key, refused for an unrecorded run or a bad
decision without writing anything, stated as each run's review state, covered by verify (an
edited, deleted, inserted or re-pointed review is found and named), on both backends."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
import sqlalchemy as sa
from records import make_record
from test_roles import _can, granted  # noqa: F401  (granted: the access tiers fixture)

from certrisk.governance import GovernanceStore
from certrisk.governance.roles import AUDITOR, COMPLIANCE, WRITER
from certrisk.schemas.clock import utc_now
from certrisk.schemas.errors import InputError, RecordConflictError, RunNotFoundError
from certrisk.schemas.review import REVIEW_RMF

DAG = "certrisk_example"


def _reviewed_record(run_id: str, at_tier: str = "high", seed: int = 0):
    """A record whose summary says the policy asked for review from ``at_tier`` (the pipeline
    records the policy's review.at_tier there)."""
    record = make_record(run_id, 20, seed=seed)
    return dataclasses.replace(record, summary={**record.summary, "review_at_tier": at_tier})


@pytest.fixture
def reviewed(store):
    store.write_run(_reviewed_record("run-1"))
    store.write_run(make_record("run-2", 20, seed=2))
    return store


def _count(store, table: str) -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one()


def _sql(store, *statements):
    with store.engine.begin() as conn:
        for stmt in statements:
            conn.execute(sa.text(stmt))


def test_record_once_per_key_and_state_in_runs(reviewed):
    store = reviewed
    tier = store.list_runs().set_index("run_id").loc["run-1", "tier"]
    assert tier in ("high", "critical")
    states = store.list_runs().set_index("run_id")["review"]
    assert (states["run-1"], states["run-2"]) == ("pending", "")  # run-2 asked for no review
    when = (utc_now() - timedelta(hours=1)).replace(microsecond=0)
    first = store.record_review(
        dag_id=DAG, run_id="run-1", decision="approve", reviewer="alice", comment="looked at top 25",
        decided_at=when, source="airflow-hitl", review_key="hitl:run-1:try1",
    )  # fmt: skip
    assert first["status"] == "recorded" and first["revision"] == 1 and first["database"] == store.masked_url
    again = store.record_review(
        dag_id=DAG, run_id="run-1", decision="approve", reviewer="alice", comment="looked at top 25",
        decided_at=when, source="airflow-hitl", review_key="hitl:run-1:try1",
    )  # fmt: skip
    assert again["status"] == "already recorded" and again["review_pk"] == first["review_pk"]
    assert _count(store, "review") == 1 and _count(store, "audit_log WHERE kind = 'review'") == 1
    assert store.list_runs().set_index("run_id").loc["run-1", "review"] == "approved by alice"
    store.record_review(dag_id=None, run_id="run-1", decision="reject", reviewer="bob", comment="drift")
    frame = store.reviews(run_id="run-1")
    assert list(frame["decision"]) == ["reject", "approve"]  # newest decision first
    assert frame.iloc[1]["decided_at"] == when and frame.iloc[1]["source"] == "airflow-hitl"
    assert store.list_runs().set_index("run_id").loc["run-1", "review"] == "rejected by bob"
    store.record_review(dag_id=DAG, run_id="run-1", decision="reject", reviewer="system", source="timeout")
    assert store.list_runs().set_index("run_id").loc["run-1", "review"] == "rejected by system (timeout)"
    report = store.verify()
    assert report.ok and "5 other record(s)" in report.message, report.message


def test_refused_decisions_write_nothing(reviewed):
    store = reviewed
    store.record_review(dag_id=DAG, run_id="run-1", decision="approve", reviewer="alice", review_key="k")
    before = (_count(store, "review"), _count(store, "audit_log"))
    with pytest.raises(RunNotFoundError, match=r"run certrisk_example/run-9.*nothing was written"):
        store.record_review(dag_id=DAG, run_id="run-9", decision="approve", reviewer="alice")
    with pytest.raises(InputError, match=r"run certrisk_example/run-1: decision 'ok' is not one of"):
        store.record_review(dag_id=DAG, run_id="run-1", decision="ok", reviewer="alice")
    with pytest.raises(InputError, match="reviewer"):
        store.record_review(dag_id=DAG, run_id="run-1", decision="approve", reviewer=" ")
    with pytest.raises(InputError, match="is in the future"):
        store.record_review(
            dag_id=DAG,
            run_id="run-1",
            decision="approve",
            reviewer="alice",
            decided_at=utc_now() + timedelta(hours=1),
        )
    with pytest.raises(InputError, match="timeout's default outcome"):
        store.record_review(dag_id=DAG, run_id="run-1", decision="reject", reviewer="alice", source="timeout")
    with pytest.raises(RecordConflictError, match="review key 'k' is already recorded"):
        store.record_review(dag_id=DAG, run_id="run-1", decision="reject", reviewer="alice", review_key="k")
    assert (_count(store, "review"), _count(store, "audit_log")) == before
    assert store.verify().ok


def _one_review(store) -> int:
    store.record_review(dag_id=DAG, run_id="run-1", decision="approve", reviewer="alice", comment="fine")
    with store.engine.connect() as conn:
        return conn.execute(sa.text("SELECT id FROM review")).scalar_one()


@pytest.mark.parametrize(
    "statement, found",
    [
        ("UPDATE review SET decision = 'reject'", "differs from what was recorded: it was changed"),
        ("UPDATE review SET reviewer = 'mallory'", "differs from what was recorded: it was changed"),
        ("DELETE FROM review", "its review row is missing: it was deleted"),
        ("UPDATE review SET run_pk = (SELECT MAX(id) FROM pipeline_run)", "run_pk"),
        ("UPDATE audit_log SET record_key = 'x' WHERE kind = 'review'", "does not match its hash"),
    ],
)
def test_tampered_review_is_found_and_named(reviewed, statement, found):
    store = reviewed
    pk = _one_review(store)
    _sql(store, statement)
    for report in (store.verify(), store.verify_run(DAG, "run-1")):
        assert not report.ok
        assert found in report.message, report.message
        assert report.first_bad_run.startswith("review "), report.first_bad_run
    if "DELETE" not in statement and "audit_log" not in statement:
        assert store.verify().first_bad_row.startswith(f"review id={pk}")


def test_review_inserted_by_hand_is_found(reviewed):
    store = reviewed
    _one_review(store)
    _sql(
        store,
        "INSERT INTO review (run_pk, dag_id, run_id, revision, run_manifest_digest, decision, comment, reviewer, "
        "decided_at, source, review_key, recorded_at) SELECT run_pk, dag_id, run_id, revision, "
        "run_manifest_digest, 'approve', '', 'mallory', decided_at, 'cli', 'forged', recorded_at FROM review",
    )
    for report in (store.verify(), store.verify_run(DAG, "run-1")):
        assert not report.ok and "has no audit entry" in report.message and "mallory" in report.first_bad_run


def test_verify_records_its_result(reviewed):
    store = reviewed
    assert store.last_verify() is None
    plain = store.verify()
    assert store.last_verify() is None  # only record=True stores
    report = store.verify(record=True, verified_by="carol")
    last = store.last_verify()
    assert (last["ok"], last["head"], last["verified_by"]) == (True, report.head, "carol")
    assert (last["rows_checked"], last["runs_checked"]) == (plain.rows_checked, 2)
    assert last["message"] == report.message and last["seconds"] >= 0
    assert last["verified_at"].tzinfo is not None
    _sql(store, "UPDATE sample_risk SET risk = 0.5 WHERE sample_id = 'run-2:3'")
    store.verify(record=True, verified_by="carol", expected_head=report.head)
    last = store.last_verify()
    assert last["ok"] is False and last["first_bad_run"] == f"{DAG}/run-2#1"
    assert last["expected_head"] == report.head
    store.record_verification(plain, "dave")
    assert store.last_verify()["verified_by"] == "dave"
    assert store.verify().ok is False  # stored results are not records: the chain is unchanged by them


def test_verify_run_is_bounded_to_its_run(reviewed):
    store = reviewed
    _one_review(store)
    ok = store.verify_run(DAG, "run-1")
    assert ok.ok and "1 revision(s), 1 review(s)" in ok.message and ok.rows_checked > 0
    _sql(store, "UPDATE sample_risk SET risk = 0.5 WHERE sample_id = 'run-2:3'")
    assert store.verify_run(DAG, "run-1").ok  # another run's rows are not read
    other = store.verify_run(DAG, "run-2")
    assert not other.ok and other.first_bad_row == "sample_risk sample_id='run-2:3' row_no=3"
    with pytest.raises(RunNotFoundError, match="no recorded run certrisk_example/run-9"):
        store.verify_run(DAG, "run-9")


def test_verify_run_checks_the_links_beside_its_entries(reviewed):
    store = reviewed
    # run-1's entry sits between the model/policy entries and run-2's: break run-2's link to it
    _sql(store, f"UPDATE audit_log SET prev_hash = '{'e' * 64}' WHERE run_id = 'run-2'")
    report = store.verify_run(DAG, "run-1")
    assert not report.ok and "does not link to" in report.message, report.message


def test_upgrade_from_0006_keeps_records_verified(db_url):
    store = GovernanceStore(db_url)
    store.upgrade("0006")
    store.write_run(make_record("old", 15))
    with store.engine.connect() as conn:  # verify reads the 0007 tables: the head as 0006 left it
        head = conn.execute(
            sa.text("SELECT entry_hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        ).scalar_one()
    store.upgrade()
    after = store.verify(expected_head=head)
    assert after.ok and after.head == head  # 0007 appends no entry
    assert store.list_runs().iloc[0]["review"] == ""
    store.record_review(dag_id=DAG, run_id="old", decision="escalate", reviewer="erin", comment="unsure")
    assert store.list_runs().iloc[0]["review"] == "escalated by erin"
    assert store.verify().ok and store.verify_run(DAG, "old").ok
    store.dispose()


def test_roles_review_and_verification(granted):  # noqa: F811
    """PostgreSQL: the writer records reviews and cannot change them; compliance reads the review
    state, the reviews and the last verify through views only; the auditor stores its verify
    results under its own login; nobody updates or deletes either."""
    writer = GovernanceStore(granted[WRITER])
    assert writer.record_review(dag_id=DAG, run_id="run-1", decision="reject", reviewer="alice")[
        "status"
    ] == ("recorded")
    writer.dispose()
    for sql in (
        "UPDATE review SET decision = 'approve'",
        "DELETE FROM review",
        "INSERT INTO review (recorded_by) VALUES ('someone else')",
        "DELETE FROM verification",
    ):
        assert not _can(granted[WRITER], sql), sql
    auditor = GovernanceStore(granted[AUDITOR])
    assert auditor.verify(record=True, verified_by="auditor-cli").ok
    auditor.dispose()
    assert not _can(granted[AUDITOR], "UPDATE verification SET ok = false")
    assert not _can(granted[AUDITOR], "INSERT INTO review (comment) VALUES ('x')")
    compliance = GovernanceStore(granted[COMPLIANCE])
    last = compliance.last_verify()
    assert last["ok"] and last["recorded_by"] == sa.make_url(granted[AUDITOR]).username
    assert compliance.list_runs().iloc[0]["review"] == "rejected by alice"
    assert list(compliance.reviews()["reviewer"]) == ["alice"]
    compliance.dispose()
    assert not _can(granted[COMPLIANCE], "SELECT * FROM review")
    assert not _can(granted[COMPLIANCE], "SELECT * FROM verification")


def test_review_columns_of_unreviewed_runs_are_none(reviewed):
    store = reviewed
    store.record_review(dag_id=DAG, run_id="run-1", decision="escalate", reviewer="alice")
    runs = store.list_runs().set_index("run_id")
    assert runs.loc["run-2", "review_decision"] is None and runs.loc["run-2", "review"] == ""
    assert runs.loc["run-1", "review"] == "escalated by alice"
    assert runs.loc["run-1", "review_decided_at"].tzinfo is not None


def test_reviews_evidence_their_rmf_subcategories(reviewed):
    store = reviewed
    before = store.rmf_coverage().set_index("subcategory_id")
    assert not before.loc["GOVERN 3.2", "covered"]
    manage = int(before.loc["MANAGE 1.3", "n_runs"])  # risk tiers evidence it in every run record
    store.record_review(dag_id=DAG, run_id="run-1", decision="approve", reviewer="alice")
    store.record_review(dag_id=DAG, run_id="run-1", decision="reject", reviewer="bob")
    after = store.rmf_coverage().set_index("subcategory_id")
    for sid in REVIEW_RMF:
        assert after.loc[sid, "covered"] and "human_review" in after.loc[sid, "evidence_kinds"], sid
    assert (after.loc["GOVERN 3.2", "n_runs"], after.loc["GOVERN 3.2", "n_records"]) == (1, 2)
    assert after.loc["MANAGE 1.3", "n_runs"] == max(manage, 1)  # run-1 counted once
    assert store.rmf_coverage(model="another").set_index("subcategory_id").loc["GOVERN 3.2", "n_runs"] == 0
