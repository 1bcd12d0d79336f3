"""Read commands on a missing, unmigrated or empty database: "no runs recorded yet", exit 0, and
no database created; each names the database it reads; tables never cut run ids."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest

from certrisk.cli.common import NO_RUNS
from certrisk.governance import GovernanceStore

sys.path.insert(0, str(Path(__file__).parents[1] / "governance"))

READS = [
    ("runs",),
    ("samples", "--run", "r1"),
    ("trend",),
    ("coverage",),
    ("export", "--out", "{tmp}/out.csv"),
    ("report", "--run", "r1", "--out", "{tmp}/report.html"),
    ("verify",),
]


def _args(args, tmp_path):
    return [a.replace("{tmp}", str(tmp_path)) for a in args]


@pytest.mark.parametrize("args", READS, ids=lambda a: a[0])
def test_missing_default_database_is_not_created(cli, fresh_home, tmp_path, args):
    out = cli(*_args(args, tmp_path))
    assert out.exit_code == 0, out.output
    assert "no runs recorded yet" in out.stdout
    assert f"database: sqlite:///{fresh_home / 'governance.db'}" in out.stderr
    assert not (fresh_home / "governance.db").exists() and not fresh_home.exists()
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "report.html").exists()


@pytest.mark.parametrize("args", READS, ids=lambda a: a[0])
def test_unmigrated_and_empty_databases(cli, tmp_path, args):
    bare = tmp_path / "bare.db"
    sqlite3.connect(bare).close()  # a file without the governance schema
    empty = tmp_path / "empty.db"
    GovernanceStore(f"sqlite:///{empty}").upgrade()  # the schema, no run
    for db in (bare, empty):
        out = cli(*_args(args, tmp_path), "--db", f"sqlite:///{db}")
        assert out.exit_code == 0, out.output
        assert "no such table" not in out.output
        if (
            args[0] == "verify" and db == empty
        ):  # an empty chain verifies (models, evaluations are chained too)
            assert "OK: 0 run(s)" in out.stdout
        else:
            assert "no runs recorded yet" in out.stdout


def test_json_output_is_an_empty_list_and_names_no_database(cli, fresh_home):
    out = cli("runs", "--format", "json")
    assert out.exit_code == 0 and json.loads(out.stdout) == [] and "database:" not in out.output


def test_verify_with_an_expected_head_fails_on_an_empty_database(cli, fresh_home):
    out = cli("verify", "--expected-head", "abc123")
    assert out.exit_code == 1 and "abc123" in out.stderr
    assert not fresh_home.exists()


def test_runs_table_keeps_long_run_ids_whole_at_80_columns(cli, tmp_path):
    from records import make_record

    url = f"sqlite:///{tmp_path / 'g.db'}"
    store = GovernanceStore(url)
    store.upgrade()
    run_id = "manual__2026-12-01T01:02:03.456789+00:00"
    store.write_run(make_record(run_id, 5))
    out = cli("runs", "--db", url, env={"COLUMNS": "80"})
    assert out.exit_code == 0, out.output
    assert run_id in out.stdout
    assert f"database: {store.masked_url}" in out.stderr and NO_RUNS not in out.stdout


def test_password_is_masked_where_the_database_is_named(cli):
    out = cli("runs", "--db", "postgresql+psycopg://u:hunter2@127.0.0.1:1/x")
    assert out.exit_code == 2 and "hunter2" not in out.output and "u:***@" in out.stderr
