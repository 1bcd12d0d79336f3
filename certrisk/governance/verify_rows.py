"""Recompute the rows of one recorded run or evaluation against its manifest.

For each row table the manifest lists: the columns it recorded (``chain.recorded_columns``), each
row's digest recomputed from its stored values (JSON columns read strictly), ``row_no``
contiguity, the row count and the table digest. The first difference raises ``Bad`` naming the
table and the row's key.
"""

from __future__ import annotations

import sqlalchemy as sa

from certrisk.governance.chain import (
    JsonProblem,
    column_reprs,
    recorded_columns,
    row_digests_of,
    strict_json,
    table_digest,
)
from certrisk.schemas.columns import SAMPLE_ID
from certrisk.schemas.tables import certificate_table, sample_risk_table


class Bad(Exception):
    """The first thing verify found that differs: ``run`` (the record's label), ``row`` (the table
    and row, or the column) and ``message`` (what was found, in words)."""

    def __init__(self, run: str | None, row: str | None, message: str):
        super().__init__(message)
        self.run, self.row, self.message = run, row, message


def row_key(columns: list[str], values, row_no) -> str:
    parts = []
    if SAMPLE_ID in columns:
        parts.append(f"sample_id={values[columns.index(SAMPLE_ID)]!r}")
    if "method" in columns:
        parts.append(f"method={values[columns.index('method')]!r}")
    parts.append(f"row_no={row_no}")
    return " ".join(parts)


def _columns(table, name: str, entry: dict, label: str, title: str) -> tuple[tuple[str, str], ...]:
    try:
        cols = recorded_columns(name, entry)
    except JsonProblem as exc:
        raise Bad(label, name, f"{title}: its manifest is malformed: {exc}") from None
    absent = [c for c, _ in cols if c not in table.c]
    if absent:
        raise Bad(
            label, name, f"{title}: {name} has no column(s) {absent}, which its manifest records: dropped"
        )
    return cols


def _read_rows(conn, table, parent: str, pk: int, cols) -> list:
    selected = [sa.cast(table.c[c], sa.Text) if d == "object" else table.c[c] for c, d in cols]
    return conn.execute(
        sa.select(table.c.row_no, table.c.row_digest, *selected)
        .where(table.c[parent] == pk)
        .order_by(table.c.row_no)
    ).all()


def _values(rows: list, cols, name: str, label: str, title: str) -> list[list]:
    """Per column, the stored values; JSON columns parsed strictly."""
    columns = [list(col) for col in zip(*(tuple(r[2:]) for r in rows), strict=True)] if rows else []
    for j, (col, dtype) in enumerate(cols):
        if dtype != "object":
            continue
        for i, text in enumerate(columns[j] if columns else []):
            if text is None:
                continue
            try:
                columns[j][i] = strict_json(text)
            except JsonProblem as exc:
                where = f"{name} row_no={rows[i].row_no}"
                raise Bad(
                    label, where, f"{title}: {where} column {col!r} holds {exc}: it was changed"
                ) from None
    return columns


def _gap(
    conn, name: str, label: str, title: str, expected_no: int, found_no: int, parent: str, pk: int
) -> Bad:
    where = f"{name} row_no={expected_no}"
    detail = f"{name} row_no {expected_no} is missing (deleted)"
    if found_no < expected_no:
        detail = f"{name} row_no {found_no} appears twice"
    if name == "sample_risk" and parent == "run_pk":
        orphan = _orphan_certificate(conn, pk)
        if orphan is not None:
            where += f" sample_id={orphan!r}"
            detail += f"; certificates still name sample_id {orphan!r}"
    return Bad(label, where, f"{title}: {detail}")


def check_row_tables(conn, row_tables, *, parent: str, pk: int, label: str, what: str, manifest: dict) -> int:
    """Check every row table of the record ``pk`` (``parent``: its key column) against
    ``manifest``'s "tables"; returns the number of rows checked. ``label`` names the record
    ("certrisk_example/run-1#1"), ``what`` its kind in messages ("run")."""
    title = f"{what} {label}"
    checked = 0
    recorded = manifest.get("tables", {})
    for name, table, spec in row_tables:
        entry = recorded.get(
            name, {"rows": 0, "digest": table_digest([]), "columns": [list(c) for c in spec.items()]}
        )
        cols = _columns(table, name, entry, label, title)
        rows = _read_rows(conn, table, parent, pk, cols)
        columns = _values(rows, cols, name, label, title)
        recomputed = (
            row_digests_of([column_reprs(col, dtype) for col, (_, dtype) in zip(columns, cols, strict=True)])
            if rows
            else []
        )
        names = [c for c, _ in cols]
        for expected_no, row in enumerate(rows):
            if row.row_no != expected_no:
                raise _gap(conn, name, label, title, expected_no, row.row_no, parent, pk)
            if recomputed[expected_no] != row.row_digest:
                key = f"{name} {row_key(names, tuple(row[2:]), row.row_no)}"
                raise Bad(
                    label,
                    key,
                    f"{title}: {key} does not match its digest (its values were changed after it was recorded)",
                )
        checked += len(rows)
        _check_count_and_digest(name, label, title, rows, entry)
    return checked


def _check_count_and_digest(name: str, label: str, title: str, rows: list, entry: dict) -> None:
    if len(rows) != entry["rows"]:
        missing = len(rows) < entry["rows"]
        row_no = len(rows)
        raise Bad(
            label,
            f"{name} row_no={row_no}",
            f"{title}: {name} has {len(rows)} rows but {entry['rows']} were recorded "
            f"({f'row_no {row_no} and later are missing (deleted)' if missing else 'rows were added'})",
        )
    if table_digest([r.row_digest for r in rows]) != entry["digest"]:
        raise Bad(
            label,
            name,
            f"{title}: {name} rows differ from the recorded manifest although each matches its stored "
            "digest: rows and their digests were rewritten together",
        )


def _orphan_certificate(conn, run_pk: int):
    """A certificate's sample_id that names no sample of the run (its sample row was deleted)."""
    c, s = certificate_table, sample_risk_table
    q = (
        sa.select(c.c.sample_id)
        .where(c.c.run_pk == run_pk)
        .where(~sa.exists().where(s.c.run_pk == run_pk, s.c.sample_id == c.c.sample_id))
        .order_by(c.c.row_no)
        .limit(1)
    )
    return conn.execute(q).scalar_one_or_none()
