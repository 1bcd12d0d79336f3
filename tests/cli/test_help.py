"""Every command answers -h and --help, names its options, and lists the choices of --format."""

from __future__ import annotations

import pytest
import typer

from certrisk import __version__
from certrisk.cli import app


def _commands(group, prefix=()) -> list[tuple[str, ...]]:
    out = []
    for name, command in group.commands.items():
        path = (*prefix, name)
        out.append(path)
        if hasattr(command, "commands"):  # a group (typer vendors its own click)
            out += _commands(command, path)
    return out


COMMANDS = _commands(typer.main.get_command(app))
LISTINGS = [
    ("runs",),
    ("samples",),
    ("trend",),
    ("coverage",),
    ("evaluate",),
    ("policy", "check"),
    ("score",),
]


def test_every_documented_command_exists():
    expected = {
        ("init",), ("score",), ("policy",), ("policy", "check"), ("evaluate",), ("demo",), ("db",),
        ("db", "upgrade"), ("db", "grant"), ("runs",), ("samples",), ("trend",), ("coverage",),
        ("export",), ("report",), ("verify",),
    }  # fmt: skip
    assert expected <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help(cli, path, flag):
    out = cli(*path, flag)
    assert out.exit_code == 0, out.output
    assert "Usage:" in out.output and " ".join(path) in out.output


@pytest.mark.parametrize("path", LISTINGS, ids=" ".join)
def test_listing_format_choices_in_help(cli, path):
    out = cli(*path, "--help")
    assert "--format" in out.output and "table|json" in out.output


def test_report_format_says_file_formats(cli):
    out = cli("report", "--help")
    assert "html|pdf|csv" in out.output and "table|json" not in out.output


@pytest.mark.parametrize("path", LISTINGS, ids=" ".join)
def test_unknown_format_is_refused_with_the_choices(cli, path):
    out = cli(*path, "--format", "xml")
    assert out.exit_code == 2
    assert "'xml' is not one of" in out.output and "table" in out.output and "json" in out.output


def test_version(cli):
    out = cli("--version")
    assert out.exit_code == 0 and out.stdout.strip() == f"certrisk {__version__}"
    assert cli("-h").exit_code == 0


def test_files_are_written_with_out(cli):
    for path in (("export",), ("report",), ("init",), ("score",), ("evaluate",)):
        assert "--out" in cli(*path, "--help").output, path
