"""Report content: the sections of a per-run or per-period report, independent of the format.

``run_report(data)`` and ``period_report(data)`` turn what a source read (``RunData``,
``PeriodData``) into a ``Report``: headline figures, sections with paragraphs, facts, tables
and figures, and the frame the CSV format writes. The HTML and PDF renderers only lay it out,
so both formats say the same thing.

The compliance edition is built from compliance data only (``ComplianceSource``): it has no
certificate table to draw a radius or a confidence bound from. No text here calls a sample
safe or secure, or says it was not attacked (DESIGN.md, Principle 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import yaml

import certrisk
from certrisk.reports import plots
from certrisk.reports.sources import PeriodData, RunData
from certrisk.schemas.columns import FACTORS
from certrisk.schemas.enums import Edition, Tier
from certrisk.schemas.errors import PolicyError
from certrisk.schemas.policy import IBPSpec, SmoothingSpec, parse_policy
from certrisk.schemas.rmf import EVIDENCE, catalog, catalog_source, unevidenced_note

#: Rows of the top-risk sample table in HTML and PDF (the CSV holds every sample).
TOP_SAMPLES = 25

EDITION_NOTES = {
    Edition.COMPLIANCE: (
        "Compliance edition: tiers, factors and aggregates read from the compliance views. It holds no "
        "certified radius and no confidence bound: raw certificates can guide an attacker and are "
        "readable by engineers and auditors only."
    ),
    Edition.ENGINEER: (
        "Engineer edition: includes raw certificates (radii, lower confidence bounds p_lower), per-test "
        "drift statistics and per-method resource figures. Do not circulate beyond trusted roles: raw "
        "certificates can guide an attacker."
    ),
}


@dataclass
class Table:
    """A table of preformatted cells. ``tier_column``: index of a column shown as a tier badge."""

    columns: list[str]
    rows: list[list[str]]
    caption: str = ""
    tier_column: int | None = None
    widths: list[float] | None = None


@dataclass
class Figure:
    title: str
    png: bytes
    alt: str


@dataclass
class Section:
    key: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)
    markdown: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    """A rendered-to-be report. ``csv`` is the frame the CSV format writes."""

    kind: str
    edition: Edition
    title: str
    subtitle: str
    tier: str | None
    headline: list[tuple[str, str]]
    sections: list[Section]
    csv: pd.DataFrame
    generated_at: datetime
    edition_note: str = ""

    def text(self) -> str:
        """Every word and number of the report as plain text (for search and tests)."""
        parts = [self.title, self.subtitle, self.edition_note]
        parts += [f"{k} {v}" for k, v in self.headline]
        for s in self.sections:
            parts += [s.title, *s.paragraphs, *s.bullets, s.markdown, *s.notes]
            parts += [f"{k} {v}" for k, v in s.facts]
            for t in s.tables:
                parts += [t.caption, " ".join(t.columns)]
                parts += [" ".join(r) for r in t.rows]
        return "\n".join(p for p in parts if p)


# ------------------------------------------------------------------------------------ formatting


def fmt_num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def fmt_pct(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100.0 * float(value):.{digits}f}%"


def fmt_p(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{float(value):.2e}" if float(value) < 1e-3 else f"{float(value):.4f}"


def fmt_time(value) -> str:
    if value is None or pd.isna(value):
        return "n/a"
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)
    return stamp.strftime("%Y-%m-%d %H:%M UTC")


def _present(value) -> bool:
    """A recorded number (not None, NA or NaN)."""
    return value is not None and not pd.isna(value)


def fmt_bytes(value) -> str:
    if value is None or pd.isna(value):
        return "n/a"
    return f"{float(value) / 2**20:.1f} MiB"


def _lists(value) -> list[str]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def leading_factors(row: pd.Series, k: int = 3) -> str:
    """The sample's largest factor contributions, e.g. "abstention 0.60, rules 0.12"."""
    names = _lists(row.get("top_factors"))[:k]
    return ", ".join(f"{n} {float(row[f'factor_{n}']):.2f}" for n in names) or "none"


# ------------------------------------------------------------------------------------ crosswalk


