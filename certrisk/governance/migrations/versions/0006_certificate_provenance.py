"""certificate: where and in what arithmetic each certificate was computed

Adds four string columns to ``certificate`` (``certrisk.schemas.columns.CERTIFICATE_COLUMNS``):
``precision`` (the arithmetic the model ran in: fp32, or bf16/fp16 autocast; the smoothed
classifier is the model as executed at that precision), ``compile`` (the torch.compile mode, "off"
for eager), ``worker`` (the host that ran the certify task) and ``queue`` (its Airflow queue).
Rows written before this revision hold NULL (not recorded). Their digests are unaffected: a run's
manifest lists the columns its row digests cover (migration 0004), so older runs still verify and
the new columns are covered by the digests of runs written after this revision.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-10 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

#: The columns this revision adds, in order (explicit: a migration never reads the current spec).
NEW_COLUMNS = ("precision", "compile", "worker", "queue")


def upgrade() -> None:
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("certificate")}
    for name in NEW_COLUMNS:  # plain ADD COLUMN on both backends (no table copy)
        if name not in present:
            op.add_column("certificate", sa.Column(name, sa.String(), nullable=True))


def downgrade() -> None:
    for name in reversed(NEW_COLUMNS):  # plain DROP COLUMN (SQLite >= 3.35); no view reads them
        op.drop_column("certificate", name)
