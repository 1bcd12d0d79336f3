"""v_run_summary: the batch summary's remaining figures, for reports that state them

Reports state the abstention test's outcome, the drift and rule counts and the risk quantiles.
The compliance role reads views only, so v_run_summary gains them from the summary JSON:
abstention_test, abstention_elevated, high_share, n_drift_tests, n_drift_tests_rejected,
rule_pass_rate, risk_quantiles and not_measured (aggregates and names: no radius, no confidence
bound). Each is NULL
where the summary lacks the key or holds a value of another JSON type, so one odd summary
cannot break the view. The columns are appended: on PostgreSQL the view is replaced in place
(the views that read it and the grants of ``certrisk db grant`` stay); SQLite has no
CREATE OR REPLACE VIEW and resolves views by name, so the view is dropped and created.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 09:40:00.000000
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: (column, JSON type) appended to v_run_summary, read from the summary key of the same name.
FACTS = (
    ("abstention_test", "string"),
    ("abstention_elevated", "boolean"),
    ("high_share", "number"),
    ("n_drift_tests", "number"),
    ("n_drift_tests_rejected", "number"),
    ("rule_pass_rate", "number"),
    ("risk_quantiles", "object"),
    ("not_measured", "array"),
)


def _revision_0002():
    """The 0002 module (its view definitions, which this revision extends)."""
    path = Path(__file__).with_name("0002_compliance_views.py")
    spec = importlib.util.spec_from_file_location("certrisk_migration_0002", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fact(dialect: str, key: str, kind: str) -> str:
    """The summary's ``key`` where it holds a JSON value of ``kind``, else NULL."""
    if dialect == "postgresql":
        value = {
            "string": f"r.summary ->> '{key}'",
            "boolean": f"(r.summary ->> '{key}')::boolean",
            "number": f"(r.summary ->> '{key}')::double precision",
            "object": f"r.summary -> '{key}'",
            "array": f"r.summary -> '{key}'",
        }[kind]
        return f"CASE WHEN json_typeof(r.summary -> '{key}') = '{kind}' THEN {value} END AS {key}"
    path = f"r.summary, '$.{key}'"
    if kind == "boolean":
        return f"CASE json_type({path}) WHEN 'true' THEN 1 WHEN 'false' THEN 0 END AS {key}"
    types = {"string": "'text'", "number": "'integer', 'real'", "object": "'object'", "array": "'array'"}[
        kind
    ]
    value = f"CAST(json_extract({path}) AS REAL)" if kind == "number" else f"json_extract({path})"
    return f"CASE WHEN json_type({path}) IN ({types}) THEN {value} END AS {key}"


def _run_summary(dialect: str) -> str:
    old = _revision_0002()._views(dialect)["v_run_summary"]
    facts = ", ".join(_fact(dialect, key, kind) for key, kind in FACTS)
    return old.replace(" AS is_current", f" AS is_current, {facts}", 1)


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(f"CREATE OR REPLACE VIEW v_run_summary AS {_run_summary(dialect)}")
    else:
        op.execute("DROP VIEW IF EXISTS v_run_summary")
        op.execute(f"CREATE VIEW v_run_summary AS {_run_summary(dialect)}")


def downgrade() -> None:
    previous = _revision_0002()
    dialect = op.get_bind().dialect.name
    views = previous._views(dialect)
    names = (*previous.OLD_VIEWS, *previous.NEW_VIEWS)
    for name in reversed(names):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    for name in names:
        op.execute(f"CREATE VIEW {name} AS {views[name]}")