def crosswalk(evidence: pd.DataFrame, *, not_measured: str = "") -> tuple[Table, Table]:
    """The run's NIST AI RMF crosswalk: evidenced subcategories with the Core text and this run's
    evidence, and the subcategories it does not evidence with what is not measured and why."""
    cat = catalog()
    by_id: dict[str, list[str]] = {}
    for sid, kind, detail in evidence[["subcategory_id", "evidence_kind", "detail"]].itertuples(index=False):
        by_id.setdefault(str(sid), []).append(f"{kind}: {detail}")
    possible: dict[str, list[str]] = {}
    for kind, ids in EVIDENCE.items():
        for sid in ids:
            possible.setdefault(sid, []).append(kind)
    have_rows, missing_rows = [], []
    for sid, sub in cat.items():
        if sid in by_id:
            gap = not_measured if sid == "MEASURE 1.1" else ""
            have_rows.append([sid, sub.text, "; ".join(by_id[sid]), gap or "-"])
        elif sid in possible:
            missing_rows.append(
                [
                    sid,
                    sub.text,
                    (
                        f"certrisk evidences this with {', '.join(possible[sid])} evidence, which this run "
                        "did not record"
                    ),
                ]
            )
        else:
            missing_rows.append([sid, sub.text, unevidenced_note(sid)])
    have = Table(
        ["Subcategory", "NIST AI RMF 1.0 Core", "Evidence in this run", "Not measured"],
        have_rows,
        caption=f"{len(have_rows)} of {len(cat)} subcategories evidenced by this run",
        widths=[0.1, 0.36, 0.36, 0.18],
    )
    missing = Table(
        ["Subcategory", "NIST AI RMF 1.0 Core", "Not measured by this run"],
        missing_rows,
        caption=f"{len(missing_rows)} subcategories this run does not evidence",
        widths=[0.1, 0.45, 0.45],
    )
    return have, missing


def _evidence_detail(evidence: pd.DataFrame, kind: str) -> str | None:
    rows = evidence.loc[evidence["evidence_kind"] == kind, "detail"]
    return str(rows.iloc[0]) if len(rows) else None


# ------------------------------------------------------------------------------------ per run


def _policy(text: str | None):
    if not text:
        return None
    try:
        return parse_policy(yaml.safe_load(text), source="recorded policy")
    except (PolicyError, yaml.YAMLError):
        return None


def _tier_section(data: RunData) -> Section:
    run = data.run
    reasons = [str(r) for r in run["reasons"]] or ["no rule of the batch score fired: tier low"]
    return Section(
        "tier",
        "Batch tier and reasons",
        paragraphs=[
            (
                f"Batch tier {run['tier']} for {run['n_samples']} samples of batch {run['batch']} "
                f"(model {run['model']}, recorded {fmt_time(run['recorded_at'])})."
            )
        ],
        bullets=reasons,
        notes=["Tier low means no factor of the score fired; it is not evidence that a sample is benign."],
    )


def _distribution_section(data: RunData) -> Section:
    s = data.samples
    n = max(len(s), 1)
    counts = {t.value: int((s["tier"] == t.value).sum()) for t in Tier}
    shares = {f: float((s[f"factor_{f}"] > 0).mean()) if len(s) else 0.0 for f in FACTORS}
    rows = [[t, str(c), fmt_pct(c / n)] for t, c in counts.items()]
    risk = s["risk"].to_numpy(dtype=float)
    quant = np.quantile(risk, [0.5, 0.9, 0.99]) if len(risk) else [np.nan] * 3
    factor_rows = [
        [f, fmt_pct(shares[f]), fmt_num(float(s[f"factor_{f}"].mean()) if len(s) else np.nan)]
        for f in FACTORS
    ]
    return Section(
        "distribution",
        "Risk distribution and tier counts",
        facts=[
            ("Mean risk", fmt_num(data.run["mean_risk"])),
            ("Median / 90th / 99th percentile", " / ".join(fmt_num(q) for q in quant)),
            (
                "Samples at high or critical",
                f"{counts['high'] + counts['critical']} ({fmt_pct((counts['high'] + counts['critical']) / n)})",
            ),
        ],
        figures=[
            Figure("Samples per tier", plots.tier_counts(counts), "bar chart of samples per risk tier"),
            Figure(
                "Risk distribution",
                plots.risk_distribution(risk, s["tier"].to_numpy(dtype=object)),
                "histogram of per-sample risk stacked by tier",
            ),
            Figure(
                "Risk factors", plots.factor_prevalence(shares), "share of samples per contributing factor"
            ),
        ],
        tables=[
            Table(["Tier", "Samples", "Share"], rows, caption="Samples per tier", tier_column=0),
            Table(
                ["Factor", "Samples where it contributes", "Mean contribution"],
                factor_rows,
                caption="Risk factors (contributions sum to each sample's risk)",
            ),
        ],
    )


