"""Verify the stored row of each governed record against what its audit entry recorded.

A run: its timestamps (each in the backend's one representation, ``recorded_at`` the entry's),
its summary (read strictly, stored as the canonical text that was written), its header digest
(key, provenance, figures, summary, model and policy) and the supersede trail (who recorded the
revision, why). A model or a policy: every column of ``RECORD_COLUMNS``. A review: every column
of ``RECORD_COLUMNS["review"]`` and its link to the run revision it names. Then what no entry
covers (rows inserted by hand) and the NIST AI RMF catalog against the copy certrisk ships. Each
check raises ``verify_rows.Bad`` with words that fit what it found.
"""

from __future__ import annotations

import json

import sqlalchemy as sa

from certrisk.governance.chain import (
    JsonProblem,
    RunHeader,
    canonical_json,
    iso_utc,
    row_digest,
    strict_json,
)
from certrisk.governance.engine import TimestampProblem
from certrisk.governance.evaluations import EvaluationHeader
from certrisk.governance.record_tables import (
    RECORD_COLUMNS,
    REVIEW,
    catalog_table,
    evaluation_table,
    model_table,
    policy_table,
    review_table,
    run_table,
)
from certrisk.governance.verify_rows import Bad
from certrisk.schemas.rmf import catalog

_RUN, _MODEL, _POLICY = run_table, model_table, policy_table
#: The run header's fields read from the joined model and policy rows.
_JOINED = ("model_name", "model_sha256", "policy_name", "policy_sha256", "policy_text")


