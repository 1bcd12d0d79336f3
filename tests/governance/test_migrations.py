"""Migrations 0004 and 0005 on a database that already holds records: a run written before the
factor columns and column lists existed still verifies after the upgrade, its model and policy
rows are chained then, and every factor the scorer has is a column at head."""

from __future__ import annotations

import sqlalchemy as sa
from records import make_record

from certrisk.governance import GovernanceStore
from certrisk.governance.chain import (
    LEGACY_COLUMNS,
    canonical_json,
    entry_hash,
    manifest_of,
    sha256_hex,
    table_digest,
)
from certrisk.governance.engine import dialect_for
from certrisk.governance.payload import prepare, table_rows
from certrisk.governance.store import schema_head
from certrisk.schemas.columns import FACTORS
from certrisk.schemas.tables import ROW_TABLES, AuditEntry, Model, PipelineRun, Policy


def _write_as_before_0004(store: GovernanceStore, record) -> None:
    """What certrisk wrote at revision 0003: rows digested over the six factors of 0001, a
    manifest without column lists, the entry hash without kind or facts, the summary as
    SQLAlchemy's json.dumps."""
    p = prepare(record)
    # only sample_risk's (0004) and certificate's (0006) columns changed since 0003: the other
    # tables' are their LEGACY_COLUMNS
    changed = {"sample_risk": record.sample_risk, "certificate": record.certificates}
    assert all(
        tuple(spec.items()) == LEGACY_COLUMNS[name] for name, _, spec in ROW_TABLES if name not in changed
    )
    tables = dict(p.tables)
    for name, frame in changed.items():
        tables[name] = table_rows(frame, dict(LEGACY_COLUMNS[name]), table=name)
    manifest, _ = manifest_of(
        p.header.digest(), {n: (t.n, table_digest(t.digests), ()) for n, t in tables.items()}
    )
    for entry in manifest["tables"].values():
        entry.pop("columns")
    digest = sha256_hex(canonical_json(manifest))
    now = p.created_at
    h = p.header
    plain = sa.create_engine(store.url, poolclass=sa.pool.NullPool)  # SQLAlchemy's own JSON and dates
    run_t, audit_t = PipelineRun.__table__, AuditEntry.__table__
    with plain.begin() as conn:
        model = conn.execute(
            Model.__table__.insert().values(name=record.model_name, sha256=record.model_sha256, format="torchscript",
                                            registered_at=now).returning(Model.__table__.c.id)
        ).scalar_one()  # fmt: skip
        policy = conn.execute(
            Policy.__table__.insert().values(name=record.policy_name, sha256=record.policy_sha256,
                                             text=record.policy_text, recorded_at=now).returning(Policy.__table__.c.id)
        ).scalar_one()  # fmt: skip
        run_pk = conn.execute(
            run_t.insert().values(
                dag_id=record.dag_id, run_id=record.run_id, revision=1, batch_id=record.batch_id, created_at=now,
                recorded_at=now, model_id=model, policy_id=policy, package_version=record.package_version,
                n_samples=h.n_samples, abstention_rate=h.abstention_rate, mean_risk=h.mean_risk, tier=h.tier,
                drift=h.drift, summary=p.summary, manifest_digest=digest,
            ).returning(run_t.c.id)
        ).scalar_one()  # fmt: skip
        for name, table, _ in ROW_TABLES:
            if tables[name].n:
                dialect_for(store.url).insert_rows(conn, table.name, run_pk, tables[name])
        fields = {"prev_hash": "0" * 64, "seq": 1, "dag_id": record.dag_id, "run_id": record.run_id, "revision": 1,
                  "manifest_digest": digest, "manifest": manifest, "recorded_at": now}  # fmt: skip
        conn.execute(audit_t.insert().values(**fields, run_pk=run_pk, entry_hash=entry_hash(**fields)))
    plain.dispose()


def test_run_written_before_0004_still_verifies_after_the_upgrade(db_url):
    store = GovernanceStore(db_url)
    store.upgrade("0003")
    record = make_record("old", 15)
    _write_as_before_0004(store, record)
    store.upgrade()
    assert store.current_revision() == schema_head()
    with store.engine.connect() as conn:
        kinds = sorted(conn.execute(sa.text("SELECT kind FROM audit_log")).scalars())
        defaults = conn.execute(
            sa.text("SELECT DISTINCT factor_method_disagreement FROM sample_risk")
        ).scalars()
        assert list(defaults) == [0.0]  # a run recorded before the factor existed did not measure it
    assert kinds == ["model", "policy", "run"]  # the upgrade chained the rows written before 0005
    report = store.verify()
    assert report.ok and report.rows_checked == 15 * 4 + 1 + 2 + 3, report.message
    store.write_run(make_record("new", 10, seed=1))
    assert store.verify().ok
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE sample_risk SET factor_novelty = 0.999 WHERE sample_id = 'old:4'"))
    report = store.verify()
    assert (report.ok, report.first_bad_row) == (False, "sample_risk sample_id='old:4' row_no=4")
    store.dispose()


def test_every_factor_is_a_column_at_head(store):
    """A factor added to the scorer without its migration would fail every write: guard it."""
    with store.engine.connect() as conn:
        table = {c["name"] for c in sa.inspect(conn).get_columns("sample_risk")}
        view = set(conn.execute(sa.text("SELECT * FROM v_sample_risk")).keys())
    for name in FACTORS:
        assert f"factor_{name}" in table and f"factor_{name}" in view, name
    assert AuditEntry.__table__.c.kind is not None