def _abstention_section(data: RunData, policy) -> Section:
    run = data.run
    k = round(float(run["abstention_rate"]) * int(run["n_samples"]))
    facts = [("Abstention rate", f"{fmt_pct(run['abstention_rate'])} ({k} of {run['n_samples']} samples)")]
    paragraphs = [
        (
            "Abstention (no certificate at the policy's noise and confidence, or certification methods that "
            "disagree) is the one reliable signal a certificate gives; a rate above the reference's is tested "
            "one-sided."
        )
    ]
    if data.summary is not None:
        s = data.summary
        ref = s.get("reference_abstention_rate")
        facts.append(("Reference abstention rate", fmt_pct(ref) if ref is not None else "not recorded"))
        if s.get("abstention_test"):
            level = policy.scoring.abstention_p if policy is not None else None
            facts += [
                ("Test", f"{s['abstention_test']} (one-sided: batch abstains more often than the reference)"),
                ("p-value", fmt_p(s.get("abstention_p_value"))),
                ("Level", fmt_p(level) if level is not None else "n/a"),
                ("Elevated", "yes" if s.get("abstention_elevated") else "no"),
            ]
        else:
            facts.append(("Test", "not run: no reference abstention rate was recorded"))
    else:
        ref, p_value = run.get("reference_abstention_rate"), run.get("abstention_p_value")
        facts.append(("Reference abstention rate", fmt_pct(ref) if _present(ref) else "not recorded"))
        if _present(p_value):
            facts.append(
                ("p-value (one-sided: batch abstains more often than the reference)", fmt_p(p_value))
            )
        detail = _evidence_detail(data.evidence, "abstention")
        facts.append(
            ("Test against the reference", detail or "not run: no reference abstention rate was recorded")
        )
        elevated = any("abstention elevated" in str(r) for r in run["reasons"])
        facts.append(("Elevated", "yes" if elevated else "no"))
    return Section("abstention", "Abstention against the reference", paragraphs=paragraphs, facts=facts)


def _drift_section(data: RunData) -> Section:
    run = data.run
    sec = Section("drift", "Drift against the reference set")
    sec.facts.append(("Drift detected", "yes" if run["drift"] else "no"))
    detail = _evidence_detail(data.evidence, "drift")
    if detail:
        sec.facts.append(("Tests", detail))
    if data.drift_tests is not None:
        d = data.drift_tests
        if len(d):
            rows = [
                [
                    r.test,
                    r.family,
                    r.feature,
                    fmt_num(r.statistic, 4),
                    fmt_p(r.p_value),
                    fmt_p(r.q_value),
                    f"{fmt_num(r.effect_size, 3)} ({r.effect_name})",
                    "rejected" if r.drift else "-",
                ]
                for r in d.sort_values(["drift", "q_value"], ascending=[False, True]).itertuples(index=False)
            ]
            sec.tables.append(
                Table(
                    [
                        "Test",
                        "Family",
                        "Feature",
                        "Statistic",
                        "p-value",
                        "Corrected p (q)",
                        "Effect size",
                        "Drift",
                    ],
                    rows,
                    caption="Drift tests, corrected across test families (rejected first)",
                )
            )
        else:
            sec.paragraphs.append("No drift test was recorded for this run.")
    else:
        sec.notes.append(
            "Per-test statistics are in the engineer edition; the compliance views carry the "
            "drift flag and the count of rejected tests."
        )
    return sec


