"""The dashboard app: content through FastAPI's test client, a screenshot in headless Chromium
against uvicorn (mounted under /certrisk the way Airflow's API server mounts plugin apps), a
friendly page without a database, and its registration in the AirflowPlugin."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import uvicorn
from conftest import SHOTS, assert_not_blank
from fastapi import FastAPI
from fastapi.testclient import TestClient
from test_reports import html_text

from certrisk.reports.dashboard import create_app


def _mounted(url: str | None) -> FastAPI:
    root = FastAPI()
    root.mount("/certrisk", create_app(url))
    return root


@pytest.fixture(scope="module")
def client(recorded):
    store, _ = recorded
    with TestClient(_mounted(store.url)) as c:
        yield c


def test_overview_lists_runs_trends_and_coverage(client, recorded):
    store, record = recorded
    page = client.get("/certrisk/")
    assert page.status_code == 200
    text = html_text(page.text)
    for heading in ("Recent runs", "Trends, last 30 days", "NIST AI RMF coverage"):
        assert heading in text
    assert record.run_id in text and "critical" in text
    assert f'href="/certrisk/runs/{record.dag_id}/{record.run_id}"' in page.text
    covered = int(store.rmf_coverage()["covered"].sum())
    assert f"{covered} of 72 subcategories" in text
    assert "data:image/png;base64," in page.text


def test_run_and_period_pages_are_compliance_editions(client, recorded):
    _, record = recorded
    run = client.get(f"/certrisk/runs/{record.dag_id}/{record.run_id}")
    assert run.status_code == 200 and "compliance edition" in run.text
    assert "p_lower" not in run.text
    assert client.get(f"/certrisk/runs/{record.dag_id}/missing").status_code == 404
    period = client.get("/certrisk/period", params={"model": "digits-cnn", "days": 30})
    assert period.status_code == 200 and "Runs at high or critical tier" in period.text


def test_json_api(client, recorded):
    _, record = recorded
    runs = client.get("/certrisk/api/runs").json()
    assert runs[0]["run_id"] == record.run_id and "limitations" not in runs[0]
    assert len(client.get("/certrisk/api/trend").json()) == 11
    coverage = client.get("/certrisk/api/rmf-coverage").json()
    assert len(coverage) == 72
    assert client.get("/certrisk/health").json()["status"] == "ok"


def test_missing_database_gives_a_friendly_page(tmp_path):
    missing = tmp_path / "nothing-here" / "governance.db"
    with TestClient(_mounted(f"sqlite:///{missing}")) as c:
        page = c.get("/certrisk/")
        assert page.status_code == 503 and "No governance database yet" in page.text
        assert c.get("/certrisk/health").json()["status"] == "unavailable"
        assert c.get("/certrisk/api/runs").status_code == 503
    assert not missing.exists(), "the dashboard must not create the database file"


def test_plugin_registers_the_dashboard():
    from certrisk.plugin import CertriskPlugin
    from certrisk.reports import dashboard

    (entry,) = CertriskPlugin.fastapi_apps
    assert (
        entry["url_prefix"] == "/certrisk" and entry["name"] == "certrisk" and entry["app"] is dashboard.app
    )
    assert CertriskPlugin.macros


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_renders_in_chromium(recorded, chromium):
    store, record = recorded
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(_mounted(store.url), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started, "uvicorn did not start"
        url = f"http://127.0.0.1:{port}/certrisk/"
        png = chromium.screenshot(url, SHOTS / "dashboard.png", height=2600)
        assert_not_blank(png)
        dom = html_text(chromium.dom(url))
        for needle in (
            "certrisk dashboard",
            "Recent runs",
            "NIST AI RMF coverage",
            record.run_id,
            "MEASURE 2.7",
        ):
            assert needle in dom
    finally:
        server.should_exit = True
        thread.join(timeout=10)
