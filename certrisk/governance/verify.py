"""Recompute the audit chain and every recorded row, and name the first thing that differs.

Walks the audit log in order. For each entry: the sequence number, the link to the previous
entry's hash, the entry's own hash and its manifest digest; then the run it records (present, same
key and revision, revision linked to its predecessor), the run header's digest, and in every row
table: each row's digest recomputed from its values, ``row_no`` contiguity, the row count and the
table digest against the manifest. Finally, runs without an audit entry (inserted by hand) and
the chain head against ``expected_head``. The first failure in that order is reported.
"""

from __future__ import annotations

import sqlalchemy as sa

from certrisk.governance.chain import (
    GENESIS,
    RunHeader,
    VerifyReport,
    canonical_json,
    column_reprs,
    entry_hash,
    row_digests_of,
    sha256_hex,
    table_digest,
)
from certrisk.schemas.columns import SAMPLE_ID
from certrisk.schemas.tables import (
    ROW_TABLES,
    AuditEntry,
    Model,
    PipelineRun,
    Policy,
    certificate_table,
    sample_risk_table,
)

_RUN, _AUDIT, _MODEL, _POLICY = PipelineRun.__table__, AuditEntry.__table__, Model.__table__, Policy.__table__


class _Bad(Exception):
    def __init__(self, run: str | None, row: str | None, message: str):
        super().__init__(message)
        self.run, self.row, self.message = run, row, message


def _row_key(spec, values, row_no) -> str:
    parts = []
    if SAMPLE_ID in spec:
        parts.append(f"sample_id={values[list(spec).index(SAMPLE_ID)]!r}")
    if "method" in spec:
        parts.append(f"method={values[list(spec).index('method')]!r}")
    parts.append(f"row_no={row_no}")
    return " ".join(parts)


def _check_tables(conn, run, label: str, manifest: dict) -> int:
    checked = 0
    recorded = manifest.get("tables", {})
    for name, table, spec in ROW_TABLES:
        cols = [table.c[c] for c in spec]
        rows = conn.execute(
            sa.select(table.c.row_no, table.c.row_digest, *cols)
            .where(table.c.run_pk == run.id)
            .order_by(table.c.row_no)
        ).all()
        columns = list(zip(*(tuple(r[2:]) for r in rows), strict=True)) if rows else []
        recomputed_all = (
            row_digests_of(
                [column_reprs(list(col), dtype) for col, dtype in zip(columns, spec.values(), strict=True)]
            )
            if rows
            else []
        )
        digests = []
        for expected_no, row in enumerate(rows):
            values = tuple(row[2:])
            if row.row_no != expected_no:
                where = f"{name} row_no={expected_no}"
                detail = f"{name} row_no {expected_no} is missing (deleted)"
                if row.row_no < expected_no:
                    detail = f"{name} row_no {row.row_no} appears twice"
                if name == "sample_risk":
                    orphan = _orphan_certificate(conn, run.id)
                    if orphan is not None:
                        where += f" sample_id={orphan!r}"
                        detail += f"; certificates still name sample_id {orphan!r}"
                raise _Bad(label, where, f"run {label}: {detail}")
            recomputed = recomputed_all[expected_no]
            if recomputed != row.row_digest:
                raise _Bad(
                    label,
                    f"{name} {_row_key(spec, values, row.row_no)}",
                    f"run {label}: {name} row {_row_key(spec, values, row.row_no)} does not match its digest "
                    "(its values were changed after it was recorded)",
                )
            digests.append(row.row_digest)
            checked += 1
        want = recorded.get(name, {"rows": 0, "digest": table_digest([])})
        if len(rows) != want["rows"]:
            missing = len(rows) < want["rows"]
            row_no = len(rows)
            raise _Bad(
                label,
                f"{name} row_no={row_no}",
                f"run {label}: {name} has {len(rows)} rows but {want['rows']} were recorded "
                f"({f'row_no {row_no} and later are missing (deleted)' if missing else 'rows were added'})",
            )
        if table_digest(digests) != want["digest"]:
            raise _Bad(
                label,
                f"{name}",
                f"run {label}: {name} rows differ from the recorded manifest although each matches its stored "
                "digest: rows and their digests were rewritten together",
            )
    return checked


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


def _runs_query():
    """Every pipeline_run row with its model's and policy's header fields (outer joins: a deleted
    model or policy row shows as None)."""
    return (
        sa.select(
            _RUN,
            _MODEL.c.name.label("model_name"),
            _MODEL.c.sha256.label("model_sha256"),
            _POLICY.c.name.label("policy_name"),
            _POLICY.c.sha256.label("policy_sha256"),
            _POLICY.c.text.label("policy_text"),
        )
        .join(_MODEL, _MODEL.c.id == _RUN.c.model_id, isouter=True)
        .join(_POLICY, _POLICY.c.id == _RUN.c.policy_id, isouter=True)
        .order_by(_RUN.c.id)
    )


