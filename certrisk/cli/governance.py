"""Database administration and governance queries: db upgrade/grant, runs, samples, trend,
coverage, export, verify. The queries never create a database (``common.read_store``)."""

from __future__ import annotations

import typer

from certrisk.cli.app import app, db_app
from certrisk.cli.common import (
    DB_HELP,
    FormatOption,
    ListFormat,
    domain_errors_exit,
    emit,
    name_database,
    read_store,
    recorded_nothing,
    say_no_runs,
    store_for,
)

#: What export says, exit 0, when there is nothing to export (no file is written).
NO_RUNS_NOTHING = "no runs recorded yet; nothing written"


@db_app.command("upgrade")
def db_upgrade(db: str | None = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Create or migrate the governance schema (Alembic head) and load the NIST AI RMF catalog."""
    store = store_for(db)
    with domain_errors_exit():
        store.upgrade()
    typer.echo(f"governance database {store.masked_url} is at revision {store.current_revision()}")


@db_app.command("grant")
def db_grant(db: str | None = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """PostgreSQL: create the roles certrisk_writer, _reviser, _engineer, _compliance, _auditor and grant their tiers."""
    from certrisk.governance.roles import grant_roles

    store = store_for(db)
    name_database(store)
    with domain_errors_exit():
        roles = grant_roles(store.url)
    typer.echo("granted: " + ", ".join(roles))


@app.command()
def runs(
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    model: str | None = typer.Option(None, help="Only this model."),
    since: str | None = typer.Option(None, help="Created at or after (ISO date/time, UTC)."),
    until: str | None = typer.Option(None, help="Created before (ISO date/time, UTC)."),
    tier: str | None = typer.Option(None, help="Only runs of this batch tier."),
    min_tier: str | None = typer.Option(None, help="Only runs of this tier or worse."),
    all_revisions: bool = typer.Option(False, "--all-revisions", help="Include superseded revisions."),
    limit: int | None = typer.Option(None, help="At most this many runs."),
    format: FormatOption = ListFormat.TABLE,
) -> None:
    """Recorded runs, newest first; a superseded run shows "revised" with the previous tier, who and why."""
    store = read_store(db, format)
    if store is None:
        return say_no_runs(format)
    with domain_errors_exit():
        frame = store.list_runs(
            model=model, since=since, until=until, tier=tier, min_tier=min_tier,
            include_superseded=all_revisions, limit=limit,
        )  # fmt: skip
    if frame.empty and recorded_nothing(store):
        return say_no_runs(format)
    cols = ["dag_id", "run_id", "revision", "batch", "model", "n_samples", "abstention_rate", "mean_risk", "tier",
            "review", "drift", "created_at", "revised"]  # fmt: skip
    emit(frame if format is ListFormat.JSON else frame[cols], format, "certrisk runs")


@app.command()
def samples(
    run: str = typer.Option(..., "--run", help="run_id of the run (its current revision)."),
    dag: str | None = typer.Option(None, "--dag", help="dag_id, when several DAGs recorded this run_id."),
    tier: str | None = typer.Option(None, help="Only samples of this tier."),
    factor: str | None = typer.Option(None, help="Only samples this factor contributes to, largest first."),
    limit: int = typer.Option(1000, help="At most this many samples, riskiest first (0: all of them)."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    format: FormatOption = ListFormat.TABLE,
) -> None:
    """A run's samples riskiest first: sample_id, risk, tier, abstained, factors, top factors."""
    store = read_store(db, format)
    if store is None:
        return say_no_runs(format)
    from certrisk.schemas.errors import RunNotFoundError

    with domain_errors_exit():
        try:
            frame = store.samples(run, tier=tier, factor=factor, dag_id=dag, limit=limit or None)
        except RunNotFoundError:
            if recorded_nothing(store):
                return say_no_runs(format)
            raise
    cols = ["sample_id", "risk", "tier", "abstained", "top_factors"]
    emit(frame if format is ListFormat.JSON else frame[cols], format, f"samples of {run}")


@app.command()
def trend(
    model: str | None = typer.Option(None, help="Only this model."),
    days: int = typer.Option(30, help="Days back from today (UTC)."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    format: FormatOption = ListFormat.TABLE,
) -> None:
    """Daily abstention rate and mean risk per model (sample-weighted over current runs)."""
    store = read_store(db, format)
    if store is None:
        return say_no_runs(format)
    with domain_errors_exit():
        frame = store.trend(model=model, days=days)
    if frame.empty and recorded_nothing(store):
        return say_no_runs(format)
    emit(frame, format, "daily trend")


@app.command()
def coverage(
    model: str | None = typer.Option(None, help="Only this model's runs."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    format: FormatOption = ListFormat.TABLE,
) -> None:
    """NIST AI RMF coverage: each of the 72 subcategories and the evidence recorded for it."""
    store = read_store(db, format)
    if store is None:
        return say_no_runs(format)
    with domain_errors_exit():
        frame = store.rmf_coverage(model=model)
    if recorded_nothing(store):
        return say_no_runs(format)
    cols = ["subcategory_id", "function", "n_runs", "n_records", "evidence_kinds", "covered"]
    emit(frame if format is ListFormat.JSON else frame[cols], format, "NIST AI RMF coverage")


@app.command()
def export(
    path: str | None = typer.Argument(None, help="Deprecated: use --out FILE.", show_default=False),
    out: str | None = typer.Option(None, "--out", help="CSV file to write."),
    model: str | None = typer.Option(None, help="Only this model."),
    since: str | None = typer.Option(None, help="Created at or after (ISO, UTC)."),
    until: str | None = typer.Option(None, help="Created before (ISO, UTC)."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Compliance export: every current run's samples (tiers, factors, RMF ids; no certificates) to CSV (--out)."""
    if path is not None and out is not None:
        typer.echo("error: give the file once, with --out FILE", err=True)
        raise typer.Exit(2)
    if path is not None:
        typer.echo("warning: the positional FILE of export is deprecated; use --out FILE", err=True)
    target = out or path
    if target is None:
        typer.echo("error: missing --out FILE (the CSV file to write)", err=True)
        raise typer.Exit(2)
    store = read_store(db)
    if store is None or recorded_nothing(store):
        typer.echo(NO_RUNS_NOTHING)
        return
    with domain_errors_exit():
        n = store.export_compliance_csv(target, model=model, since=since, until=until)
    typer.echo(f"wrote {n} sample rows to {target}")


@app.command()
def verify(
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    expected_head: str | None = typer.Option(
        None, help="Chain head published earlier; detects appended forgeries and a deleted record."
    ),
) -> None:
    """Recompute the audit chain and every recorded row; exit 1 naming the first run and row that differ.
    The result (when, by whom, head) is stored: the dashboard shows it instead of verifying again."""
    store = read_store(db)  # an empty chain verifies: models, policies and evaluations are chained too
    if store is None:
        if expected_head:
            typer.echo(f"FAILED: expected chain head {expected_head}, but no runs are recorded", err=True)
            raise typer.Exit(1)
        typer.echo("no runs recorded yet; nothing to verify")
        return
    with domain_errors_exit():
        report = store.verify(expected_head=expected_head, record=True)
    if report.ok:
        typer.echo(f"OK: {report.message}\nchain head: {report.head}")
        return
    typer.echo(
        f"FAILED: first bad run: {report.first_bad_run}; first bad row: {report.first_bad_row}", err=True
    )
    typer.echo(report.message, err=True)
    raise typer.Exit(1)
