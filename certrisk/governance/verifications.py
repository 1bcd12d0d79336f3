"""Stored ``certrisk verify`` results: what pages show instead of verifying on every view.

A full verify recomputes every digest (minutes on a large database), so the dashboard and the
reports state the last stored result (when, by whom, ok, head, counts, message) next to a bounded
check of the one run they show (``verify_run``). ``certrisk verify`` stores each result
(``GovernanceStore.verify(record=True)``).

Verifications are observations, not records, and are not chained: chaining them would append
an entry at every verify, so the head a team published would be out of date the moment anyone
checked it (``expected_head`` would report "entries appended after the published head" every
time), and a verify that found tampering would extend the chain it had just found broken. What a
stored result claims can always be re-checked: run ``certrisk verify`` again, with
``--expected-head`` set to the head it stored. On PostgreSQL no role may update or delete a
verification, and ``recorded_by`` is the database login (``session_user``), which no role may
set; on SQLite whoever can write the file can edit them, as everything else that is not chained.
"""

from __future__ import annotations

import sqlalchemy as sa

from certrisk.governance.chain import VerifyReport
from certrisk.governance.engine import dialect_of
from certrisk.governance.record_tables import verification_table
from certrisk.schemas.clock import as_utc_timestamp, utc_now
from certrisk.schemas.errors import InputError

#: Keys of ``last_verify``'s dict (v_verification's columns).
VERIFY_COLUMNS = (
    "verified_at", "verified_by", "recorded_by", "ok", "head", "expected_head", "runs_checked", "rows_checked",
    "first_bad_run", "first_bad_row", "message", "seconds",
)  # fmt: skip


def insert_verification(
    conn, report: VerifyReport, verified_by: str, *, expected_head: str | None = None, seconds=None
) -> None:
    """Insert one verification row for ``report`` (inside the caller's transaction)."""
    if not isinstance(report, VerifyReport):
        raise InputError(f"record_verification: expected a VerifyReport, got {type(report).__name__}")
    if not isinstance(verified_by, str) or not verified_by.strip() or len(verified_by) > 200:
        raise InputError(f"record_verification: verified_by must name who verified, got {verified_by!r}")
    dialect = dialect_of(conn)
    values = {
        "verified_at": dialect.bind_datetime(utc_now()),
        "verified_by": verified_by.strip(),
        "ok": bool(report.ok),
        "head": report.head,
        "expected_head": expected_head,
        "runs_checked": int(report.runs_checked),
        "rows_checked": int(report.rows_checked),
        "first_bad_run": report.first_bad_run,
        "first_bad_row": report.first_bad_row,
        "message": report.message,
        "seconds": None if seconds is None else float(seconds),
    }
    who = dialect.recorded_by()
    if who is not None:
        values["recorded_by"] = who
    conn.execute(verification_table.insert().values(**values))


def last_verify(conn) -> dict | None:
    """The newest stored verification (v_verification) as a dict of ``VERIFY_COLUMNS``
    (verified_at an aware UTC pandas Timestamp, ok a bool), or None when none was stored."""
    sql = (
        f"SELECT {', '.join(VERIFY_COLUMNS)} FROM v_verification "
        "ORDER BY verified_at DESC, verification_pk DESC LIMIT 1"
    )
    row = conn.execute(sa.text(sql)).mappings().first()
    if row is None:
        return None
    out = dict(row)
    out["verified_at"] = as_utc_timestamp(out["verified_at"])
    out["ok"] = bool(out["ok"])
    return out


__all__ = ["VERIFY_COLUMNS", "insert_verification", "last_verify"]
