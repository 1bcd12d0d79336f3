"""Review decisions in the reports: both editions of the run report state the decisions on the
record, the review state and the last stored verify, and count them as NIST AI RMF evidence;
the period report counts decisions per outcome and the runs still pending."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from report_runs import make_run
from test_reports import html_text

from certrisk.governance import GovernanceStore
from certrisk.reports import build_period_report, build_run_report
from certrisk.reports.html import render_html
from certrisk.reports.pdf import render_pdf
from certrisk.schemas.enums import Edition
from certrisk.schemas.review import REVIEW_RMF

COMMENT = "drift on pixel 3 <b>not</b> explained"


def _asks_review(record, at_tier: str = "low"):
    """The run as the pipeline records it when the policy has a review section from ``at_tier``."""
    return replace(record, summary={**record.summary, "review_at_tier": at_tier})


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory):
    store = GovernanceStore(f"sqlite:///{tmp_path_factory.mktemp('reviewed') / 'governance.db'}")
    store.upgrade()
    created = datetime.now(UTC) - timedelta(hours=3)
    store.write_run(_asks_review(make_run("manual__reviewed", n=30, seed=1, shift=0.2, created_at=created)))
    store.write_run(_asks_review(make_run("manual__pending", n=30, seed=2, created_at=created)))
    store.write_run(make_run("manual__plain", n=30, seed=3, created_at=created))
    dag = store.list_runs().iloc[0]["dag_id"]
    first = datetime.now(UTC) - timedelta(hours=2)
    store.record_review(
        dag_id=dag, run_id="manual__reviewed", decision="approve", reviewer="alice", decided_at=first,
        source="airflow-hitl", review_key="hitl-1",
    )  # fmt: skip
    store.record_review(
        dag_id=dag, run_id="manual__reviewed", decision="reject", reviewer="bob", comment=COMMENT,
        decided_at=first + timedelta(minutes=30),
    )  # fmt: skip
    verified = store.verify(record=True, verified_by="carol")
    yield store, verified
    store.dispose()


def _section(report, key):
    return next(s for s in report.sections if s.key == key)


@pytest.mark.parametrize("edition", [Edition.COMPLIANCE, Edition.ENGINEER])
def test_run_report_states_the_decisions(reviewed, edition):
    store, verified = reviewed
    report = build_run_report(store, "manual__reviewed", edition=edition)
    assert ("Review", "rejected by bob") in report.headline
    review = _section(report, "review")
    assert review.paragraphs[0].startswith("Review state: rejected by bob,")
    table = review.tables[0]
    assert [row[1:4] for row in table.rows] == [
        ["rejected", "bob", "cli"],
        ["approved", "alice", "airflow-hitl"],
    ]
    assert table.rows[0][-1] == COMMENT
    crosswalk = _section(report, "crosswalk").tables[0]
    evidenced = {row[0]: row[2] for row in crosswalk.rows}
    for sid in REVIEW_RMF:
        assert "human_review: 2 decision(s); latest: rejected by bob" in evidenced[sid], sid
    provenance = dict(_section(report, "provenance").facts)
    assert (
        provenance["Last full verify"].startswith("intact")
        and verified.head in provenance["Last full verify"]
    )
    assert "by carol" in provenance["Last full verify"]
    assert "this run only" in provenance["Audit chain"]  # a bounded check, never the whole chain
    html = render_html(report)
    assert "&lt;b&gt;not&lt;/b&gt;" in html and COMMENT in html_text(html)
    assert render_pdf(report).startswith(b"%PDF")


def test_pending_and_unreviewed_runs(reviewed):
    store, _ = reviewed
    pending = build_run_report(store, "manual__pending", edition=Edition.COMPLIANCE)
    assert ("Review", "pending") in pending.headline
    assert "Review state: pending" in _section(pending, "review").paragraphs[0]
    assert not _section(pending, "review").tables
    plain = build_run_report(store, "manual__plain", edition=Edition.COMPLIANCE)
    assert not any(key == "Review" for key, _ in plain.headline)
    assert _section(plain, "review").paragraphs[0].startswith("No review was asked for")
    evidenced = {row[0] for row in _section(plain, "crosswalk").tables[0].rows}
    assert "GOVERN 3.2" not in evidenced


@pytest.mark.parametrize("edition", [Edition.COMPLIANCE, Edition.ENGINEER])
def test_period_report_counts_reviews(reviewed, edition):
    store, _ = reviewed
    report = build_period_report(store, model=None, days=2, edition=edition, verify=False)
    assert dict(report.headline)["Reviews"] == "1 approved, 1 rejected, 0 escalated; 1 pending"
    review = _section(report, "review")
    assert dict(review.facts)["Rejected"] == "1"
    assert review.tables[1].caption == "Runs awaiting a decision"
    assert [row[2] for row in review.tables[1].rows] == ["manual__pending"]
    coverage = {row[0]: row[3] for row in _section(report, "coverage").tables[0].rows}
    assert all("human_review" in coverage[sid] for sid in REVIEW_RMF)
    assert set(report.csv["review"]) == {"rejected by bob", "pending", ""}