def _rules_section(data: RunData) -> Section:
    s = data.samples
    sec = Section("rules", "Rule outcomes")
    failing = int((s["factor_rules"] > 0).sum()) if len(s) else 0
    sec.facts.append(("Samples failing a row-level rule", f"{failing} of {len(s)}"))
    detail = _evidence_detail(data.evidence, "rules")
    if detail:
        sec.facts.append(("Expectations", detail))
    if data.rule_expectations is not None and len(data.rule_expectations):
        observed = (
            "observed_value" in data.rule_expectations.columns
        )  # the compliance view has no observed values
        rows = [
            [r.expectation, r.severity, r.level, "passed" if r.success else "failed", str(r.unexpected_count)]
            + ([str(r.observed_value)[:60]] if observed else [str(r.column)])
            for r in data.rule_expectations.sort_values("success").itertuples(index=False)
        ]
        last = "Observed" if observed else "Column"
        sec.tables.append(
            Table(
                ["Expectation", "Severity", "Level", "Result", "Unexpected", last],
                rows,
                caption="Rule expectations (failed first)",
            )
        )
    elif data.rule_expectations is None:
        sec.notes.append("Per-expectation results are in the engineer edition.")
    return sec


def _driving_certificates(data: RunData) -> pd.DataFrame | None:
    c = data.certificates
    if c is None or not len(c):
        return None
    wide = c.pivot_table(index="sample_id", columns="method", values=["radius", "p_lower"], aggfunc="first")
    wide.columns = [f"{value}_{method}" for value, method in wide.columns]
    return wide.reset_index()


def _samples_section(data: RunData) -> tuple[Section, pd.DataFrame]:
    s = data.samples.sort_values("risk", ascending=False, kind="stable").reset_index(drop=True)
    engineer = data.edition is Edition.ENGINEER
    certs = _driving_certificates(data) if engineer else None
    cols = ["Sample", "Tier", "Risk", "Certificate", "Leading factors"]
    if engineer:
        cols += ["Prediction (base)"]
        methods = sorted(data.certificates["method"].unique()) if certs is not None else []
        norms = (
            dict(zip(data.certificates["method"], data.certificates["norm"], strict=False))
            if certs is not None
            else {}
        )
        bounded = [
            m
            for m in methods
            if certs is not None and f"p_lower_{m}" in certs and certs[f"p_lower_{m}"].notna().any()
        ]
        cols += [f"Radius {m} ({norms.get(m, '')})" for m in methods] + [f"p_lower {m}" for m in bounded]
        merged = s.merge(certs, on="sample_id", how="left") if certs is not None else s
    else:
        methods, merged = [], s
    rows = []
    for _, r in merged.head(TOP_SAMPLES).iterrows():
        row = [
            str(r["sample_id"]),
            str(r["tier"]),
            fmt_num(r["risk"]),
            "abstained" if bool(r["abstained"]) else "certified",
            leading_factors(r),
        ]
        if engineer:
            row.append(f"{int(r['prediction'])} ({int(r['base_prediction'])})")
            row += [fmt_num(r.get(f"radius_{m}"), 4) for m in methods]
            row += [fmt_num(r.get(f"p_lower_{m}"), 4) for m in bounded]
        rows.append(row)
    sec = Section(
        "samples",
        "Top-risk samples",
        paragraphs=[
            (
                f"The {min(TOP_SAMPLES, len(s))} riskiest of {len(s)} samples, with the factors that contribute most "
                "to each risk. The CSV format lists every sample."
            )
        ],
        tables=[Table(cols, rows, tier_column=1)],
    )
    if not engineer:
        sec.notes.append(
            "Certificate shows whether the sample obtained a certificate; certified radii and "
            "confidence bounds are withheld from this edition."
        )
    # CSV frame: every sample, compliance columns; the engineer edition adds its certificate columns
    base = ["sample_id", "tier", "risk", "abstained", *(f"factor_{f}" for f in FACTORS), "top_factors"]
    frame = merged[base + (["prediction", "base_prediction"] if engineer else [])].copy()
    if engineer and certs is not None:
        frame = frame.merge(certs, on="sample_id", how="left")
    frame["top_factors"] = [";".join(_lists(v)) for v in frame["top_factors"]]
    return sec, frame


