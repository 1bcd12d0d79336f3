"""Review records: a person's decision on a recorded batch, append-only and on the audit chain.

``record_review`` validates the decision before any connection opens (decision one of
``certrisk.schemas.review.DECISIONS``, source one of ``REVIEW_SOURCES``, a reviewer, a comment,
an aware or UTC decision time; a timeout's default outcome is recorded under the reviewer
"system"), then, in one transaction: finds the run's current revision (the run must be recorded:
``RunNotFoundError`` otherwise), inserts one ``review`` row (the run's key, revision and manifest
digest: what was reviewed) and appends its audit entry (kind "review", every column of
``RECORD_COLUMNS["review"]`` digested, ``recorded_by`` included). Nothing is written when any step
fails.

Idempotency. ``review_key`` names one decision (the HITL step passes one per task instance, so a
retried task records its decision once). Recording the same key again returns "already recorded"
when it says the same (run, decision, reviewer, comment, source, and the decision time when one
is given) and raises ``RecordConflictError`` when it does not. Without a key, the key is the
sha256 of the decision's content and its time: the same call with the same ``decided_at`` is
recorded once, a later decision is a new record.

Reviews are never updated or deleted: a changed mind is a new decision, and the latest one (by
decision time) is the run's review state (``facts.review_state``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from certrisk.governance.audit_log import append_entry, record_values
from certrisk.governance.chain import canonical_json, iso_utc, record_manifest, sha256_hex
from certrisk.governance.engine import StoreEngines, dialect_of
from certrisk.governance.record_tables import RECORD_COLUMNS, REVIEW, review_table, run_table
from certrisk.schemas.clock import as_utc, as_utc_timestamp, utc_now
from certrisk.schemas.errors import InputError, RecordConflictError, RunNotFoundError, StoreError
from certrisk.schemas.review import DECISIONS, REVIEW_EVIDENCE, REVIEW_RMF, REVIEW_SOURCES, SYSTEM_REVIEWER

_REVIEW, _RUN = review_table, run_table
#: Columns of ``reviews`` (v_review), in order.
REVIEW_FRAME_COLUMNS = (
    "dag_id", "run_id", "revision", "decision", "comment", "reviewer", "decided_at", "source", "recorded_at",
    "recorded_by", "review_key", "model",
)  # fmt: skip
#: Longest accepted reviewer name, review key and comment (characters).
MAX_REVIEWER, MAX_KEY, MAX_COMMENT = 200, 200, 10_000
_ATTEMPTS = 3
#: How far in the future a decision time may lie (clocks of the deciding machine and this one).
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class ReviewDecision:
    """A validated decision, before it is matched to a recorded run."""

    dag_id: str | None
    run_id: str
    decision: str
    reviewer: str
    comment: str
    decided_at: datetime
    decided_at_given: bool
    source: str
    review_key: str

    @property
    def run_label(self) -> str:
        return f"{self.dag_id}/{self.run_id}" if self.dag_id else self.run_id


def _text(value, name: str, where: str, *, limit: int, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise InputError(
            f"review of run {where}: {name} must be {'a' if empty else 'a non-empty'} string, got {value!r}"
        )
    if len(value) > limit:
        raise InputError(f"review of run {where}: {name} is {len(value)} characters; at most {limit}")
    return value


def _decided_at(value, where: str) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise InputError(f"review of run {where}: decided_at is not an ISO datetime: {value!r}") from None
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if not isinstance(value, datetime):
        raise InputError(f"review of run {where}: decided_at must be a datetime (UTC), got {value!r}")
    return as_utc(value)


def prepare_review(
    *, dag_id, run_id, decision, reviewer, comment="", decided_at=None, source="cli", review_key=None
) -> ReviewDecision:
    """Validate a decision (see the module docstring); ``InputError`` names the run and the field."""
    if not isinstance(run_id, str) or not run_id.strip():
        raise InputError(f"review: run_id must name a recorded run, got {run_id!r}")
    if dag_id is not None and (not isinstance(dag_id, str) or not dag_id.strip()):
        raise InputError(f"review of run {run_id}: dag_id must be a DAG id or None, got {dag_id!r}")
    where = f"{dag_id}/{run_id}" if dag_id else run_id
    if decision not in DECISIONS:
        raise InputError(f"review of run {where}: decision {decision!r} is not one of {list(DECISIONS)}")
    if source not in REVIEW_SOURCES:
        raise InputError(f"review of run {where}: source {source!r} is not one of {list(REVIEW_SOURCES)}")
    reviewer = _text(reviewer, "reviewer", where, limit=MAX_REVIEWER).strip()
    if (source == "timeout") != (reviewer == SYSTEM_REVIEWER):
        raise InputError(
            f"review of run {where}: a timeout's default outcome is recorded by reviewer {SYSTEM_REVIEWER!r}, "
            f"and only it (source {source!r}, reviewer {reviewer!r})"
        )
    comment = _text(comment, "comment", where, limit=MAX_COMMENT, empty=True)
    given = decided_at is not None
    now = utc_now()
    when = _decided_at(decided_at, where) if given else now
    if when > now + CLOCK_SKEW:
        raise InputError(
            f"review of run {where}: decided_at {iso_utc(when)} is in the future (now {iso_utc(now)} UTC)"
        )
    if review_key is None:
        content = {
            "dag_id": dag_id, "run_id": run_id, "decision": decision, "reviewer": reviewer,
            "comment": comment, "decided_at": iso_utc(when), "source": source,
        }  # fmt: skip
        review_key = f"sha256:{sha256_hex(canonical_json(content))}"
    review_key = _text(review_key, "review_key", where, limit=MAX_KEY)
    return ReviewDecision(dag_id, run_id, decision, reviewer, comment, when, given, source, review_key)


def record_review(engines: StoreEngines, d: ReviewDecision) -> dict:
    """Record ``d`` exactly once (see the module docstring); returns ``review_row`` of it with
    ``status`` "recorded" or "already recorded" and ``database`` (the masked URL)."""
    last: Exception | None = None
    for _attempt in range(_ATTEMPTS):
        try:
            with engines.begin("record_review") as conn:
                status, pk = _record(conn, d)
                row = _read_one(conn, pk)
            return {"status": status, **row, "database": engines.masked_url}
        except sa_exc.IntegrityError as exc:  # a concurrent writer recorded the same key: re-read it
            last = exc
    raise StoreError(
        f"review of run {d.run_label}: integrity error after {_ATTEMPTS} attempts on {engines.masked_url}: "
        f"{getattr(last, 'orig', last)}"
    ) from last


def _find_run(conn, d: ReviewDecision):
    """The current revision of the run a decision names."""
    r, n = _RUN, _RUN.alias("n")
    superseded = sa.select(n.c.id).where(n.c.supersedes_id == r.c.id).exists()
    q = sa.select(r.c.id, r.c.dag_id, r.c.run_id, r.c.revision, r.c.manifest_digest).where(
        r.c.run_id == d.run_id, ~superseded
    )
    if d.dag_id is not None:
        q = q.where(r.c.dag_id == d.dag_id)
    found = conn.execute(q).all()
    if not found:
        raise RunNotFoundError(
            f"review of run {d.run_label}: no recorded run with run_id {d.run_id!r}"
            + (f" in DAG {d.dag_id!r}" if d.dag_id else "")
            + ": a decision is recorded only for a run whose record has landed; nothing was written"
        )
    if len(found) > 1:
        raise InputError(
            f"review of run {d.run_id}: run_id {d.run_id!r} is recorded by several DAGs "
            f"{sorted(f.dag_id for f in found)}; pass dag_id; nothing was written"
        )
    return found[0]


def _same(existing, d: ReviewDecision) -> bool:
    said = (existing.run_id, existing.decision, existing.reviewer, existing.comment, existing.source)
    if said != (d.run_id, d.decision, d.reviewer, d.comment, d.source):
        return False
    if d.dag_id is not None and existing.dag_id != d.dag_id:
        return False
    return not d.decided_at_given or as_utc_timestamp(existing.decided_at) == as_utc_timestamp(d.decided_at)


def _record(conn, d: ReviewDecision) -> tuple[str, int]:
    existing = conn.execute(sa.select(_REVIEW).where(_REVIEW.c.review_key == d.review_key)).first()
    if existing is not None:
        if _same(existing, d):
            return "already recorded", existing.id
        raise RecordConflictError(
            f"review key {d.review_key!r} is already recorded for run {existing.dag_id}/{existing.run_id} "
            f"({existing.decision} by {existing.reviewer}); this call says {d.decision} by {d.reviewer} for run "
            f"{d.run_label}: nothing was written (a changed decision is a new review with its own key)"
        )
    run = _find_run(conn, d)
    dialect = dialect_of(conn)
    now = utc_now()
    values = {
        "run_pk": run.id, "dag_id": run.dag_id, "run_id": run.run_id, "revision": run.revision,
        "run_manifest_digest": run.manifest_digest, "decision": d.decision, "comment": d.comment,
        "reviewer": d.reviewer, "decided_at": dialect.bind_datetime(d.decided_at), "source": d.source,
        "review_key": d.review_key, "recorded_at": dialect.bind_datetime(now),
    }  # fmt: skip
    who = dialect.recorded_by()
    if who is not None:
        values["recorded_by"] = who
    pk, recorded_by = conn.execute(
        _REVIEW.insert().values(**values).returning(_REVIEW.c.id, _REVIEW.c.recorded_by)
    ).one()
    row = {**values, "decided_at": d.decided_at, "recorded_at": now, "recorded_by": recorded_by}
    manifest, digest = record_manifest(RECORD_COLUMNS[REVIEW], record_values(REVIEW, row))
    append_entry(
        conn, kind=REVIEW, manifest=manifest, manifest_digest=digest, recorded_at=now,
        record=(pk, review_record_key(run.dag_id, run.run_id, run.revision, d.review_key)),
    )  # fmt: skip
    return "recorded", pk


def review_record_key(dag_id: str, run_id: str, revision: int, review_key: str) -> str:
    """What a review's audit entry names: "<dag_id>/<run_id>#<revision> <review_key>"."""
    return f"{dag_id}/{run_id}#{revision} {review_key}"[:500]


