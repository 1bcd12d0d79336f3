"""Engines, connections and the differences between the governance backends.

``StoreEngines(url)`` creates the engines of one database URL on first use and hands out
connections whose driver errors become certrisk errors (``translate_errors``). Everything that
differs between SQLite and PostgreSQL lives in one ``Dialect`` object (``dialect_for``), so the
write path and the queries never ask which backend they run on:

============================  ==================================  ===================================
                              SQLite (``SqliteDialect``)          PostgreSQL (``PostgresDialect``)
============================  ==================================  ===================================
engines                       a read engine and a write engine    one engine for reads and writes,
                              whose transactions take the write   pre-pinged, 10 s connect timeout
                              lock up front (``BEGIN IMMEDIATE``),
                              WAL, foreign keys on, 60 s timeout
audit-chain appends           serialized by the write lock        ``pg_advisory_xact_lock``
bulk insert                   driver ``executemany``              ``COPY ... FROM STDIN`` in text
                                                                  blocks of ``COPY_BLOCK_ROWS`` rows
datetimes bound in queries    naive UTC (stored as naive text)    aware UTC (``timestamptz``)
dates bound in queries        ISO text                            ``date``
the one timestamp             text ``YYYY-MM-DD HH:MM:SS.ffffff``  ``timestamptz`` (an instant: one
representation                of the UTC time; any other           representation by construction)
                              spelling is tampering
who recorded a run revision   the operating-system user (SQLite   ``session_user``, filled by the
(``recorded_by``)             has no logins: not enforced)        column default; no role may insert
                                                                  it (``roles``)
============================  ==================================  ===================================

Both write JSON documents as their canonical text (``chain.canonical_json``, the engines'
``json_serializer``).

Any other backend gets the base ``Dialect``: one pre-pinged engine, ``executemany`` with the
driver's qmark parameters, aware datetimes.
"""

from __future__ import annotations

import contextlib
import getpass
from datetime import date, datetime
from itertools import repeat
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from certrisk.governance.chain import canonical_json
from certrisk.governance.payload import TableRows
from certrisk.schemas.clock import as_utc
from certrisk.schemas.errors import StoreError, StoreUnavailableError

#: pg_advisory_xact_lock key that serializes appends to the audit chain ("certrisk" in ASCII).
CHAIN_LOCK_KEY = 0x6365727472697368 - (1 << 63)
#: Rows per COPY write on PostgreSQL (bounds the text held in memory at once).
COPY_BLOCK_ROWS = 20_000

_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_COPY_NULL = "\\N"
#: Driver messages (lower case) that mean a table or column the code expects is not there.
_SCHEMA_MISSING = ("no such table", "no such column", "has no column named")


def mask_url(url: str | sa.URL) -> str:
    """The URL with its password replaced by ***."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return "<unparseable database URL>"


@contextlib.contextmanager
def translate_errors(action: str, masked_url: str):
    """Translate driver errors raised inside the block into the certrisk hierarchy, naming
    ``action`` and the (masked) URL: a missing or outdated schema or a refused permission is a
    ``StoreError``,
    an unreachable database a ``StoreUnavailableError`` (retryable). ``IntegrityError`` passes
    through: the write path retries on it."""
    try:
        yield
    except sa_exc.IntegrityError:
        raise
    except sa_exc.DBAPIError as exc:
        text = (str(exc.orig) if exc.orig is not None else str(exc)).strip()
        low = text.lower()
        if any(m in low for m in _SCHEMA_MISSING) or _pg_missing(low):
            raise StoreError(
                f"{action}: the governance schema is missing or out of date in {masked_url} "
                f"(run `certrisk db upgrade --db URL`): {text}"
            ) from exc
        if "permission denied" in low:
            raise StoreError(f"{action}: permission denied in {masked_url}: {text}") from exc
        if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError) or exc.connection_invalidated:
            raise StoreUnavailableError(
                f"{action}: governance database {masked_url} is unavailable: {text}"
            ) from exc
        raise StoreError(f"{action} failed on {masked_url}: {text}") from exc


def _pg_missing(message: str) -> bool:
    """PostgreSQL's 'relation "x" does not exist' / 'column "y" (of relation "x") does not exist'."""
    return ("relation" in message or "column" in message) and "does not exist" in message


class TimestampProblem(ValueError):
    """A stored timestamp that is not one, or not in the backend's one representation."""


def sqlite_timestamp_text(value: datetime) -> str:
    """The one text SQLite stores for the instant ``value``: naive UTC with microseconds, as
    SQLAlchemy's SQLite DateTime writes it."""
    return as_utc(value).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


