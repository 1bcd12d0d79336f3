"""Recompute the audit chain and every governed record, and name the first thing that differs.

Walks the audit log in order. For each entry: the sequence number, the link to the previous
entry's hash, its timestamp and manifest (read strictly), the entry's own hash and its manifest
digest. Then the record it covers, by kind:

* a run: present, same key and revision, revision linked to its predecessor; in every row table
  each row's digest over the columns its manifest recorded, ``row_no`` contiguity, the row count
  and the table digest (``verify_rows``); the run row's timestamps, summary, header digest and
  supersede trail (``verify_records.check_run_row``);
* a model or a policy: every column of its row;
* an evaluation: its header and result rows, like a run's;
* a review: every column, and the run revision it names (key, revision, manifest digest).

Finally: records without an entry (inserted by hand), the NIST AI RMF catalog against the copy
certrisk ships, and the chain head against ``expected_head``. The first failure in that order is
reported, in words that say what was found (a value changed, a row deleted or added, a
timestamp or a JSON document spelled another way than certrisk writes it, a chain extended or
rewritten after its head was published). A value so odd it cannot be read at all is reported as
tampering too, never raised.
"""

from __future__ import annotations

import sqlalchemy as sa

from certrisk.governance.chain import (
    GENESIS,
    JsonProblem,
    VerifyReport,
    canonical_json,
    entry_hash,
    sha256_hex,
    strict_json,
)
from certrisk.governance.engine import TimestampProblem, dialect_of
from certrisk.governance.record_tables import (
    EVALUATION,
    EVALUATION_ROW_TABLES,
    MODEL,
    POLICY,
    RECORD_TABLES,
    REVIEW,
    ROW_TABLES,
    RUN,
    audit_table,
)
from certrisk.governance.verify_records import (
    check_catalog,
    check_evaluation_row,
    check_record,
    check_review_row,
    check_run_row,
    check_unchained,
    evaluations_query,
    read_document,
    read_timestamp,
    records_query,
    reviews_query,
    runs_query,
)
from certrisk.governance.verify_rows import Bad, check_row_tables

_AUDIT = audit_table


def entries_query(dialect):
    """Audit entries in chain order, manifest and facts as stored text, the time in stored form."""
    a = _AUDIT
    plain = [c for c in a.c if c.name not in ("manifest", "facts", "recorded_at")]
    return sa.select(
        *plain,
        sa.cast(a.c.manifest, sa.Text).label("manifest_text"),
        sa.cast(a.c.facts, sa.Text).label("facts_text"),
        dialect.stored_timestamp(a.c.recorded_at).label("recorded_raw"),
    ).order_by(a.c.seq)


def entry_label(e) -> tuple[str, str]:
    """(the record's label in a report, the words naming it in a message)."""
    if e.kind == RUN:
        label = f"{e.dag_id}/{e.run_id}#{e.revision}"
        return label, f"run {label}"
    label = f"{e.kind} {e.record_key}"
    return label, label