def runs_query(dialect):
    """Every pipeline_run row as stored (timestamps in their stored form, the summary as text),
    with its model's and policy's header fields (outer joins: a deleted row shows as None)."""
    plain = [c for c in _RUN.c if c.name not in ("created_at", "recorded_at", "summary")]
    return (
        sa.select(
            *plain,
            dialect.stored_timestamp(_RUN.c.created_at).label("created_raw"),
            dialect.stored_timestamp(_RUN.c.recorded_at).label("recorded_raw"),
            sa.cast(_RUN.c.summary, sa.Text).label("summary_text"),
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


def records_query(table, dialect):
    """Every model or policy row, its timestamp in stored form (under its own name)."""
    stamp = "registered_at" if "registered_at" in table.c else "recorded_at"
    plain = [c for c in table.c if c.name != stamp]
    return sa.select(*plain, dialect.stored_timestamp(table.c[stamp]).label(stamp)).order_by(table.c.id)


def read_timestamp(dialect, raw, *, label: str, where: str, title: str):
    """A stored timestamp as an aware UTC datetime; a Bad naming ``where`` when it is not one or
    is spelled another way than the one representation."""
    try:
        return dialect.read_timestamp(raw)
    except TimestampProblem as exc:
        raise Bad(
            label, where, f"{title}: {where} is {exc}; it was rewritten after it was recorded"
        ) from None


def read_document(text, *, legacy: bool, label: str, where: str, title: str):
    """A stored JSON document parsed strictly and checked to be the canonical text certrisk wrote
    (before migration 0005: SQLAlchemy's default ``json.dumps``, in the document's key order)."""
    try:
        value = strict_json(text)
    except JsonProblem as exc:
        raise Bad(
            label,
            where,
            f"{title}: {where} holds {exc}; certrisk never writes that, so it was edited after it was "
            "recorded (SQLite's views read the first of two equal keys, Python the last: views and "
            "reports could show one value while the digest covers another)",
        ) from None
    allowed = {canonical_json(value)} | ({json.dumps(value)} if legacy else set())
    if text not in allowed:
        raise Bad(
            label,
            where,
            f"{title}: {where} is not stored as the canonical JSON text that was written (same values, "
            "another spelling): it was rewritten after it was recorded",
        )
    return value


def check_run_row(run, manifest: dict, facts: dict | None, recorded_at, *, label: str, dialect) -> None:
    """The run row's timestamps, summary, header digest and supersede trail (see the module)."""
    title = f"run {label}"
    if run.model_name is None or run.policy_name is None:
        raise Bad(label, "pipeline_run", f"{title}: its model or policy row is missing")
    created = read_timestamp(
        dialect, run.created_raw, label=label, where="pipeline_run.created_at", title=title
    )
    stored = read_timestamp(
        dialect, run.recorded_raw, label=label, where="pipeline_run.recorded_at", title=title
    )
    if stored != recorded_at:
        raise Bad(
            label,
            "pipeline_run.recorded_at",
            f"{title}: pipeline_run.recorded_at says {iso_utc(stored)} but its audit entry recorded "
            f"{iso_utc(recorded_at)}: it was changed after it was recorded",
        )
    legacy = facts is None
    summary = read_document(
        run.summary_text, legacy=legacy, label=label, where="pipeline_run.summary", title=title
    )
    fields = {name: getattr(run, name) for name in ("dag_id", "run_id", "batch_id", "package_version")}
    fields.update({name: getattr(run, name) for name in _JOINED})
    header = RunHeader(
        **fields, created_at=created, n_samples=run.n_samples, abstention_rate=run.abstention_rate,
        mean_risk=run.mean_risk, tier=run.tier, drift=run.drift, summary=summary,
    )  # fmt: skip
    if header.digest() != manifest.get("header"):
        raise Bad(
            label,
            "pipeline_run",
            f"{title}: the run header (summary, tier, figures, model, policy or timestamps) differs from what was recorded",
        )
    _check_trail(run, facts, label, title)


def _check_trail(run, facts: dict | None, label: str, title: str) -> None:
    """Who recorded the revision and why: as the audit entry recorded them."""
    recorded = facts or {"recorded_by": None, "revision_reason": None}
    for col in ("recorded_by", "revision_reason"):
        if getattr(run, col) != recorded.get(col):
            raise Bad(
                label,
                f"pipeline_run.{col}",
                f"{title}: pipeline_run.{col} is {getattr(run, col)!r} but its audit entry recorded "
                f"{recorded.get(col)!r}: the supersede trail was changed after it was recorded",
            )
    if run.revision > 1 and facts is not None and not recorded.get("revision_reason"):
        raise Bad(
            label, "pipeline_run.revision_reason", f"{title}: revision {run.revision} records no reason"
        )


def check_record(kind: str, row, manifest: dict, *, label: str, dialect) -> None:
    """A model or policy row against its entry's manifest: every column it recorded."""
    cols = manifest.get("columns")
    if not isinstance(cols, list) or not cols or [list(c) for c in RECORD_COLUMNS[kind]][: len(cols)] != cols:
        raise Bad(label, kind, f"{label}: its manifest lists columns {cols!r}, not the {kind} table's")
    where = f"{kind} id={row.id}"
    values = []
    for col, dtype in cols:
        value = getattr(row, col)
        if dtype == "timestamp":
            value = iso_utc(read_timestamp(dialect, value, label=label, where=f"{kind}.{col}", title=label))
        values.append(value)
    if row_digest(tuple(values)) != manifest.get("digest"):
        names = ", ".join(c for c, _ in cols)
        raise Bad(
            label, where, f"{label}: its {kind} row ({names}) differs from what was recorded: it was changed"
        )


def reviews_query(dialect, run_pks=None):
    """Every review row (of the runs ``run_pks``, when given), timestamps in stored form."""
    v = review_table
    stamps = ("decided_at", "recorded_at")
    plain = [c for c in v.c if c.name not in stamps]
    q = sa.select(*plain, *(dialect.stored_timestamp(v.c[s]).label(s) for s in stamps)).order_by(v.c.id)
    return q if run_pks is None else q.where(v.c.run_pk.in_(list(run_pks)))


def check_review_row(row, manifest: dict, recorded_at, runs_by_id: dict, *, label: str, dialect) -> None:
    """A review row against its entry: every digested column, its recorded_at, and the run
    revision it names (present under ``run_pk``, same key, revision and manifest digest)."""
    check_record(REVIEW, row, manifest, label=label, dialect=dialect)
    stored = read_timestamp(dialect, row.recorded_at, label=label, where="review.recorded_at", title=label)
    if stored != recorded_at:
        raise Bad(label, f"review id={row.id}", f"{label}: review.recorded_at differs from its audit entry's")
    run = runs_by_id.get(row.run_pk)
    named = f"{row.dag_id}/{row.run_id}#{row.revision}"
    if run is None or (run.dag_id, run.run_id, run.revision) != (row.dag_id, row.run_id, row.revision):
        now = "no recorded run" if run is None else f"run {run.dag_id}/{run.run_id}#{run.revision}"
        raise Bad(
            label,
            f"review id={row.id} run_pk",
            f"{label}: the review names run {named} but its run_pk {row.run_pk} is {now}: it was re-pointed",
        )
    if run.manifest_digest != row.run_manifest_digest:
        raise Bad(
            label,
            f"review id={row.id}",
            f"{label}: run {named}'s manifest digest is not the one the reviewer decided on",
        )


def check_unchained(
    runs: dict, records: dict[str, dict], evaluations: dict, reviews: dict | None = None
) -> None:
    """Rows left after the walk have no audit entry: they were inserted by hand."""
    if runs:
        forged = next(iter(runs.values()))
        label = f"{forged.dag_id}/{forged.run_id}#{forged.revision}"
        raise Bad(
            label,
            None,
            f"run {label} (pipeline_run {forged.id}) has no audit entry: it was inserted "
            f"outside GovernanceStore.write_run; {len(runs)} such run(s)",
        )
    for kind, rows in records.items():
        if rows:
            row = next(iter(rows.values()))
            label = f"{kind} {row.name} sha256={row.sha256}"
            raise Bad(
                label,
                f"{kind} id={row.id}",
                f"{label} ({kind} row {row.id}) has no audit entry: it was inserted outside certrisk's "
                f"writes (a model row inserted by hand would pass for a registered version); {len(rows)} such row(s)",
            )
    if evaluations:
        row = next(iter(evaluations.values()))
        label = f"evaluation {row.evaluation_key[:16]}"
        raise Bad(
            label,
            f"evaluation id={row.id}",
            f"{label} (evaluation row {row.id}) has no audit entry: it was inserted outside "
            f"GovernanceStore.write_evaluation; {len(evaluations)} such evaluation(s)",
        )
    if reviews:
        row = next(iter(reviews.values()))
        label = f"review of {row.dag_id}/{row.run_id}#{row.revision} by {row.reviewer}"
        raise Bad(
            label,
            f"review id={row.id}",
            f"{label} (review row {row.id}, {row.decision}) has no audit entry: it was inserted outside "
            f"GovernanceStore.record_review; {len(reviews)} such review(s)",
        )


def check_catalog(conn) -> None:
    """Every rmf_subcategory row equals the NIST AI RMF 1.0 Core text certrisk ships; none is
    missing or added."""
    c = catalog_table
    stored = {r.id: r for r in conn.execute(sa.select(c).order_by(c.c.id))}
    shipped = catalog()
    for sid, sub in shipped.items():
        row = stored.pop(sid, None)
        where = f"rmf_subcategory id={sid!r}"
        if row is None:
            raise Bad(None, where, f"{where} is missing from the database: it was deleted")
        changed = [
            col
            for col in ("function", "category", "text", "category_text")
            if getattr(row, col) != getattr(sub, col)
        ]
        if changed:
            raise Bad(
                None,
                where,
                f"{where}: its {', '.join(changed)} differs from the NIST AI RMF 1.0 Core text shipped with "
                "certrisk: it was changed in the database (reports quote it)",
            )
    if stored:
        sid = next(iter(stored))
        raise Bad(
            None,
            f"rmf_subcategory id={sid!r}",
            f"rmf_subcategory id={sid!r} is not in the NIST AI RMF 1.0 Core: it was added",
        )


def evaluations_query(dialect):
    """Every evaluation row as stored, with its model's and policy's names and sha256."""
    e = evaluation_table
    plain = [c for c in e.c if c.name not in ("created_at", "recorded_at", "seeds", "meta")]
    return (
        sa.select(
            *plain,
            dialect.stored_timestamp(e.c.created_at).label("created_raw"),
            dialect.stored_timestamp(e.c.recorded_at).label("recorded_raw"),
            sa.cast(e.c.seeds, sa.Text).label("seeds_text"),
            sa.cast(e.c.meta, sa.Text).label("meta_text"),
            _MODEL.c.name.label("model_name"),
            _MODEL.c.sha256.label("model_sha256"),
            _POLICY.c.name.label("policy_name"),
            _POLICY.c.sha256.label("policy_sha256"),
        )
        .join(_MODEL, _MODEL.c.id == e.c.model_id, isouter=True)
        .join(_POLICY, _POLICY.c.id == e.c.policy_id, isouter=True)
        .order_by(e.c.id)
    )


def check_evaluation_row(row, manifest: dict, recorded_at, *, label: str, dialect) -> None:
    """An evaluation row's timestamps, documents and header digest against its entry."""
    if row.model_name is None or row.policy_name is None:
        raise Bad(label, "evaluation", f"{label}: its model or policy row is missing")
    created = read_timestamp(
        dialect, row.created_raw, label=label, where="evaluation.created_at", title=label
    )
    stored = read_timestamp(
        dialect, row.recorded_raw, label=label, where="evaluation.recorded_at", title=label
    )
    if stored != recorded_at:
        raise Bad(
            label, "evaluation.recorded_at", f"{label}: evaluation.recorded_at differs from its audit entry's"
        )
    seeds = read_document(row.seeds_text, legacy=False, label=label, where="evaluation.seeds", title=label)
    meta = read_document(row.meta_text, legacy=False, label=label, where="evaluation.meta", title=label)
    header = EvaluationHeader(
        model_name=row.model_name, model_sha256=row.model_sha256, policy_name=row.policy_name,
        policy_sha256=row.policy_sha256, reference_sha256=row.reference_sha256,
        evaluation_key=row.evaluation_key, created_at=created, package_version=row.package_version,
        n_clean=row.n_clean, seeds=seeds, meta=meta,
    )  # fmt: skip
    if header.digest() != manifest.get("header"):
        raise Bad(
            label,
            "evaluation",
            f"{label}: the evaluation's header (model, policy, reference, key, seeds, metadata or times) "
            "differs from what was recorded",
        )