class Dialect:
    """How certrisk talks to one kind of database (see the module docstring's table)."""

    name = "generic"
    #: Whether writes go through the read engine (False: a separate write engine).
    writes_on_read_engine = True
    #: Whether the backend has the roles of ``certrisk.governance.roles`` (access tiers).
    has_access_tiers = False

    def create_engine(self, url: sa.URL, *, for_writes: bool, echo: bool) -> sa.Engine:
        return sa.create_engine(
            url,
            echo=echo,
            pool_pre_ping=True,
            connect_args=self.connect_args(),
            json_serializer=canonical_json,
        )

    def connect_args(self) -> dict:
        return {}

    def lock_chain(self, conn) -> None:
        """Serialize appends to the audit chain until the transaction ends."""

    def recorded_by(self) -> str | None:
        """Who records a run revision, as this backend knows it; None: the database fills it."""
        return getpass.getuser()

    def stored_timestamp(self, column):
        """``column`` as stored, for ``read_timestamp`` (the value itself here)."""
        return column

    def read_timestamp(self, value) -> datetime:
        """A stored timestamp as an aware UTC datetime; ``TimestampProblem`` when it is not one
        (or, where the backend stores text, not in the one representation)."""
        if not isinstance(value, datetime):
            raise TimestampProblem(f"stored as {value!r}, not a timestamp")
        return as_utc(value)

    def insert_rows(self, conn, table: str, parent_pk: int, rows: TableRows, parent: str = "run_pk") -> None:
        """Insert ``rows`` of the record ``parent_pk`` into ``table``: the ``parent`` key column
        (run_pk, or evaluation_pk), row_no, the columns, row_digest."""
        cols = [parent, "row_no", *rows.columns, "row_digest"]
        quoted = ", ".join(f'"{c}"' for c in cols)
        marks = ", ".join("?" * len(cols))
        values = zip(repeat(parent_pk), range(rows.n), *rows.insert_columns(), rows.digests, strict=False)
        statement = f"INSERT INTO {table} ({quoted}) VALUES ({marks})"
        cur = conn.connection.driver_connection.cursor()
        try:
            with driver_errors(conn, statement):
                cur.executemany(statement, values)
        finally:
            cur.close()

    def bind_datetime(self, value: datetime) -> datetime:
        """``value`` (aware UTC) as a query parameter compared with stored timestamps."""
        return value

    def bind_date(self, value: date):
        """``value`` as a query parameter compared with a date column of a view."""
        return value


class SqliteDialect(Dialect):
    name = "sqlite"
    writes_on_read_engine = False

    def create_engine(self, url: sa.URL, *, for_writes: bool, echo: bool) -> sa.Engine:
        if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
            try:
                Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreUnavailableError(
                    f"governance database {mask_url(url)} is unavailable: {exc}"
                ) from exc
        engine = sa.create_engine(
            url, echo=echo, connect_args={"timeout": 60}, json_serializer=canonical_json
        )

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE" if for_writes else "BEGIN")

        return engine

    def bind_datetime(self, value: datetime) -> datetime:
        # SQLite stores naive UTC text
        return as_utc(value).replace(tzinfo=None)

    def bind_date(self, value: date) -> str:
        return value.isoformat()

    def stored_timestamp(self, column):
        return sa.cast(column, sa.Text)

    def read_timestamp(self, value) -> datetime:
        if not isinstance(value, str):
            raise TimestampProblem(f"stored as {value!r}, not as timestamp text")
        try:
            parsed = as_utc(datetime.fromisoformat(value))
        except ValueError:
            raise TimestampProblem(f"stored as {value!r}, not a timestamp") from None
        canonical = sqlite_timestamp_text(parsed)
        if value != canonical:
            raise TimestampProblem(
                f"stored as {value!r}, not as {canonical!r}, the one representation of that instant (UTC): "
                "the same instant spelled another way, which the views' text comparisons (runs --since, "
                "export, the daily trend) do not match"
            )
        return parsed