def _methods_section(data: RunData) -> Section:
    sec = Section("methods", "Certification methods compared")
    c = data.certificates
    if c is None:
        detail = _evidence_detail(data.evidence, "certificate")
        if detail:
            sec.facts.append(("Certification", detail))
        sec.facts.append(("Samples not abstained", fmt_pct(1.0 - float(data.run["abstention_rate"]))))
        costs = data.method_costs
        if costs is not None and len(costs):
            rows = [
                [
                    str(r.method),
                    f"{int(r.n_samples):,}",
                    fmt_pct(r.share_certified),
                    fmt_pct(r.share_abstained),
                    f"{1000 * r.total_seconds / int(r.n_samples):.2f} ms"
                    if _present(r.total_seconds)
                    else "n/a",
                    f"{r.total_seconds:.2f} s" if _present(r.total_seconds) else "n/a",
                    fmt_bytes(r.peak_bytes) if _present(r.peak_bytes) else "n/a",
                    f"{int(r.forward_passes) / int(r.n_samples):,.0f}"
                    if _present(r.forward_passes)
                    else "n/a",
                ]
                for r in costs.itertuples(index=False)
            ]
            sec.paragraphs.append(
                "What each method costs on this batch: wall time amortised per sample, the batch's peak "
                "memory, forward passes per sample, and the shares of samples certified and abstained."
            )
            sec.tables.append(
                Table(
                    [
                        "Method",
                        "Samples",
                        "Certified",
                        "Abstained",
                        "Time / sample",
                        "Total time",
                        "Peak memory",
                        "Forward passes / sample",
                    ],
                    rows,
                    caption="Resource comparison of the certification methods",
                )
            )
        else:
            sec.notes.append("Per-method time, memory and forward passes are in the engineer edition.")
        return sec
    if not len(c):
        sec.paragraphs.append("No certificate rows were recorded for this run.")
        return sec
    rows = []
    for method, g in c.groupby("method", sort=True):
        rows.append(
            [
                str(method),
                str(g["norm"].iloc[0]),
                str(len(g)),
                fmt_pct(1.0 - g["abstained"].astype(bool).mean()),
                f"{1000 * g['seconds'].mean():.2f} ms",
                f"{g['seconds'].sum():.2f} s",
                fmt_bytes(g["peak_bytes"].max()),
                f"{g['n_forward'].mean():,.0f}",
                ", ".join(sorted(set(g["device"].astype(str)))),
                fmt_num(
                    float(g.loc[~g["abstained"].astype(bool), "radius"].median())
                    if (~g["abstained"].astype(bool)).any()
                    else float("nan"),
                    4,
                ),
            ]
        )
    sec.paragraphs.append(
        "What each method costs and what it yields on this batch: wall time amortised per sample, the "
        "batch's peak memory, forward passes per sample, and the share of samples certified."
    )
    sec.tables.append(
        Table(
            [
                "Method",
                "Norm",
                "Samples",
                "Certified",
                "Time / sample",
                "Total time",
                "Peak memory",
                "Forward passes / sample",
                "Device",
                "Median radius",
            ],
            rows,
            caption="Resource comparison of the certification methods",
        )
    )
    sec.figures.append(
        Figure("Certified radii", plots.radius_histograms(c), "histograms of certified radii per method")
    )
    return sec


def _limitations_section(data: RunData, policy) -> Section:
    sec = Section("limitations", "Limitations: what the certificates cover and what they do not")
    sec.markdown = str(data.run.get("limitations") or "")
    if not sec.markdown:
        sec.paragraphs.append("No limitations statement was recorded with this run.")
    if policy is not None:
        rows = []
        for m in policy.certification.methods:
            if isinstance(m, SmoothingSpec):
                rows.append(
                    [
                        m.method.value,
                        m.norm.value,
                        f"sigma = {m.sigma}",
                        f"alpha = {m.alpha}",
                        f"n0 = {m.n0}, n = {m.n}",
                    ]
                )
            elif isinstance(m, IBPSpec):
                rows.append(
                    [
                        m.method.value,
                        m.norm.value,
                        f"eps = {m.eps if m.eps is not None else 'searched'}",
                        "-",
                        "-",
                    ]
                )
            else:
                rows.append([m.method.value, m.norm.value, "-", "-", "-"])
        sec.tables.append(
            Table(
                ["Method", "Norm", "Noise / eps", "Confidence", "Samples"],
                rows,
                caption="Certification parameters of the recorded policy",
            )
        )
    return sec


