"""ComplianceReportOperator outside a scheduler: a fake context naming the recorded DAG run."""

from __future__ import annotations

from types import SimpleNamespace

from certrisk.operators.report import ComplianceReportOperator


def test_operator_writes_the_run_report(recorded, tmp_path, monkeypatch):
    store, record = recorded
    monkeypatch.setenv("CERTRISK_DB_URL", store.url)
    op = ComplianceReportOperator(
        task_id="report",
        policy_path="unused.yaml",
        artifacts_uri=f"file://{tmp_path}",
        formats=("html", "pdf"),
    )
    out = op.run({"dag_run": SimpleNamespace(dag_id=record.dag_id, run_id=record.run_id)})
    assert out["status"] == "written" and out["tier"] == "critical" and out["edition"] == "compliance"
    html = (tmp_path / record.dag_id / record.run_id / "report-compliance.html").read_text()
    assert "Batch tier and reasons" in html and "p_lower" not in html
    assert (
        (tmp_path / record.dag_id / record.run_id / "report-compliance.pdf").read_bytes().startswith(b"%PDF")
    )


def test_operator_warns_instead_of_failing(recorded, tmp_path, monkeypatch):
    store, _ = recorded
    monkeypatch.setenv("CERTRISK_DB_URL", store.url)
    op = ComplianceReportOperator(
        task_id="report", policy_path="unused.yaml", artifacts_uri=f"file://{tmp_path}"
    )
    out = op.run({"dag_run": SimpleNamespace(dag_id="certrisk_digits", run_id="never-recorded")})
    assert out["status"] == "failed" and "no recorded run" in out["error"]
