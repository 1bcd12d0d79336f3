"""The ``certrisk`` command: demo, database administration, governance queries, reports."""

from __future__ import annotations

import typer

app = typer.Typer(help="Certification-aware AI risk management.", no_args_is_help=True, add_completion=False)


@app.command()
def demo(
    batches: str = typer.Option("clean,shifted,attacked", help="Comma-separated demo batches to run."),
    samples: int | None = typer.Option(None, help="Samples per batch (default: all prepared)."),
    dataset: str = typer.Option("digits", help="Demo dataset: digits (images) or breast_cancer (tabular)."),
) -> None:
    """Prepare a demo dataset (cached), run its example DAG once per batch, print the results."""
    from certrisk.demo import run_demo

    run_demo(batches=[b.strip() for b in batches.split(",") if b.strip()], samples=samples, dataset=dataset)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
