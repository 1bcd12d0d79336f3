"""The dashboard behind Airflow's login, on a real API server (loopback, free port), under the
simple auth manager (Airflow's default) and the FAB auth manager: every route answers 401 without
a login, 403 to a user without the permission, 200 to one with it; the engineer edition needs
more than the compliance edition. Also what Airflow serves of the plugin: its external views in
the plugin listing and the "certrisk report" extra link of a real run's report and score tasks."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from tests.integration.dashboard_server import FAB, SIMPLE, shared_server

pytestmark = pytest.mark.slow

RUN = "/runs/certrisk_digits/scheduled__day1"
COMPLIANCE_ROUTES = [
    "/",
    "/?page=2&limit=5",
    RUN,
    "/period?model=digits-cnn&days=30",
    "/api/runs",
    "/api/trend",
    "/api/rmf-coverage",
    "/api/reviews",
    "/api/verify",
    "/health",
]
ENGINEER_ROUTES = ["/engineer" + RUN]


@pytest.fixture(scope="module", params=[SIMPLE, FAB])
def server(request, tmp_path_factory):
    return shared_server(request, tmp_path_factory, request.param)


def _status(server, route: str, user: str | None = None) -> int:
    return server.get("/certrisk" + route, user=user)[0]


def test_every_route_needs_a_login_and_the_permission(server):
    table = {
        route: (_status(server, route), _status(server, route, "nobody"), _status(server, route, "viewer"))
        for route in COMPLIANCE_ROUTES + ENGINEER_ROUTES
    }
    expected = {route: (401, 403, 200) for route in COMPLIANCE_ROUTES}
    expected.update({route: (401, 403, 403) for route in ENGINEER_ROUTES})
    assert table == expected, f"{server.auth}: (anonymous, nobody, viewer) per route"
    assert {route: _status(server, route, "op") for route in ENGINEER_ROUTES} == dict.fromkeys(
        ENGINEER_ROUTES, 200
    )
    # nothing else answers anonymously: no API docs of the app
    assert {_status(server, route) for route in ("/docs", "/redoc", "/openapi.json")} == {404}


def test_ui_cookie_logs_in_and_pages_name_no_database(server):
    status, page = server.get("/certrisk/", cookie=server.token("viewer"))
    assert status == 200 and "certrisk dashboard" in page
    for route in ("/", RUN, "/api/runs", "/health", "/runs/certrisk_digits/no-such-run"):
        text = server.get("/certrisk" + route, user="op")[1]
        assert "governance.db" not in text and "sqlite" not in text.lower(), route
    # the engineer edition's link shows only to those who may follow it
    assert "engineer edition</a>" not in server.get("/certrisk/", user="viewer")[1]
    assert "engineer edition</a>" in server.get("/certrisk/", user="op")[1]
    verify = json.loads(server.get("/certrisk/api/verify", user="viewer")[1])["last_verify"]
    assert verify["verified_by"] == "ci-auditor" and verify["ok"] is True


def test_airflow_lists_the_external_views(server):
    status, body = server.get("/api/v2/plugins", user="op")
    assert status == 200, body
    (plugin,) = [p for p in json.loads(body)["plugins"] if p["name"] == "certrisk"]
    views = {v["destination"]: v for v in plugin["external_views"]}
    assert views["nav"]["href"] == "/certrisk/" and views["nav"]["url_route"] == "certrisk"
    assert views["dag_run"]["href"] == "/certrisk/runs/{DAG_ID}/{RUN_ID}"
    assert any("RunReportLink" in link for link in plugin["operator_extra_links"])


def test_report_and_score_tasks_link_to_the_runs_report(request, tmp_path_factory):
    server = shared_server(request, tmp_path_factory, SIMPLE)
    expected = f"{server.base}/certrisk/runs/certrisk_digits/{quote(server.run_id, safe='')}"
    for task in ("report", "score"):
        path = (
            f"/api/v2/dags/certrisk_digits/dagRuns/{quote(server.run_id, safe='')}/taskInstances/{task}/links"
        )
        status, body = server.get(path, user="viewer")
        assert status == 200, body
        assert json.loads(body)["extra_links"] == {"certrisk report": expected}, task
    status, page = server.get(expected.removeprefix(server.base), user="viewer")
    assert status == 200 and "compliance edition" in page and server.run_id in page
