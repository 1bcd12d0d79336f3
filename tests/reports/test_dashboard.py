"""The dashboard app: content through FastAPI's test client (every route open, as ``open_access``
admits; Airflow's guard is tested against a real API server in tests/integration), bounded pages,
paging, no database name on any page, the plot axes, the plugin's registrations, and a screenshot
in headless Chromium with the badges' layout measured in the browser."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from datetime import date, timedelta

import matplotlib.dates as mdates
import pandas as pd
import pytest
import uvicorn
from conftest import SHOTS, assert_not_blank
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.testclient import TestClient
from test_reports import html_text

from certrisk.reports import plots
from certrisk.reports.dashboard import create_app, open_access
from certrisk.reports.dashboard_pages import MAX_ROWS


def _mounted(url: str | None) -> FastAPI:
    root = FastAPI()
    root.mount("/certrisk", create_app(url, guard=open_access))
    return root


@pytest.fixture(scope="module")
def reviewed(recorded):
    """The recorded store with a stored verify and one review decision on the reported run."""
    store, record = recorded
    store.record_review(
        dag_id=record.dag_id, run_id=record.run_id, decision="reject", reviewer="alice", comment="shifted"
    )
    store.verify(record=True, verified_by="auditor-bob")
    return store, record


@pytest.fixture(scope="module")
def client(reviewed):
    store, _ = reviewed
    with TestClient(_mounted(store.url)) as c:
        yield c


def _no_database_named(text: str, store) -> None:
    path = store.url.split("///", 1)[-1]
    assert path not in text and "sqlite" not in text.lower() and "governance.db" not in text


def test_overview_lists_runs_with_batch_review_and_links(client, reviewed):
    store, record = reviewed
    page = client.get("/certrisk/")
    assert page.status_code == 200
    text = html_text(page.text)
    for heading in ("Runs", "Audit chain", "Trends, last 30 days", "NIST AI RMF coverage"):
        assert heading in text
    assert record.run_id in text and "critical" in text
    assert f'href="/certrisk/runs/{record.dag_id}/{record.run_id}"' in page.text
    assert f'href="/dags/{record.dag_id}/runs/{record.run_id}"' in page.text
    assert f'href="/certrisk/engineer/runs/{record.dag_id}/{record.run_id}"' in page.text
    assert "<th>Batch</th>" in page.text and "<th>Review</th>" in page.text
    runs = store.list_runs(limit=1)
    assert str(runs["batch"].iloc[0]) in text and str(runs["review"].iloc[0]) in text
    assert "rejected" in str(runs["review"].iloc[0])
    covered = int(store.rmf_coverage()["covered"].sum())
    assert f"{covered} of 72 subcategories" in text
    assert "data:image/png;base64," in page.text
    # the stored verify, not a verify on viewing
    last = store.last_verify()
    assert "auditor-bob" in text and last["head"] in text and "intact" in text
    _no_database_named(page.text, store)


def test_overview_pages_through_runs(client, reviewed):
    store, _ = reviewed
    total = len(store.list_runs())
    first = client.get("/certrisk/", params={"limit": 4})
    assert first.status_code == 200
    assert first.text.count('class="tier-cell"') == 4
    assert 'rel="next" href="/certrisk/?days=30&amp;page=2&amp;limit=4"' in first.text
    last_page = -(-total // 4)
    last = client.get("/certrisk/", params={"limit": 4, "page": last_page})
    assert last.text.count('class="tier-cell"') == total - 4 * (last_page - 1)
    assert 'rel="next"' not in last.text and 'rel="prev"' in last.text
    too_deep = client.get("/certrisk/", params={"limit": 200, "page": MAX_ROWS // 200 + 1})
    assert too_deep.status_code == 400 and "page must be from 1 to" in too_deep.text


def test_run_pages_verify_only_that_run(client, reviewed, monkeypatch):
    store, record = reviewed
    from certrisk.governance.store import GovernanceStore

    def no_full_verify(self, *a, **k):
        raise AssertionError("a page ran a full verify")

    monkeypatch.setattr(GovernanceStore, "verify", no_full_verify)
    run = client.get(f"/certrisk/runs/{record.dag_id}/{record.run_id}")
    assert run.status_code == 200 and "compliance edition" in run.text
    assert "this run re-checked on viewing" in html_text(run.text) and "p_lower" not in run.text
    eng = client.get(f"/certrisk/engineer/runs/{record.dag_id}/{record.run_id}")
    assert (
        eng.status_code == 200
        and "engineer edition" in eng.text
        and "histograms of certified radii" in eng.text
    )
    missing = client.get(f"/certrisk/runs/{record.dag_id}/missing")
    assert missing.status_code == 404 and "No recorded run 'missing'" in html_text(missing.text)
    period = client.get("/certrisk/period", params={"model": "digits-cnn", "days": 30})
    assert period.status_code == 200 and "Runs at high or critical tier" in period.text
    assert "stored result of `certrisk verify`" in html_text(period.text)
    assert client.get("/certrisk/").status_code == 200
    for page in (run, eng, missing, period):
        _no_database_named(page.text, store)


def test_json_api_is_paginated(client, reviewed):
    store, record = reviewed
    runs = client.get("/certrisk/api/runs", params={"limit": 3}).json()
    assert [r["run_id"] for r in runs["items"]] == list(store.list_runs(limit=3)["run_id"])
    assert "limitations" not in runs["items"][0] and runs["prev"] is None
    assert runs["next"] == "/certrisk/api/runs?page=2&limit=3"
    second = client.get(runs["next"]).json()
    assert second["page"] == 2 and not {r["run_id"] for r in second["items"]} & {
        r["run_id"] for r in runs["items"]
    }
    trend = client.get("/certrisk/api/trend").json()
    assert len(trend["items"]) == 11 and trend["next"] is None
    coverage = client.get("/certrisk/api/rmf-coverage", params={"limit": 50}).json()
    assert len(coverage["items"]) == 50 and coverage["next"]
    assert len(client.get(coverage["next"]).json()["items"]) == 22
    reviews = client.get("/certrisk/api/reviews", params={"run_id": record.run_id}).json()
    assert [(r["decision"], r["reviewer"]) for r in reviews["items"]] == [("reject", "alice")]
    verify = client.get("/certrisk/api/verify").json()["last_verify"]
    assert verify["verified_by"] == "auditor-bob" and verify["ok"] is True
    health = client.get("/certrisk/health").json()
    assert health == {"status": "ok", "has_runs": True}
    assert client.get("/certrisk/api/runs", params={"limit": 201}).status_code == 422
    assert client.get("/certrisk/openapi.json").status_code == 404  # no anonymous API description


def test_missing_database_gives_a_friendly_page_naming_no_database(tmp_path):
    missing = tmp_path / "nothing-here" / "governance.db"
    with TestClient(_mounted(f"sqlite:///{missing}")) as c:
        page = c.get("/certrisk/")
        assert page.status_code == 503 and "No governance database yet" in page.text
        health = c.get("/certrisk/health")
        assert health.status_code == 503 and health.json() == {"error": "no governance database yet"}
        assert c.get("/certrisk/api/runs").status_code == 503
        for text in (page.text, health.text):
            assert str(tmp_path) not in text and "nothing-here" not in text
    assert not missing.exists(), "the dashboard must not create the database file"


def _day_span(limits) -> float:
    return limits[1] - limits[0]


def test_trend_axis_spans_the_data_not_years():
    day = date(2026, 12, 1)
    one = pd.DataFrame({"model": ["m"], "day": [day], "abstention_rate": [0.1], "mean_risk": [0.2]})
    ax = plots.trend_figure(one).axes[0]
    lo, hi = ax.get_xlim()
    assert hi - lo == pytest.approx(plots.MIN_DAY_SPAN) and lo < mdates.date2num(day) < hi
    days = [day - timedelta(days=i) for i in range(12)]
    many = pd.DataFrame({"model": "m", "day": days, "abstention_rate": 0.1, "mean_risk": 0.2})
    lo, hi = plots.trend_figure(many).axes[0].get_xlim()
    assert (lo, hi) == pytest.approx((mdates.date2num(min(days)) - 0.5, mdates.date2num(max(days)) + 0.5))


def test_same_day_runs_are_one_bar_not_a_band():
    created = pd.Timestamp("2026-12-01 10:00", tz="UTC") + pd.to_timedelta(range(20), unit="min")
    runs = pd.DataFrame({"created_at": created, "tier": ["low"] * 12 + ["high"] * 8})
    ax = plots.runs_by_tier_figure(runs).axes[0]
    lo, hi = ax.get_xlim()
    bars = [p for p in ax.patches if p.get_height() > 0]
    assert hi - lo == pytest.approx(plots.MIN_DAY_SPAN)
    assert sorted(p.get_height() for p in bars) == [8, 12]
    assert all(p.get_width() / (hi - lo) < 0.3 for p in bars), "one day's bar fills the axis"


def test_plugin_registers_guarded_dashboard_views_and_links():
    from certrisk.operators.report import ComplianceReportOperator
    from certrisk.operators.score import RiskScoreOperator
    from certrisk.plugin import CertriskPlugin

    (entry,) = CertriskPlugin.fastapi_apps
    assert entry["url_prefix"] == "/certrisk" and entry["name"] == "certrisk"
    guarded = {
        type(d.dependency).__name__ for r in entry["app"].routes for d in getattr(r, "dependencies", [])
    }
    names = {
        getattr(d.dependency, "__qualname__", "")
        for r in entry["app"].routes
        for d in getattr(r, "dependencies", [])
    }
    assert guarded and all("airflow_guard" in n for n in names), names
    views = {v["destination"]: v for v in CertriskPlugin.external_views}
    assert views["nav"]["href"] == "/certrisk/" and views["nav"]["url_route"] == "certrisk"
    assert views["dag_run"]["href"] == "/certrisk/runs/{DAG_ID}/{RUN_ID}" and views["dag_run"]["url_route"]
    (link,) = CertriskPlugin.operator_extra_links
    named = {(op.__module__, op.__name__) for op in link.operators}
    assert named == {(op.__module__, op.__name__) for op in (ComplianceReportOperator, RiskScoreOperator)}
    assert any(type(lk).__name__ == "RunReportLink" for lk in ComplianceReportOperator.operator_extra_links)
    assert CertriskPlugin.macros


def test_simple_auth_manager_roles_per_edition():
    """The simple auth manager answers custom views by role alone; the guard maps the editions to
    its roles (FAB is tested against a real API server in tests/integration)."""
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    from certrisk.plugin_auth import may_read
    from certrisk.schemas.enums import Edition

    manager = SimpleAuthManager()
    allowed = {
        role: {
            e.value for e in Edition if may_read(e, SimpleAuthManagerUser(username="u", role=role), manager)
        }
        for role in ("", "viewer", "user", "op", "admin")
    }
    assert allowed == {
        "": set(),
        "viewer": {"compliance"},
        "user": {"compliance"},
        "op": {"compliance", "engineer"},
        "admin": {"compliance", "engineer"},
    }


def test_run_report_link_points_at_the_runs_report(monkeypatch):
    from airflow.models.taskinstancekey import TaskInstanceKey

    from certrisk.operators.links import RunReportLink

    key = TaskInstanceKey("certrisk_digits", "report", "manual__2026-12-01T00:00:00+00:00", 1)
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://airflow.example:8080/")
    url = RunReportLink().get_link(None, ti_key=key)
    assert (
        url
        == "http://airflow.example:8080/certrisk/runs/certrisk_digits/manual__2026-12-01T00%3A00%3A00%2B00%3A00"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Loads the dashboard in a frame of the given width and writes, into the page the browser dumps,
#: each tier badge's line boxes and height over font size (one line: 1, about 1.8).
PROBE = """<!DOCTYPE html><html><body>
<iframe id="f" src="/certrisk/?limit=25" style="width:{width}px;height:2400px;border:0"></iframe>
<pre id="out">pending</pre>
<script>
document.getElementById('f').addEventListener('load', () => {{
  const doc = document.getElementById('f').contentDocument;
  const badges = [...doc.querySelectorAll('.tier')].map(b => ({{
    text: b.textContent, lines: b.getClientRects().length,
    height: b.getBoundingClientRect().height / parseFloat(getComputedStyle(b).fontSize)}}));
  document.getElementById('out').textContent = JSON.stringify(badges);
}});
</script></body></html>"""


@pytest.fixture(scope="module")
def served(reviewed):
    store, _ = reviewed
    root = _mounted(store.url)

    @root.get("/probe/{width}", response_class=HTMLResponse)
    def probe(width: int) -> str:
        return PROBE.format(width=width)

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(root, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_dashboard_renders_in_chromium_with_unbroken_badges(served, reviewed, chromium):
    _, record = reviewed
    png = chromium.screenshot(f"{served}/certrisk/", SHOTS / "dashboard.png", height=2600)
    assert_not_blank(png)
    narrow = SHOTS / "dashboard-narrow.png"
    chromium._run("--window-size=760,1400", f"--screenshot={narrow}", f"{served}/certrisk/?limit=25")
    assert_not_blank(narrow)
    dom = html_text(chromium.dom(f"{served}/certrisk/"))
    for needle in (
        "certrisk dashboard",
        "Runs",
        "Audit chain",
        "NIST AI RMF coverage",
        record.run_id,
        "MEASURE 2.7",
    ):
        assert needle in dom
    for width in (1280, 760):
        dumped = chromium._run("--virtual-time-budget=5000", "--dump-dom", f"{served}/probe/{width}").stdout
        out = re.search(r'<pre id="out">(.*?)</pre>', dumped, re.DOTALL)
        assert out and out.group(1) != "pending", dumped[-2000:]
        badges = json.loads(out.group(1).replace("&quot;", '"'))
        assert len(badges) >= 10, badges
        wrapped = [b for b in badges if b["lines"] != 1 or b["height"] > 2.2]
        assert not wrapped, f"tier badges wrap at {width}px: {wrapped}"