def check_entry(e, position: int, prev: str, label: str, dialect) -> tuple[dict, dict | None, object]:
    """The audit entry itself: its place in the sequence, its link, its stored values, its hash and
    its manifest digest. Returns (manifest, facts, recorded_at)."""
    if e.seq != position:
        raise Bad(
            label,
            None,
            f"audit entry seq {e.seq} found where seq {position} was expected: an audit entry was deleted or inserted",
        )
    if e.prev_hash != prev:
        raise Bad(
            label,
            None,
            f"audit entry {e.seq} ({label}) links to {e.prev_hash[:16]} but the previous "
            f"entry hashes to {prev[:16]}: an entry before it was changed, removed or inserted",
        )
    where = f"audit_log seq={e.seq}"
    recorded_at = read_timestamp(
        dialect, e.recorded_raw, label=label, where=f"{where} recorded_at", title=label
    )
    try:
        facts = None if e.facts_text is None else strict_json(e.facts_text)
    except JsonProblem as exc:
        raise Bad(
            label, where, f"audit entry {e.seq} ({label}): its facts hold {exc}: it was altered"
        ) from None
    legacy = e.kind == RUN and facts is None
    manifest = read_document(
        e.manifest_text, legacy=legacy, label=label, where=f"{where} manifest", title=label
    )
    recomputed = entry_hash(
        prev_hash=e.prev_hash, seq=e.seq, dag_id=e.dag_id, run_id=e.run_id, revision=e.revision,
        manifest_digest=e.manifest_digest, manifest=manifest, recorded_at=recorded_at, kind=e.kind,
        record_key=e.record_key, facts=facts,
    )  # fmt: skip
    if recomputed != e.entry_hash:
        raise Bad(label, None, f"audit entry {e.seq} ({label}) does not match its hash: it was altered")
    if sha256_hex(canonical_json(manifest)) != e.manifest_digest:
        raise Bad(label, None, f"audit entry {e.seq} ({label}): manifest does not match its digest")
    if not isinstance(manifest, dict):
        raise Bad(label, None, f"audit entry {e.seq} ({label}): its manifest is not an object")
    return manifest, facts, recorded_at


def _check_run_key(run, e, label: str, by_id: dict) -> None:
    """The run an entry records: present, same key and revision, linked to its predecessor."""
    if run is None:
        raise Bad(
            label, None, f"run {label} (audit entry {e.seq}) is missing from pipeline_run: it was deleted"
        )
    if (run.dag_id, run.run_id, run.revision) != (e.dag_id, e.run_id, e.revision):
        raise Bad(
            label,
            "pipeline_run",
            f"run {label}: pipeline_run row {run.id} now says "
            f"{run.dag_id}/{run.run_id}#{run.revision}: its key was changed",
        )
    if run.revision > 1:
        prior = by_id.get(run.supersedes_id)
        want = (run.dag_id, run.run_id, run.revision - 1)
        if prior is None or (prior.dag_id, prior.run_id, prior.revision) != want:
            raise Bad(label, "pipeline_run", f"run {label}: the revision it supersedes is missing or wrong")
    elif run.supersedes_id is not None:
        raise Bad(label, "pipeline_run", f"run {label}: revision 1 must not supersede anything")
    if run.manifest_digest != e.manifest_digest:
        raise Bad(label, "pipeline_run", f"run {label}: pipeline_run.manifest_digest was changed")


class Walk:
    """The stored records, consumed entry by entry; what is left has no entry.

    ``runs``, ``records`` ({kind: rows}), ``evaluations`` and ``reviews``: {id: row} of the
    records to check (``everything`` reads them all; ``verify_run`` one run's)."""

    def __init__(self, conn, dialect, *, runs: dict, records: dict, evaluations: dict, reviews: dict):
        self.conn, self.dialect = conn, dialect
        self.runs, self.by_id = runs, dict(runs)
        self.records, self.evaluations, self.reviews = records, evaluations, reviews
        self.runs_checked = self.rows_checked = 0

    @classmethod
    def everything(cls, conn, dialect) -> Walk:
        def rows(query) -> dict:
            return {r.id: r for r in conn.execute(query).all()}

        return cls(
            conn, dialect, runs=rows(runs_query(dialect)),
            records={kind: rows(records_query(table, dialect)) for kind, table in RECORD_TABLES.items()},
            evaluations=rows(evaluations_query(dialect)), reviews=rows(reviews_query(dialect)),
        )  # fmt: skip

    def leftovers(self) -> None:
        """Records no entry covered: inserted by hand."""
        check_unchained(self.runs, self.records, self.evaluations, self.reviews)

    def check(self, e, manifest: dict, facts, recorded_at, label: str) -> None:
        if e.kind == RUN:
            run = self.runs.pop(e.run_pk, None)
            _check_run_key(run, e, label, self.by_id)
            self.rows_checked += check_row_tables(
                self.conn, ROW_TABLES, parent="run_pk", pk=run.id, label=label, what="run", manifest=manifest
            )
            check_run_row(run, manifest, facts, recorded_at, label=label, dialect=self.dialect)
            self.runs_checked += 1
        elif e.kind in (MODEL, POLICY):
            row = self.records[e.kind].pop(e.record_pk, None)
            if row is None:
                raise Bad(
                    label, None, f"{label} (audit entry {e.seq}): its {e.kind} row is missing: it was deleted"
                )
            check_record(e.kind, row, manifest, label=label, dialect=self.dialect)
        elif e.kind == EVALUATION:
            row = self.evaluations.pop(e.record_pk, None)
            if row is None:
                raise Bad(
                    label,
                    None,
                    f"{label} (audit entry {e.seq}): its evaluation row is missing: it was deleted",
                )
            self.rows_checked += check_row_tables(
                self.conn, EVALUATION_ROW_TABLES, parent="evaluation_pk", pk=row.id, label=label,
                what="evaluation of", manifest=manifest,
            )  # fmt: skip
            check_evaluation_row(row, manifest, recorded_at, label=label, dialect=self.dialect)
        elif e.kind == REVIEW:
            row = self.reviews.pop(e.record_pk, None)
            if row is None:
                raise Bad(
                    label, None, f"{label} (audit entry {e.seq}): its review row is missing: it was deleted"
                )
            check_review_row(row, manifest, recorded_at, self.by_id, label=label, dialect=self.dialect)
        else:
            raise Bad(label, None, f"audit entry {e.seq} has kind {e.kind!r}, which certrisk never writes")


