"""Each access tier on PostgreSQL, connecting as a login user holding that role, can do exactly
what it should; on SQLite grant refuses and says why."""

from __future__ import annotations

import uuid

import psycopg
import pytest
import sqlalchemy as sa
from records import POLICY_TEXT, make_record
from test_evaluations import REFERENCE_SHA, meta, result_frame

from certrisk.governance import GovernanceStore, queries
from certrisk.governance.facts import BatchFacts
from certrisk.governance.roles import AUDITOR, COMPLIANCE, ENGINEER, REVISER, WRITER, grant_roles
from certrisk.schemas.errors import StoreError

ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


@pytest.fixture
def granted(pg_url):
    store = GovernanceStore(pg_url)
    store.upgrade()
    store.write_run(make_record("run-1", 20))
    store.write_evaluation("digits", POLICY_TEXT, REFERENCE_SHA, result_frame(), meta())
    store.dispose()
    grant_roles(pg_url)
    grant_roles(pg_url)  # idempotent
    users = {}
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        for role in (WRITER, REVISER, ENGINEER, COMPLIANCE, AUDITOR):
            user = f"t_{role.split('_')[1]}_{uuid.uuid4().hex[:8]}"
            conn.execute(f"CREATE ROLE {user} LOGIN IN ROLE {role}")
            users[role] = user
    dbname = sa.make_url(pg_url).database
    yield {role: f"postgresql+psycopg://{user}@127.0.0.1:5432/{dbname}" for role, user in users.items()}
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        for user in users.values():
            conn.execute(f"DROP ROLE IF EXISTS {user}")


def _can(url, sql) -> bool:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(sql))
        return True
    except sa.exc.ProgrammingError as exc:
        assert "permission denied" in str(exc.orig)
        return False
    finally:
        engine.dispose()


def test_writer_inserts_but_cannot_change_records(granted):
    url = granted[WRITER]
    store = GovernanceStore(url)
    assert store.write_run(make_record("run-2", 10, seed=2)).status == "written"
    assert store.write_run(make_record("run-2", 10, seed=2)).status == "already recorded"
    store.dispose()
    assert not _can(url, "UPDATE certificate SET radius = 1")
    assert not _can(url, "UPDATE pipeline_run SET tier = 'low'")
    assert not _can(url, "DELETE FROM sample_risk")
    assert not _can(url, "DELETE FROM audit_log")
    assert not _can(url, "TRUNCATE audit_log")
    assert not _can(url, "CREATE TABLE public.x (i int)")
    assert GovernanceStore(granted[AUDITOR]).verify().ok


def test_compliance_reads_views_only(granted):
    url = granted[COMPLIANCE]
    for view in (
        "v_run_summary",
        "v_sample_risk",
        "v_rmf_evidence",
        "v_rmf_subcategory",
        "v_daily_trend",
        "v_drift_test",
        "v_rule_result",
        "v_method_cost",
        "v_evaluation",
        "v_evaluation_result",
    ):
        assert _can(url, f"SELECT * FROM {view}"), view
    assert not _can(url, "SELECT * FROM evaluation_result")
    assert not _can(url, "SELECT * FROM drift_test")
    assert not _can(url, "SELECT * FROM rule_result")
    assert not _can(url, "SELECT radius FROM certificate")
    assert not _can(url, "SELECT p_lower FROM certificate")
    assert not _can(url, "SELECT * FROM sample_risk")
    assert not _can(url, "SELECT * FROM audit_log")
    assert not _can(url, "INSERT INTO model (name, sha256, registered_at) VALUES ('x', 'y', now())")
    store = GovernanceStore(url)
    assert store.list_runs()["run_id"].tolist() == ["run-1"]
    assert len(store.samples("run-1", tier=None)) == 20
    assert len(store.trend(days=7)) == 1
    assert store.rmf_coverage("digits")["covered"].sum() == 3
    assert len(store.drift_tests("run-1")) == 2 and len(store.rule_results("run-1")) == 1
    assert store.method_costs("run-1")["n_samples"].tolist() == [20, 20]
    with store.connect("report") as conn:  # what a compliance report reads
        run = queries.run_summary(conn, "run-1")
        assert len(queries.run_evidence(conn, run["run_pk"])) == 3
        assert queries.models(conn) == ["digits"]
    assert BatchFacts.from_row(run).n_samples == 20
    evaluation = store.latest_evaluation("digits")  # measured detection: aggregates, for compliance
    assert evaluation["reference_sha256"] == REFERENCE_SHA and len(evaluation["results"]) == 4
    with pytest.raises(StoreError, match="permission denied"):
        store.get_run("certrisk_example", "run-1")
    with pytest.raises(StoreError, match="permission denied"):
        store.verify()
    store.dispose()


