"""``certrisk report``: a run's or a period's compliance or engineer report."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from certrisk.cli.app import app
from certrisk.cli.common import DB_HELP, fail, read_store, recorded_nothing, say_no_runs


class ReportFormat(str, Enum):
    """Formats of a written report (not the table/json of the listing commands)."""

    HTML = "html"
    PDF = "pdf"
    CSV = "csv"


class EditionChoice(str, Enum):
    COMPLIANCE = "compliance"
    ENGINEER = "engineer"


@app.command()
def report(
    run: str | None = typer.Option(None, "--run", help="run_id of the run to report (its current revision)."),
    period: str | None = typer.Option(None, "--period", help="Report a period instead, e.g. 30d."),
    model: str | None = typer.Option(
        None, "--model", help="Model of the period report (default: every model)."
    ),
    dag: str | None = typer.Option(None, "--dag", help="dag_id, when several DAGs recorded this run_id."),
    edition: Annotated[
        EditionChoice,
        typer.Option(
            "--edition", help="compliance (tiers, factors, aggregates) or engineer (raw certificates)."
        ),
    ] = EditionChoice.COMPLIANCE,
    format: Annotated[
        ReportFormat | None,
        typer.Option(
            "--format",
            help="File format of the report: html, pdf or csv (default: from --out's suffix). "
            "The listing commands' --format is table or json instead.",
        ),
    ] = None,
    out: str = typer.Option(..., "--out", help="File to write."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Write a compliance report of one run (--run) or of a period (--period 30d --model NAME)."""
    from certrisk.reports import build_period_report, build_run_report, write_report
    from certrisk.schemas.errors import CertriskError

    if (run is None) == (period is None):
        typer.echo("error: pass exactly one of --run RUN_ID or --period 30d", err=True)
        raise typer.Exit(2)
    store = read_store(db)
    if store is None or recorded_nothing(store):
        return say_no_runs()
    try:
        built = (
            build_run_report(store, run, dag_id=dag, edition=edition.value)
            if run is not None
            else build_period_report(store, model=model, days=period, edition=edition.value)
        )
        path = write_report(built, out, format.value if format else None)
    except (CertriskError, ValueError) as exc:
        fail(exc)
    typer.echo(f"{built.edition.value} report written to {path}")
