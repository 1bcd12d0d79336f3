"""The ``certrisk`` command: demo, database administration, governance queries, reports."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

app = typer.Typer(help="Certification-aware AI risk management.", no_args_is_help=True, add_completion=False)


@app.command()
def demo(
    batches: str = typer.Option("clean,shifted,attacked,deep", help="Comma-separated demo batches to run."),
    samples: int | None = typer.Option(None, help="Samples per batch (default: all prepared)."),
    dataset: str = typer.Option("digits", help="Demo dataset: digits (images) or breast_cancer (tabular)."),
) -> None:
    """Prepare a demo dataset (cached), run its example DAG once per batch, print the results."""
    from certrisk.demo import run_demo

    run_demo(batches=[b.strip() for b in batches.split(",") if b.strip()], samples=samples, dataset=dataset)


# ---------------------------------------------------------------- governance database
db_app = typer.Typer(help="Governance database administration.", no_args_is_help=True)
app.add_typer(db_app, name="db")

_DB_HELP = "Governance DB URL (default: $CERTRISK_DB_URL or SQLite under $CERTRISK_HOME)."


def _store(db: str | None):
    from certrisk.governance import GovernanceStore

    return GovernanceStore(db)


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


@contextmanager
def _domain_errors_exit() -> Iterator[None]:
    """A CertriskError (bad input, unknown run, unreachable database, ...) prints its message,
    which names what is at fault, and exits 2; anything else is a bug and keeps its traceback."""
    from certrisk.schemas.errors import CertriskError

    try:
        yield
    except CertriskError as exc:
        _fail(exc)


def _emit(frame, fmt: str, title: str) -> None:
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

        _fail(InputError(f"--format: unknown format {fmt!r}; use table or json"))
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


@db_app.command("upgrade")
def db_upgrade(db: str | None = typer.Option(None, "--db", help=_DB_HELP)) -> None:
    """Create or migrate the governance schema (Alembic head) and load the NIST AI RMF catalog."""
    store = _store(db)
    with _domain_errors_exit():
        store.upgrade()
    typer.echo(f"governance database {store.masked_url} is at revision {store.current_revision()}")


@db_app.command("grant")
def db_grant(db: str | None = typer.Option(None, "--db", help=_DB_HELP)) -> None:
    """PostgreSQL: create the roles certrisk_writer, _reviser, _engineer, _compliance, _auditor and grant their tiers."""
    from certrisk.governance.roles import grant_roles

    with _domain_errors_exit():
        roles = grant_roles(_store(db).url)
    typer.echo("granted: " + ", ".join(roles))


@app.command()
def runs(
    db: str | None = typer.Option(None, "--db", help=_DB_HELP),
    model: str | None = typer.Option(None, help="Only this model."),
    since: str | None = typer.Option(None, help="Created at or after (ISO date/time, UTC)."),
    until: str | None = typer.Option(None, help="Created before (ISO date/time, UTC)."),
    tier: str | None = typer.Option(None, help="Only runs of this batch tier."),
    min_tier: str | None = typer.Option(None, help="Only runs of this tier or worse."),
    all_revisions: bool = typer.Option(False, "--all-revisions", help="Include superseded revisions."),
    limit: int | None = typer.Option(None, help="At most this many runs."),
    format: str = typer.Option("table", "--format", help="table or json."),
) -> None:
    """Recorded runs, newest first; a superseded run shows "revised" with the previous tier, who and why."""
    with _domain_errors_exit():
        frame = _store(db).list_runs(
            model=model, since=since, until=until, tier=tier, min_tier=min_tier,
            include_superseded=all_revisions, limit=limit,
        )  # fmt: skip
    cols = ["dag_id", "run_id", "revision", "batch", "model", "n_samples", "abstention_rate", "mean_risk", "tier",
            "drift", "created_at", "revised"]  # fmt: skip
    _emit(frame if format == "json" else frame[cols], format, "certrisk runs")


@app.command()
def samples(
    run: str = typer.Option(..., "--run", help="run_id of the run (its current revision)."),
    dag: str | None = typer.Option(None, "--dag", help="dag_id, when several DAGs recorded this run_id."),
    tier: str | None = typer.Option(None, help="Only samples of this tier."),
    factor: str | None = typer.Option(None, help="Only samples this factor contributes to, largest first."),
    limit: int = typer.Option(1000, help="At most this many samples, riskiest first (0: all of them)."),
    db: str | None = typer.Option(None, "--db", help=_DB_HELP),
    format: str = typer.Option("table", "--format", help="table or json."),
) -> None:
    """A run's samples riskiest first: sample_id, risk, tier, abstained, factors, top factors."""
    with _domain_errors_exit():
        frame = _store(db).samples(run, tier=tier, factor=factor, dag_id=dag, limit=limit or None)
    cols = ["sample_id", "risk", "tier", "abstained", "top_factors"]
    _emit(frame if format == "json" else frame[cols], format, f"samples of {run}")


@app.command()
def trend(
    model: str | None = typer.Option(None, help="Only this model."),
    days: int = typer.Option(30, help="Days back from today (UTC)."),
    db: str | None = typer.Option(None, "--db", help=_DB_HELP),
    format: str = typer.Option("table", "--format", help="table or json."),
) -> None:
    """Daily abstention rate and mean risk per model (sample-weighted over current runs)."""
    with _domain_errors_exit():
        frame = _store(db).trend(model=model, days=days)
    _emit(frame, format, "daily trend")


