"""``certrisk report``: a run's or a period's compliance or engineer report."""

from __future__ import annotations

import typer

from certrisk.cli.app import app


@app.command()
def report(
    run: str | None = typer.Option(None, "--run", help="run_id of the run to report (its current revision)."),
    period: str | None = typer.Option(None, "--period", help="Report a period instead, e.g. 30d."),
    model: str | None = typer.Option(
        None, "--model", help="Model of the period report (default: every model)."
    ),
    dag: str | None = typer.Option(None, "--dag", help="dag_id, when several DAGs recorded this run_id."),
    edition: str = typer.Option(
        "compliance", "--edition", help="compliance (tiers, factors, aggregates) or engineer."
    ),
    format: str | None = typer.Option(
        None, "--format", help="html, pdf or csv (default: from --out's suffix)."
    ),
    out: str = typer.Option(..., "--out", help="File to write."),
    db: str | None = typer.Option(
        None, "--db", help="Governance DB URL (default: $CERTRISK_DB_URL or SQLite under $CERTRISK_HOME)."
    ),
) -> None:
    """Write a compliance report of one run (--run) or of a period (--period 30d --model NAME)."""
    from certrisk.governance.store import GovernanceStore
    from certrisk.reports import build_period_report, build_run_report, write_report
    from certrisk.schemas.errors import CertriskError

    if (run is None) == (period is None):
        typer.echo("error: pass exactly one of --run RUN_ID or --period 30d", err=True)
        raise typer.Exit(2)
    try:
        store = GovernanceStore(db)
        built = (
            build_run_report(store, run, dag_id=dag, edition=edition)
            if run is not None
            else build_period_report(store, model=model, days=period, edition=edition)
        )
        path = write_report(built, out, format)
    except (CertriskError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{built.edition.value} report written to {path}")
