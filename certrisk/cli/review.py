"""Human review without the Airflow UI: ``certrisk review`` records a decision on a recorded run,
``certrisk reviews`` lists the decisions.

A decision is written as an append-only review record with its own audit-chain entry
(``GovernanceStore.record_review``): the run's current revision and manifest digest, the
decision, comment, reviewer, time, source "cli", and who wrote it. ``certrisk verify`` covers it.
"""

from __future__ import annotations

import typer

from certrisk.cli.app import app
from certrisk.cli.common import (
    DB_HELP,
    FormatOption,
    ListFormat,
    domain_errors_exit,
    emit,
    fail,
    read_store,
    say_no_runs,
)

DECISION_HELP = "approve, reject or escalate."
#: Columns ``certrisk reviews`` prints as a table.
REVIEW_TABLE_COLUMNS = [
    "dag_id",
    "run_id",
    "revision",
    "decision",
    "reviewer",
    "decided_at",
    "source",
    "comment",
]


def _default_reviewer() -> str:
    import getpass

    return getpass.getuser()


@app.command()
def review(
    run: str = typer.Option(
        ..., "--run", help="run_id of the recorded run (its current revision is reviewed)."
    ),
    decision: str = typer.Option(..., "--decision", help=DECISION_HELP),
    comment: str = typer.Option(..., "--comment", help="Why: shown with the decision in every report."),
    dag: str | None = typer.Option(None, "--dag", help="dag_id, when several DAGs recorded this run_id."),
    reviewer: str | None = typer.Option(None, "--reviewer", help="Who decides (default: the OS user)."),
    key: str | None = typer.Option(
        None, "--key", help="Idempotency key: the same key again records nothing (default: one per call)."
    ),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Record a review decision (approve, reject, escalate) on a recorded run, on the audit chain."""
    from certrisk.schemas.errors import RunNotFoundError

    store = read_store(db)
    if store is None:
        fail(RunNotFoundError(f"no runs recorded yet: run {run!r} cannot be reviewed"))
    with domain_errors_exit():
        result = store.record_review(
            dag_id=dag, run_id=run, decision=decision.strip().lower(), reviewer=reviewer or _default_reviewer(),
            comment=comment, source="cli", review_key=key,
        )  # fmt: skip
    when = result["decided_at"].isoformat()
    typer.echo(
        f"{result['status']}: {result['decision']} of run {result['dag_id']}/{result['run_id']} "
        f"(revision {result['revision']}) by {result['reviewer']} at {when}"
    )
    typer.echo(f"database: {result['database']}; `certrisk verify` covers the review's audit entry")


@app.command()
def reviews(
    run: str | None = typer.Option(None, "--run", help="Only this run_id."),
    dag: str | None = typer.Option(None, "--dag", help="Only this dag_id."),
    limit: int | None = typer.Option(None, help="At most this many decisions, newest first."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    format: FormatOption = ListFormat.TABLE,
) -> None:
    """Recorded review decisions, newest first."""
    store = read_store(db, format)
    if store is None:
        return say_no_runs(format)
    with domain_errors_exit():
        frame = store.reviews(dag_id=dag, run_id=run, limit=limit)
    emit(frame if format is ListFormat.JSON else frame[REVIEW_TABLE_COLUMNS], format, "certrisk reviews")