def test_engineer_reads_certificates_not_audit_log(granted):
    url = granted[ENGINEER]
    assert _can(url, "SELECT radius, p_lower FROM certificate")
    for view in ("v_drift_test", "v_rule_result", "v_method_cost"):
        assert _can(url, f"SELECT * FROM {view}"), view
    assert not _can(url, "SELECT * FROM audit_log")
    assert not _can(url, "INSERT INTO model (name, sha256, registered_at) VALUES ('x', 'y', now())")
    assert not _can(url, "UPDATE certificate SET radius = 1")
    assert len(GovernanceStore(url).get_run("certrisk_example", "run-1")["certificates"]) == 40


def test_auditor_reads_everything_and_changes_nothing(granted):
    url = granted[AUDITOR]
    for table in (
        "certificate",
        "audit_log",
        "sample_risk",
        "pipeline_run",
        "v_sample_risk",
        "v_method_cost",
    ):
        assert _can(url, f"SELECT * FROM {table}"), table
    assert not _can(url, "INSERT INTO model (name, sha256, registered_at) VALUES ('x', 'y', now())")
    assert not _can(url, "DELETE FROM audit_log")
    report = GovernanceStore(url).verify()
    assert report.ok and report.runs_checked == 1


def _count(url, table) -> int:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one()
    finally:
        engine.dispose()


def test_only_the_reviser_supersedes_and_the_trail_shows_who_and_why(granted):
    """The pipeline's writer role cannot rewrite a past run (issue 14: it could, to tier low, and
    compliance saw no sign); the reviser can, with a reason, and every view shows the revision
    with the previous tier, the reviser's login and the reason."""
    changed = make_record("run-1", 20, seed=5)
    writer = GovernanceStore(granted[WRITER])
    with pytest.raises(StoreError, match="superseding needs the certrisk_reviser role"):
        writer.write_run(changed, supersede=True, reason="tier too high")
    writer.dispose()
    # entries: the model, the policy, run-1, the evaluation; nothing was added
    assert _count(granted[AUDITOR], "pipeline_run") == 1 and _count(granted[AUDITOR], "audit_log") == 4
    # nor by raw SQL: no column privilege on supersedes_id, revision_reason or recorded_by
    assert not _can(granted[WRITER], "INSERT INTO pipeline_run (supersedes_id) VALUES (1)")
    assert not _can(granted[REVISER], "INSERT INTO pipeline_run (recorded_by) VALUES ('someone else')")
    reviser = GovernanceStore(granted[REVISER])
    with pytest.raises(Exception, match="needs a reason"):
        reviser.write_run(changed, supersede=True)
    result = reviser.write_run(changed, supersede=True, reason="relabelled after review ticket 7")
    assert (result.status, result.revision) == ("superseded", 2)
    reviser.dispose()
    compliance = GovernanceStore(granted[COMPLIANCE])
    run = compliance.list_runs().iloc[0]
    login = sa.make_url(granted[REVISER]).username
    old_tier = make_record("run-1", 20).summary["tier"]
    assert (run["revision"], run["previous_tier"], run["recorded_by"]) == (2, old_tier, login)
    assert (
        run["revised"]
        == f"revised: revision 2 replaces tier {old_tier}; by {login}: relabelled after review ticket 7"
    )
    compliance.dispose()
    assert GovernanceStore(granted[AUDITOR]).verify().ok


def test_upgrade_keeps_and_extends_the_grants(pg_url):
    """Migration 0003 (and 0005) replace v_run_summary in place on PostgreSQL: roles granted before
    the upgrade read its new columns without a second ``certrisk db grant``; the upgrade applies
    the tiers again for what is new (the evaluation views, the writer's column privileges)."""
    store = GovernanceStore(pg_url)
    store.upgrade("0002")
    store.dispose()
    grant_roles(pg_url)
    store.upgrade()
    store.write_run(make_record("run-1", 10))
    store.dispose()
    users = {}
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        for role in (COMPLIANCE, WRITER):
            users[role] = f"t_{role.split('_')[1]}_{uuid.uuid4().hex[:8]}"
            conn.execute(f"CREATE ROLE {users[role]} LOGIN IN ROLE {role}")
    dbname = sa.make_url(pg_url).database
    try:
        url = f"postgresql+psycopg://{users[COMPLIANCE]}@127.0.0.1:5432/{dbname}"
        assert _can(
            url, "SELECT abstention_elevated, n_drift_tests, not_measured, previous_tier FROM v_run_summary"
        )
        assert _can(url, "SELECT factor_method_disagreement FROM v_sample_risk")
        assert _can(url, "SELECT * FROM v_evaluation_result")
        assert not _can(url, "SELECT radius FROM certificate")
        writer = f"postgresql+psycopg://{users[WRITER]}@127.0.0.1:5432/{dbname}"
        assert not _can(writer, "INSERT INTO pipeline_run (supersedes_id) VALUES (1)")
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            for user in users.values():
                conn.execute(f"DROP ROLE IF EXISTS {user}")


def test_sqlite_has_no_roles(sqlite_url):
    with pytest.raises(StoreError, match="SQLite is a single-user file without roles"):
        grant_roles(sqlite_url)
