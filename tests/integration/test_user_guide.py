"""The user guide, followed end to end with a freshly trained wine model: the guide's own training
code, then init, policy check, score offline, a DAG run of the generated DAG file, runs, report and
verify. The time each step took is printed (``pytest -s`` shows it)."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from tests.cli.test_guide import walkthrough

pytestmark = pytest.mark.slow


@pytest.fixture
def dags_folder(tmp_path, monkeypatch):
    """Airflow's dags folder moved to this test's directory (a DAG file must lie inside it)."""
    from airflow import settings
    from airflow.configuration import conf

    folder = tmp_path / "dags"
    folder.mkdir()
    monkeypatch.setattr(settings, "DAGS_FOLDER", str(folder))
    monkeypatch.setitem(conf._sections.setdefault("core", {}), "dags_folder", str(folder))
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(folder))
    return folder


def _cli(*args):
    from certrisk.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_user_guide_end_to_end(airflow_db, dags_folder, tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CERTRISK_DB_URL", f"sqlite:///{tmp_path / 'governance.db'}")
    times: dict[str, float] = {}
    start = last = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal last
        now = time.perf_counter()
        times[step], last = now - last, now

    exec(compile(walkthrough("train"), "user-guide.md (train)", "exec"), {})  # noqa: S102 - the guide's own code
    lap("train")
    out = _cli("init", "--model", "wine.pt", "--reference", "reference.parquet", "--out", dags_folder / "wine",
               "--classes", "class_0,class_1,class_2")  # fmt: skip
    assert "<- chosen" in out.stdout and "scores tier" in out.stdout
    lap("init")
    policy = dags_folder / "wine" / "policy.yaml"
    out = _cli("policy", "check", policy)
    assert "reference accuracy" in out.stdout and "s per 1,000 samples" in out.stdout
    lap("policy check")
    out = _cli("score", "--policy", policy, "--batch", "batch.parquet", "--format", "json")
    local = json.loads(out.stdout)
    assert local["n_samples"] == 40 and local["recorded"]["status"] == "written"
    lap("score")

    bag = DagBag(dag_folder=str(dags_folder / "wine" / "wine_risk.py"))
    assert bag.import_errors == {}
    run = bag.dags["wine_risk"].test(run_conf={"batch_uri": str(tmp_path / "batch.parquet")})
    assert run.state == "success"  # the batch's label column broke no task
    lap("DAG run")

    runs = json.loads(_cli("runs", "--format", "json").stdout)
    assert {(r["dag_id"], r["run_id"]) for r in runs} == {
        ("certrisk_local", local["run_id"]),
        ("wine_risk", run.run_id),
    }
    assert {r["tier"] for r in runs} == {local["tier"]}  # the same batch, the same operators
    out = _cli("report", "--run", run.run_id, "--out", tmp_path / "report.html")
    assert (tmp_path / "report.html").stat().st_size > 0
    out = _cli("verify")
    assert out.stdout.startswith("OK:")
    lap("runs, report, verify")
    total = time.perf_counter() - start
    print(
        f"\nuser guide end to end: {total:.1f} s ("
        + ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
        + ")"
    )
