"""Per-run and per-period reports: content, editions, formats, rendered in headless Chromium and
through poppler. Each rendering is written under CERTRISK_REPORT_SHOTS (a temp dir by default)."""

from __future__ import annotations

import re
import subprocess
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from conftest import SHOTS, assert_not_blank

from certrisk.reports import build_period_report, build_run_report, parse_period, write_report
from certrisk.reports.crosswalk import crosswalk
from certrisk.reports.sources import RunNotFoundError
from certrisk.schemas.enums import Edition
from certrisk.schemas.errors import InputError
from certrisk.schemas.rmf import catalog

RAW_COLUMNS = re.compile(r"p_lower|radius_(l1|l2|linf|smoothing|ibp|lipschitz)\b", re.IGNORECASE)
FORBIDDEN_WORDS = re.compile(r"\b(safe|safely|secure|securely|not attacked)\b", re.IGNORECASE)


class _Text(HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        self._skip += tag in ("style", "script")

    def handle_endtag(self, tag):
        self._skip -= tag in ("style", "script")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def html_text(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    return re.sub(r"\s+", " ", " ".join(parser.parts))


def pdf_text(path, pdftotext) -> str:
    out = subprocess.run(
        [pdftotext, "-layout", str(path), "-"], capture_output=True, text=True, check=True
    ).stdout
    return re.sub(r"\s+", " ", out)


def pdf_pages(path, pdftoppm, stem: str) -> list:
    SHOTS.mkdir(parents=True, exist_ok=True)
    prefix = SHOTS / stem
    subprocess.run([pdftoppm, "-png", "-r", "60", str(path), str(prefix)], check=True, timeout=60)
    pages = sorted(SHOTS.glob(f"{stem}-*.png"))
    assert pages, f"pdftoppm produced no page of {path}"
    return pages


def _formats(value: float) -> set[str]:
    return {repr(float(value)), f"{value:.6f}", f"{value:.4f}", f"{value:.3f}"}


def leaked(text: str, values, allowed: set[str]) -> list[str]:
    """Formatted certificate values (repr, 6, 4 and 3 decimals) that occur in ``text`` as whole numbers."""
    hits = []
    for v in values:
        for s in _formats(v) - allowed:
            if re.search(rf"(?<![\d.]){re.escape(s)}(?![\d])", text):
                hits.append(s)
    return hits


@pytest.fixture(scope="module")
def reports(recorded, tmp_path_factory):
    """Every edition and format of the shifted run's report and of the 30-day period report."""
    store, record = recorded
    out = tmp_path_factory.mktemp("out")
    paths = {}
    for edition in Edition:
        run = build_run_report(store, record.run_id, edition=edition)
        period = build_period_report(store, model="digits-cnn", days="30d", edition=edition)
        for kind, report in (("run", run), ("period", period)):
            for fmt in ("html", "pdf", "csv"):
                paths[kind, edition.value, fmt] = write_report(report, out / f"{kind}-{edition.value}.{fmt}")
            paths[kind, edition.value, "report"] = report
    return paths


@pytest.fixture(scope="module")
def certificate_values(recorded):
    """The run's actual radii (every norm) and p_lower values, zeros and NaN left out."""
    store, record = recorded
    certs = store.get_run(record.dag_id, record.run_id)["certificates"]
    values = (
        certs[["radius", "radius_l1", "radius_l2", "radius_linf", "p_lower"]].to_numpy(dtype=float).ravel()
    )
    return np.unique(values[np.isfinite(values) & (values > 0)])


def _normalised(text: str) -> str:
    """Text without what differs between two recordings of the same payload: digests, clock times."""
    text = re.sub(r"\b[0-9a-f]{12,64}\b", "<digest>", text)
    return re.sub(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC", "<time>", text)


@pytest.fixture(scope="module")
def control_texts(control, pdftotext, tmp_path_factory):
    """Compliance texts of the control store (same runs, other certificate values), per kind."""
    store, record = control
    out = tmp_path_factory.mktemp("control-out")
    texts = {}
    for kind, report in (
        ("run", build_run_report(store, record.run_id)),
        ("period", build_period_report(store, model="digits-cnn", days=30)),
    ):
        html = html_text(write_report(report, out / f"{kind}.html").read_text())
        csv = write_report(report, out / f"{kind}.csv").read_text()
        pdf = pdf_text(write_report(report, out / f"{kind}.pdf"), pdftotext)
        texts[kind] = {"html": html, "csv": csv, "pdf": pdf}
    return texts


def test_run_report_content_matches_the_record(recorded, reports):
    _store, record = recorded
    report = reports["run", "compliance", "report"]
    text = report.text()
    summary = record.summary
    assert report.tier == summary["tier"] == "critical"
    for reason in summary["reasons"]:
        assert reason in text
    counts = summary["tier_counts"]
    table = next(
        t
        for s in report.sections
        if s.key == "distribution"
        for t in s.tables
        if t.caption == "Samples per tier"
    )
    assert {row[0]: int(row[1]) for row in table.rows} == counts
    assert f"{100 * summary['abstention_rate']:.1f}%" in text
    assert "fisher_exact" in text  # the abstention test, through the recorded RMF evidence
    top = next(s for s in report.sections if s.key == "samples").tables[0]
    riskiest = record.sample_risk.sort_values("risk", ascending=False)["sample_id"].iloc[0]
    assert top.rows[0][0] == riskiest
    for key in (
        "tier",
        "distribution",
        "abstention",
        "drift",
        "rules",
        "samples",
        "methods",
        "limitations",
        "crosswalk",
        "provenance",
    ):
        assert any(s.key == key for s in report.sections), key
    assert "intact" in text and record.model_sha256 in text and record.policy_sha256 in text


def test_engineer_edition_has_raw_numbers(recorded, reports, certificate_values):
    report = reports["run", "engineer", "report"]
    text = report.text()
    methods = next(s for s in report.sections if s.key == "methods")
    assert {row[0] for row in methods.tables[0].rows} == {"smoothing", "ibp"}
    assert methods.figures, "radius histograms"
    drift = next(s for s in report.sections if s.key == "drift").tables[0]
    assert drift.rows[0][:3] == ["ks", "feature", "px_3_4"] and drift.rows[0][-1] == "rejected"
    assert "3.00e-06" in " ".join(drift.rows[0])  # the corrected p-value
    # the leak check below has teeth: raw values do show in the engineer edition
    html = reports["run", "engineer", "html"].read_text()
    assert sum(f"{v:.4f}" in html for v in certificate_values) >= 10
    assert "p_lower" in text


@pytest.mark.parametrize("kind", ["run", "period"])
def test_compliance_edition_holds_no_certificate_value(
    kind, reports, certificate_values, control_texts, pdftotext
):
    texts = {
        "html": html_text(reports[kind, "compliance", "html"].read_text()),
        "csv": reports[kind, "compliance", "csv"].read_text(),
        "pdf": pdf_text(reports[kind, "compliance", "pdf"], pdftotext),
    }
    for name, text in texts.items():
        # the compliance edition does not change when every radius and p_lower changes ...
        assert _normalised(text) == _normalised(control_texts[kind][name]), (
            f"{kind} {name} depends on certificates"
        )
        # ... and none of the run's values appears in it, in any common rounding (a number the control
        # report shows too comes from other data: a coincidence of rounding, not a leak)
        allowed = set(re.findall(r"\d+\.\d+", control_texts[kind][name]))
        assert not leaked(text, certificate_values, allowed), f"{kind} {name} shows certificate values"
        assert not RAW_COLUMNS.search(text), f"{kind} {name} names raw certificate columns"
    assert len(certificate_values) > 50


def without_core_text(text: str) -> str:
    """The text without quotations of the NIST AI RMF Core (MEASURE 2.6 says "demonstrated to be safe")."""
    for sub in catalog().values():
        text = text.replace(sub.text, " ").replace(sub.category_text, " ")
    return text


ABOUT_SAMPLES = re.compile(
    r"sample[^.]{0,80}\b(safe|secure|not attacked)\b|\b(safe|secure)\b[^.]{0,80}sample", re.IGNORECASE
)


@pytest.mark.parametrize("edition", ["compliance", "engineer"])
@pytest.mark.parametrize("kind", ["run", "period"])
def test_no_sample_is_called_safe_or_secure(kind, edition, reports, pdftotext):
    html = without_core_text(html_text(reports[kind, edition, "html"].read_text()))
    csv = reports[kind, edition, "csv"].read_text()
    for text in (html, csv):
        found = FORBIDDEN_WORDS.search(text)
        assert not found, text[max(found.start() - 80, 0) : found.end() + 80]
    pdf = pdf_text(reports[kind, edition, "pdf"], pdftotext)  # table cells interleave: check sentences
    found = ABOUT_SAMPLES.search(pdf)
    assert not found, found.group(0)


def test_crosswalk_ids_exist_in_the_catalog(recorded, reports):
    _store, record = recorded
    report = reports["run", "compliance", "report"]
    have, missing = next(s for s in report.sections if s.key == "crosswalk").tables
    ids = [row[0] for row in have.rows] + [row[0] for row in missing.rows]
    assert sorted(ids) == sorted(catalog()) and len(ids) == 72
    recorded_ids = {sid for sid, _kind, _detail in record.rmf_evidence}
    assert {row[0] for row in have.rows} == recorded_ids
    for row in have.rows:
        assert row[1] == catalog()[row[0]].text and row[2]
    assert all(row[2].startswith(("Not evidenced", "certrisk evidences")) for row in missing.rows)


def test_crosswalk_states_what_was_not_measured():
    evidence = pd.DataFrame(
        [("MEASURE 1.1", "unmeasured", "not measured in this run: drift")],
        columns=["subcategory_id", "evidence_kind", "detail"],
    )
    have, _ = crosswalk(evidence, not_measured="not measured in this run: drift")
    assert have.rows == [
        [
            "MEASURE 1.1",
            catalog()["MEASURE 1.1"].text,
            "unmeasured: not measured in this run: drift",
            "not measured in this run: drift",
        ]
    ]


@pytest.mark.parametrize("edition", ["compliance", "engineer"])
def test_limitations_show_the_policys_norm_sigma_and_alpha(edition, reports, pdftotext):
    report = reports["run", edition, "report"]
    section = next(s for s in report.sections if s.key == "limitations")
    for needle in ("norm l2", "sigma = 0.25", "alpha = 0.001", "linf"):
        assert needle in section.markdown
    html = html_text(reports["run", edition, "html"].read_text())
    pdf = pdf_text(reports["run", edition, "pdf"], pdftotext)
    for text in (html, pdf):
        assert "sigma = 0.25" in text and "alpha = 0.001" in text and "norm l2" in text


def test_period_report_trends_flagged_runs_and_coverage(recorded, reports):
    store, _ = recorded
    report = reports["period", "compliance", "report"]
    runs = store.list_runs(model="digits-cnn")
    assert dict(report.headline)["Runs"] == str(len(runs)) == "11"
    flagged = next(s for s in report.sections if s.key == "flagged").tables[0]
    expected = set(runs.loc[runs["tier"].isin(["high", "critical"]), "run_id"])
    assert {row[2] for row in flagged.rows} == expected and "manual__shifted" in expected
    trends = next(s for s in report.sections if s.key == "trends")
    assert len(trends.tables[0].rows) == 11 and trends.figures
    coverage = next(s for s in report.sections if s.key == "coverage")
    assert coverage.figures and all(row[0] in catalog() for row in coverage.tables[0].rows)
    csv = pd.read_csv(reports["period", "compliance", "csv"])
    assert len(csv) == 11 and set(csv["tier"]) <= {"low", "medium", "high", "critical"}


def test_csv_editions(recorded, reports):
    _, record = recorded
    compliance = pd.read_csv(reports["run", "compliance", "csv"])
    engineer = pd.read_csv(reports["run", "engineer", "csv"])
    assert len(compliance) == len(engineer) == len(record.sample_risk)
    assert compliance["risk"].is_monotonic_decreasing
    assert not [c for c in compliance.columns if RAW_COLUMNS.search(c)]
    assert {"radius_smoothing", "radius_ibp", "p_lower_smoothing"} <= set(engineer.columns)


def test_html_is_self_contained(reports):
    for key, path in reports.items():
        if key[2] != "html":
            continue
        html = path.read_text()
        assert "data:image/png;base64," in html
        assert not re.search(r"""(src|href)=["'](https?:)?//""", html), f"{path} loads an external resource"
        assert "<link" not in html and "<script" not in html


@pytest.mark.parametrize(
    "kind,edition", [("run", "compliance"), ("run", "engineer"), ("period", "compliance")]
)
def test_html_renders_in_chromium(kind, edition, reports, chromium):
    path = reports[kind, edition, "html"]
    png = chromium.screenshot(path.as_uri(), SHOTS / f"{kind}-{edition}.png", height=4000)
    assert_not_blank(png)
    dom = html_text(chromium.dom(path.as_uri()))
    report = reports[kind, edition, "report"]
    for section in report.sections:
        assert section.title in dom
    for label, value in report.headline:
        assert label in dom and value in dom


@pytest.mark.parametrize("kind,edition", [("run", "compliance"), ("period", "engineer")])
def test_pdf_renders_through_poppler(kind, edition, reports, pdftoppm, pdftotext):
    path = reports[kind, edition, "pdf"]
    assert path.read_bytes().startswith(b"%PDF")
    pages = pdf_pages(path, pdftoppm, f"{kind}-{edition}-pdf")
    assert_not_blank(pages[0])
    text = pdf_text(path, pdftotext)
    report = reports[kind, edition, "report"]
    for section in report.sections:
        assert section.title in text
    for label, value in report.headline:
        assert value in text


def test_unknown_run_and_bad_period(recorded):
    store, _ = recorded
    with pytest.raises(RunNotFoundError, match="no recorded run"):
        build_run_report(store, "no-such-run")
    with pytest.raises(InputError, match="30d"):
        parse_period("thirty")
    assert parse_period("7d") == 7 == parse_period(7)


def test_compliance_edition_shows_drift_rules_method_cost_and_abstention_test(recorded, reports):
    """Read from v_drift_test, v_rule_result, v_method_cost and v_run_summary (the compliance views)."""
    _store, record = recorded
    report = reports["run", "compliance", "report"]
    sections = {s.key: s for s in report.sections}
    drift = sections["drift"].tables[0]
    assert len(drift.rows) == len(record.drift_tests)
    assert drift.rows[0][:3] == ["ks", "feature", "px_3_4"] and drift.rows[0][-1] == "rejected"
    assert "3.00e-06" in " ".join(drift.rows[0])
    rules = sections["rules"].tables[0]
    assert {row[0] for row in rules.rows} == set(record.rule_expectations["expectation"])
    assert rules.columns[-1] == "Column"  # the compliance view carries no observed values
    methods = sections["methods"].tables[0]
    certs = record.certificates
    by_method = {row[0]: row for row in methods.rows}
    assert set(by_method) == {"smoothing", "ibp"}
    for method, g in certs.groupby("method"):
        row = by_method[method]
        assert row[1] == f"{len(g):,}"
        assert row[2] == f"{100 * (1 - g['abstained'].mean()):.1f}%"
        assert row[5] == f"{g['seconds'].sum():.2f} s"
    assert not any(RAW_COLUMNS.search(h) or "radius" in h.lower() for h in methods.columns)
    facts = dict(sections["abstention"].facts)
    assert facts["Reference abstention rate"] == "6.0%"
    assert any(k.startswith("p-value") for k in facts)
