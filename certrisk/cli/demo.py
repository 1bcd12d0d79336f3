"""``certrisk demo``: the example DAG end to end on a bundled dataset."""

from __future__ import annotations

import typer

from certrisk.cli.app import app
from certrisk.cli.common import name_database, store_for


@app.command()
def demo(
    batches: str = typer.Option("clean,shifted,attacked,deep", help="Comma-separated demo batches to run."),
    samples: int | None = typer.Option(None, help="Samples per batch (default: all prepared)."),
    dataset: str = typer.Option("digits", help="Demo dataset: digits (images) or breast_cancer (tabular)."),
) -> None:
    """Prepare a demo dataset (cached), run its example DAG once per batch, print the results."""
    from certrisk.demo import run_demo

    name_database(store_for(None))
    run_demo(batches=[b.strip() for b in batches.split(",") if b.strip()], samples=samples, dataset=dataset)