@app.command()
def coverage(
    model: str | None = typer.Option(None, help="Only this model's runs."),
    db: str | None = typer.Option(None, "--db", help=_DB_HELP),
    format: str = typer.Option("table", "--format", help="table or json."),
) -> None:
    """NIST AI RMF coverage: each of the 72 subcategories and the evidence recorded for it."""
    with _domain_errors_exit():
        frame = _store(db).rmf_coverage(model=model)
    cols = ["subcategory_id", "function", "n_runs", "n_records", "evidence_kinds", "covered"]
    _emit(frame if format == "json" else frame[cols], format, "NIST AI RMF coverage")


@app.command()
def export(
    path: str = typer.Argument(..., help="CSV file to write."),
    model: str | None = typer.Option(None, help="Only this model."),
    since: str | None = typer.Option(None, help="Created at or after (ISO, UTC)."),
    until: str | None = typer.Option(None, help="Created before (ISO, UTC)."),
    db: str | None = typer.Option(None, "--db", help=_DB_HELP),
) -> None:
    """Compliance export: every current run's samples (tiers, factors, RMF ids; no certificates) to CSV."""
    with _domain_errors_exit():
        n = _store(db).export_compliance_csv(path, model=model, since=since, until=until)
    typer.echo(f"wrote {n} sample rows to {path}")


@app.command()
def verify(
    db: str | None = typer.Option(None, "--db", help=_DB_HELP),
    expected_head: str | None = typer.Option(
        None, help="Chain head published earlier; detects appended forgeries."
    ),
) -> None:
    """Recompute the audit chain and every recorded row; exit 1 naming the first run and row that differ."""
    with _domain_errors_exit():
        report = _store(db).verify(expected_head=expected_head)
    if report.ok:
        typer.echo(f"OK: {report.message}\nchain head: {report.head}")
        return
    typer.echo(
        f"FAILED: first bad run: {report.first_bad_run}; first bad row: {report.first_bad_row}", err=True
    )
    typer.echo(report.message, err=True)
    raise typer.Exit(1)


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


@app.command()
def evaluate(
    policy: str = typer.Option(..., "--policy", help="The model's policy YAML."),
    labelled: str | None = typer.Option(
        None, "--labelled", help="Labelled held-out file (default: the reference's evaluation role)."
    ),
    attacks: str | None = typer.Option(None, "--attacks", help="Comma-separated families (default: all)."),
    fractions: str = typer.Option("0.25,0.5", "--fractions", help="Budget fractions of the data's geometry."),
    seed: int = typer.Option(0, "--seed", help="Seed of the attacks' noise and of certification."),
    out: str = typer.Option("evaluation", "--out", help="Directory for evaluation.parquet and .json."),
    limit: int | None = typer.Option(None, "--limit", help="At most this many evaluation samples."),
    clip: str = typer.Option("auto", "--clip", help="Attacks' data box: auto, unit, reference or none."),
    device: str | None = typer.Option(None, "--device", help="Torch device (default: the policy's)."),
    format: str = typer.Option("table", "--format", help="table or json."),
    db: str | None = typer.Option(
        None, "--db", help="Record the result in this governance DB (default: do not record)."
    ),
) -> None:
    """Measured detection: attack a held-out labelled set, score every attacked set through the
    production pipeline, print per family what reaches each tier (and the certificate-only score)."""
    import json
    import os
    from pathlib import Path

    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    from airflow.sdk import ObjectStoragePath

    from certrisk.governance import GovernanceStore
    from certrisk.operators.evaluate import evaluate_policy, record_evaluation, write_evaluation
    from certrisk.risk.attack_suite import FAMILIES
    from certrisk.risk.evaluate import evaluation_records, family_table, target_gaps
    from certrisk.schemas.errors import InputError

    if format not in ("table", "json"):
        _fail(InputError(f"--format: unknown format {format!r}; use table or json"))
    try:
        budget = [float(f) for f in fractions.split(",") if f.strip()]
    except ValueError:
        _fail(InputError(f"--fractions: not a comma-separated list of numbers: {fractions!r}"))
    root = Path(out).resolve()
    with _domain_errors_exit():
        result = evaluate_policy(
            policy, work_dir=root / "work", labelled=labelled, seed=seed, limit=limit, clip=clip, device=device,
            families=[a.strip() for a in attacks.split(",") if a.strip()] if attacks else tuple(FAMILIES),
            fractions=budget,
        )  # fmt: skip
        paths = write_evaluation(result, ObjectStoragePath(f"file://{root}"))
        recorded = None
        if db:
            store = GovernanceStore(db)
            store.upgrade()  # idempotent: a new database gets the schema, a current one is left alone
            recorded = record_evaluation(result, store, policy)
    if format == "json":
        rows = evaluation_records(result)
        typer.echo(json.dumps({"metadata": result.metadata, "rows": rows, "recorded": recorded}, indent=2))
        return
    meta = result.metadata
    geo = meta["geometry"]["median_nearest_other_class"]
    _emit(family_table(result.frame), "table", f"measured detection: {meta['model']}")
    typer.echo(
        f"geometry: median distance to the nearest reference sample of another class l2 {geo['l2']:.3g}, "
        f"linf {geo['linf']:.3g}; {meta['n_clean']} clean evaluation samples ({meta['evaluation_source']}), "
        f"clean batch tier {meta['clean']['batch_tier']}; box {meta['clip']}"
    )
    gaps = target_gaps(result.frame)
    typer.echo(
        "misses against the targets:" if gaps else "every scored non-adaptive family meets the targets"
    )
    for line in gaps:
        typer.echo(f"  {line}")
    typer.echo(
        "A certificate bounds the distance to a class change, not to an attack; adaptive attackers "
        f"may evade. Written: {paths['evaluation']}, {paths['metadata']}"
    )
    if recorded is not None:
        typer.echo(f"recorded in {GovernanceStore(db).masked_url}: {recorded['status']}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