class PostgresDialect(Dialect):
    name = "postgresql"
    has_access_tiers = True

    def connect_args(self) -> dict:
        return {"connect_timeout": 10}

    def recorded_by(self) -> None:
        return None  # the column default, session_user: the login, which no role may set

    def lock_chain(self, conn) -> None:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": CHAIN_LOCK_KEY})

    def insert_rows(self, conn, table: str, parent_pk: int, rows: TableRows, parent: str = "run_pk") -> None:
        # COPY text format, a block of rows per write: one round of Python string joins per block
        # instead of one driver call per row.
        quoted = ", ".join(f'"{c}"' for c in [parent, "row_no", *rows.columns, "row_digest"])
        fields = copy_fields(rows)
        row_nos = list(map(str, range(rows.n)))
        dbapi = conn.connection.driver_connection
        statement = f"COPY {table} ({quoted}) FROM STDIN"
        with driver_errors(conn, statement), dbapi.cursor() as cur, cur.copy(statement) as copy:
            for lo in range(0, rows.n, COPY_BLOCK_ROWS):
                hi = lo + COPY_BLOCK_ROWS
                block = zip(
                    repeat(str(parent_pk)), row_nos[lo:hi], *(f[lo:hi] for f in fields), rows.digests[lo:hi]
                )
                copy.write(("\n".join(map("\t".join, block)) + "\n").encode("utf-8"))


@contextlib.contextmanager
def driver_errors(conn, statement: str):
    """Raise errors of the driver's own cursor (bulk inserts bypass SQLAlchemy's execution) as
    SQLAlchemy's ``DBAPIError`` subclasses, so ``translate_errors`` sees them like any other."""
    base = conn.dialect.dbapi.Error
    try:
        yield
    except base as exc:
        raise sa_exc.DBAPIError.instance(statement, None, exc, base, dialect=conn.dialect) from exc


def copy_fields(rows: TableRows) -> list[list[str]]:
    """Per column, each value as a field of PostgreSQL's COPY text format (NULL as \\N).

    Floats go as their repr (the shortest text that reads back to the same float64, so COPY stores
    exactly the digested value), booleans as True/False, JSON as escaped JSON text.
    """
    out = []
    for texts, driver, dtype in zip(rows.reprs, rows.insert_columns(), rows.dtypes, strict=True):
        if dtype in ("string", "object"):
            out.append(_copy_strings(driver))
        elif "None" in texts:
            out.append([_COPY_NULL if t == "None" else t for t in texts])
        else:
            out.append(texts)
    return out


def _copy_strings(values: list) -> list[str]:
    """Strings (or None) as fields of PostgreSQL's COPY text format."""
    present = [v for v in values if v is not None]
    joined = "".join(present)
    if any(ch in joined for ch in "\\\t\n\r"):
        return [_COPY_NULL if v is None else v.translate(_COPY_ESCAPES) for v in values]
    return [_COPY_NULL if v is None else v for v in values] if len(present) != len(values) else list(values)


_DIALECTS = {d.name: d for d in (SqliteDialect(), PostgresDialect())}


def dialect_for(url: str | sa.URL) -> Dialect:
    """The dialect object of the database at ``url``."""
    return _DIALECTS.get(sa.make_url(url).get_backend_name(), Dialect())


def dialect_of(conn: sa.Connection) -> Dialect:
    """The dialect object of an open connection."""
    return _DIALECTS.get(conn.dialect.name, Dialect())


class StoreEngines:
    """The engines of the governance database at ``url``, created on first use.

    ``connect(action)`` and ``begin(action)`` yield a read connection or a write transaction
    whose driver errors are translated (``translate_errors``) naming ``action``.
    """

    def __init__(self, url: str, *, echo: bool = False):
        self.url = url
        self.echo = echo
        self._read: sa.Engine | None = None
        self._write: sa.Engine | None = None

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    @property
    def dialect(self) -> Dialect:
        return dialect_for(self.url)

    @property
    def read(self) -> sa.Engine:
        """The engine for reads (and, where the dialect says so, writes)."""
        if self._read is None:
            self._read = self.dialect.create_engine(sa.make_url(self.url), for_writes=False, echo=self.echo)
        return self._read

    @property
    def write(self) -> sa.Engine:
        """The engine for write transactions."""
        if self._write is None:
            dialect = self.dialect
            self._write = (
                self.read
                if dialect.writes_on_read_engine
                else dialect.create_engine(sa.make_url(self.url), for_writes=True, echo=self.echo)
            )
        return self._write

    def dispose(self) -> None:
        for engine in {self._read, self._write} - {None}:
            engine.dispose()
        self._read = self._write = None

    def errors(self, action: str):
        """A context in which driver errors become certrisk errors naming ``action``."""
        return translate_errors(action, self.masked_url)

    @contextlib.contextmanager
    def connect(self, action: str):
        """A read connection (no transaction held open beyond the driver's own)."""
        with self.errors(action), self.read.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def begin(self, action: str):
        """A write transaction, committed when the block ends without an error."""
        with self.errors(action), self.write.begin() as conn:
            yield conn
