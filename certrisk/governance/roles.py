"""PostgreSQL access tiers (``certrisk db grant``).

Four group roles (NOLOGIN; grant them to login users: ``GRANT certrisk_compliance TO alice``):

* ``certrisk_writer`` (the pipeline): SELECT and INSERT on the record tables, nothing else. No
  UPDATE, no DELETE, no TRUNCATE: a record, once written, cannot be changed through this role.
* ``certrisk_engineer``: reads every record table, raw certificates included, and the views; not
  the audit log.
* ``certrisk_compliance``: reads the views only: v_run_summary, v_sample_risk (tiers and factors),
  v_rmf_evidence, v_rmf_subcategory, v_daily_trend, v_drift_test (per-test drift outcomes),
  v_rule_result (per-expectation outcomes) and v_method_cost (per-method counts, shares, time,
  memory and forward passes; aggregates only). Selecting from ``certificate`` (radii,
  p_lower) or any table is denied: certificates guide attackers.
* ``certrisk_auditor``: reads everything, the audit log included.

SQLite has no roles: it is a single-user file, and whoever can read the file reads everything,
certificates included. Use PostgreSQL wherever access tiers matter.
"""

from __future__ import annotations

import sqlalchemy as sa

from certrisk.governance.engine import StoreEngines
from certrisk.schemas.errors import StoreError

WRITER, ENGINEER, COMPLIANCE, AUDITOR = (
    "certrisk_writer",
    "certrisk_engineer",
    "certrisk_compliance",
    "certrisk_auditor",
)
ROLES = (WRITER, ENGINEER, COMPLIANCE, AUDITOR)
RECORD_TABLES = (
    "model", "policy", "pipeline_run", "sample_risk", "certificate", "rule_sample", "rule_result",
    "drift_test", "rmf_evidence", "audit_log",
)  # fmt: skip
VIEWS = (
    "v_run_summary", "v_sample_risk", "v_rmf_evidence", "v_rmf_subcategory", "v_daily_trend", "v_drift_test",
    "v_rule_result", "v_method_cost",
)  # fmt: skip


def grant_statements(database: str) -> list[str]:
    """The SQL ``grant_roles`` runs (idempotent: privileges are reset, then granted)."""
    tables = [*RECORD_TABLES, "rmf_subcategory", "alembic_version"]
    everything = ", ".join([*tables, *VIEWS])
    stmts = []
    for role in ROLES:
        stmts.append(
            f"DO $$ BEGIN CREATE ROLE {role} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
    for role in ROLES:
        stmts += [
            f'GRANT CONNECT ON DATABASE "{database}" TO {role}',
            f"GRANT USAGE ON SCHEMA public TO {role}",
            f"REVOKE ALL ON {everything} FROM {role}",
            f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role}",
        ]
    stmts += [
        f"REVOKE ALL ON {everything} FROM PUBLIC",
        f"GRANT SELECT, INSERT ON {', '.join(RECORD_TABLES)} TO {WRITER}",
        f"GRANT SELECT ON rmf_subcategory, alembic_version TO {WRITER}",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {WRITER}",
        f"GRANT SELECT ON {', '.join(t for t in tables if t != 'audit_log')}, {', '.join(VIEWS)} TO {ENGINEER}",
        f"GRANT SELECT ON {', '.join(VIEWS)} TO {COMPLIANCE}",
        f"GRANT SELECT ON {everything} TO {AUDITOR}",
    ]
    return stmts


def grant_roles(url: str) -> list[str]:
    """Create the four roles (if missing) and grant each its tier on the database at ``url``.

    Run as the database owner after ``certrisk db upgrade``. Returns the role names.
    """
    engines = StoreEngines(url)
    if engines.dialect.name != "postgresql":
        raise StoreError(
            f"{engines.masked_url}: access tiers need PostgreSQL; SQLite is a single-user file without roles "
            "(whoever can read it reads everything, certificates included)"
        )
    try:
        with engines.begin("grant") as conn:
            database = conn.execute(sa.text("SELECT current_database()")).scalar_one()
            for stmt in grant_statements(database):
                conn.execute(sa.text(stmt))
    finally:
        engines.dispose()
    return list(ROLES)
