"""governed records beyond runs: model and policy entries, evaluations; the supersede trail

* ``audit_log`` holds entries of other kinds than runs: ``kind`` ("run", "model", "policy",
  "evaluation"), ``record_pk`` and ``record_key`` (the record an entry of another kind covers) and
  ``facts`` (the stored row's columns that are not payload: who recorded a run revision, and
  why). A run's key columns (run_pk, dag_id, run_id, revision) become nullable. Model and policy
  rows written before this revision get their entries from ``GovernanceStore.upgrade`` when it
  crosses it (``audit_log.chain_existing_records``); the published chain head changes then.
* ``pipeline_run.recorded_by`` (who recorded the revision: on PostgreSQL the column default
  ``session_user``, which ``certrisk db grant`` lets no role insert; on SQLite the
  operating-system user) and ``revision_reason`` (why a revision superseded the one before; set
  only for revisions above 1). Rows written before this revision have neither.
* ``evaluation`` (one row per recorded evaluation of a model's measured detection: model,
  policy, reference sha256, key, times, seeds, metadata, manifest digest) and
  ``evaluation_result`` (one row per attack family and budget, the columns of
  ``certrisk.schemas.columns.EVALUATION_COLUMNS``; aggregates only).
* Views: v_run_summary gains ``recorded_by``, ``revision_reason`` and ``previous_tier`` (the tier
  of the revision it superseded), appended, so PostgreSQL replaces it in place and keeps its
  grants (SQLite drops and creates it); v_evaluation (one row per evaluation) and
  v_evaluation_result (its rows with the evaluation's key) are new, for the compliance role.

Downgrading below this revision drops the evaluations and every entry that is not a run's; the
chain the older code then verifies has gaps wherever such entries were (it reports them).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-09 11:00:00.000000
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

#: (column, SQL type) of evaluation_result after its keys, in order (EVALUATION_COLUMNS of 0005).
RESULT_COLUMNS = (
    ("family", sa.String()), ("norm", sa.String()), ("budget_fraction", sa.Double()), ("eps", sa.Double()),
    ("scored", sa.Boolean()), ("adaptive", sa.Boolean()), ("n_attacked", sa.BigInteger()),
    ("n_successful", sa.BigInteger()), ("success_rate", sa.Double()), ("misclassified_rate", sa.Double()),
    ("abstention_rate", sa.Double()), ("auroc", sa.Double()), ("share_high", sa.Double()),
    ("share_medium", sa.Double()), ("clean_false_alarm", sa.Double()), ("batch_tier", sa.String()),
    ("cert_auroc", sa.Double()), ("cert_share_high", sa.Double()), ("cert_share_medium", sa.Double()),
    ("cert_clean_false_alarm", sa.Double()), ("seconds", sa.Double()),
)  # fmt: skip
TRAIL = (
    "r.recorded_by, r.revision_reason, "
    "(SELECT o.tier FROM pipeline_run o WHERE o.id = r.supersedes_id) AS previous_tier"
)


def _revision(name: str, module: str):
    path = Path(__file__).with_name(name)
    spec = importlib.util.spec_from_file_location(module, path)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def run_summary_view(dialect: str) -> str:
    """v_run_summary of 0003 with the supersede trail appended."""
    old = _revision("0003_run_summary_facts.py", "certrisk_migration_0003")._run_summary(dialect)
    return old.replace(
        "\n            FROM pipeline_run r ", f", {TRAIL}\n            FROM pipeline_run r ", 1
    )


def _evaluation_views() -> dict[str, str]:
    header = (
        "e.id AS evaluation_pk, m.name AS model, m.sha256 AS model_sha256, p.sha256 AS policy_sha256, "
        "e.reference_sha256, e.evaluation_key, e.created_at, e.recorded_at"
    )
    rows = ", ".join(f"x.{name}" for name, _ in RESULT_COLUMNS)
    joins = "FROM evaluation e JOIN model m ON m.id = e.model_id JOIN policy p ON p.id = e.policy_id"
    return {
        "v_evaluation": f"SELECT {header}, e.package_version, e.n_clean, e.seeds, e.meta {joins}",
        "v_evaluation_result": f"SELECT {header}, x.row_no, {rows} {joins} "
        "JOIN evaluation_result x ON x.evaluation_pk = e.id",
    }


def _run_summary(dialect: str, body: str) -> None:
    if dialect == "postgresql":
        op.execute(f"CREATE OR REPLACE VIEW v_run_summary AS {body}")
    else:
        op.execute("DROP VIEW IF EXISTS v_run_summary")
        op.execute(f"CREATE VIEW v_run_summary AS {body}")


def _create_evaluation_tables() -> None:
    op.create_table(
        "evaluation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("policy_id", sa.Integer(), nullable=False),
        sa.Column("reference_sha256", sa.String(length=64), nullable=False),
        sa.Column("evaluation_key", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("package_version", sa.String(length=50), nullable=False),
        sa.Column("n_clean", sa.Integer(), nullable=False),
        sa.Column("seeds", sa.JSON(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("manifest_digest", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["model.id"], name=op.f("fk_evaluation_model_id_model")),
        sa.ForeignKeyConstraint(["policy_id"], ["policy.id"], name=op.f("fk_evaluation_policy_id_policy")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluation")),
        sa.UniqueConstraint("model_id", "evaluation_key", name=op.f("uq_evaluation_model_id_evaluation_key")),
    )
    op.create_index("ix_evaluation_model_id_created_at", "evaluation", ["model_id", "created_at"])
    op.create_table(
        "evaluation_result",
        sa.Column("evaluation_pk", sa.Integer(), nullable=False),
        sa.Column("row_no", sa.Integer(), nullable=False),
        *(sa.Column(name, kind, nullable=True) for name, kind in RESULT_COLUMNS),
        sa.Column("row_digest", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["evaluation_pk"], ["evaluation.id"], name=op.f("fk_evaluation_result_evaluation_pk_evaluation")
        ),
        sa.PrimaryKeyConstraint("evaluation_pk", "row_no", name=op.f("pk_evaluation_result")),
    )


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.add_column("pipeline_run", sa.Column("recorded_by", sa.String(length=200), nullable=True))
    op.add_column("pipeline_run", sa.Column("revision_reason", sa.Text(), nullable=True))
    if dialect == "postgresql":  # after adding: rows written before keep NULL (unknown)
        op.execute("ALTER TABLE pipeline_run ALTER COLUMN recorded_by SET DEFAULT session_user")
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("kind", sa.String(length=16), nullable=False, server_default="run"))
        batch.add_column(sa.Column("record_pk", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("record_key", sa.String(length=500), nullable=True))
        batch.add_column(sa.Column("facts", sa.JSON(), nullable=True))
        for name, kind in (("run_pk", sa.Integer()), ("dag_id", sa.String(250)), ("run_id", sa.String(250)),
                           ("revision", sa.Integer())):  # fmt: skip
            batch.alter_column(name, existing_type=kind, nullable=True)
        batch.create_unique_constraint(op.f("uq_audit_log_kind_record_pk"), ["kind", "record_pk"])
    _create_evaluation_tables()
    _run_summary(dialect, run_summary_view(dialect))
    for name, body in _evaluation_views().items():
        op.execute(f"CREATE VIEW {name} AS {body}")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name in reversed(tuple(_evaluation_views())):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    previous = _revision("0002_compliance_views.py", "certrisk_migration_0002")
    names = (*previous.OLD_VIEWS, *previous.NEW_VIEWS, "v_sample_risk")
    for name in dict.fromkeys(reversed(names)):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.drop_table("evaluation_result")
    op.drop_index("ix_evaluation_model_id_created_at", table_name="evaluation")
    op.drop_table("evaluation")
    op.execute("DELETE FROM audit_log WHERE kind <> 'run'")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_constraint(op.f("uq_audit_log_kind_record_pk"), type_="unique")
        for name, kind in (("run_pk", sa.Integer()), ("dag_id", sa.String(250)), ("run_id", sa.String(250)),
                           ("revision", sa.Integer())):  # fmt: skip
            batch.alter_column(name, existing_type=kind, nullable=False)
        for name in ("facts", "record_key", "record_pk", "kind"):
            batch.drop_column(name)
    # plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35): recreating pipeline_run, which every row
    # table references, would trip SQLite's foreign keys
    op.drop_column("pipeline_run", "revision_reason")
    op.drop_column("pipeline_run", "recorded_by")
    views = previous._views(dialect)
    views["v_run_summary"] = _revision("0003_run_summary_facts.py", "certrisk_migration_0003")._run_summary(
        dialect
    )
    views["v_sample_risk"] = _revision("0004_factor_columns.py", "certrisk_migration_0004").sample_risk_view(
        dialect
    )
    for name in dict.fromkeys(("v_run_summary", "v_sample_risk", *previous.OLD_VIEWS, *previous.NEW_VIEWS)):
        op.execute(f"CREATE VIEW {name} AS {views[name]}")