def _read_one(conn, pk: int) -> dict:
    row = conn.execute(sa.select(_REVIEW).where(_REVIEW.c.id == pk)).mappings().one()
    out = {k: row[k] for k in REVIEW_FRAME_COLUMNS if k in row}
    out["review_pk"] = pk
    for key in ("decided_at", "recorded_at"):
        out[key] = as_utc_timestamp(out[key])
    return out


def reviews(
    conn, *, dag_id: str | None = None, run_id: str | None = None, limit: int | None = None
) -> pd.DataFrame:
    """Recorded reviews from v_review (compliance-visible), newest decision first; filtered by
    ``dag_id`` and ``run_id``. Columns: REVIEW_FRAME_COLUMNS; times aware UTC."""
    where, params = [], {}
    for name, value in (("dag_id", dag_id), ("run_id", run_id)):
        if value is not None:
            where.append(f"{name} = :{name}")
            params[name] = value
    sql = f"SELECT {', '.join(REVIEW_FRAME_COLUMNS)} FROM v_review"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY decided_at DESC, review_pk DESC"
    if limit is not None:
        if int(limit) < 0:
            raise InputError(f"reviews: limit must be >= 0 or None, got {limit}")
        sql += f" LIMIT {int(limit)}"
    frame = pd.DataFrame(conn.execute(sa.text(sql), params).all(), columns=list(REVIEW_FRAME_COLUMNS))
    for col in ("decided_at", "recorded_at"):
        frame[col] = pd.to_datetime(frame[col], utc=True, format="ISO8601")
    frame["revision"] = frame["revision"].astype("int64")
    return frame


