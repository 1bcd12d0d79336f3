"""The write path: one validated run (``payload.PreparedRun``) in one transaction.

``RunWriter.write`` looks up the latest revision of the run's key (dag_id, run_id): the same
manifest digest means "already recorded" (nothing is written); a different one is a
``RecordConflictError`` unless ``supersede``, which writes revision n+1 linked to revision n.
Then, in the same transaction: the model and policy rows (found or created), the run row, every
per-sample and per-test row by bulk insert (``Dialect.insert_rows``) and one audit-chain entry
(``append_audit``, serialized by ``Dialect.lock_chain``). A unique-constraint violation means a
concurrent writer won the race: the transaction is retried, and sees that writer's rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from certrisk.governance.chain import GENESIS, entry_hash
from certrisk.governance.engine import StoreEngines
from certrisk.governance.payload import PreparedRun
from certrisk.schemas.clock import utc_now
from certrisk.schemas.errors import InputError, RecordConflictError, StoreError
from certrisk.schemas.tables import ROW_TABLES, AuditEntry, Model, PipelineRun, Policy

#: Transactions tried per write before an integrity error is reported.
WRITE_ATTEMPTS = 3

_RUN = PipelineRun.__table__
_AUDIT = AuditEntry.__table__
_MODEL = Model.__table__
_POLICY = Policy.__table__


@dataclass(frozen=True)
class WriteResult:
    """``status`` is "written", "already recorded" or "superseded"."""

    status: str
    run_pk: int
    revision: int
    manifest_digest: str


class RunWriter:
    """Writes runs and model versions to the database of ``engines``.

    ``require_registered_model``: refuse runs of model versions nobody registered.
    """

    def __init__(self, engines: StoreEngines, *, require_registered_model: bool = False):
        self.engines = engines
        self.require_registered_model = require_registered_model

    # ------------------------------------------------------------------ transactions
    def write(self, prepared: PreparedRun, *, supersede: bool = False) -> WriteResult:
        """Record ``prepared`` exactly once (see the module docstring)."""
        last_error: Exception | None = None
        for _attempt in range(WRITE_ATTEMPTS):
            try:
                with self.engines.begin("write_run") as conn:
                    return self._write(conn, prepared, supersede)
            except sa_exc.IntegrityError as exc:
                # A concurrent writer won the race for this key (or for a new model/policy row):
                # the next attempt sees its committed rows.
                last_error = exc
        r = prepared.record
        raise StoreError(
            f"write_run {r.dag_id}/{r.run_id}: integrity error after {WRITE_ATTEMPTS} attempts "
            f"on {self.engines.masked_url}: {getattr(last_error, 'orig', last_error)}"
        ) from last_error

    def register_model(
        self, name: str, sha256: str, *, format: str | None = None, description: str | None = None
    ) -> int:
        """Register a model version (idempotent); returns its id."""
        if not name or not isinstance(sha256, str) or len(sha256) != 64:
            raise InputError(
                f"register_model: need a name and a 64-hex-digit sha256, got {name!r}, {sha256!r}"
            )
        for attempt in range(WRITE_ATTEMPTS):
            try:
                with self.engines.begin("register_model") as conn:
                    return self._model_id(conn, name, sha256, format, description, create=True)
            except sa_exc.IntegrityError:
                if attempt == WRITE_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ inside one transaction
    def _write(self, conn, p: PreparedRun, supersede: bool) -> WriteResult:
        r = p.record
        latest = conn.execute(
            sa.select(_RUN.c.id, _RUN.c.revision, _RUN.c.manifest_digest)
            .where(_RUN.c.dag_id == r.dag_id, _RUN.c.run_id == r.run_id)
            .order_by(_RUN.c.revision.desc())
            .limit(1)
        ).first()
        revision, supersedes, status = 1, None, "written"
        if latest is not None:
            if latest.manifest_digest == p.manifest_digest:
                return WriteResult("already recorded", latest.id, latest.revision, p.manifest_digest)
            if not supersede:
                raise RecordConflictError(
                    f"run {r.dag_id}/{r.run_id} is already recorded (revision {latest.revision}, manifest "
                    f"{latest.manifest_digest[:16]}) with a different payload (manifest {p.manifest_digest[:16]}); "
                    "nothing was written. Pass supersede=True to record a new revision."
                )
            revision, supersedes, status = latest.revision + 1, latest.id, "superseded"
        now = utc_now()
        run_pk = self._insert_run(conn, p, revision, supersedes, now)
        dialect = self.engines.dialect
        for name, table, _spec in ROW_TABLES:
            if p.tables[name].n:
                dialect.insert_rows(conn, table.name, run_pk, p.tables[name])
        self._append_audit(conn, run_pk, revision, p, now)
        return WriteResult(status, run_pk, revision, p.manifest_digest)

    def _insert_run(self, conn, p: PreparedRun, revision: int, supersedes: int | None, now: datetime) -> int:
        r, h = p.record, p.header
        model_id = self._model_id(
            conn, r.model_name, r.model_sha256, r.model_format, create=not self.require_registered_model
        )
        policy_id = self._policy_id(conn, r.policy_name, r.policy_sha256, r.policy_text)
        values = {
            "dag_id": r.dag_id,
            "run_id": r.run_id,
            "revision": revision,
            "supersedes_id": supersedes,
            "batch_id": r.batch_id,
            "created_at": p.created_at,
            "recorded_at": now,
            "model_id": model_id,
            "policy_id": policy_id,
            "package_version": r.package_version,
            "n_samples": h.n_samples,
            "abstention_rate": h.abstention_rate,
            "mean_risk": h.mean_risk,
            "tier": h.tier,
            "drift": h.drift,
            "summary": p.summary,
            "manifest_digest": p.manifest_digest,
        }
        return conn.execute(_RUN.insert().values(**values).returning(_RUN.c.id)).scalar_one()

    def _model_id(self, conn, name, sha256, format, description=None, *, create: bool) -> int:
        found = conn.execute(
            sa.select(_MODEL.c.id).where(_MODEL.c.name == name, _MODEL.c.sha256 == sha256)
        ).scalar_one_or_none()
        if found is not None:
            return found
        if not create:
            raise StoreError(
                f"model {name!r} version sha256={sha256} is not registered in {self.engines.masked_url}; "
                "register it with GovernanceStore.register_model (require_registered_model=True refuses "
                "runs of unregistered model versions)"
            )
        values = {
            "name": name,
            "sha256": sha256,
            "format": format,
            "description": description,
            "registered_at": utc_now(),
        }
        return conn.execute(_MODEL.insert().values(**values).returning(_MODEL.c.id)).scalar_one()

    @staticmethod
    def _policy_id(conn, name, sha256, text) -> int:
        found = conn.execute(
            sa.select(_POLICY.c.id).where(_POLICY.c.name == name, _POLICY.c.sha256 == sha256)
        ).scalar_one_or_none()
        if found is not None:
            return found
        values = {"name": name, "sha256": sha256, "text": text, "recorded_at": utc_now()}
        return conn.execute(_POLICY.insert().values(**values).returning(_POLICY.c.id)).scalar_one()

    def _append_audit(self, conn, run_pk: int, revision: int, p: PreparedRun, now: datetime) -> None:
        """Append the run's entry to the audit chain, linked to the current head."""
        self.engines.dialect.lock_chain(conn)
        head = conn.execute(
            sa.select(_AUDIT.c.seq, _AUDIT.c.entry_hash).order_by(_AUDIT.c.seq.desc()).limit(1)
        ).first()
        seq, prev = (head.seq + 1, head.entry_hash) if head is not None else (1, GENESIS)
        entry = {
            "prev_hash": prev,
            "seq": seq,
            "dag_id": p.record.dag_id,
            "run_id": p.record.run_id,
            "revision": revision,
            "manifest_digest": p.manifest_digest,
            "manifest": p.manifest,
            "recorded_at": now,
        }
        conn.execute(_AUDIT.insert().values(**entry, run_pk=run_pk, entry_hash=entry_hash(**entry)))
