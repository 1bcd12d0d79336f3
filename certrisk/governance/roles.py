"""PostgreSQL access tiers (``certrisk db grant``).

Five group roles (NOLOGIN; grant them to login users: ``GRANT certrisk_compliance TO alice``):

* ``certrisk_writer`` (the pipeline): SELECT and INSERT on the record tables, nothing else. No
  UPDATE, no DELETE, no TRUNCATE: a record, once written, cannot be changed through this role.
  On ``pipeline_run`` it may insert every column but ``supersedes_id`` and ``revision_reason``:
  it records first revisions only, never supersedes one. It inserts review decisions (the
  pipeline's human-in-the-loop step and ``certrisk review`` write them) and verify results.
* ``certrisk_reviser``: what the writer may, and supersede a run (a revision with
  ``supersedes_id`` and a ``revision_reason``). Grant it to the people who may correct a record,
  not to the pipeline. Every revision shows as "revised", with the previous tier, who and why.
* ``certrisk_engineer``: reads every record table, raw certificates included, and the views; not
  the audit log.
* ``certrisk_compliance``: reads the views only: v_run_summary (with the supersede trail),
  v_sample_risk (tiers and factors), v_rmf_evidence, v_rmf_subcategory, v_daily_trend,
  v_drift_test (per-test drift outcomes), v_rule_result (per-expectation outcomes), v_method_cost
  (per-method counts, shares, time, memory and forward passes; aggregates only), v_evaluation and
  v_evaluation_result (measured detection per attack family and budget: aggregates), v_review
  (review decisions) and v_verification (stored verify results). Selecting from ``certificate``
  (radii, p_lower) or any table is denied: certificates guide attackers.
* ``certrisk_auditor``: reads everything, the audit log included, and stores the results of its
  ``certrisk verify`` runs (INSERT on ``verification`` only).

No role may insert ``recorded_by`` (``pipeline_run``, ``review``, ``verification``): its default,
``session_user``, records the login that wrote each row, so the supersede trail, a review and a
stored verify result name who really wrote them. No role may update or delete anything.

SQLite has no roles: it is a single-user file, and whoever can read the file reads everything,
certificates included, and can write anything, revisions included (``recorded_by`` is then the
operating-system user the writing process reports; nothing enforces it). Use PostgreSQL wherever
access tiers or the supersede trail matter; ``certrisk verify`` still detects edits on both.
"""

from __future__ import annotations

import sqlalchemy as sa

from certrisk.governance.engine import StoreEngines
from certrisk.governance.record_tables import review_table, run_table, verification_table
from certrisk.schemas.errors import StoreError

WRITER, REVISER, ENGINEER, COMPLIANCE, AUDITOR = (
    "certrisk_writer",
    "certrisk_reviser",
    "certrisk_engineer",
    "certrisk_compliance",
    "certrisk_auditor",
)
ROLES = (WRITER, REVISER, ENGINEER, COMPLIANCE, AUDITOR)
RECORD_TABLES = (
    "model", "policy", "pipeline_run", "sample_risk", "certificate", "rule_sample", "rule_result",
    "drift_test", "rmf_evidence", "evaluation", "evaluation_result", "audit_log", "review", "verification",
)  # fmt: skip
VIEWS = (
    "v_run_summary", "v_sample_risk", "v_rmf_evidence", "v_rmf_subcategory", "v_daily_trend", "v_drift_test",
    "v_rule_result", "v_method_cost", "v_evaluation", "v_evaluation_result", "v_review", "v_verification",
)  # fmt: skip
#: Columns no role inserts (the database fills them), of the tables whose inserts are granted per
#: column.
FILLED_BY_DATABASE = ("id", "recorded_by")
#: Tables whose INSERT is granted per column (all but FILLED_BY_DATABASE, and for pipeline_run
#: the writer also not REVISION_COLUMNS), with their columns.
COLUMN_GRANTED = {
    "pipeline_run": run_table,
    "review": review_table,
    "verification": verification_table,
}
#: pipeline_run columns only the reviser inserts.
REVISION_COLUMNS = ("supersedes_id", "revision_reason")


