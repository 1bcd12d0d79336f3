"""``GovernanceStore``: exactly-once, tamper-evident run records on SQLite or PostgreSQL.

Usage::

    store = GovernanceStore("postgresql+psycopg://writer@db/certrisk")   # or a sqlite:/// URL
    store.upgrade()                       # Alembic upgrade head + the NIST AI RMF catalog
    result = store.write_run(record)      # WriteResult(status, run_pk, revision, manifest_digest)
    store.list_runs(model="digits", tier="high")
    store.verify()                        # VerifyReport(ok, first_bad_run, first_bad_row, message)

Writes. ``write_run`` validates the whole payload first (nothing is written on bad input), then
writes the run in one transaction: the run row, every per-sample and per-test row by bulk insert
(``executemany`` on SQLite, ``COPY`` in text blocks on PostgreSQL) and one audit-chain entry. The key is
(dag_id, run_id): writing the same payload again returns status "already recorded" and changes
nothing; a different payload raises ``RecordConflictError`` unless ``supersede=True``, which
appends revision n+1 linked to revision n (queries show the current revision). Two writers racing
on one key are resolved by the unique constraint on (dag_id, run_id, revision): the loser
re-reads and reports "already recorded" (same payload) or the conflict.

Models. By default a write registers the model version (name, sha256) it names. With
``require_registered_model=True`` a write for a model version nobody registered with
``register_model`` is refused (``StoreError``), so only approved model versions get records.

Backends. SQLite (the default, a file under ``CERTRISK_HOME``) is single-user: it has no roles,
so every process that can open the file can read everything, certificates included, and can edit
it; the audit chain still detects such edits. Write transactions take SQLite's write lock up front
(``BEGIN IMMEDIATE``), so concurrent writers queue. PostgreSQL (psycopg 3) is the production
backend, with access tiers from ``certrisk.governance.roles``.

Errors. Bad input: ``InputError``. An unreachable database (or a locked SQLite file past the
timeout): ``StoreUnavailableError`` (retryable), whose message names the URL with the password
masked. A missing schema or a refused permission: ``StoreError``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from itertools import repeat
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from certrisk.governance import queries
from certrisk.governance.chain import GENESIS, VerifyReport, entry_hash
from certrisk.governance.payload import PreparedRun, RunRecord, prepare
from certrisk.schemas.columns import (
    CERTIFICATE_COLUMNS,
    DRIFT_TEST_COLUMNS,
    RULE_EXPECTATION_COLUMNS,
    RULE_SAMPLE_COLUMNS,
    SAMPLE_RISK_COLUMNS,
    empty_frame,
)
from certrisk.schemas.errors import InputError, RecordConflictError, StoreError, StoreUnavailableError
from certrisk.schemas.rmf import catalog
from certrisk.schemas.settings import default_db_url
from certrisk.schemas.tables import (
    RMF_EVIDENCE_COLUMNS,
    ROW_TABLES,
    AuditEntry,
    Model,
    PipelineRun,
    Policy,
    RmfSubcategory,
)

#: pg_advisory_xact_lock key that serializes appends to the audit chain ("certrisk" in ASCII).
CHAIN_LOCK_KEY = 0x6365727472697368 - (1 << 63)
_WRITE_ATTEMPTS = 3
#: Rows per COPY write on PostgreSQL (bounds the text held in memory at once).
_COPY_BLOCK_ROWS = 20_000

_RUN = PipelineRun.__table__
_AUDIT = AuditEntry.__table__
_MODEL = Model.__table__
_POLICY = Policy.__table__

_FRAME_SPECS = {
    "sample_risk": SAMPLE_RISK_COLUMNS,
    "certificate": CERTIFICATE_COLUMNS,
    "rule_sample": RULE_SAMPLE_COLUMNS,
    "rule_result": RULE_EXPECTATION_COLUMNS,
    "drift_test": DRIFT_TEST_COLUMNS,
}


@dataclass(frozen=True)
class WriteResult:
    """``status`` is "written", "already recorded" or "superseded"."""

    status: str
    run_pk: int
    revision: int
    manifest_digest: str


def mask_url(url: str | sa.URL) -> str:
    """The URL with its password replaced by ***."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return "<unparseable database URL>"