def _crosswalk_section(data: RunData) -> Section:
    unmeasured = _evidence_detail(data.evidence, "unmeasured") or ""
    have, missing = crosswalk(data.evidence, not_measured=unmeasured)
    return Section(
        "crosswalk",
        "NIST AI RMF crosswalk",
        paragraphs=[
            (
                f"Source: {catalog_source()}. Evidence is what this run recorded; MEASURE 1.1 lists what it did "
                "not measure."
            )
        ],
        tables=[have, missing],
    )


def _provenance_section(data: RunData, policy) -> Section:
    run = data.run
    facts = [
        ("certrisk version", str(run["package_version"])),
        (
            "DAG and run",
            (
                f"{run['dag_id']} / {run['run_id']} (revision {run['revision']}"
                f"{'' if run['is_current'] else ', superseded'})"
            ),
        ),
        ("Batch", str(run["batch"])),
        ("Created / recorded", f"{fmt_time(run['created_at'])} / {fmt_time(run['recorded_at'])}"),
        ("Model", f"{run['model']} sha256 {run['model_sha256']}"),
        ("Policy", f"sha256 {run['policy_sha256']}"),
        ("Manifest digest", str(run["manifest_digest"])),
    ]
    if data.summary is not None:
        s = data.summary
        key = s.get("run_key") or (s.get("seeds") or {}).get("run_key") or f"{run['dag_id']}/{run['run_id']}"
        seeds = f"derived from run key {key}, sample_id and method"
        if data.certificates is not None and len(data.certificates):
            seeds += f"; {data.certificates['seed'].nunique()} distinct seeds recorded"
        facts.append(("Seeds", seeds))
        if s.get("batch_sha256"):
            facts.append(("Batch file", f"sha256 {s['batch_sha256']}"))
        if s.get("devices"):
            facts.append(("Devices", ", ".join(map(str, s["devices"]))))
    else:
        facts.append(("Seeds", f"derived from run key {run['dag_id']}/{run['run_id']}, sample_id and method"))
    if policy is not None:
        facts.append(("Reference set", str(policy.data.reference)))
    a = data.audit
    status = ("intact" if a.ok else "BROKEN") if a.checked else "not checked"
    facts.append(("Audit chain", f"{status}: {a.message}"))
    if a.head:
        facts.append(("Audit chain head", a.head))
    return Section("provenance", "Provenance", facts=facts)


def run_report(data: RunData, *, generated_at: datetime | None = None) -> Report:
    """The per-run report of ``data`` (its edition decides what it may show)."""
    policy = _policy(data.policy_text) if data.edition is Edition.ENGINEER else None
    run = data.run
    s = data.samples
    high = int(s["tier"].isin([Tier.HIGH.value, Tier.CRITICAL.value]).sum())
    samples_sec, frame = _samples_section(data)
    sections = [
        _tier_section(data),
        _distribution_section(data),
        _abstention_section(data, policy),
        _drift_section(data),
        _rules_section(data),
        samples_sec,
        _methods_section(data),
        _limitations_section(data, policy),
        _crosswalk_section(data),
        _provenance_section(data, policy),
    ]
    headline = [
        ("Batch tier", str(run["tier"])),
        ("Samples", f"{int(run['n_samples']):,}"),
        ("Abstention rate", fmt_pct(run["abstention_rate"])),
        ("Mean risk", fmt_num(run["mean_risk"])),
        ("High or critical samples", f"{high}"),
        ("Drift", "detected" if run["drift"] else "none detected"),
    ]
    return Report(
        kind="run",
        edition=data.edition,
        title=f"certrisk run report: {run['model']}",
        subtitle=f"{run['dag_id']} / {run['run_id']}, created {fmt_time(run['created_at'])}",
        tier=str(run["tier"]),
        headline=headline,
        sections=sections,
        csv=frame,
        generated_at=generated_at or datetime.now(UTC),
        edition_note=EDITION_NOTES[data.edition],
    )