#: Columns of ``period_reviews``: the review's and its run's creation time.
PERIOD_REVIEW_COLUMNS = (*REVIEW_FRAME_COLUMNS, "created_at")


def period_reviews(conn, *, model: str | None, since: datetime, until: datetime) -> pd.DataFrame:
    """Review decisions on the current runs (of ``model``) created in [since, until), newest
    decision first, with the run's ``created_at`` (PERIOD_REVIEW_COLUMNS; times aware UTC)."""
    dialect = dialect_of(conn)
    where = ["rs.is_current = 1", "rs.created_at >= :since", "rs.created_at < :until"]
    params: dict = {
        "since": dialect.bind_datetime(as_utc(since)),
        "until": dialect.bind_datetime(as_utc(until)),
    }
    if model is not None:
        where.append("rs.model = :model")
        params["model"] = model
    cols = ", ".join(f"v.{c}" for c in REVIEW_FRAME_COLUMNS)
    sql = (
        f"SELECT {cols}, rs.created_at FROM v_review v JOIN v_run_summary rs ON rs.run_pk = v.run_pk "
        f"WHERE {' AND '.join(where)} ORDER BY v.decided_at DESC, v.review_pk DESC"
    )
    frame = pd.DataFrame(conn.execute(sa.text(sql), params).all(), columns=list(PERIOD_REVIEW_COLUMNS))
    for col in ("decided_at", "recorded_at", "created_at"):
        frame[col] = pd.to_datetime(frame[col], utc=True, format="ISO8601")
    return frame