def _check_head(entries: list, head: str, expected_head: str | None) -> None:
    """The chain head against the one published earlier: equal, or where the published one is."""
    if expected_head is None or expected_head == head:
        return
    hashes = [e.entry_hash for e in entries]
    if expected_head in hashes:
        at = hashes.index(expected_head) + 1
        later = len(hashes) - at
        last = entry_label(entries[-1])[0]
        raise Bad(
            last,
            None,
            f"the chain head is {head[:16]} but {expected_head[:16]} was published: {later} entr"
            f"{'y was' if later == 1 else 'ies were'} appended after the published head (entry {at}; the last "
            f"covers {last}). Each links correctly; if they were not written by certrisk they are forgeries "
            "computed with fresh hashes",
        )
    raise Bad(
        None,
        None,
        f"the chain head is {head[:16]} and the published head {expected_head[:16]} is not in the chain: "
        "entries were removed at its end, or the chain was rewritten and every later hash recomputed "
        "(a change re-hashed to the end leaves every link valid but not the published head)",
    )


def verify_store(conn, *, expected_head: str | None = None) -> VerifyReport:
    """Walk the audit chain in order and check everything it covers (see the module docstring);
    the first failure becomes a report naming its record and row."""
    dialect = dialect_of(conn)
    entries = conn.execute(entries_query(dialect)).all()
    walk = Walk.everything(conn, dialect)
    prev = GENESIS
    try:
        for position, e in enumerate(entries, start=1):
            label, _title = entry_label(e)
            try:
                manifest, facts, recorded_at = check_entry(e, position, prev, label, dialect)
                walk.check(e, manifest, facts, recorded_at, label)
            except (TypeError, ValueError, KeyError, AttributeError, TimestampProblem) as exc:
                raise Bad(
                    label,
                    None,
                    f"{label} (audit entry {e.seq}): a stored value cannot be read ({exc}): it was altered",
                ) from None
            prev = e.entry_hash
        walk.leftovers()
        check_catalog(conn)
        _check_head(entries, prev, expected_head)
    except Bad as bad:
        return VerifyReport(False, bad.run, bad.row, bad.message, walk.runs_checked, walk.rows_checked, prev)
    return VerifyReport(
        True, None, None,
        f"{walk.runs_checked} run(s), {len(entries) - walk.runs_checked} other record(s) and {walk.rows_checked} "
        f"row(s) match the audit chain (head {prev[:16]})",
        walk.runs_checked, walk.rows_checked, prev,
    )  # fmt: skip
