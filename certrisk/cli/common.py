"""What every command shares: the store it opens, how a domain error exits, table/JSON output."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

DB_HELP = "Governance DB URL (default: $CERTRISK_DB_URL or SQLite under $CERTRISK_HOME)."


def store_for(db: str | None):
    from certrisk.governance import GovernanceStore

    return GovernanceStore(db)


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


def emit(frame, fmt: str, title: str) -> None:
    """Print a DataFrame as a rich table or as a JSON array of objects."""
    import json

    if fmt == "json":

        def plain(value):
            if hasattr(value, "isoformat"):
                return value.isoformat()
            if hasattr(value, "item"):
                return value.item()
            return str(value)

        records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
        typer.echo(json.dumps(records, indent=2, default=plain))
        return
    if fmt != "table":
        from certrisk.schemas.errors import InputError

        fail(InputError(f"--format: unknown format {fmt!r}; use table or json"))
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in frame.columns:
        table.add_column(str(col))
    for row in frame.itertuples(index=False):
        cells = []
        for value in row:
            if isinstance(value, float):
                cells.append(f"{value:.4g}")
            elif isinstance(value, list):
                cells.append(", ".join(map(str, value)))
            else:
                cells.append(str(value))
        table.add_row(*cells)
    Console().print(table)