def add_review_coverage(conn, frame: pd.DataFrame, *, model: str | None = None) -> pd.DataFrame:
    """``queries.rmf_coverage``'s frame with the review decisions on current runs (of ``model``)
    counted as evidence of ``REVIEW_RMF`` (kind "human_review"): runs counted once whether their
    record or a decision evidences the subcategory."""
    where, params = ["rs.is_current = 1"], {}
    if model is not None:
        where.append("rs.model = :model")
        params["model"] = model
    cond = " AND ".join(where)
    reviewed = conn.execute(
        sa.text(
            "SELECT v.run_pk, rs.created_at FROM v_review v JOIN v_run_summary rs ON rs.run_pk = v.run_pk "
            f"WHERE {cond}"
        ),
        params,
    ).all()
    if not reviewed:
        return frame
    marks = ", ".join(f":s{i}" for i in range(len(REVIEW_RMF)))
    params.update({f"s{i}": sid for i, sid in enumerate(REVIEW_RMF)})
    recorded = conn.execute(
        sa.text(
            f"SELECT DISTINCT rs.subcategory_id, rs.run_pk FROM v_rmf_evidence rs WHERE {cond} "
            f"AND rs.subcategory_id IN ({marks})"
        ),
        params,
    ).all()
    runs = {r.run_pk for r in reviewed}
    last = pd.to_datetime(pd.Series([r.created_at for r in reviewed]), utc=True, format="ISO8601").max()
    out = frame.copy()
    for idx in out.index[out["subcategory_id"].isin(REVIEW_RMF)]:
        sid = out.at[idx, "subcategory_id"]
        out.at[idx, "n_runs"] = len(runs | {r.run_pk for r in recorded if r.subcategory_id == sid})
        out.at[idx, "n_records"] = int(out.at[idx, "n_records"]) + len(reviewed)
        out.at[idx, "evidence_kinds"] = sorted({*out.at[idx, "evidence_kinds"], REVIEW_EVIDENCE})
        before = out.at[idx, "last_evidenced_at"]
        out.at[idx, "last_evidenced_at"] = last if pd.isna(before) else max(before, last)
        out.at[idx, "covered"] = True
    return out


__all__ = [
    "PERIOD_REVIEW_COLUMNS",
    "REVIEW_FRAME_COLUMNS",
    "ReviewDecision",
    "add_review_coverage",
    "period_reviews",
    "prepare_review",
    "record_review",
    "review_record_key",
    "reviews",
]
