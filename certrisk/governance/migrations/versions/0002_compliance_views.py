"""compliance views: drift tests, rule outcomes, method cost; abstention test in v_run_summary;
samples-by-tier index ordered by risk

v_drift_test and v_rule_result expose the per-test and per-expectation outcomes (no certificate
values); v_method_cost aggregates certificates per run and method (counts, shares, time, memory,
forward passes: never a radius or p_lower). v_run_summary gains the abstention test's
reference_abstention_rate and abstention_p_value from the summary JSON, so it is dropped and
recreated with the views that read it. The (run_pk, tier) index becomes (run_pk, tier, risk DESC,
row_no): the dashboard's riskiest-first page of one tier reads the index in order.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 10:12:00.000000
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _revision_0001():
    """The 0001 module (its view definitions, for recreating the views that read v_run_summary)."""
    path = Path(__file__).with_name("0001_governance_schema.py")
    spec = importlib.util.spec_from_file_location("certrisk_migration_0001", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _json_number(dialect: str, key: str) -> str:
    if dialect == "postgresql":
        return f"(r.summary ->> '{key}')::double precision"
    return f"CAST(json_extract(r.summary, '$.{key}') AS REAL)"


def _views(dialect: str) -> dict[str, str]:
    old = _revision_0001()._views(dialect)
    run_summary = old["v_run_summary"].replace(
        " AS tier_counts,",
        f" AS tier_counts, {_json_number(dialect, 'reference_abstention_rate')} AS reference_abstention_rate, "
        f"{_json_number(dialect, 'abstention_p_value')} AS abstention_p_value,",
    )
    run = "rs.run_pk, rs.dag_id, rs.run_id, rs.revision, rs.model, rs.created_at, rs.is_current"
    return {
        **old,
        "v_run_summary": run_summary,
        "v_drift_test": f"""
            SELECT {run}, d.row_no, d.test, d.family, d.feature, d.statistic, d.p_value, d.q_value,
                   d.effect_size, d.effect_name, d.drift
            FROM v_run_summary rs JOIN drift_test d ON d.run_pk = rs.run_pk""",
        "v_rule_result": f"""
            SELECT {run}, e.row_no, e.expectation, e.expectation_type, e."column", e.severity, e.level,
                   e.success, e.unexpected_count
            FROM v_run_summary rs JOIN rule_result e ON e.run_pk = rs.run_pk""",
        "v_method_cost": f"""
            SELECT {run}, c.method, COUNT(*) AS n_samples,
                   AVG(CASE WHEN c.abstained THEN 0.0 ELSE 1.0 END) AS share_certified,
                   AVG(CASE WHEN c.abstained THEN 1.0 ELSE 0.0 END) AS share_abstained,
                   SUM(c.seconds) AS total_seconds, MAX(c.peak_bytes) AS peak_bytes,
                   SUM(c.n_forward) AS forward_passes
            FROM v_run_summary rs JOIN certificate c ON c.run_pk = rs.run_pk
            GROUP BY {run}, c.method""",
    }


#: Views that read v_run_summary, in creation order (dropped in reverse before it is replaced).
OLD_VIEWS = ("v_run_summary", "v_sample_risk", "v_rmf_evidence", "v_daily_trend")
NEW_VIEWS = ("v_drift_test", "v_rule_result", "v_method_cost")


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    views = _views(dialect)
    for name in reversed(OLD_VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    for name in (*OLD_VIEWS, *NEW_VIEWS):
        op.execute(f"CREATE VIEW {name} AS {views[name]}")
    op.drop_index("ix_sample_risk_run_pk_tier", table_name="sample_risk")
    op.create_index(
        "ix_sample_risk_run_pk_tier_risk",
        "sample_risk",
        ["run_pk", "tier", sa.text("risk DESC"), "row_no"],
    )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    old = _revision_0001()._views(dialect)
    op.drop_index("ix_sample_risk_run_pk_tier_risk", table_name="sample_risk")
    op.create_index("ix_sample_risk_run_pk_tier", "sample_risk", ["run_pk", "tier"])
    for name in (*reversed(NEW_VIEWS), *reversed(OLD_VIEWS)):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    for name in OLD_VIEWS:
        op.execute(f"CREATE VIEW {name} AS {old[name]}")
