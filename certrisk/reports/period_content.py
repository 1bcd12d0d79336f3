"""The per-period report: ``period_report(data)`` turns ``PeriodData`` (one model's current runs over
a span of days) into a ``Report``: daily trends, runs at high or critical tier, human review (the
decisions per outcome, the runs still pending), NIST AI RMF coverage over time (review decisions
count as evidence), certified radii per run (engineer edition) and provenance, with the runs as the
CSV frame.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

import pandas as pd

import certrisk
from certrisk.reports import plots
from certrisk.reports.document import EDITION_NOTES, FLAGGED_TIERS, Figure, Report, Section, Table
from certrisk.reports.formatting import audit_facts, fmt_num, fmt_pct, fmt_time, present
from certrisk.reports.run_content import REVIEW_NOTE, last_verify_facts, review_table
from certrisk.reports.sources import PeriodData
from certrisk.schemas.clock import as_utc_timestamp, utc_now
from certrisk.schemas.enums import Edition, Tier
from certrisk.schemas.review import DECISION_WORDS, DECISIONS, REVIEW_EVIDENCE, REVIEW_RMF
from certrisk.schemas.rmf import Coverage, coverage

#: Columns of the period CSV (one row per run; reasons joined with ";").
CSV_COLUMNS = [
    "created_at", "dag_id", "run_id", "revision", "model", "n_samples", "abstention_rate", "mean_risk",
    "tier", "drift", "review",
]  # fmt: skip


def _scope(data: PeriodData) -> str:
    return f"model {data.model}" if data.model else "all models"


def _weighted(runs: pd.DataFrame, column: str) -> float:
    """``column`` averaged over the runs' samples (NaN without samples)."""
    n = int(runs["n_samples"].sum()) if len(runs) else 0
    return float((runs[column] * runs["n_samples"]).sum() / n) if n else float("nan")


def _flagged(runs: pd.DataFrame) -> pd.DataFrame:
    return runs.loc[runs["tier"].isin(FLAGGED_TIERS)]


