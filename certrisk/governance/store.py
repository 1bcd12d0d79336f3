"""``GovernanceStore``: exactly-once, tamper-evident run records on SQLite or PostgreSQL.

Usage::

    store = GovernanceStore("postgresql+psycopg://writer@db/certrisk")   # or a sqlite:/// URL
    store.upgrade()                       # Alembic upgrade head + the NIST AI RMF catalog
    result = store.write_run(record)      # WriteResult(status, run_pk, revision, manifest_digest)
    store.list_runs(model="digits", tier="high")
    store.write_evaluation("digits", policy_text, reference_sha256, frame, meta)
    store.verify()                        # VerifyReport(ok, first_bad_run, first_bad_row, message)
    store.verify(record=True)             # ... and store the result (what pages show: last_verify())
    store.verify_run("dag", "run-1")      # a bounded check of one run and its reviews
    store.record_review(dag_id="dag", run_id="run-1", decision="approve", reviewer="alice")
    store.reviews(run_id="run-1")         # the recorded decisions, newest first

Writes. ``write_run`` validates the whole payload first (nothing is written on bad input; every
summary figure the rows determine is derived from them, and a supplied one that disagrees is
refused), then writes the run in one transaction: the run row, every per-sample and per-test row
by bulk insert (``executemany`` on SQLite, ``COPY`` in text blocks on PostgreSQL) and one
audit-chain entry. The key is (dag_id, run_id): writing the same payload again returns status
"already recorded" and changes nothing; a different payload raises ``RecordConflictError`` unless
``supersede=True`` with a ``reason``, which appends revision n+1 linked to revision n (queries
show the current revision, marked revised with the previous tier, who and why; on PostgreSQL
only the reviser role may). Two writers racing on one key are resolved by the unique constraint
on (dag_id, run_id, revision): the loser re-reads and reports "already recorded" (same payload)
or the conflict. ``write_evaluation`` records a measured-detection evaluation the same way
(``certrisk.governance.evaluations``).

Reviews. ``record_review`` appends a person's decision (approve, reject, escalate) on a recorded
run as a review row with its own audit entry (kind "review"), exactly once per ``review_key``
(``certrisk.governance.reviews``); ``verify`` covers it. ``list_runs`` states each run's review
state (``facts.review_state``): the latest decision, or "pending" where the batch summary's
``review_at_tier`` (the policy's ``review.at_tier``, recorded with the run) is reached and nobody
decided yet.

Verify results. ``verify(record=True)`` stores its result (``certrisk.governance.verifications``:
not chained); ``last_verify`` reads the newest. ``verify_run`` checks one run and its reviews
against their entries and the entries beside them (``certrisk.governance.verify_run``), bounded
by the run's size, for pages that may not walk the whole chain.

Models. By default a write registers the model version (name, sha256) it names. With
``require_registered_model=True`` a write for a model version nobody registered with
``register_model`` is refused (``StoreError``), so only approved model versions get records.

Backends. SQLite (the default, a file under ``CERTRISK_HOME``) is single-user: it has no roles,
so every process that can open the file can read everything, certificates included, and can edit
it; the audit chain still detects such edits. Write transactions take SQLite's write lock up front
(``BEGIN IMMEDIATE``), so concurrent writers queue. PostgreSQL (psycopg 3) is the production
backend, with access tiers from ``certrisk.governance.roles``. What differs between the two lives
in one dialect object (``certrisk.governance.engine``).

Layout. This class is a facade: ``engine`` (engines, connections, dialects, error translation),
``payload`` and ``summary_figures`` (validation into canonical rows), ``evaluations``
(evaluation records), ``write`` and ``audit_log`` (the write transaction, the chain appends),
``queries`` (views, compliance-visible), ``raw_reads`` (raw tables), ``reviews`` (review
decisions), ``verifications`` (stored verify results) and ``verify`` / ``verify_run`` (the audit
chain, whole or one run's) do the work. ``connect(action)`` hands callers such as ``certrisk.reports`` a read connection for the
functions of ``queries`` and ``raw_reads``.

Errors. Bad input: ``InputError``. An unreachable database (or a locked SQLite file past the
timeout): ``StoreUnavailableError`` (retryable), whose message names the URL with the password
masked. A missing schema or a refused permission: ``StoreError``.
"""

from __future__ import annotations

import dataclasses
import getpass
import time
from importlib import resources

import pandas as pd
import sqlalchemy as sa

