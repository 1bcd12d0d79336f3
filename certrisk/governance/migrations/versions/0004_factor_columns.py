"""sample_risk: the factor columns added since 0001; v_sample_risk with every factor; manifests
with column lists

The scorer's factors (``certrisk.schemas.factors.FACTOR_SPECS``) each have a ``factor_<name>``
column in sample_risk. 0001 created six (abstention, radius_rank, context, rules, novelty,
instability); this revision adds the ones named in ``NEW_FACTORS`` (double precision, NOT NULL,
default 0: a run recorded before a factor existed did not measure it, and its rows read 0).
v_sample_risk is recreated with every factor column: the new ones are appended after the
existing columns, so on PostgreSQL the view is replaced in place (the grants of
``certrisk db grant`` stay); SQLite has no CREATE OR REPLACE VIEW, so it is dropped and created
(no other view reads it).

Digests over the recorded columns. From this revision on, each table entry of a run's manifest
(``certrisk.governance.chain.manifest_of``) carries the table's column list
(``"columns": [[name, dtype], ...]``) and its row digests are computed over those columns in that
order. ``verify`` recomputes a row's digest over the columns its manifest recorded; a manifest
without a column list was written before this revision and means the columns of
``certrisk.governance.chain.LEGACY_COLUMNS`` (for sample_risk: the six factors above). So rows
written before a column existed still verify, and a column added later is covered by the
digests of the runs written after it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-09 10:00:00.000000
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

#: The factors of 0001, in their column order.
OLD_FACTORS = ("abstention", "radius_rank", "context", "rules", "novelty", "instability")
#: The factors this revision adds, in column order (explicit: a migration never reads the
#: current FACTORS, which later code may extend).
NEW_FACTORS = ("method_disagreement", "neighbours", "feature_neighbours")


def _revision_0001():
    """The 0001 module (its v_sample_risk, which this revision extends)."""
    path = Path(__file__).with_name("0001_governance_schema.py")
    spec = importlib.util.spec_from_file_location("certrisk_migration_0001", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sample_risk_view(dialect: str, factors=NEW_FACTORS) -> str:
    """v_sample_risk of 0001 with the ``factors`` columns appended."""
    old = _revision_0001()._views(dialect)["v_sample_risk"]
    extra = "".join(f", s.factor_{name}" for name in factors)
    return old.replace("s.top_factors, s.rmf_ids", f"s.top_factors, s.rmf_ids{extra}", 1)


def _replace_view(dialect: str, body: str) -> None:
    if dialect == "postgresql":
        op.execute(f"CREATE OR REPLACE VIEW v_sample_risk AS {body}")
    else:
        op.execute("DROP VIEW IF EXISTS v_sample_risk")
        op.execute(f"CREATE VIEW v_sample_risk AS {body}")


def upgrade() -> None:
    bind = op.get_bind()
    present = {c["name"] for c in sa.inspect(bind).get_columns("sample_risk")}
    for name in NEW_FACTORS:  # plain ADD COLUMN on both backends (no table copy under the views)
        if f"factor_{name}" not in present:
            op.add_column(
                "sample_risk",
                sa.Column(f"factor_{name}", sa.Double(), nullable=False, server_default=sa.text("0")),
            )
    _replace_view(bind.dialect.name, sample_risk_view(bind.dialect.name))


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    # the view reads the columns: drop it first (PostgreSQL cannot drop view columns in place)
    op.execute("DROP VIEW IF EXISTS v_sample_risk")
    for name in reversed(NEW_FACTORS):  # plain DROP COLUMN (SQLite >= 3.35)
        op.drop_column("sample_risk", f"factor_{name}")
    op.execute(f"CREATE VIEW v_sample_risk AS {_revision_0001()._views(dialect)['v_sample_risk']}")