def _trends_section(data: PeriodData) -> Section:
    trend = data.trend
    rows = [
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
    sec = Section(
        "trends",
        "Daily trends",
        paragraphs=[
            f"{len(data.runs)} runs of {_scope(data)} between {fmt_time(data.since)} and {fmt_time(data.until)}."
        ],
        tables=[
            Table(
                ["Day (UTC)", "Model", "Runs", "Samples", "Abstention rate", "Mean risk", "Worst tier"],
                rows,
                caption="Per day, sample-weighted over current runs",
                tier_column=6,
            )
        ],
    )
    if len(trend):
        sec.figures.append(
            Figure(
                "Daily abstention rate and mean risk",
                plots.daily_trend(trend),
                "daily abstention rate and mean risk",
            )
        )
    else:
        sec.paragraphs.append("No run was recorded in this period.")
    return sec


def _flagged_section(data: PeriodData) -> Section:
    runs = data.runs
    flagged = _flagged(runs)
    rows = [
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
    return Section(
        "flagged",
        "Runs at high or critical tier",
        paragraphs=[f"{len(flagged)} of {len(runs)} runs reached tier high or critical."],
        figures=[Figure("Runs per day by batch tier", plots.runs_by_tier(runs), "runs per day by tier")]
        if len(runs)
        else [],
        tables=[
            Table(
                ["Created", "DAG", "Run", "Tier", "Samples", "Abstention", "Mean risk", "Reasons"],
                rows,
                tier_column=3,
                widths=[0.13, 0.12, 0.14, 0.07, 0.07, 0.08, 0.07, 0.32],
            )
        ],
    )


def _reviews(data: PeriodData) -> pd.DataFrame:
    return data.reviews if data.reviews is not None else pd.DataFrame(columns=["decision", "created_at"])


def review_counts(data: PeriodData) -> dict[str, int]:
    """Recorded decisions per outcome in the period ({decision: count}, every decision) and the
    runs still "pending" (their tier asks for a review and nobody decided)."""
    decided = _reviews(data)["decision"].value_counts()
    counts = {d: int(decided.get(d, 0)) for d in DECISIONS}
    counts["pending"] = int((data.runs["review"] == "pending").sum()) if "review" in data.runs else 0
    return counts


def _review_words(counts: dict[str, int]) -> str:
    said = ", ".join(f"{counts[d]} {DECISION_WORDS[d]}" for d in DECISIONS)
    return f"{said}; {counts['pending']} pending"


def _review_section(data: PeriodData) -> Section:
    counts = review_counts(data)
    reviews = _reviews(data)
    sec = Section(
        "review",
        "Human review",
        paragraphs=[f"Review decisions on the period's runs: {_review_words(counts)}."],
        facts=[(DECISION_WORDS[d].capitalize(), str(counts[d])) for d in DECISIONS]
        + [("Pending (tier at or above the policy's review tier, no decision)", str(counts["pending"]))],
        notes=[REVIEW_NOTE],
    )
    if len(reviews):
        sec.tables.append(review_table(reviews, run_column=True))
    pending = data.runs.loc[data.runs["review"] == "pending"] if "review" in data.runs else data.runs.iloc[:0]
    if len(pending):
        rows = [[fmt_time(r.created_at), r.dag_id, r.run_id, r.tier] for r in pending.itertuples(index=False)]
        sec.tables.append(
            Table(["Created", "DAG", "Run", "Tier"], rows, caption="Runs awaiting a decision", tier_column=3)
        )
    return sec


def _coverage_per_day(evidence: pd.DataFrame) -> pd.DataFrame:
    """Per UTC day: subcategories evidenced that day, and evidenced so far in the period."""
    if not len(evidence):
        return pd.DataFrame(columns=["day", "evidenced", "cumulative"])
    e = evidence.assign(day=[as_utc_timestamp(v).date() for v in evidence["created_at"]])
    per_day = e.groupby("day")["subcategory_id"].nunique().rename("evidenced").reset_index()
    seen: set = set()
    cumulative = []
    for day in per_day["day"]:
        seen |= set(e.loc[e["day"] == day, "subcategory_id"])
        cumulative.append(len(seen))
    per_day["cumulative"] = cumulative
    return per_day


def _evidence(data: PeriodData) -> pd.DataFrame:
    """The period's RMF evidence rows with the review decisions' (``REVIEW_RMF``) added."""
    reviews = _reviews(data)
    if not len(reviews):
        return data.evidence_by_run
    rows = pd.DataFrame(
        [[created, sid, REVIEW_EVIDENCE] for created in reviews["created_at"] for sid in REVIEW_RMF],
        columns=["created_at", "subcategory_id", "evidence_kind"],
    )
    return pd.concat([data.evidence_by_run, rows], ignore_index=True)


def _coverage(data: PeriodData) -> list[Coverage]:
    """The period's NIST AI RMF coverage, one entry per subcategory in Core order."""
    evidence = _evidence(data)
    return coverage(
        zip(evidence["subcategory_id"], evidence["evidence_kind"], [""] * len(evidence), strict=True)
    )


def _coverage_section(data: PeriodData, entries: list[Coverage]) -> Section:
    covered = [c.subcategory.id for c in entries if c.evidenced]
    per_function = Counter(c.subcategory.function for c in entries)
    evidenced = Counter(c.subcategory.function for c in entries if c.evidenced)
    cov = data.coverage
    reviewed = _reviews(data)
    review_ids = set(REVIEW_RMF) if len(reviewed) else set()
    last_review = reviewed["created_at"].max() if len(reviewed) else None

    def kinds(r) -> str:
        return ", ".join(
            sorted({*r.evidence_kinds, *([REVIEW_EVIDENCE] if r.subcategory_id in review_ids else [])})
        )

    def last(r):
        stamps = [
            t
            for t in (r.last_evidenced_at, last_review if r.subcategory_id in review_ids else None)
            if present(t)
        ]
        return max(stamps) if stamps else None

    cov_rows = [
        [r.subcategory_id, r.text, str(r.n_runs), kinds(r), fmt_time(last(r))]
        for r in cov.loc[cov["subcategory_id"].isin(covered)].itertuples(index=False)
    ]
    return Section(
        "coverage",
        "NIST AI RMF coverage over time",
        facts=[(fn, f"{evidenced[fn]} of {n} subcategories evidenced") for fn, n in per_function.items()],
        figures=[
            Figure(
                "Subcategories evidenced",
                plots.rmf_coverage_over_time(_coverage_per_day(_evidence(data)), len(entries)),
                "NIST AI RMF subcategories evidenced per day",
            )
        ],
        tables=[
            Table(
                ["Subcategory", "NIST AI RMF 1.0 Core", "Runs (all time)", "Evidence", "Last evidenced"],
                cov_rows,
                caption=f"{len(covered)} of {len(entries)} subcategories evidenced in the period",
                widths=[0.1, 0.45, 0.08, 0.2, 0.17],
            )
        ],
        notes=["Subcategories without evidence are left to people; each run report's crosswalk says why."],
    )


def _radius_row(key: tuple, g: pd.DataFrame) -> list[str]:
    """One run and method: share certified, radius p10 and median, p_lower median."""
    created, run_id, method, norm = key
    cert = g.loc[~g["abstained"]]
    nan = float("nan")
    return [
        fmt_time(created),
        str(run_id),
        str(method),
        str(norm),
        fmt_pct(len(cert) / len(g)),
        fmt_num(cert["radius"].quantile(0.1) if len(cert) else nan, 4),
        fmt_num(cert["radius"].median() if len(cert) else nan, 4),
        fmt_num(cert["p_lower"].median() if len(cert) else nan, 4),
    ]


def _radii_section(radius_by_run: pd.DataFrame) -> Section:
    groups = radius_by_run.groupby(["created_at", "run_id", "method", "norm"], sort=True)
    columns = [
        "Created", "Run", "Method", "Norm", "Certified", "Radius p10", "Radius median", "p_lower median",
    ]  # fmt: skip
    return Section(
        "radii",
        "Certified radii per run",
        tables=[
            Table(
                columns,
                [_radius_row(key, g) for key, g in groups],
                caption="Certified samples only; radii in each method's norm",
            )
        ],
    )


def _provenance_section(data: PeriodData) -> Section:
    facts = [
        ("certrisk version", certrisk.__version__),
        ("Period", f"{data.days} days: {fmt_time(data.since)} to {fmt_time(data.until)}"),
        ("Scope", _scope(data)),
        *audit_facts(data.audit),
        *last_verify_facts(data.last_verify),
    ]
    return Section("provenance", "Provenance", facts=facts)


def _headline(data: PeriodData, entries: list[Coverage]) -> list[tuple[str, str]]:
    runs = data.runs
    n_samples = int(runs["n_samples"].sum()) if len(runs) else 0
    evidenced = sum(c.evidenced for c in entries)
    return [
        ("Runs", str(len(runs))),
        ("High or critical runs", str(len(_flagged(runs)))),
        ("Samples", f"{n_samples:,}"),
        ("Abstention rate", fmt_pct(_weighted(runs, "abstention_rate"))),
        ("Mean risk", fmt_num(_weighted(runs, "mean_risk"))),
        ("RMF subcategories evidenced", f"{evidenced} of {len(entries)}"),
        ("Reviews", _review_words(review_counts(data))),
    ]


def period_report(data: PeriodData, *, generated_at: datetime | None = None) -> Report:
    """The per-period report: daily trends, runs at high or critical tier, RMF coverage over time."""
    runs = data.runs
    entries = _coverage(data)
    sections = [
        _trends_section(data),
        _flagged_section(data),
        _review_section(data),
        _coverage_section(data, entries),
    ]
    if data.edition is Edition.ENGINEER and data.radius_by_run is not None:
        sections.append(_radii_section(data.radius_by_run))
    sections.append(_provenance_section(data))
    worst = max((Tier(t) for t in runs["tier"]), default=None) if len(runs) else None
    frame = runs[CSV_COLUMNS].copy()
    frame["reasons"] = [";".join(str(x) for x in (v or [])) for v in runs["reasons"]]
    return Report(
        kind="period",
        edition=data.edition,
        title=f"certrisk period report: {data.model or 'all models'}",
        subtitle=f"last {data.days} days, {fmt_time(data.since)} to {fmt_time(data.until)}",
        tier=worst.value if worst else None,
        headline=_headline(data, entries),
        sections=sections,
        csv=frame,
        generated_at=generated_at or utc_now(),
        edition_note=EDITION_NOTES[data.edition],
    )
