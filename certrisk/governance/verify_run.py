"""A bounded verify of one run: its revisions, rows and reviews against their audit entries.

What a page can afford on every view (the full ``verify`` walks the whole chain, minutes on a
large database). For the run (dag_id, run_id):

* every revision's audit entry: its own hash and manifest digest recomputed, its link to the
  entry before it (that entry's stored hash) and the next entry's link to it, so the entry cannot
  be replaced or removed without breaking a neighbour;
* every revision's row, and every row of its row tables, against its manifest (as ``verify``
  checks them);
* every review of the run against its entry, and the revision it names;
* revisions and reviews of the run without an entry (inserted by hand).

It does not check the entries between (a change re-hashed from an earlier entry to the end of
the chain leaves every local link valid), other records, or the chain head against a published
one: that is ``certrisk verify``'s job, whose last stored result pages show beside this one.
"""

from __future__ import annotations

import sqlalchemy as sa

from certrisk.governance.chain import GENESIS, JsonProblem, VerifyReport
from certrisk.governance.engine import TimestampProblem, dialect_of
from certrisk.governance.record_tables import REVIEW, RUN, audit_table, review_table, run_table
from certrisk.governance.verify import Walk, check_entry, entries_query, entry_label
from certrisk.governance.verify_records import reviews_query, runs_query
from certrisk.governance.verify_rows import Bad
from certrisk.schemas.errors import RunNotFoundError

_AUDIT = audit_table


def _neighbour_hash(conn, seq: int, column) -> str | None:
    return conn.execute(sa.select(column).where(_AUDIT.c.seq == seq)).scalar_one_or_none()


def _check_links(conn, e, label: str) -> str:
    """The entry's place between its neighbours; returns the hash the entry before it stored."""
    prev = GENESIS if e.seq == 1 else _neighbour_hash(conn, e.seq - 1, _AUDIT.c.entry_hash)
    if prev is None:
        raise Bad(
            label,
            None,
            f"audit entry {e.seq - 1}, before {label}'s entry {e.seq}, is missing: it was deleted",
        )
    after = _neighbour_hash(conn, e.seq + 1, _AUDIT.c.prev_hash)
    if after is not None and after != e.entry_hash:
        raise Bad(
            label,
            None,
            f"audit entry {e.seq + 1} does not link to {label}'s entry {e.seq}: the entry was replaced or "
            "the one after it was changed",
        )
    return prev


def _run_entries(conn, dialect, key: tuple[str, str], run_pks: list[int], review_pks: list[int]) -> list:
    a = _AUDIT
    covers = sa.or_(
        sa.and_(a.c.kind == RUN, a.c.run_pk.in_(run_pks)),
        sa.and_(a.c.kind == RUN, a.c.dag_id == key[0], a.c.run_id == key[1]),
        sa.and_(a.c.kind == REVIEW, a.c.record_pk.in_(review_pks)),
        # a review whose row was deleted: its entry still names the run (``review_record_key``)
        sa.and_(a.c.kind == REVIEW, a.c.record_key.startswith(f"{key[0]}/{key[1]}#", autoescape=True)),
    )
    found = conn.execute(entries_query(dialect).where(covers)).all()
    prefix = f"{key[0]}/{key[1]}#"
    return [
        e for e in found if e.kind != REVIEW or e.record_pk in review_pks or e.record_key.startswith(prefix)
    ]


def _head(conn) -> str:
    head = conn.execute(sa.select(_AUDIT.c.entry_hash).order_by(_AUDIT.c.seq.desc()).limit(1)).scalar()
    return head or GENESIS


def verify_one_run(conn, dag_id: str, run_id: str) -> VerifyReport:
    """Check the run (dag_id, run_id) and its reviews against their audit entries (see the
    module docstring); ``RunNotFoundError`` when no revision of it is recorded."""
    dialect = dialect_of(conn)
    runs = {
        r.id: r
        for r in conn.execute(
            runs_query(dialect).where(run_table.c.dag_id == dag_id, run_table.c.run_id == run_id)
        ).all()
    }
    if not runs:
        raise RunNotFoundError(f"no recorded run {dag_id}/{run_id}")
    reviews = {r.id: r for r in conn.execute(reviews_query(dialect, runs)).all()}
    # a review re-pointed away from this run still names it: find it by its key too
    named = review_table.c.dag_id == dag_id, review_table.c.run_id == run_id
    for r in conn.execute(reviews_query(dialect).where(*named)).all():
        reviews.setdefault(r.id, r)
    walk = Walk(conn, dialect, runs=runs, records={}, evaluations={}, reviews=reviews)
    entries = _run_entries(conn, dialect, (dag_id, run_id), list(runs), list(reviews))
    label = f"{dag_id}/{run_id}"
    try:
        for e in entries:
            label = entry_label(e)[0]
            try:
                prev = _check_links(conn, e, label)
                manifest, facts, recorded_at = check_entry(e, e.seq, prev, label, dialect)
                walk.check(e, manifest, facts, recorded_at, label)
            except (TypeError, ValueError, KeyError, AttributeError, TimestampProblem, JsonProblem) as exc:
                raise Bad(
                    label,
                    None,
                    f"{label} (audit entry {e.seq}): a stored value cannot be read ({exc}): it was altered",
                ) from None
        walk.leftovers()
    except Bad as bad:
        return VerifyReport(
            False, bad.run, bad.row, bad.message, walk.runs_checked, walk.rows_checked, _head(conn)
        )
    n_reviews = len(entries) - walk.runs_checked
    return VerifyReport(
        True, None, None,
        f"run {dag_id}/{run_id}: {walk.runs_checked} revision(s), {n_reviews} review(s) and {walk.rows_checked} "
        "row(s) match their audit entries and the entries beside them (this run only: the whole chain is "
        "checked by `certrisk verify`)",
        walk.runs_checked, walk.rows_checked, _head(conn),
    )  # fmt: skip


__all__ = ["verify_one_run"]
