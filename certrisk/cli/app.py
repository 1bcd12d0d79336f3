"""The typer applications every command module registers on (``certrisk`` and ``certrisk db``)."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Certification-aware AI risk management.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
db_app = typer.Typer(help="Governance database administration.", no_args_is_help=True)
app.add_typer(db_app, name="db")