from certrisk.governance import queries, reviews, verifications
from certrisk.governance.audit_log import chain_existing_records
from certrisk.governance.chain import VerifyReport
from certrisk.governance.engine import StoreEngines, mask_url
from certrisk.governance.evaluations import latest_evaluation, prepare_evaluation
from certrisk.governance.payload import RunRecord, prepare
from certrisk.governance.raw_reads import read_run
from certrisk.governance.roles import apply_grants, tiers_granted
from certrisk.governance.verify import verify_store
from certrisk.governance.verify_run import verify_one_run
from certrisk.governance.write import RunWriter, WriteResult
from certrisk.schemas.clock import utc_now
from certrisk.schemas.errors import RunNotFoundError, StoreError
from certrisk.schemas.rmf import catalog
from certrisk.schemas.settings import default_db_url
from certrisk.schemas.tables import RMF_EVIDENCE_COLUMNS, RmfSubcategory


def migrations_config(connection=None):
    """An Alembic Config for the packaged migrations (works from an installed package)."""
    from alembic.config import Config  # alembic only for schema changes: not on every import

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("certrisk.governance") / "migrations"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def schema_head() -> str:
    """The newest migration revision this package ships (what ``upgrade()`` reaches)."""
    from alembic.script import ScriptDirectory  # as in migrations_config

    return ScriptDirectory.from_config(migrations_config()).get_current_head()


#: The revision from which model and policy rows have audit entries of their own.
RECORDS_CHAINED_FROM = "0005"


def _load_catalog(conn) -> None:
    """Insert the NIST AI RMF subcategories missing from ``rmf_subcategory``."""
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