def _check_entry(e, position: int, prev: str, label: str) -> None:
    """The audit entry itself: its place in the sequence, its link, its hash, its manifest."""
    if e.seq != position:
        raise _Bad(
            label,
            None,
            f"audit entry seq {e.seq} found where seq {position} was expected: "
            "an audit entry was deleted or inserted",
        )
    if e.prev_hash != prev:
        raise _Bad(
            label,
            None,
            f"audit entry {e.seq} ({label}) links to {e.prev_hash[:16]} but the previous "
            f"entry hashes to {prev[:16]}: an entry before it was changed, removed or inserted",
        )
    recomputed = entry_hash(
        prev_hash=e.prev_hash, seq=e.seq, dag_id=e.dag_id, run_id=e.run_id, revision=e.revision,
        manifest_digest=e.manifest_digest, manifest=e.manifest, recorded_at=e.recorded_at,
    )  # fmt: skip
    if recomputed != e.entry_hash:
        raise _Bad(label, None, f"audit entry {e.seq} ({label}) does not match its hash: it was altered")
    if sha256_hex(canonical_json(e.manifest)) != e.manifest_digest:
        raise _Bad(label, None, f"audit entry {e.seq} ({label}): manifest does not match its digest")


def _check_run_key(run, e, label: str, by_id: dict) -> None:
    """The run an entry records: present, same key and revision, linked to its predecessor."""
    if run is None:
        raise _Bad(
            label, None, f"run {label} (audit entry {e.seq}) is missing from pipeline_run: it was deleted"
        )
    if (run.dag_id, run.run_id, run.revision) != (e.dag_id, e.run_id, e.revision):
        raise _Bad(
            label,
            "pipeline_run",
            f"run {label}: pipeline_run row {run.id} now says "
            f"{run.dag_id}/{run.run_id}#{run.revision}: its key was changed",
        )
    if run.revision > 1:
        prior = by_id.get(run.supersedes_id)
        want = (run.dag_id, run.run_id, run.revision - 1)
        if prior is None or (prior.dag_id, prior.run_id, prior.revision) != want:
            raise _Bad(label, "pipeline_run", f"run {label}: the revision it supersedes is missing or wrong")
    elif run.supersedes_id is not None:
        raise _Bad(label, "pipeline_run", f"run {label}: revision 1 must not supersede anything")


def _check_header(run, e, label: str) -> None:
    """The run row's header (figures, summary, model, policy, timestamps) and manifest digest."""
    if run.model_name is None or run.policy_name is None:
        raise _Bad(label, "pipeline_run", f"run {label}: its model or policy row is missing")
    if RunHeader.from_row(run).digest() != e.manifest.get("header"):
        raise _Bad(
            label,
            "pipeline_run",
            f"run {label}: the run header (summary, tier, figures, model, "
            "policy or timestamps) differs from what was recorded",
        )
    if run.manifest_digest != e.manifest_digest:
        raise _Bad(label, "pipeline_run", f"run {label}: pipeline_run.manifest_digest was changed")


def _check_unchained(runs: dict) -> None:
    """Runs left after the walk have no audit entry: they were inserted by hand."""
    if runs:
        forged = next(iter(runs.values()))
        label = f"{forged.dag_id}/{forged.run_id}#{forged.revision}"
        raise _Bad(
            label,
            None,
            f"run {label} (pipeline_run {forged.id}) has no audit entry: it was inserted "
            f"outside GovernanceStore.write_run; {len(runs)} such run(s)",
        )


def _check_head(head: str, expected_head: str | None) -> None:
    if expected_head is not None and expected_head != head:
        raise _Bad(
            None,
            None,
            f"the chain head is {head[:16]} but {expected_head[:16]} was expected: entries were "
            "appended or removed at the end",
        )


def verify_store(conn, *, expected_head: str | None = None) -> VerifyReport:
    """Walk the audit chain in order and check everything it covers (see the module docstring);
    the first failure becomes a report naming its run and row."""
    entries = conn.execute(sa.select(_AUDIT).order_by(_AUDIT.c.seq)).all()
    runs = {r.id: r for r in conn.execute(_runs_query()).all()}
    by_id = dict(runs)
    prev, rows_checked, runs_checked = GENESIS, 0, 0
    try:
        for position, e in enumerate(entries, start=1):
            label = f"{e.dag_id}/{e.run_id}#{e.revision}"
            _check_entry(e, position, prev, label)
            run = runs.pop(e.run_pk, None)
            _check_run_key(run, e, label, by_id)
            rows_checked += _check_tables(conn, run, label, e.manifest)
            _check_header(run, e, label)
            prev = e.entry_hash
            runs_checked += 1
        _check_unchained(runs)
        _check_head(prev, expected_head)
    except _Bad as bad:
        return VerifyReport(False, bad.run, bad.row, bad.message, runs_checked, rows_checked, prev)
    return VerifyReport(
        True, None, None, f"{runs_checked} run(s) and {rows_checked} row(s) match the audit chain (head {prev[:16]})",
        runs_checked, rows_checked, prev,
    )  # fmt: skip
