"""human review on the record; stored verify results

* ``review``: one append-only row per decision a person (or, at a timeout, the system) took on a
  recorded run revision: the run's key, revision and manifest digest (what was reviewed), the
  decision (approve, reject, escalate), comment, reviewer, when it was decided, where it came from
  ("airflow-hitl", "cli", "timeout"), an idempotency key (unique), who wrote it (``recorded_by``:
  on PostgreSQL the column default ``session_user``, which no role may insert) and when. Each row
  gets an audit entry of kind "review" in the same transaction (``certrisk.governance.reviews``).
* ``verification``: one row per stored ``certrisk verify`` result (when, by whom, ok, head,
  counts, message, the expected head it was checked against). Observations, not chained: see
  ``certrisk.governance.verifications``.
* Views: v_review (the reviews with the run's model, for the compliance role), v_verification,
  and v_run_summary gains ``review_at_tier`` (the batch summary's key of that name: the tier at
  or above which the policy in force asked for a review; NULL where it asked for none) and the
  latest review of each run revision (``review_decision``, ``review_reviewer``,
  ``review_source``, ``review_decided_at``), appended, so PostgreSQL replaces it in place and
  keeps its grants (SQLite drops and creates it).

Existing records are untouched and the chain gains no entry (the head stays what it was).
Downgrading below this revision drops the reviews, their entries and the stored verify results;
the chain the older code then verifies has gaps wherever review entries were (it reports them).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-11 09:00:00.000000
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: The latest review of the run revision ``r`` (by decision time, then by id).
LATEST = (
    "lr.id = (SELECT x.id FROM review x WHERE x.run_pk = r.id ORDER BY x.decided_at DESC, x.id DESC LIMIT 1)"
)
REVIEW_COLUMNS = (
    "lr.decision AS review_decision, lr.reviewer AS review_reviewer, lr.source AS review_source, "
    "lr.decided_at AS review_decided_at"
)
NEW_VIEWS = {
    "v_review": """
        SELECT v.id AS review_pk, v.run_pk, v.dag_id, v.run_id, v.revision, m.name AS model, v.decision,
               v.comment, v.reviewer, v.decided_at, v.source, v.review_key, v.recorded_by, v.recorded_at,
               v.run_manifest_digest
        FROM review v JOIN pipeline_run r ON r.id = v.run_pk JOIN model m ON m.id = r.model_id""",
    "v_verification": """
        SELECT id AS verification_pk, verified_at, verified_by, recorded_by, ok, head, expected_head,
               runs_checked, rows_checked, first_bad_run, first_bad_row, message, seconds
        FROM verification""",
}


def _revision_0005():
    path = Path(__file__).with_name("0005_records_and_revisions.py")
    spec = importlib.util.spec_from_file_location("certrisk_migration_0005", path)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def _review_at_tier(dialect: str) -> str:
    """The summary's "review_at_tier" where it is a JSON string, else NULL."""
    if dialect == "postgresql":
        return (
            "CASE WHEN json_typeof(r.summary -> 'review_at_tier') = 'string' "
            "THEN r.summary ->> 'review_at_tier' END AS review_at_tier"
        )
    path = "r.summary, '$.review_at_tier'"
    return f"CASE WHEN json_type({path}) = 'text' THEN json_extract({path}) END AS review_at_tier"


def run_summary_view(dialect: str) -> str:
    """v_run_summary of 0005 with review_at_tier and the latest review appended."""
    old = _revision_0005().run_summary_view(dialect)
    anchor = "\n            FROM pipeline_run r "
    assert anchor in old, "v_run_summary of 0005 changed shape"
    body = old.replace(anchor, f", {_review_at_tier(dialect)}, {REVIEW_COLUMNS}{anchor}", 1)
    return f"{body} LEFT JOIN review lr ON {LATEST}"


def _replace_run_summary(dialect: str, body: str) -> None:
    if dialect == "postgresql":
        op.execute(f"CREATE OR REPLACE VIEW v_run_summary AS {body}")
    else:
        op.execute("DROP VIEW IF EXISTS v_run_summary")
        op.execute(f"CREATE VIEW v_run_summary AS {body}")


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_table(
        "review",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("dag_id", sa.String(length=250), nullable=False),
        sa.Column("run_id", sa.String(length=250), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("run_manifest_digest", sa.String(length=64), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("reviewer", sa.String(length=200), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("review_key", sa.String(length=200), nullable=False),
        sa.Column("recorded_by", sa.String(length=200), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_pk"], ["pipeline_run.id"], name=op.f("fk_review_run_pk_pipeline_run")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review")),
        sa.UniqueConstraint("review_key", name=op.f("uq_review_review_key")),
    )
    op.create_index("ix_review_run_pk_decided_at", "review", ["run_pk", "decided_at"])
    op.create_table(
        "verification",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("verified_by", sa.String(length=200), nullable=False),
        sa.Column("recorded_by", sa.String(length=200), nullable=True),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("head", sa.String(length=64), nullable=False),
        sa.Column("expected_head", sa.String(length=64), nullable=True),
        sa.Column("runs_checked", sa.Integer(), nullable=False),
        sa.Column("rows_checked", sa.BigInteger(), nullable=False),
        sa.Column("first_bad_run", sa.Text(), nullable=True),
        sa.Column("first_bad_row", sa.Text(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("seconds", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_verification")),
    )
    op.create_index("ix_verification_verified_at", "verification", ["verified_at"])
    if dialect == "postgresql":  # the login that wrote the row, which no role may set (roles)
        op.execute("ALTER TABLE review ALTER COLUMN recorded_by SET DEFAULT session_user")
        op.execute("ALTER TABLE verification ALTER COLUMN recorded_by SET DEFAULT session_user")
    _replace_run_summary(dialect, run_summary_view(dialect))
    for name, body in NEW_VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {body}")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name in reversed(tuple(NEW_VIEWS)):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    previous = _revision_0005().run_summary_view(dialect)
    if dialect == "postgresql":  # a view loses columns only by being dropped: drop its dependants too
        op.execute("DROP VIEW v_run_summary CASCADE")
        _recreate_from_0005(dialect, previous)
    else:
        _replace_run_summary(dialect, previous)
    op.execute("DELETE FROM audit_log WHERE kind = 'review'")
    op.drop_index("ix_verification_verified_at", table_name="verification")
    op.drop_table("verification")
    op.drop_index("ix_review_run_pk_decided_at", table_name="review")
    op.drop_table("review")


def _recreate_from_0005(dialect: str, run_summary: str) -> None:
    """The views of 0005 (v_run_summary and those that read it), as 0005 left them."""
    m5 = _revision_0005()
    previous = m5._revision("0002_compliance_views.py", "certrisk_migration_0002")
    views = previous._views(dialect)
    views["v_run_summary"] = run_summary
    views["v_sample_risk"] = m5._revision(
        "0004_factor_columns.py", "certrisk_migration_0004"
    ).sample_risk_view(dialect)
    for name in dict.fromkeys(("v_run_summary", "v_sample_risk", *previous.OLD_VIEWS, *previous.NEW_VIEWS)):
        op.execute(f"CREATE VIEW {name} AS {views[name]}")