class GovernanceStore:
    """The governance database at ``url`` (default: ``certrisk.schemas.settings.default_db_url()``).

    The constructor only stores its arguments; the first operation connects.
    """

    def __init__(self, url: str | None = None, *, require_registered_model: bool = False, echo: bool = False):
        self.url = url or default_db_url()
        self.require_registered_model = require_registered_model
        self.echo = echo
        self._engines = StoreEngines(self.url, echo=echo)

    # ------------------------------------------------------------------ connections
    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    @property
    def dialect(self) -> str:
        """The backend's name: "sqlite", "postgresql", ..."""
        return sa.make_url(self.url).get_backend_name()

    @property
    def engine(self) -> sa.Engine:
        """The engine for reads (and, on PostgreSQL, writes)."""
        return self._engines.read

    @property
    def write_engine(self) -> sa.Engine:
        return self._engines.write

    def dispose(self) -> None:
        self._engines.dispose()

    def connect(self, action: str = "read"):
        """A context manager yielding a read connection for ``queries`` and ``raw_reads``
        functions; driver errors inside it become ``StoreError`` / ``StoreUnavailableError``
        naming ``action`` and the masked URL."""
        return self._engines.connect(action)

    # ------------------------------------------------------------------ schema
    def upgrade(self, revision: str = "head") -> None:
        """Apply the Alembic migrations up to ``revision`` and load the NIST AI RMF catalog.

        Crossing 0005 chains the model and policy rows written before it (the chain head
        changes: publish the new one). On PostgreSQL, where ``certrisk db grant`` ran before, the
        access tiers are applied again, so new tables and views are covered and a role loses
        what a revision takes from it (0005: the writer's right to supersede)."""
        from alembic import command  # alembic only for schema changes: not on every import
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        tiers = self._engines.dialect.has_access_tiers
        with self._engines.begin("upgrade") as conn:
            before = MigrationContext.configure(conn).get_current_revision()
            regrant = tiers and before is not None and tiers_granted(conn)
            config = migrations_config(conn)
            command.upgrade(config, revision)
            _load_catalog(conn)
            after = MigrationContext.configure(conn).get_current_revision()
            script = ScriptDirectory.from_config(config)
            if (
                before is not None
                and after is not None
                and _crosses(script, before, after, RECORDS_CHAINED_FROM)
            ):
                chain_existing_records(conn, utc_now())
            if regrant:  # new tables and views, and what a revision takes from a role
                apply_grants(conn)

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext  # as in upgrade

        with self.connect("current_revision") as conn:
            return MigrationContext.configure(conn).get_current_revision()

    # ------------------------------------------------------------------ writes
    def _writer(self) -> RunWriter:
        return RunWriter(self._engines, require_registered_model=self.require_registered_model)

    def register_model(
        self, name: str, sha256: str, *, format: str | None = None, description: str | None = None
    ) -> int:
        """Register a model version (idempotent); returns its id."""
        return self._writer().register_model(name, sha256, format=format, description=description)

    def write_run(
        self, record: RunRecord, *, supersede: bool = False, reason: str | None = None
    ) -> WriteResult:
        """Record one run exactly once (see the module docstring for the semantics). ``supersede``
        with a ``reason`` records a different payload as a new revision."""
        return self._writer().write(prepare(record), supersede=supersede, reason=reason)

    def write_evaluation(
        self, model: str, policy: str, reference_sha256: str, frame, meta: dict
    ) -> WriteResult:
        """Record one evaluation of ``model``'s measured detection exactly once.

        ``policy``: the policy file's text. ``frame``: one row per attack family and budget
        (``certrisk.schemas.columns.EVALUATION_COLUMNS``). ``meta``: ``model_sha256``, ``n_clean``,
        ``created_at`` and ``seeds`` (or ``seed``) are required; ``policy_sha256`` and
        ``reference_sha256`` are checked when given; ``evaluation_id`` joins the key; everything
        else is stored as metadata. See ``certrisk.governance.evaluations``.
        """
        prepared = prepare_evaluation(model, policy, reference_sha256, frame, meta)
        return self._writer().write_evaluation(prepared)

    # ------------------------------------------------------------------ reads
    def get_run(self, dag_id: str, run_id: str, revision: int | None = None) -> dict:
        """The recorded run (current revision unless ``revision``): header fields, ``summary`` and
        frames ``sample_risk``, ``certificates``, ``rule_samples``, ``rule_expectations``,
        ``drift_tests`` (spec columns and dtypes) and ``rmf_evidence`` (list of tuples).

        Reads raw tables: engineer and auditor roles only on PostgreSQL.
        """
        with self.connect("get_run") as conn:
            run = read_run(conn, dag_id, run_id, revision)
        if run is None:
            rev = f" revision {revision}" if revision is not None else ""
            raise StoreError(f"no recorded run {dag_id}/{run_id}{rev} in {self.masked_url}")
        return run

    def list_runs(self, model=None, since=None, until=None, tier=None, **kw) -> pd.DataFrame:
        """Recorded runs, newest first; see ``queries.list_runs`` for the filters and columns."""
        with self.connect("list_runs") as conn:
            return queries.list_runs(conn, model=model, since=since, until=until, tier=tier, **kw)

    def samples(self, run_id: str, tier=None, factor=None, **kw) -> pd.DataFrame:
        """Per-sample tiers and factors of a run's current revision (no certificate values), riskiest
        first; at most ``limit`` rows (default ``queries.DEFAULT_SAMPLE_LIMIT``, None for all)."""
        with self.connect("samples") as conn:
            return queries.samples(conn, run_id, tier=tier, factor=factor, **kw)

    def drift_tests(self, run_id: str, **kw) -> pd.DataFrame:
        """A run's drift tests (current revision); see ``queries.drift_tests``."""
        with self.connect("drift_tests") as conn:
            return queries.drift_tests(conn, run_id, **kw)

    def rule_results(self, run_id: str, **kw) -> pd.DataFrame:
        """A run's per-expectation rule outcomes (current revision); see ``queries.rule_results``."""
        with self.connect("rule_results") as conn:
            return queries.rule_results(conn, run_id, **kw)

    def method_costs(self, run_id: str, **kw) -> pd.DataFrame:
        """Per-method cost of a run's certification (aggregates only); see ``queries.method_costs``."""
        with self.connect("method_costs") as conn:
            return queries.method_costs(conn, run_id, **kw)

    def trend(self, model: str | None = None, days: int = 30) -> pd.DataFrame:
        """Daily abstention rate and mean risk per model over the last ``days`` days (UTC)."""
        with self.connect("trend") as conn:
            return queries.trend(conn, model=model, days=days)

    def latest_evaluation(self, model: str) -> dict | None:
        """The newest recorded evaluation of ``model`` (compliance views), or None."""
        with self.connect("latest_evaluation") as conn:
            return latest_evaluation(conn, model)

    def rmf_coverage(self, model: str | None = None) -> pd.DataFrame:
        """All 72 NIST AI RMF subcategories with the evidence recorded for ``model``'s current runs."""
        with self.connect("rmf_coverage") as conn:
            return queries.rmf_coverage(conn, model=model)

    def export_compliance_csv(self, path, model=None, since=None, until=None) -> int:
        """Write the compliance view of every current run's samples to CSV; returns the row count."""
        with self.connect("export_compliance_csv") as conn:
            return queries.export_compliance_csv(conn, path, model=model, since=since, until=until)

    def verify(
        self, expected_head: str | None = None, *, record: bool = False, verified_by: str | None = None
    ) -> VerifyReport:
        """Recompute every digest and link of the audit chain; see ``certrisk.governance.verify``.

        ``record=True`` stores the result (``record_verification``; ``verified_by`` defaults to
        the operating-system user). Storing is secondary to verifying: where it fails (a role
        without INSERT on ``verification``) the report comes back with the reason appended to its
        message instead of raising."""
        started = time.perf_counter()
        with self.connect("verify") as conn:
            report = verify_store(conn, expected_head=expected_head)
        if not record:
            return report
        seconds = time.perf_counter() - started
        try:
            self._store_verification(report, verified_by or getpass.getuser(), expected_head, seconds)
        except StoreError as exc:
            return dataclasses.replace(report, message=f"{report.message} (result not stored: {exc})")
        return report

    def _store_verification(self, report, verified_by, expected_head, seconds) -> None:
        with self._engines.begin("record_verification") as conn:
            verifications.insert_verification(
                conn, report, verified_by, expected_head=expected_head, seconds=seconds
            )

    def record_verification(self, report: VerifyReport, verified_by: str) -> None:
        """Store a ``verify`` result (``certrisk.governance.verifications``): what pages state as
        the last verify. Raises ``StoreError`` where the connection may not insert it."""
        self._store_verification(report, verified_by, None, None)

    def last_verify(self) -> dict | None:
        """The newest stored verify result (v_verification): verified_at (aware UTC), verified_by,
        recorded_by (the database login on PostgreSQL), ok, head, expected_head, runs_checked,
        rows_checked, first_bad_run, first_bad_row, message, seconds; None when none is stored."""
        with self.connect("last_verify") as conn:
            return verifications.last_verify(conn)

    def verify_run(self, dag_id: str, run_id: str) -> VerifyReport:
        """A bounded verify of one run: every revision's rows and audit entry (with the links to
        the entries beside it) and the run's reviews; not the rest of the chain. Reads raw tables
        and the audit log (the writer, reviser and auditor roles on PostgreSQL). Raises
        ``RunNotFoundError`` when the run is not recorded."""
        with self.connect("verify_run") as conn:
            try:
                return verify_one_run(conn, dag_id, run_id)
            except RunNotFoundError as exc:
                raise RunNotFoundError(f"{exc} in {self.masked_url}") from None

    # ------------------------------------------------------------------ reviews
    def record_review(
        self, *, dag_id: str | None, run_id: str, decision: str, reviewer: str, comment: str = "",
        decided_at=None, source: str = "cli", review_key: str | None = None,
    ) -> dict:  # fmt: skip
        """Record a reviewer's decision on the current revision of a recorded run, append-only,
        with its audit entry (see ``certrisk.governance.reviews``).

        ``decision``: "approve", "reject" or "escalate". ``reviewer``: the Airflow user (id or
        name), or "system" with ``source="timeout"``. ``decided_at``: when it was decided (aware
        or UTC datetime, ISO text; default now). ``source``: "airflow-hitl", "cli" or "timeout".
        ``review_key``: idempotency key (one per decision: the same key again records nothing).
        ``dag_id`` None: the run_id must name one DAG's run.

        Returns a dict: status ("recorded" or "already recorded"), review_pk, dag_id, run_id,
        revision, decision, comment, reviewer, decided_at, source, recorded_at (aware UTC pandas
        Timestamps), recorded_by, review_key, database (the masked URL). Raises ``InputError`` for
        a bad decision, source or reviewer, ``RunNotFoundError`` naming the run when it is not
        recorded, ``RecordConflictError`` when the key records another decision; nothing is
        written then."""
        decision_ = reviews.prepare_review(
            dag_id=dag_id, run_id=run_id, decision=decision, reviewer=reviewer, comment=comment,
            decided_at=decided_at, source=source, review_key=review_key,
        )  # fmt: skip
        try:
            return reviews.record_review(self._engines, decision_)
        except RunNotFoundError as exc:
            raise RunNotFoundError(f"{exc} (database {self.masked_url})") from None

    def reviews(
        self, dag_id: str | None = None, run_id: str | None = None, *, limit: int | None = None
    ) -> pd.DataFrame:
        """Recorded review decisions (v_review), newest decision first: dag_id, run_id, revision,
        decision, comment, reviewer, decided_at, source, recorded_at, recorded_by, review_key,
        model."""
        with self.connect("reviews") as conn:
            return reviews.reviews(conn, dag_id=dag_id, run_id=run_id, limit=limit)


def _crosses(script, before: str, after: str, target: str) -> bool:
    """Whether an upgrade from ``before`` to ``after`` applied ``target``."""
    applied = {rev.revision for rev in script.iterate_revisions(after, before)}
    return target in applied


__all__ = [
    "RMF_EVIDENCE_COLUMNS",
    "GovernanceStore",
    "RunRecord",
    "WriteResult",
    "mask_url",
    "migrations_config",
]
