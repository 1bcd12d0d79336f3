"""The write path: one validated run (``payload.PreparedRun``) in one transaction.

``RunWriter.write`` looks up the latest revision of the run's key (dag_id, run_id): the same
manifest digest means "already recorded" (nothing is written); a different one is a
``RecordConflictError`` unless ``supersede``, which writes revision n+1 linked to revision n and
needs a ``reason``: who superseded (``recorded_by``: on PostgreSQL the login, filled by the
database; on SQLite the operating-system user, which nothing enforces) and why stay on the row
and in its audit entry, and every view of the run shows the revision (``queries``). On
PostgreSQL only the ``certrisk_reviser`` role may insert a revision (``roles``): the writer role
cannot. Then, in the same transaction: the model and policy rows (found, or created with their
own audit entries), the run row, every per-sample and per-test row by bulk insert
(``Dialect.insert_rows``) and one audit-chain entry (``audit_log.append_entry``). A
unique-constraint violation means a concurrent writer won the race: the transaction is retried,
and sees that writer's rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from certrisk.governance.audit_log import append_entry, insert_record
from certrisk.governance.engine import StoreEngines
from certrisk.governance.evaluations import PreparedEvaluation, evaluation_values
from certrisk.governance.payload import PreparedRun
from certrisk.governance.record_tables import (
    EVALUATION,
    MODEL,
    POLICY,
    RUN,
    evaluation_table,
    model_table,
    policy_table,
    run_table,
)
from certrisk.schemas.clock import utc_now
from certrisk.schemas.errors import InputError, RecordConflictError, StoreError
from certrisk.schemas.tables import ROW_TABLES

#: Transactions tried per write before an integrity error is reported.
WRITE_ATTEMPTS = 3

_RUN, _MODEL, _POLICY, _EVAL = run_table, model_table, policy_table, evaluation_table
#: Role that may supersede a run on PostgreSQL (``certrisk.governance.roles.REVISER``).
REVISER_ROLE = "certrisk_reviser"


@dataclass(frozen=True)
class WriteResult:
    """``status`` is "written", "already recorded" or "superseded"; ``run_pk`` is the record's id
    (an evaluation's for ``write_evaluation``, whose revision is always 1)."""

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
    def write(
        self, prepared: PreparedRun, *, supersede: bool = False, reason: str | None = None
    ) -> WriteResult:
        """Record ``prepared`` exactly once (see the module docstring)."""
        r = prepared.record
        if supersede and (not isinstance(reason, str) or not reason.strip()):
            raise InputError(
                f"write_run {r.dag_id}/{r.run_id}: superseding a recorded run needs a reason (who asked, "
                "why); it is shown with the revision in every report"
            )
        if not supersede and reason is not None:
            raise InputError(
                f"write_run {r.dag_id}/{r.run_id}: a reason is only recorded with supersede=True"
            )
        last_error: Exception | None = None
        for _attempt in range(WRITE_ATTEMPTS):
            try:
                with self.engines.begin("write_run") as conn:
                    return self._write(conn, prepared, supersede, reason)
            except sa_exc.IntegrityError as exc:
                # A concurrent writer won the race for this key (or for a new model/policy row):
                # the next attempt sees its committed rows.
                last_error = exc
            except StoreError as exc:
                if supersede and "permission denied" in str(exc):
                    raise StoreError(
                        f"write_run {r.dag_id}/{r.run_id}: superseding needs the {REVISER_ROLE} role, "
                        f"which the pipeline's writer role does not hold: {exc}"
                    ) from exc
                raise
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
    def _write(self, conn, p: PreparedRun, supersede: bool, reason: str | None) -> WriteResult:
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
                    "nothing was written. Pass supersede=True with a reason to record a new revision."
                )
            revision, supersedes, status = latest.revision + 1, latest.id, "superseded"
        now = utc_now()
        run_pk, recorded_by = self._insert_run(conn, p, revision, supersedes, reason, now)
        dialect = self.engines.dialect
        for name, table, _spec in ROW_TABLES:
            if p.tables[name].n:
                dialect.insert_rows(conn, table.name, run_pk, p.tables[name])
        self._append_audit(
            conn, run_pk, revision, p, now, {"recorded_by": recorded_by, "revision_reason": reason}
        )
        return WriteResult(status, run_pk, revision, p.manifest_digest)

    def _insert_run(
        self, conn, p: PreparedRun, revision: int, supersedes: int | None, reason: str | None, now: datetime
    ) -> tuple[int, str | None]:
        """Insert the run row; returns its id and who recorded it (as stored)."""
        r, h = p.record, p.header
        dialect = self.engines.dialect
        model_id = self._model_id(
            conn, r.model_name, r.model_sha256, r.model_format, create=not self.require_registered_model
        )
        policy_id = self._policy_id(conn, r.policy_name, r.policy_sha256, r.policy_text)
        values = {
            "dag_id": r.dag_id,
            "run_id": r.run_id,
            "revision": revision,
            "batch_id": r.batch_id,
            "created_at": dialect.bind_datetime(p.created_at),
            "recorded_at": dialect.bind_datetime(now),
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
        if supersedes is not None:  # columns the writer role may not insert (roles)
            values.update(supersedes_id=supersedes, revision_reason=reason)
        who = dialect.recorded_by()
        if who is not None:
            values["recorded_by"] = who
        row = conn.execute(_RUN.insert().values(**values).returning(_RUN.c.id, _RUN.c.recorded_by)).one()
        return row.id, row.recorded_by

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
        values = {"name": name, "sha256": sha256, "format": format, "description": description}
        return insert_record(conn, MODEL, values, utc_now())

    @staticmethod
    def _policy_id(conn, name, sha256, text) -> int:
        found = conn.execute(
            sa.select(_POLICY.c.id).where(_POLICY.c.name == name, _POLICY.c.sha256 == sha256)
        ).scalar_one_or_none()
        if found is not None:
            return found
        return insert_record(conn, POLICY, {"name": name, "sha256": sha256, "text": text}, utc_now())

    @staticmethod
    def _append_audit(conn, run_pk: int, revision: int, p: PreparedRun, now: datetime, facts: dict) -> None:
        """Append the run's entry to the audit chain, linked to the current head."""
        append_entry(
            conn,
            kind=RUN,
            manifest=p.manifest,
            manifest_digest=p.manifest_digest,
            recorded_at=now,
            run_key=(run_pk, p.record.dag_id, p.record.run_id, revision),
            facts=facts,
        )

    # ------------------------------------------------------------------ evaluations
    def write_evaluation(self, prepared: PreparedEvaluation) -> WriteResult:
        """Record ``prepared`` exactly once: "written", or "already recorded" when the same
        evaluation (key and manifest) is; a different one under its key is a conflict."""
        for attempt in range(WRITE_ATTEMPTS):
            try:
                with self.engines.begin("write_evaluation") as conn:
                    return self._write_evaluation(conn, prepared)
            except sa_exc.IntegrityError:
                if attempt == WRITE_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _write_evaluation(self, conn, p: PreparedEvaluation) -> WriteResult:
        h = p.header
        model_id = self._model_id(
            conn, h.model_name, h.model_sha256, None, create=not self.require_registered_model
        )
        found = conn.execute(
            sa.select(_EVAL.c.id, _EVAL.c.manifest_digest).where(
                _EVAL.c.model_id == model_id, _EVAL.c.evaluation_key == h.evaluation_key
            )
        ).first()
        if found is not None:
            if found.manifest_digest == p.manifest_digest:
                return WriteResult("already recorded", found.id, 1, p.manifest_digest)
            raise RecordConflictError(
                f"evaluation of {h.model_name} (key {h.evaluation_key[:16]}: model, policy, reference and seeds) "
                f"is already recorded with other results (manifest {found.manifest_digest[:16]}, now "
                f"{p.manifest_digest[:16]}); nothing was written. Give meta['evaluation_id'] to record another."
            )
        policy_id = self._policy_id(conn, h.policy_name, h.policy_sha256, p.policy_text)
        now = utc_now()
        dialect = self.engines.dialect
        values = evaluation_values(
            h, model_id=model_id, policy_id=policy_id, recorded_at=now, digest=p.manifest_digest
        )
        values.update(created_at=dialect.bind_datetime(h.created_at), recorded_at=dialect.bind_datetime(now))
        pk = conn.execute(_EVAL.insert().values(**values).returning(_EVAL.c.id)).scalar_one()
        dialect.insert_rows(conn, "evaluation_result", pk, p.rows, parent="evaluation_pk")
        append_entry(
            conn,
            kind=EVALUATION,
            manifest=p.manifest,
            manifest_digest=p.manifest_digest,
            recorded_at=now,
            record=(pk, f"{h.model_name} {h.evaluation_key}"),
        )
        return WriteResult("written", pk, 1, p.manifest_digest)
