"""The governance commands of the ``certrisk`` CLI, end to end on both backends."""

from __future__ import annotations

import csv
import json

import sqlalchemy as sa
from records import make_record
from typer.testing import CliRunner

from certrisk.cli import app
from certrisk.governance import GovernanceStore

runner = CliRunner()


def _cli(*args):
    return runner.invoke(app, list(args))


def test_upgrade_runs_samples_trend_export_verify(db_url, tmp_path):
    out = _cli("db", "upgrade", "--db", db_url)
    assert out.exit_code == 0, out.output
    store = GovernanceStore(db_url)
    for i in range(2):
        store.write_run(make_record(f"run-{i}", 25, seed=i))
    out = _cli("runs", "--db", db_url, "--format", "json")
    assert out.exit_code == 0, out.output
    runs = json.loads(out.stdout)
    assert [r["run_id"] for r in runs] == ["run-1", "run-0"]
    for key in (
        "dag_id",
        "run_id",
        "batch",
        "n_samples",
        "abstention_rate",
        "mean_risk",
        "tier",
        "created_at",
    ):
        assert key in runs[0]
    assert runs[0]["mean_risk"] == store.get_run("certrisk_example", "run-1")["mean_risk"]
    assert _cli("runs", "--db", db_url).exit_code == 0

    out = _cli("samples", "--db", db_url, "--run", "run-0", "--tier", "high", "--format", "json")
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    expected = make_record("run-0", 25, seed=0).sample_risk.query("tier == 'high'")
    assert sorted(r["sample_id"] for r in rows) == sorted(expected["sample_id"])
    assert {"sample_id", "risk", "tier", "abstained", "top_factors"} <= set(rows[0])
    assert [r["risk"] for r in rows] == sorted((r["risk"] for r in rows), reverse=True)
    out = _cli("samples", "--db", db_url, "--run", "run-0", "--limit", "3", "--format", "json")
    assert out.exit_code == 0 and len(json.loads(out.stdout)) == 3
    out = _cli("samples", "--db", db_url, "--run", "run-0", "--limit", "0", "--format", "json")
    assert out.exit_code == 0 and len(json.loads(out.stdout)) == 25
    out = _cli("samples", "--db", db_url, "--run", "nope")
    assert out.exit_code == 2 and "no recorded run" in out.output

    out = _cli("trend", "--db", db_url, "--format", "json")
    assert out.exit_code == 0 and json.loads(out.stdout)[0]["n_runs"] == 2
    assert _cli("coverage", "--db", db_url, "--model", "digits").exit_code == 0

    target = tmp_path / "export.csv"
    out = _cli("export", "--out", str(target), "--db", db_url)
    assert out.exit_code == 0, out.output
    with target.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 50 and "radius" not in rows[0] and "p_lower" not in rows[0]
    assert rows[0]["abstained"] in ("True", "False")
    old = tmp_path / "positional.csv"
    out = _cli("export", str(old), "--db", db_url)  # the deprecated positional FILE still works
    assert out.exit_code == 0 and "deprecated" in out.output and old.read_text() == target.read_text()

    out = _cli("verify", "--db", db_url)
    assert out.exit_code == 0 and "chain head:" in out.stdout
    with store.engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE certificate SET p_lower = 0.5 WHERE sample_id = 'run-1:4' AND method = 'smoothing'"
            )
        )
    out = _cli("verify", "--db", db_url)
    assert out.exit_code == 1
    assert "certrisk_example/run-1#1" in out.output and "sample_id='run-1:4' method='smoothing'" in out.output
    store.dispose()


def test_unreachable_database_exits_2_without_password():
    out = _cli("runs", "--db", "postgresql+psycopg://u:hunter2@127.0.0.1:1/x")
    assert out.exit_code == 2
    assert "hunter2" not in out.output and "unavailable" in out.output