def migrations_config(connection=None):
    """An Alembic Config for the packaged migrations (works from an installed package)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("certrisk.governance") / "migrations"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


class GovernanceStore:
    """The governance database at ``url`` (default: ``certrisk.schemas.settings.default_db_url()``).

    The constructor only stores its arguments; the first operation connects.
    """

    def __init__(self, url: str | None = None, *, require_registered_model: bool = False, echo: bool = False):
        self.url = url or default_db_url()
        self.require_registered_model = require_registered_model
        self.echo = echo
        self._read_engine: sa.Engine | None = None
        self._write_engine: sa.Engine | None = None

    # ------------------------------------------------------------------ connections
    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    @property
    def dialect(self) -> str:
        return sa.make_url(self.url).get_backend_name()

    def _make_engine(self, *, immediate: bool) -> sa.Engine:
        url = sa.make_url(self.url)
        if url.get_backend_name() == "sqlite":
            if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
                try:
                    Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreUnavailableError(
                        f"governance database {self.masked_url} is unavailable: {exc}"
                    ) from exc
            engine = sa.create_engine(url, echo=self.echo, connect_args={"timeout": 60})

            @sa.event.listens_for(engine, "connect")
            def _on_connect(dbapi_conn, _record):
                dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA journal_mode=WAL")
                cur.close()

            @sa.event.listens_for(engine, "begin")
            def _on_begin(conn):
                conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

            return engine
        connect_args = {"connect_timeout": 10} if url.get_backend_name() == "postgresql" else {}
        return sa.create_engine(url, echo=self.echo, pool_pre_ping=True, connect_args=connect_args)

    @property
    def engine(self) -> sa.Engine:
        """The engine for reads (and, on PostgreSQL, writes)."""
        if self._read_engine is None:
            self._read_engine = self._make_engine(immediate=False)
        return self._read_engine

    @property
    def write_engine(self) -> sa.Engine:
        if self._write_engine is None:
            self._write_engine = (
                self.engine if self.dialect != "sqlite" else self._make_engine(immediate=True)
            )
        return self._write_engine

    def dispose(self) -> None:
        for engine in {self._read_engine, self._write_engine} - {None}:
            engine.dispose()
        self._read_engine = self._write_engine = None

    @contextlib.contextmanager
    def _errors(self, action: str):
        """Translate driver errors into the certrisk hierarchy, naming the masked URL."""
        try:
            yield
        except sa_exc.IntegrityError:
            raise
        except sa_exc.DBAPIError as exc:
            text = str(exc.orig) if exc.orig is not None else str(exc)
            low = text.lower()
            if "no such table" in low or ("relation" in low and "does not exist" in low):
                raise StoreError(
                    f"{action}: the governance schema is missing in {self.masked_url} "
                    f"(run `certrisk db upgrade --db URL`): {text.strip()}"
                ) from exc
            if "permission denied" in low:
                raise StoreError(f"{action}: permission denied in {self.masked_url}: {text.strip()}") from exc
            if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError) or exc.connection_invalidated:
                raise StoreUnavailableError(
                    f"{action}: governance database {self.masked_url} is unavailable: {text.strip()}"
                ) from exc
            raise StoreError(f"{action} failed on {self.masked_url}: {text.strip()}") from exc

    # ------------------------------------------------------------------ schema
    def upgrade(self, revision: str = "head") -> None:
        """Apply the Alembic migrations up to ``revision`` and load the NIST AI RMF catalog."""
        from alembic import command

        with self._errors("upgrade"), self.write_engine.begin() as conn:
            command.upgrade(migrations_config(conn), revision)
            self._load_catalog(conn)

    def _load_catalog(self, conn) -> None:
        table = RmfSubcategory.__table__
        present = set(conn.execute(sa.select(table.c.id)).scalars())
        rows = [
            {
                "id": s.id,
                "function": s.function,
                "category": s.category,
                "text": s.text,
                "category_text": s.category_text,
            }
            for s in catalog().values()
            if s.id not in present
        ]
        if rows:
            conn.execute(table.insert(), rows)

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self._errors("current_revision"), self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    # ------------------------------------------------------------------ models
    def register_model(
        self, name: str, sha256: str, *, format: str | None = None, description: str | None = None
    ) -> int:
        """Register a model version (idempotent); returns its id."""
        if not name or not isinstance(sha256, str) or len(sha256) != 64:
            raise InputError(
                f"register_model: need a name and a 64-hex-digit sha256, got {name!r}, {sha256!r}"
            )
        for attempt in range(_WRITE_ATTEMPTS):
            try:
                with self._errors("register_model"), self.write_engine.begin() as conn:
                    return self._model_id(conn, name, sha256, format, description, create=True)
            except sa_exc.IntegrityError:
                if attempt == _WRITE_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _model_id(self, conn, name, sha256, format, description=None, *, create: bool) -> int:
        found = conn.execute(
            sa.select(_MODEL.c.id).where(_MODEL.c.name == name, _MODEL.c.sha256 == sha256)
        ).scalar_one_or_none()
        if found is not None:
            return found
        if not create:
            raise StoreError(
                f"model {name!r} version sha256={sha256} is not registered in {self.masked_url}; "
                "register it with GovernanceStore.register_model (require_registered_model=True refuses "
                "runs of unregistered model versions)"
            )
        values = {
            "name": name,
            "sha256": sha256,
            "format": format,
            "description": description,
            "registered_at": _now(),
        }
        return conn.execute(_MODEL.insert().values(**values).returning(_MODEL.c.id)).scalar_one()

    def _policy_id(self, conn, name, sha256, text) -> int:
        found = conn.execute(
            sa.select(_POLICY.c.id).where(_POLICY.c.name == name, _POLICY.c.sha256 == sha256)
        ).scalar_one_or_none()
        if found is not None:
            return found
        values = {"name": name, "sha256": sha256, "text": text, "recorded_at": _now()}
        return conn.execute(_POLICY.insert().values(**values).returning(_POLICY.c.id)).scalar_one()

    # ------------------------------------------------------------------ write
    def write_run(self, record: RunRecord, *, supersede: bool = False) -> WriteResult:
        """Record one run exactly once (see the module docstring for the semantics)."""
        prepared = prepare(record)
        last_error: Exception | None = None
        for _attempt in range(_WRITE_ATTEMPTS):
            try:
                with self._errors("write_run"), self.write_engine.begin() as conn:
                    return self._write(conn, prepared, supersede)
            except sa_exc.IntegrityError as exc:
                # A concurrent writer won the race for this key (or for a new model/policy row):
                # the next attempt sees its committed rows.
                last_error = exc
        raise StoreError(
            f"write_run {record.dag_id}/{record.run_id}: integrity error after {_WRITE_ATTEMPTS} attempts "
            f"on {self.masked_url}: {getattr(last_error, 'orig', last_error)}"
        ) from last_error

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
        model_id = self._model_id(
            conn, r.model_name, r.model_sha256, r.model_format, create=not self.require_registered_model
        )
        policy_id = self._policy_id(conn, r.policy_name, r.policy_sha256, r.policy_text)
        now = _now()
        h = p.header
        run_pk = conn.execute(
            _RUN.insert()
            .values(
                dag_id=r.dag_id,
                run_id=r.run_id,
                revision=revision,
                supersedes_id=supersedes,
                batch_id=r.batch_id,
                created_at=p.created_at,
                recorded_at=now,
                model_id=model_id,
                policy_id=policy_id,
                package_version=r.package_version,
                n_samples=h["n_samples"],
                abstention_rate=h["abstention_rate"],
                mean_risk=h["mean_risk"],
                tier=h["tier"],
                drift=h["drift"],
                summary=p.summary,
                manifest_digest=p.manifest_digest,
            )
            .returning(_RUN.c.id)
        ).scalar_one()
        self._bulk_insert(conn, run_pk, p)
        self._append_audit(conn, run_pk, r.dag_id, r.run_id, revision, p, now)
        return WriteResult(status, run_pk, revision, p.manifest_digest)

    def _bulk_insert(self, conn, run_pk: int, p: PreparedRun) -> None:
        dbapi = conn.connection.driver_connection
        pg = conn.dialect.name == "postgresql"
        for name, table, _spec in ROW_TABLES:
            rows_in = p.tables[name]
            if rows_in.n == 0:
                continue
            cols = ["run_pk", "row_no", *rows_in.columns, "row_digest"]
            quoted = ", ".join(f'"{c}"' for c in cols)
            if pg:
                # COPY text format, a block of rows per write: one round of Python string joins per
                # block instead of one driver call per row.
                fields = rows_in.copy_columns()
                row_nos = list(map(str, range(rows_in.n)))
                with dbapi.cursor() as cur, cur.copy(f"COPY {table.name} ({quoted}) FROM STDIN") as copy:
                    for lo in range(0, rows_in.n, _COPY_BLOCK_ROWS):
                        hi = lo + _COPY_BLOCK_ROWS
                        block = zip(
                            repeat(str(run_pk)),
                            row_nos[lo:hi],
                            *(f[lo:hi] for f in fields),
                            rows_in.digests[lo:hi],
                        )
                        copy.write(("\n".join(map("\t".join, block)) + "\n").encode("utf-8"))
            else:
                rows = zip(
                    repeat(run_pk), range(rows_in.n), *rows_in.insert_columns(), rows_in.digests, strict=False
                )
                marks = ", ".join("?" * len(cols))
                cur = dbapi.cursor()
                try:
                    cur.executemany(f"INSERT INTO {table.name} ({quoted}) VALUES ({marks})", rows)
                finally:
                    cur.close()

    def _append_audit(self, conn, run_pk, dag_id, run_id, revision, p: PreparedRun, now) -> None:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": CHAIN_LOCK_KEY})
        head = conn.execute(
            sa.select(_AUDIT.c.seq, _AUDIT.c.entry_hash).order_by(_AUDIT.c.seq.desc()).limit(1)
        ).first()
        seq, prev = (head.seq + 1, head.entry_hash) if head is not None else (1, GENESIS)
        entry = {
            "prev_hash": prev,
            "seq": seq,
            "dag_id": dag_id,
            "run_id": run_id,
            "revision": revision,
            "manifest_digest": p.manifest_digest,
            "manifest": p.manifest,
            "recorded_at": now,
        }
        conn.execute(_AUDIT.insert().values(**entry, run_pk=run_pk, entry_hash=entry_hash(**entry)))

    # ------------------------------------------------------------------ read
    def get_run(self, dag_id: str, run_id: str, revision: int | None = None) -> dict:
        """The recorded run (current revision unless ``revision``): header fields, ``summary`` and
        frames ``sample_risk``, ``certificates``, ``rule_samples``, ``rule_expectations``,
        ``drift_tests`` (spec columns and dtypes) and ``rmf_evidence`` (list of tuples).

        Reads raw tables: engineer and auditor roles only on PostgreSQL.
        """
        with self._errors("get_run"), self.engine.connect() as conn:
            q = (
                sa.select(
                    _RUN,
                    _MODEL.c.name.label("model_name"),
                    _MODEL.c.sha256.label("model_sha256"),
                    _MODEL.c.format.label("model_format"),
                    _POLICY.c.name.label("policy_name"),
                    _POLICY.c.sha256.label("policy_sha256"),
                    _POLICY.c.text.label("policy_text"),
                )
                .join(_MODEL, _MODEL.c.id == _RUN.c.model_id)
                .join(_POLICY, _POLICY.c.id == _RUN.c.policy_id)
                .where(_RUN.c.dag_id == dag_id, _RUN.c.run_id == run_id)
            )
            q = (
                q.where(_RUN.c.revision == revision)
                if revision is not None
                else q.order_by(_RUN.c.revision.desc())
            )
            run = conn.execute(q.limit(1)).mappings().first()
            if run is None:
                rev = f" revision {revision}" if revision is not None else ""
                raise StoreError(f"no recorded run {dag_id}/{run_id}{rev} in {self.masked_url}")
            out = dict(run)
            out["run_pk"] = out.pop("id")
            out["created_at"] = _as_utc(out["created_at"])
            out["recorded_at"] = _as_utc(out["recorded_at"])
            keys = {
                "sample_risk": "sample_risk",
                "certificate": "certificates",
                "rule_sample": "rule_samples",
                "rule_result": "rule_expectations",
                "drift_test": "drift_tests",
            }
            for name, table, spec in ROW_TABLES:
                cols = [table.c[c] for c in spec]
                rows = conn.execute(
                    sa.select(*cols).where(table.c.run_pk == out["run_pk"]).order_by(table.c.row_no)
                )
                data = rows.all()
                if name == "rmf_evidence":
                    out["rmf_evidence"] = [tuple(r) for r in data]
                    continue
                frame = (
                    pd.DataFrame([tuple(r) for r in data], columns=list(spec)) if data else empty_frame(spec)
                )
                if data:
                    for col, dtype in spec.items():
                        if dtype != "object":
                            frame[col] = frame[col].astype(dtype)
                out[keys[name]] = frame
            return out

    def list_runs(self, model=None, since=None, until=None, tier=None, **kw) -> pd.DataFrame:
        """Recorded runs, newest first; see ``queries.list_runs`` for the filters and columns."""
        with self._errors("list_runs"), self.engine.connect() as conn:
            return queries.list_runs(conn, model=model, since=since, until=until, tier=tier, **kw)

    def samples(self, run_id: str, tier=None, factor=None, **kw) -> pd.DataFrame:
        """Per-sample tiers and factors of a run's current revision (no certificate values), riskiest
        first; at most ``limit`` rows (default ``queries.DEFAULT_SAMPLE_LIMIT``, None for all)."""
        with self._errors("samples"), self.engine.connect() as conn:
            return queries.samples(conn, run_id, tier=tier, factor=factor, **kw)

    def drift_tests(self, run_id: str, **kw) -> pd.DataFrame:
        """A run's drift tests (current revision); see ``queries.drift_tests``."""
        with self._errors("drift_tests"), self.engine.connect() as conn:
            return queries.drift_tests(conn, run_id, **kw)

    def rule_results(self, run_id: str, **kw) -> pd.DataFrame:
        """A run's per-expectation rule outcomes (current revision); see ``queries.rule_results``."""
        with self._errors("rule_results"), self.engine.connect() as conn:
            return queries.rule_results(conn, run_id, **kw)

    def method_costs(self, run_id: str, **kw) -> pd.DataFrame:
        """Per-method cost of a run's certification (aggregates only); see ``queries.method_costs``."""
        with self._errors("method_costs"), self.engine.connect() as conn:
            return queries.method_costs(conn, run_id, **kw)

    def trend(self, model: str | None = None, days: int = 30) -> pd.DataFrame:
        """Daily abstention rate and mean risk per model over the last ``days`` days (UTC)."""
        with self._errors("trend"), self.engine.connect() as conn:
            return queries.trend(conn, model=model, days=days)

    def rmf_coverage(self, model: str | None = None) -> pd.DataFrame:
        """All 72 NIST AI RMF subcategories with the evidence recorded for ``model``'s current runs."""
        with self._errors("rmf_coverage"), self.engine.connect() as conn:
            return queries.rmf_coverage(conn, model=model)

    def export_compliance_csv(self, path, model=None, since=None, until=None) -> int:
        """Write the compliance view of every current run's samples to CSV; returns the row count."""
        with self._errors("export_compliance_csv"), self.engine.connect() as conn:
            return queries.export_compliance_csv(conn, path, model=model, since=since, until=until)

    def verify(self, expected_head: str | None = None) -> VerifyReport:
        """Recompute every digest and link of the audit chain; see ``certrisk.governance.verify``."""
        from certrisk.governance.verify import verify_store

        with self._errors("verify"), self.engine.connect() as conn:
            return verify_store(conn, expected_head=expected_head)


def _now() -> datetime:
    return datetime.now(UTC)


def _as_utc(value):
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value


__all__ = [
    "RMF_EVIDENCE_COLUMNS",
    "GovernanceStore",
    "RunRecord",
    "WriteResult",
    "mask_url",
    "migrations_config",
]