# ------------------------------------------------------------------------------------ per period


def _coverage_per_day(evidence: pd.DataFrame) -> pd.DataFrame:
    if not len(evidence):
        return pd.DataFrame(columns=["day", "evidenced", "cumulative"])
    e = evidence.assign(day=evidence["created_at"].dt.tz_convert(UTC).dt.date)
    per_day = e.groupby("day")["subcategory_id"].nunique().rename("evidenced").reset_index()
    seen: set = set()
    cumulative = []
    for day in per_day["day"]:
        seen |= set(e.loc[e["day"] == day, "subcategory_id"])
        cumulative.append(len(seen))
    per_day["cumulative"] = cumulative
    return per_day


def period_report(data: PeriodData, *, generated_at: datetime | None = None) -> Report:
    """The per-period report: daily trends, runs at high or critical tier, RMF coverage over time."""
    runs, trend = data.runs, data.trend
    n_runs = len(runs)
    flagged = runs.loc[runs["tier"].isin([Tier.HIGH.value, Tier.CRITICAL.value])]
    n_samples = int(runs["n_samples"].sum()) if n_runs else 0
    abst = (
        float((runs["abstention_rate"] * runs["n_samples"]).sum() / n_samples) if n_samples else float("nan")
    )
    mean_risk = (
        float((runs["mean_risk"] * runs["n_samples"]).sum() / n_samples) if n_samples else float("nan")
    )
    scope = f"model {data.model}" if data.model else "all models"
    covered = sorted(set(data.evidence_by_run["subcategory_id"]))
    total = len(catalog())

    trend_rows = [
        [
            str(r.day),
            r.model,
            str(r.n_runs),
            f"{int(r.n_samples):,}",
            fmt_pct(r.abstention_rate),
            fmt_num(r.mean_risk),
            r.worst_tier,
        ]
        for r in trend.itertuples(index=False)
    ]
    trends = Section(
        "trends",
        "Daily trends",
        paragraphs=[f"{n_runs} runs of {scope} between {fmt_time(data.since)} and {fmt_time(data.until)}."],
        figures=[
            Figure(
                "Daily abstention rate and mean risk",
                plots.daily_trend(trend),
                "daily abstention rate and mean risk",
            )
        ]
        if len(trend)
        else [],
        tables=[
            Table(
                ["Day (UTC)", "Model", "Runs", "Samples", "Abstention rate", "Mean risk", "Worst tier"],
                trend_rows,
                caption="Per day, sample-weighted over current runs",
                tier_column=6,
            )
        ],
    )
    if not len(trend):
        trends.paragraphs.append("No run was recorded in this period.")
    flagged_rows = [
        [
            fmt_time(r.created_at),
            r.dag_id,
            r.run_id,
            r.tier,
            f"{int(r.n_samples):,}",
            fmt_pct(r.abstention_rate),
            fmt_num(r.mean_risk),
            "; ".join(str(x) for x in (r.reasons or [])[:2]) or "-",
        ]
        for r in flagged.itertuples(index=False)
    ]
    flagged_sec = Section(
        "flagged",
        "Runs at high or critical tier",
        paragraphs=[f"{len(flagged)} of {n_runs} runs reached tier high or critical."],
        figures=[Figure("Runs per day by batch tier", plots.runs_by_tier(runs), "runs per day by tier")]
        if n_runs
        else [],
        tables=[
            Table(
                ["Created", "DAG", "Run", "Tier", "Samples", "Abstention", "Mean risk", "Reasons"],
                flagged_rows,
                tier_column=3,
                widths=[0.13, 0.12, 0.14, 0.07, 0.07, 0.08, 0.07, 0.32],
            )
        ],
    )
    per_day = _coverage_per_day(data.evidence_by_run)
    by_fn: dict[str, list[int]] = {}
    for sid, sub in catalog().items():
        entry = by_fn.setdefault(sub.function, [0, 0])
        entry[1] += 1
        entry[0] += sid in covered
    cov = data.coverage
    cov_rows = [
        [r.subcategory_id, r.text, str(r.n_runs), ", ".join(r.evidence_kinds), fmt_time(r.last_evidenced_at)]
        for r in cov.loc[cov["subcategory_id"].isin(covered)].itertuples(index=False)
    ]
    coverage = Section(
        "coverage",
        "NIST AI RMF coverage over time",
        facts=[(fn, f"{have} of {n} subcategories evidenced") for fn, (have, n) in by_fn.items()],
        figures=[
            Figure(
                "Subcategories evidenced",
                plots.rmf_coverage_over_time(per_day, total),
                "NIST AI RMF subcategories evidenced per day",
            )
        ],
        tables=[
            Table(
                ["Subcategory", "NIST AI RMF 1.0 Core", "Runs (all time)", "Evidence", "Last evidenced"],
                cov_rows,
                caption=f"{len(covered)} of {total} subcategories evidenced in the period",
                widths=[0.1, 0.45, 0.08, 0.2, 0.17],
            )
        ],
        notes=["Subcategories without evidence are left to people; each run report's crosswalk says why."],
    )
    sections = [trends, flagged_sec, coverage]
    if data.edition is Edition.ENGINEER and data.radius_by_run is not None:
        r = data.radius_by_run
        rows = []
        for (created, run_id, method, norm), g in r.groupby(
            ["created_at", "run_id", "method", "norm"], sort=True
        ):
            cert = g.loc[~g["abstained"]]
            rows.append(
                [
                    fmt_time(created),
                    str(run_id),
                    str(method),
                    str(norm),
                    fmt_pct(len(cert) / len(g)),
                    fmt_num(cert["radius"].quantile(0.1) if len(cert) else float("nan"), 4),
                    fmt_num(cert["radius"].median() if len(cert) else float("nan"), 4),
                    fmt_num(cert["p_lower"].median() if len(cert) else float("nan"), 4),
                ]
            )
        sections.append(
            Section(
                "radii",
                "Certified radii per run",
                tables=[
                    Table(
                        [
                            "Created",
                            "Run",
                            "Method",
                            "Norm",
                            "Certified",
                            "Radius p10",
                            "Radius median",
                            "p_lower median",
                        ],
                        rows,
                        caption="Certified samples only; radii in each method's norm",
                    )
                ],
            )
        )
    a = data.audit
    status = ("intact" if a.ok else "BROKEN") if a.checked else "not checked"
    sections.append(
        Section(
            "provenance",
            "Provenance",
            facts=[
                ("certrisk version", certrisk.__version__),
                ("Period", f"{data.days} days: {fmt_time(data.since)} to {fmt_time(data.until)}"),
                ("Scope", scope),
                ("Audit chain", f"{status}: {a.message}"),
                *([("Audit chain head", a.head)] if a.head else []),
            ],
        )
    )
    headline = [
        ("Runs", str(n_runs)),
        ("High or critical runs", str(len(flagged))),
        ("Samples", f"{n_samples:,}"),
        ("Abstention rate", fmt_pct(abst)),
        ("Mean risk", fmt_num(mean_risk)),
        ("RMF subcategories evidenced", f"{len(covered)} of {total}"),
    ]
    worst = max((Tier(t) for t in runs["tier"]), default=None) if n_runs else None
    frame = runs[
        [
            "created_at",
            "dag_id",
            "run_id",
            "revision",
            "model",
            "n_samples",
            "abstention_rate",
            "mean_risk",
            "tier",
            "drift",
        ]
    ].copy()
    frame["reasons"] = [";".join(str(x) for x in (v or [])) for v in runs["reasons"]]
    return Report(
        kind="period",
        edition=data.edition,
        title=f"certrisk period report: {data.model or 'all models'}",
        subtitle=f"last {data.days} days, {fmt_time(data.since)} to {fmt_time(data.until)}",
        tier=worst.value if worst else None,
        headline=headline,
        sections=sections,
        csv=frame,
        generated_at=generated_at or datetime.now(UTC),
        edition_note=EDITION_NOTES[data.edition],
    )