def grant_statements(database: str, present: dict[str, set[str]] | None = None) -> list[str]:
    """The SQL ``grant_roles`` runs (idempotent: privileges are reset, then granted).

    ``present``: {relation: its columns} of the database; relations and pipeline_run columns it
    lacks (a schema at an older revision) are left out. None: every one of this revision.
    """

    def there(name: str) -> bool:
        return present is None or name in present

    records = [t for t in RECORD_TABLES if there(t)]
    tables = [*records, "rmf_subcategory", "alembic_version"]
    views = [v for v in VIEWS if there(v)]
    everything = ", ".join([*tables, *views])
    others = ", ".join(t for t in records if t not in COLUMN_GRANTED)

    def insertable(table: str, *excluded: str) -> str:
        cols = [
            c.name for c in COLUMN_GRANTED[table].c if present is None or c.name in present.get(table, ())
        ]
        quoted = ", ".join(f'"{c}"' for c in cols if c not in excluded)
        return f"GRANT INSERT ({quoted}) ON {table}"

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
    stmts.append(f"REVOKE ALL ON {everything} FROM PUBLIC")
    for role, excluded in ((WRITER, (*FILLED_BY_DATABASE, *REVISION_COLUMNS)), (REVISER, FILLED_BY_DATABASE)):
        stmts += [
            f"GRANT SELECT ON {', '.join(records)} TO {role}",
            f"GRANT INSERT ON {others} TO {role}",
            f"{insertable('pipeline_run', *excluded)} TO {role}",
            *(
                f"{insertable(t, *FILLED_BY_DATABASE)} TO {role}"
                for t in ("review", "verification")
                if there(t)
            ),
            f"GRANT SELECT ON rmf_subcategory, alembic_version TO {role}",
            f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}",
        ]
    stmts += [
        f"GRANT SELECT ON {', '.join(t for t in tables if t != 'audit_log')}, {', '.join(views)} TO {ENGINEER}",
        f"GRANT SELECT ON {', '.join(views)} TO {COMPLIANCE}",
        f"GRANT SELECT ON {everything} TO {AUDITOR}",
    ]
    if there("verification"):  # the auditor stores its verify results, nothing else
        stmts += [
            f"{insertable('verification', *FILLED_BY_DATABASE)} TO {AUDITOR}",
            f"GRANT USAGE ON SEQUENCE verification_id_seq TO {AUDITOR}",
        ]
    return stmts


def tiers_granted(conn) -> bool:
    """Whether ``certrisk db grant`` ran on this PostgreSQL database (the writer role exists and
    may read pipeline_run)."""
    return bool(
        conn.execute(
            sa.text(
                "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :r) "
                "AND has_table_privilege(:r, 'pipeline_run', 'SELECT')"
            ),
            {"r": WRITER},
        ).scalar()
    )


def apply_grants(conn) -> None:
    """Run ``grant_statements`` on the open connection's database (as its owner), for the
    relations and columns its schema has."""
    database = conn.execute(sa.text("SELECT current_database()")).scalar_one()
    present: dict[str, set[str]] = {}
    for table, column in conn.execute(
        sa.text(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'"
        )
    ):
        present.setdefault(table, set()).add(column)
    for stmt in grant_statements(database, present):
        conn.execute(sa.text(stmt))


def grant_roles(url: str) -> list[str]:
    """Create the five roles (if missing) and grant each its tier on the database at ``url``.

    Run as the database owner after the first ``certrisk db upgrade``; later upgrades re-apply
    the tiers themselves (``GovernanceStore.upgrade``). Returns the role names.
    """
    engines = StoreEngines(url)
    if engines.dialect.name != "postgresql":
        raise StoreError(
            f"{engines.masked_url}: access tiers need PostgreSQL; SQLite is a single-user file without roles "
            "(whoever can read it reads everything, certificates included)"
        )
    try:
        with engines.begin("grant") as conn:
            apply_grants(conn)
    finally:
        engines.dispose()
    return list(ROLES)
