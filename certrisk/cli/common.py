"""What every command shares: the store it opens (and which it names), how a domain error exits,
the output formats and table/JSON output.

Reads never create a database: ``read_store`` returns None when the SQLite file a URL names does
not exist (SQLAlchemy would create it on first connect) or when the database holds no governance
schema; then, and when no run is recorded, a read command prints ``NO_RUNS`` and exits 0. Every
command names the database it uses (its masked URL) on stderr, unless it prints JSON.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

DB_HELP = "Governance DB URL (default: $CERTRISK_DB_URL, else SQLite under $CERTRISK_HOME)."
#: What a read command says, exit status 0, when there is nothing to read.
NO_RUNS = "no runs recorded yet"
#: Columns that name things (printed whole: never cut, never wrapped).
ID_COLUMNS = frozenset({"batch", "model", "method", "function", "factor"})
#: Narrowest a folding (non-identifier) column of a table gets.
MIN_COLUMN_WIDTH = 8


class ListFormat(str, Enum):
    """Output of the listing commands."""

    TABLE = "table"
    JSON = "json"


FORMAT_HELP = "Output: table (for people) or json (for scripts)."
#: The ``--format`` option of every listing command: ``format: FormatOption = ListFormat.TABLE``.
FormatOption = Annotated[ListFormat, typer.Option("--format", help=FORMAT_HELP)]


def resolved_url(db: str | None) -> str:
    from certrisk.schemas.settings import default_db_url

    return db or default_db_url()


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names (relative to the working directory), or None for other
    backends and in-memory databases."""
    import sqlalchemy as sa

    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser()


def store_for(db: str | None):
    """The governance store at ``db`` (default URL otherwise), for commands that may create it."""
    from certrisk.governance import GovernanceStore

    return GovernanceStore(resolved_url(db))


def name_database(store, fmt: ListFormat | str = ListFormat.TABLE) -> None:
    """Say which database the command uses (masked URL), on stderr; nothing for JSON output."""
    if str(getattr(fmt, "value", fmt)) != ListFormat.JSON.value:
        typer.echo(f"database: {store.masked_url}", err=True)


def read_store(db: str | None, fmt: ListFormat | str = ListFormat.TABLE):
    """The store a read command reads, or None when it has nothing to read: a SQLite file that
    does not exist (it is not created) or a database without the governance schema. Names the
    database on stderr unless ``fmt`` is JSON. A command checks ``recorded_nothing`` after its
    query (so its arguments are validated first)."""
    from certrisk.governance import GovernanceStore

    url = resolved_url(db)
    store = GovernanceStore(url)
    name_database(store, fmt)
    path = sqlite_file(url)
    if path is not None and not path.is_file():
        return None
    with domain_errors_exit():
        if store.current_revision() is None:
            return None
    return store


def recorded_nothing(store) -> bool:
    """Whether the database recorded no run yet (checked after a query validated its arguments)."""
    with domain_errors_exit():
        return store.list_runs(limit=1).empty


def say_no_runs(fmt: ListFormat | str = ListFormat.TABLE) -> None:
    """The empty answer of a read command: ``NO_RUNS`` (table) or ``[]`` (json), exit 0."""
    if str(getattr(fmt, "value", fmt)) == ListFormat.JSON.value:
        typer.echo("[]")
    else:
        typer.echo(NO_RUNS)


@contextmanager
def logs_on_stderr() -> Iterator[None]:
    """Run a command that imports Airflow with its log records on stderr: a command's stdout is
    its answer (JSON for scripts). Airflow configures a root handler on stdout when it is first
    imported, so it is imported here (task log at WARNING unless configured), the handler moved,
    and moved back afterwards; operators' structlog loggers write to ``sys.stdout`` as it is when
    they are created, so stdout is redirected too (print the answer after the block)."""
    import logging
    import os
    import sys
    from contextlib import redirect_stdout

    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    import airflow.sdk  # noqa: F401 - configures logging

    moved = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.__stdout__):
            moved.append((handler, handler.setStream(sys.stderr)))
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        for handler, stream in moved:
            handler.setStream(stream)


def fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


@contextmanager
def domain_errors_exit() -> Iterator[None]:
    """A CertriskError (bad input, unknown run, unreachable database, ...) prints its message,
    which names what is at fault, and exits 2; anything else is a bug and keeps its traceback."""
    from certrisk.schemas.errors import CertriskError

    try:
        yield
    except CertriskError as exc:
        fail(exc)


def _json(frame) -> str:
    import json

    def plain(value):
        if hasattr(value, "isoformat"):
            return value.isoformat()
        if hasattr(value, "item"):
            return value.item()
        return str(value)

    records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    return json.dumps(records, indent=2, default=plain)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def emit(frame, fmt: ListFormat | str, title: str) -> None:
    """Print a DataFrame as a rich table or as a JSON array of objects. Identifier columns
    (``*_id``, batch, model, ...) are never cut: they keep their full width and do not wrap;
    other columns fold onto more lines; a table that cannot fit the terminal prints wider."""
    fmt = str(getattr(fmt, "value", fmt))
    if fmt == ListFormat.JSON.value:
        typer.echo(_json(frame))
        return
    if fmt != ListFormat.TABLE.value:
        from certrisk.schemas.errors import InputError

        fail(InputError(f"--format: unknown format {fmt!r}; use table or json"))
    from rich.console import Console
    from rich.table import Table

    rows = [[_cell(v) for v in row] for row in frame.itertuples(index=False)]
    table = Table(title=title)
    needed = 1
    for i, col in enumerate(frame.columns):
        name = str(col)
        widest = max([len(name), *(len(r[i]) for r in rows)])
        if name.endswith("_id") or name in ID_COLUMNS:
            table.add_column(name, no_wrap=True, min_width=widest)
            needed += widest + 3
        else:  # may fold onto several lines, but keeps a readable width
            width = min(widest, MIN_COLUMN_WIDTH)
            table.add_column(name, min_width=width, overflow="fold")
            needed += width + 3
    for cells in rows:
        table.add_row(*cells)
    console = Console()
    if console.width < needed:  # wider than the terminal rather than a cut id or an empty column
        console = Console(width=needed)
    console.print(table)
