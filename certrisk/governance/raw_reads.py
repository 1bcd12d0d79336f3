"""Reads of the raw record tables: a whole recorded run, and certificate values per run.

Unlike ``queries`` (views only), these read ``pipeline_run``, ``certificate`` and the other row
tables: on PostgreSQL only the engineer and auditor roles may (``certrisk.governance.roles``).
Each takes an open connection (``GovernanceStore.connect``).
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import sqlalchemy as sa

from certrisk.governance.engine import dialect_of
from certrisk.governance.queries import utc_param
from certrisk.schemas.clock import as_utc
from certrisk.schemas.columns import empty_frame
from certrisk.schemas.tables import ROW_TABLES, Model, PipelineRun, Policy

_RUN = PipelineRun.__table__
_MODEL = Model.__table__
_POLICY = Policy.__table__

#: Key of each row table's frame in ``read_run``'s result (rmf_evidence: a list of tuples).
FRAME_KEYS = {
    "sample_risk": "sample_risk",
    "certificate": "certificates",
    "rule_sample": "rule_samples",
    "rule_result": "rule_expectations",
    "drift_test": "drift_tests",
}
#: Columns of ``radius_by_run``.
RADIUS_COLUMNS = ("dag_id", "run_id", "created_at", "method", "norm", "abstained", "radius", "p_lower")


def _run_row(conn, dag_id: str, run_id: str, revision: int | None):
    q = (
        sa.select(
            _RUN,
            _MODEL.c.name.label("model_name"),
            _MODEL.c.sha256.label("model_sha256"),
            _MODEL.c.format.label("model_format"),
            _POLICY.c.name.label("policy_name"),
            _POLICY.c.sha256.label("policy_sha256"),
            _POLICY.c.text.label("policy_text"),
        )
        .join(_MODEL, _MODEL.c.id == _RUN.c.model_id)
        .join(_POLICY, _POLICY.c.id == _RUN.c.policy_id)
        .where(_RUN.c.dag_id == dag_id, _RUN.c.run_id == run_id)
    )
    q = q.where(_RUN.c.revision == revision) if revision is not None else q.order_by(_RUN.c.revision.desc())
    return conn.execute(q.limit(1)).mappings().first()


def _row_frame(rows: list, spec) -> pd.DataFrame:
    """Stored rows as a frame with the spec's columns and dtypes."""
    if not rows:
        return empty_frame(spec)
    frame = pd.DataFrame([tuple(r) for r in rows], columns=list(spec))
    for col, dtype in spec.items():
        if dtype != "object":
            frame[col] = frame[col].astype(dtype)
    return frame


def read_run(conn, dag_id: str, run_id: str, revision: int | None = None) -> dict | None:
    """The recorded run (current revision unless ``revision``), None when there is none.

    Header fields with ``run_pk``, ``summary``, model and policy fields, ``created_at`` and
    ``recorded_at`` aware UTC; frames ``sample_risk``, ``certificates``, ``rule_samples``,
    ``rule_expectations``, ``drift_tests`` (spec columns and dtypes) and ``rmf_evidence`` (list
    of tuples).
    """
    run = _run_row(conn, dag_id, run_id, revision)
    if run is None:
        return None
    out = dict(run)
    out["run_pk"] = out.pop("id")
    for key in ("created_at", "recorded_at"):
        if isinstance(out[key], datetime):
            out[key] = as_utc(out[key])
    for name, table, spec in ROW_TABLES:
        cols = [table.c[c] for c in spec]
        rows = conn.execute(
            sa.select(*cols).where(table.c.run_pk == out["run_pk"]).order_by(table.c.row_no)
        ).all()
        if name == "rmf_evidence":
            out["rmf_evidence"] = [tuple(r) for r in rows]
        else:
            out[FRAME_KEYS[name]] = _row_frame(rows, spec)
    return out


def radius_by_run(conn, *, model: str | None, since: datetime, until: datetime) -> pd.DataFrame:
    """Every certificate of the current runs (of ``model``) created in [since, until): method,
    norm, abstained, radius and p_lower with the run's key and creation time (RADIUS_COLUMNS;
    created_at aware UTC). Raw certificate values: engineer and auditor roles only."""
    dialect = dialect_of(conn)
    where = ["r.model = :model"] if model is not None else []
    where += ["r.is_current = 1", "r.created_at >= :since", "r.created_at < :until"]
    params = {
        "since": dialect.bind_datetime(utc_param(since, "since")),
        "until": dialect.bind_datetime(utc_param(until, "until")),
    }
    if model is not None:
        params["model"] = model
    rows = conn.execute(
        sa.text(
            "SELECT r.dag_id, r.run_id, r.created_at, c.method, c.norm, c.abstained, c.radius, c.p_lower "
            "FROM v_run_summary r JOIN certificate c ON c.run_pk = r.run_pk "
            f"WHERE {' AND '.join(where)}"
        ),
        params,
    ).all()
    frame = pd.DataFrame(rows, columns=list(RADIUS_COLUMNS))
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
    frame["abstained"] = frame["abstained"].astype(bool)
    return frame
