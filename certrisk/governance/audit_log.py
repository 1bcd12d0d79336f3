"""Appending to the audit chain, inside the write transaction of the record an entry covers.

Every governed record gets one entry, linked to the entry before it (``chain.entry_hash``): a run
revision (kind "run"), a model version and a policy text when their rows are created (kinds
"model" and "policy", with ``RECORD_COLUMNS``'s values digested), an evaluation (kind
"evaluation"). Appends are serialized by ``Dialect.lock_chain`` (SQLite: the write lock).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from certrisk.governance.chain import GENESIS, entry_hash, iso_utc, record_manifest
from certrisk.governance.engine import dialect_of
from certrisk.governance.record_tables import RECORD_COLUMNS, RECORD_TABLES, RUN, audit_table

_AUDIT = audit_table


def append_entry(
    conn,
    *,
    kind: str,
    manifest: dict,
    manifest_digest: str,
    recorded_at: datetime,
    run_key: tuple[int, str, str, int] | None = None,
    record: tuple[int, str] | None = None,
    facts: dict | None = None,
) -> str:
    """Append one entry, linked to the current head; returns its hash.

    ``run_key`` (run_pk, dag_id, run_id, revision) for a run entry, ``record`` (record_pk,
    record_key) for any other kind. ``facts``: the stored row's columns that are not payload.
    """
    dialect = dialect_of(conn)
    dialect.lock_chain(conn)
    head = conn.execute(
        sa.select(_AUDIT.c.seq, _AUDIT.c.entry_hash).order_by(_AUDIT.c.seq.desc()).limit(1)
    ).first()
    seq, prev = (head.seq + 1, head.entry_hash) if head is not None else (1, GENESIS)
    run_pk, dag_id, run_id, revision = run_key if run_key is not None else (None, None, None, None)
    record_pk, record_key = record if record is not None else (None, None)
    fields = {
        "prev_hash": prev,
        "seq": seq,
        "dag_id": dag_id,
        "run_id": run_id,
        "revision": revision,
        "manifest_digest": manifest_digest,
        "manifest": manifest,
        "recorded_at": recorded_at,
        "kind": kind,
        "record_key": record_key,
        "facts": facts,
    }
    digest = entry_hash(**fields)
    values = {**fields, "recorded_at": dialect.bind_datetime(recorded_at)}
    conn.execute(_AUDIT.insert().values(**values, run_pk=run_pk, record_pk=record_pk, entry_hash=digest))
    return digest


def record_key(name: str, sha256: str) -> str:
    """The key an entry of a model or policy row names: "<name> sha256=<sha256>"."""
    return f"{name} sha256={sha256}"


def record_values(kind: str, row) -> tuple:
    """The canonical values of a model or policy row (a mapping of its columns) in
    ``RECORD_COLUMNS[kind]`` order, timestamps as UTC ISO 8601."""
    out = []
    for col, dtype in RECORD_COLUMNS[kind]:
        value = row[col]
        out.append(iso_utc(value) if dtype == "timestamp" and value is not None else value)
    return tuple(out)


def insert_record(conn, kind: str, values: dict, now: datetime) -> int:
    """Insert a model or policy row (``values`` with its timestamp ``now``) and append its entry;
    returns the row's id."""
    table = RECORD_TABLES[kind]
    stamp = "registered_at" if "registered_at" in table.c else "recorded_at"
    row = {**values, stamp: now}
    bound = {**row, stamp: dialect_of(conn).bind_datetime(now)}
    pk = conn.execute(table.insert().values(**bound).returning(table.c.id)).scalar_one()
    _chain_record(conn, kind, pk, row, now)
    return pk


def unchained_records(conn, kind: str) -> list[int]:
    """Ids of the ``kind`` rows (model or policy) no audit entry covers, in id order."""
    table = RECORD_TABLES[kind]
    covered = sa.select(_AUDIT.c.record_pk).where(_AUDIT.c.kind == kind, _AUDIT.c.record_pk.is_not(None))
    return list(
        conn.execute(sa.select(table.c.id).where(table.c.id.not_in(covered)).order_by(table.c.id)).scalars()
    )


def chain_existing_records(conn, now: datetime) -> int:
    """Append entries for the model and policy rows written before migration 0005 (which began
    chaining them); run once, by ``GovernanceStore.upgrade``, when it crosses that revision.
    Returns the number of entries appended."""
    n = 0
    for kind in RECORD_TABLES:
        table = RECORD_TABLES[kind]
        for pk in unchained_records(conn, kind):
            row = conn.execute(sa.select(table).where(table.c.id == pk)).mappings().one()
            _chain_record(conn, kind, pk, row, now)
            n += 1
    return n


__all__ = ["RUN", "append_entry", "chain_existing_records", "insert_record", "record_key", "record_values"]


def _chain_record(conn, kind: str, pk: int, row, now) -> None:
    """Append the chain entry of one model or policy row (its columns digested in a manifest)."""
    manifest, digest = record_manifest(RECORD_COLUMNS[kind], record_values(kind, row))
    append_entry(
        conn,
        kind=kind,
        manifest=manifest,
        manifest_digest=digest,
        recorded_at=now,
        record=(pk, record_key(row["name"], row["sha256"])),
    )
