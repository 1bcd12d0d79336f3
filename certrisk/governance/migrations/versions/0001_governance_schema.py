"""governance schema: tables, indexes and access-tier views

The views are what the compliance role reads (see certrisk.governance.roles): run summaries,
sample tiers and factors, RMF evidence and daily trends; none exposes radii or p_lower.
A run is current when no revision supersedes it.

Revision ID: 0001
Revises:
Create Date: 2026-11-24 15:28:57.599204
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _views(dialect: str) -> dict[str, str]:
    if dialect == "postgresql":
        day = "(rs.created_at AT TIME ZONE 'UTC')::date"
        reasons = "r.summary -> 'reasons'"
        limitations = "r.summary ->> 'limitations'"
        tier_counts = "r.summary -> 'tier_counts'"
    else:
        day = "date(rs.created_at)"
        reasons = "json_extract(r.summary, '$.reasons')"
        limitations = "json_extract(r.summary, '$.limitations')"
        tier_counts = "json_extract(r.summary, '$.tier_counts')"
    factors = ", ".join(
        f"s.factor_{name}"
        for name in ("abstention", "radius_rank", "context", "rules", "novelty", "instability")
    )
    return {
        "v_run_summary": f"""
            SELECT r.id AS run_pk, r.dag_id, r.run_id, r.revision, r.batch_id AS batch,
                   m.name AS model, m.sha256 AS model_sha256, r.created_at, r.recorded_at,
                   r.n_samples, r.abstention_rate, r.mean_risk, r.tier, r.drift,
                   {reasons} AS reasons, {limitations} AS limitations, {tier_counts} AS tier_counts,
                   r.package_version, p.sha256 AS policy_sha256, r.manifest_digest,
                   CASE WHEN EXISTS (SELECT 1 FROM pipeline_run n WHERE n.supersedes_id = r.id)
                        THEN 0 ELSE 1 END AS is_current
            FROM pipeline_run r JOIN model m ON m.id = r.model_id JOIN policy p ON p.id = r.policy_id""",
        "v_sample_risk": f"""
            SELECT rs.run_pk, rs.dag_id, rs.run_id, rs.revision, rs.model, rs.created_at, rs.is_current,
                   s.row_no, s.sample_id, s.risk, s.tier, s.abstained, {factors}, s.top_factors, s.rmf_ids
            FROM v_run_summary rs JOIN sample_risk s ON s.run_pk = rs.run_pk""",
        "v_rmf_evidence": """
            SELECT rs.run_pk, rs.dag_id, rs.run_id, rs.revision, rs.model, rs.created_at, rs.is_current,
                   e.row_no, e.subcategory_id, c.function, c.category, e.evidence_kind, e.detail
            FROM v_run_summary rs JOIN rmf_evidence e ON e.run_pk = rs.run_pk
            JOIN rmf_subcategory c ON c.id = e.subcategory_id""",
        "v_rmf_subcategory": "SELECT id, function, category, text, category_text FROM rmf_subcategory",
        "v_daily_trend": f"""
            SELECT rs.model, {day} AS day, COUNT(*) AS n_runs, SUM(rs.n_samples) AS n_samples,
                   SUM(rs.abstention_rate * rs.n_samples) / SUM(rs.n_samples) AS abstention_rate,
                   SUM(rs.mean_risk * rs.n_samples) / SUM(rs.n_samples) AS mean_risk,
                   MAX(CASE rs.tier WHEN 'critical' THEN 3 WHEN 'high' THEN 2 WHEN 'medium' THEN 1 ELSE 0 END)
                       AS worst_tier_rank
            FROM v_run_summary rs WHERE rs.is_current = 1 AND rs.n_samples > 0
            GROUP BY rs.model, {day}""",
    }


#: Creation order (each view may read the ones before it).
VIEW_ORDER = ("v_run_summary", "v_sample_risk", "v_rmf_evidence", "v_rmf_subcategory", "v_daily_trend")


def upgrade() -> None:

    op.create_table(
        "model",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("format", sa.String(length=50), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model")),
        sa.UniqueConstraint("name", "sha256", name=op.f("uq_model_name_sha256")),
    )
    op.create_table(
        "policy",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy")),
        sa.UniqueConstraint("name", "sha256", name=op.f("uq_policy_name_sha256")),
    )
    op.create_table(
        "rmf_subcategory",
        sa.Column("id", sa.String(length=20), nullable=False),
        sa.Column("function", sa.String(length=20), nullable=False),
        sa.Column("category", sa.String(length=20), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("category_text", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rmf_subcategory")),
    )
    op.create_table(
        "pipeline_run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dag_id", sa.String(length=250), nullable=False),
        sa.Column("run_id", sa.String(length=250), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("supersedes_id", sa.Integer(), nullable=True),
        sa.Column("batch_id", sa.String(length=250), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("policy_id", sa.Integer(), nullable=False),
        sa.Column("package_version", sa.String(length=50), nullable=False),
        sa.Column("n_samples", sa.Integer(), nullable=False),
        sa.Column("abstention_rate", sa.Double(), nullable=False),
        sa.Column("mean_risk", sa.Double(), nullable=False),
        sa.Column("tier", sa.String(length=16), nullable=False),
        sa.Column("drift", sa.Boolean(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("manifest_digest", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["model.id"], name=op.f("fk_pipeline_run_model_id_model")),
        sa.ForeignKeyConstraint(["policy_id"], ["policy.id"], name=op.f("fk_pipeline_run_policy_id_policy")),
        sa.ForeignKeyConstraint(
            ["supersedes_id"], ["pipeline_run.id"], name=op.f("fk_pipeline_run_supersedes_id_pipeline_run")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pipeline_run")),
        sa.UniqueConstraint(
            "dag_id", "run_id", "revision", name=op.f("uq_pipeline_run_dag_id_run_id_revision")
        ),
    )
    with op.batch_alter_table("pipeline_run", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pipeline_run_created_at"), ["created_at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_pipeline_run_model_id_created_at"), ["model_id", "created_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_pipeline_run_supersedes_id"), ["supersedes_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_pipeline_run_tier_created_at"), ["tier", "created_at"], unique=False
        )

    op.create_table(
        "audit_log",
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("dag_id", sa.String(length=250), nullable=False),
        sa.Column("run_id", sa.String(length=250), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("manifest_digest", sa.String(length=64), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("entry_hash", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_pk"], ["pipeline_run.id"], name=op.f("fk_audit_log_run_pk_pipeline_run")
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_log")),
        sa.UniqueConstraint("entry_hash", name=op.f("uq_audit_log_entry_hash")),
        sa.UniqueConstraint("prev_hash", name=op.f("uq_audit_log_prev_hash")),
        sa.UniqueConstraint("run_pk", name=op.f("uq_audit_log_run_pk")),
    )
    op.create_table(
        "certificate",
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("row_no", sa.Integer(), nullable=False),
        sa.Column("sample_id", sa.String(), nullable=False),
        sa.Column("method", sa.String(), nullable=False),
        sa.Column("norm", sa.String(), nullable=True),
        sa.Column("prediction", sa.BigInteger(), nullable=True),
        sa.Column("abstained", sa.Boolean(), nullable=True),
        sa.Column("radius", sa.Double(), nullable=True),
        sa.Column("radius_l1", sa.Double(), nullable=True),
        sa.Column("radius_l2", sa.Double(), nullable=True),
        sa.Column("radius_linf", sa.Double(), nullable=True),
        sa.Column("p_lower", sa.Double(), nullable=True),
        sa.Column("n_forward", sa.BigInteger(), nullable=True),
        sa.Column("alpha", sa.Double(), nullable=True),
        sa.Column("sigma", sa.Double(), nullable=True),
        sa.Column("eps", sa.Double(), nullable=True),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("seconds", sa.Double(), nullable=True),
        sa.Column("peak_bytes", sa.BigInteger(), nullable=True),
        sa.Column("device", sa.String(), nullable=True),
        sa.Column("dtype", sa.String(), nullable=True),
        sa.Column("row_digest", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_pk"], ["pipeline_run.id"], name=op.f("fk_certificate_run_pk_pipeline_run")
        ),
        sa.PrimaryKeyConstraint("run_pk", "sample_id", "method", name=op.f("pk_certificate")),
        sa.UniqueConstraint("run_pk", "row_no", name=op.f("uq_certificate_run_pk_row_no")),
    )
    op.create_table(
        "drift_test",
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("row_no", sa.Integer(), nullable=False),
        sa.Column("test", sa.String(), nullable=True),
        sa.Column("family", sa.String(), nullable=True),
        sa.Column("feature", sa.String(), nullable=True),
        sa.Column("statistic", sa.Double(), nullable=True),
        sa.Column("p_value", sa.Double(), nullable=True),
        sa.Column("q_value", sa.Double(), nullable=True),
        sa.Column("effect_size", sa.Double(), nullable=True),
        sa.Column("effect_name", sa.String(), nullable=True),
        sa.Column("drift", sa.Boolean(), nullable=True),
        sa.Column("row_digest", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_pk"], ["pipeline_run.id"], name=op.f("fk_drift_test_run_pk_pipeline_run")
        ),
        sa.PrimaryKeyConstraint("run_pk", "row_no", name=op.f("pk_drift_test")),
    )
    op.create_table(
        "rmf_evidence",
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("row_no", sa.Integer(), nullable=False),
        sa.Column("subcategory_id", sa.String(), nullable=True),
        sa.Column("evidence_kind", sa.String(), nullable=True),
        sa.Column("detail", sa.String(), nullable=True),
        sa.Column("row_digest", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_pk"], ["pipeline_run.id"], name=op.f("fk_rmf_evidence_run_pk_pipeline_run")
        ),
        sa.ForeignKeyConstraint(
            ["subcategory_id"],
            ["rmf_subcategory.id"],
            name=op.f("fk_rmf_evidence_subcategory_id_rmf_subcategory"),
        ),
        sa.PrimaryKeyConstraint("run_pk", "row_no", name=op.f("pk_rmf_evidence")),
    )
    with op.batch_alter_table("rmf_evidence", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rmf_evidence_subcategory_id"), ["subcategory_id"], unique=False)

    op.create_table(
        "rule_result",
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("row_no", sa.Integer(), nullable=False),
        sa.Column("expectation", sa.String(), nullable=True),
        sa.Column("expectation_type", sa.String(), nullable=True),
        sa.Column("column", sa.String(), nullable=True),
        sa.Column("severity", sa.String(), nullable=True),
        sa.Column("level", sa.String(), nullable=True),
        sa.Column("success", sa.Boolean(), nullable=True),
        sa.Column("observed_value", sa.String(), nullable=True),
        sa.Column("unexpected_count", sa.BigInteger(), nullable=True),
        sa.Column(
            "rmf_ids",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("row_digest", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_pk"], ["pipeline_run.id"], name=op.f("fk_rule_result_run_pk_pipeline_run")
        ),
        sa.PrimaryKeyConstraint("run_pk", "row_no", name=op.f("pk_rule_result")),
    )
    op.create_table(
        "rule_sample",
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("row_no", sa.Integer(), nullable=False),
        sa.Column("sample_id", sa.String(), nullable=False),
        sa.Column("n_failed", sa.BigInteger(), nullable=True),
        sa.Column("max_severity", sa.String(), nullable=True),
        sa.Column(
            "failed",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("row_digest", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_pk"], ["pipeline_run.id"], name=op.f("fk_rule_sample_run_pk_pipeline_run")
        ),
        sa.PrimaryKeyConstraint("run_pk", "sample_id", name=op.f("pk_rule_sample")),
        sa.UniqueConstraint("run_pk", "row_no", name=op.f("uq_rule_sample_run_pk_row_no")),
    )
    op.create_table(
        "sample_risk",
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("row_no", sa.Integer(), nullable=False),
        sa.Column("sample_id", sa.String(), nullable=False),
        sa.Column("risk", sa.Double(), nullable=True),
        sa.Column("tier", sa.String(), nullable=True),
        sa.Column("abstained", sa.Boolean(), nullable=True),
        sa.Column("prediction", sa.BigInteger(), nullable=True),
        sa.Column("base_prediction", sa.BigInteger(), nullable=True),
        sa.Column("factor_abstention", sa.Double(), nullable=True),
        sa.Column("factor_radius_rank", sa.Double(), nullable=True),
        sa.Column("factor_context", sa.Double(), nullable=True),
        sa.Column("factor_rules", sa.Double(), nullable=True),
        sa.Column("factor_novelty", sa.Double(), nullable=True),
        sa.Column("factor_instability", sa.Double(), nullable=True),
        sa.Column(
            "top_factors",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "rmf_ids",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("row_digest", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_pk"], ["pipeline_run.id"], name=op.f("fk_sample_risk_run_pk_pipeline_run")
        ),
        sa.PrimaryKeyConstraint("run_pk", "sample_id", name=op.f("pk_sample_risk")),
        sa.UniqueConstraint("run_pk", "row_no", name=op.f("uq_sample_risk_run_pk_row_no")),
    )
    with op.batch_alter_table("sample_risk", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sample_risk_run_pk_tier"), ["run_pk", "tier"], unique=False)

    views = _views(op.get_bind().dialect.name)
    for name in VIEW_ORDER:
        op.execute(f"CREATE VIEW {name} AS {views[name]}")


def downgrade() -> None:
    for name in reversed(VIEW_ORDER):
        op.execute(f"DROP VIEW IF EXISTS {name}")

    with op.batch_alter_table("sample_risk", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sample_risk_run_pk_tier"))

    op.drop_table("sample_risk")
    op.drop_table("rule_sample")
    op.drop_table("rule_result")
    with op.batch_alter_table("rmf_evidence", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rmf_evidence_subcategory_id"))

    op.drop_table("rmf_evidence")
    op.drop_table("drift_test")
    op.drop_table("certificate")
    op.drop_table("audit_log")
    with op.batch_alter_table("pipeline_run", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pipeline_run_tier_created_at"))
        batch_op.drop_index(batch_op.f("ix_pipeline_run_supersedes_id"))
        batch_op.drop_index(batch_op.f("ix_pipeline_run_model_id_created_at"))
        batch_op.drop_index(batch_op.f("ix_pipeline_run_created_at"))

    op.drop_table("pipeline_run")
    op.drop_table("rmf_subcategory")
    op.drop_table("policy")
    op.drop_table("model")
