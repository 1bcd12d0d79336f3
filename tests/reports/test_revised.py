"""A superseded run shows as revised, with the previous tier, who and why, in the compliance report
and on the dashboard (issue 14: compliance saw the new revision with no sign of the change)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from report_runs import make_run
from test_reports import html_text

from certrisk.governance import GovernanceStore
from certrisk.reports import build_run_report
from certrisk.reports.dashboard import create_app, open_access
from certrisk.reports.html import render_html
from certrisk.schemas.enums import Edition

REASON = "re-scored after the reference set was corrected (ticket 42)"


@pytest.fixture(scope="module")
def revised(tmp_path_factory):
    store = GovernanceStore(f"sqlite:///{tmp_path_factory.mktemp('revised') / 'governance.db'}")
    store.upgrade()
    created = datetime.now(UTC) - timedelta(hours=2)
    first = make_run("manual__revised", n=30, seed=3, shift=0.2, created_at=created)
    store.write_run(first)
    second = make_run("manual__revised", n=30, seed=4, shift=0.0, created_at=created)
    second = replace(second, summary={**second.summary, "tier": "low", "reasons": []})
    store.write_run(second, supersede=True, reason=REASON)
    yield store, first
    store.dispose()


def test_compliance_report_shows_the_revision(revised):
    store, first = revised
    report = build_run_report(store, "manual__revised", edition=Edition.COMPLIANCE)
    text = html_text(render_html(report))
    trail = f"revised: revision 2 replaces tier {first.summary['tier']}; by "
    assert trail in text and REASON in text
    assert ("Revised", f"yes: was tier {first.summary['tier']}") in report.headline
    provenance = dict(next(s for s in report.sections if s.key == "provenance").facts)
    assert provenance["Recorded by"] == store.list_runs().iloc[0]["recorded_by"]
    assert provenance["Revision"].endswith(REASON)


def test_dashboard_lists_the_revision(revised):
    store, first = revised
    app = create_app(store.url, guard=open_access)
    with TestClient(app) as client:
        page = html_text(client.get("/").text)
        runs = client.get("/api/runs").json()["items"]
    assert f"revised: revision 2 replaces tier {first.summary['tier']}" in page and REASON in page
    assert runs[0]["revised"].endswith(REASON) and runs[0]["previous_tier"] == first.summary["tier"]
