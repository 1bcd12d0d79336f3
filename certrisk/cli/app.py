"""The typer applications every command module registers on (``certrisk``, ``certrisk db`` and
``certrisk policy``), with ``--version`` and ``-h``."""

from __future__ import annotations

import typer

HELP = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    help="Certification-aware AI risk management. Start with the user guide: docs/user-guide.md.",
    no_args_is_help=True,
    add_completion=False,
    context_settings=HELP,
)
db_app = typer.Typer(help="Governance database administration.", no_args_is_help=True, context_settings=HELP)
app.add_typer(db_app, name="db")
policy_app = typer.Typer(help="Check a model's policy.", no_args_is_help=True, context_settings=HELP)
app.add_typer(policy_app, name="policy")


def _version(value: bool) -> None:
    if value:
        from certrisk import __version__

        typer.echo(f"certrisk {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Certification-aware AI risk management. Start with the user guide: docs/user-guide.md."""
