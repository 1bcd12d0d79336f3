"""The per-run report: ``run_report(data)`` turns what a source read (``RunData``) into a ``Report``
of headline figures and sections (tier and reasons, human review, risk distribution, abstention,
drift, rules, top-risk samples, methods, limitations, NIST AI RMF crosswalk, provenance) and the
CSV frame. Both editions state the review decisions on the record; they are evidence for NIST AI
RMF MANAGE 1.3, MANAGE 2.4, GOVERN 3.2 and MEASURE 3.3 in the crosswalk.

Batch figures (the abstention test, drift and rule counts, what was not measured) are numbers from
the run's stored batch summary (``RunData.facts``), never parsed back out of reasons or evidence
prose. The compliance edition is built from compliance data only (``ComplianceSource``): it has no
certificate table to draw a radius or a confidence bound from. No text here calls a sample safe or
secure, or says it was not attacked (DESIGN.md, Principle 1).
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import yaml

from certrisk.governance.facts import BatchFacts
from certrisk.reports import plots
from certrisk.reports.crosswalk import crosswalk
from certrisk.reports.detection import detection_section
from certrisk.reports.document import EDITION_NOTES, FLAGGED_TIERS, Figure, Report, Section, Table
from certrisk.reports.formatting import audit_facts, fmt_num, fmt_p, fmt_pct, fmt_time
from certrisk.reports.run_certificates import limitations_section, methods_section, samples_section
from certrisk.reports.sources import RunData
from certrisk.schemas.clock import utc_now
from certrisk.schemas.columns import FACTORS
from certrisk.schemas.enums import Edition, Tier
from certrisk.schemas.errors import PolicyError
from certrisk.schemas.policy import parse_policy
from certrisk.schemas.review import DECISION_WORDS, REVIEW_EVIDENCE, REVIEW_RMF
from certrisk.schemas.rmf import catalog_source


def _policy(text: str | None):
    """The recorded policy, or None where it is not recorded or no longer parses."""
    if not text:
        return None
    try:
        return parse_policy(yaml.safe_load(text), source="recorded policy")
    except (PolicyError, yaml.YAMLError):
        return None


def _tier_section(data: RunData) -> Section:
    run = data.run
    reasons = [str(r) for r in run["reasons"]] or ["no rule of the batch score fired: tier low"]
    paragraphs = [
        (
            f"Batch tier {run['tier']} for {run['n_samples']} samples of batch {run['batch']} "
            f"(model {run['model']}, recorded {fmt_time(run['recorded_at'])})."
        )
    ]
    if run.get("revised"):  # a superseding revision: the record was changed after it was first written
        paragraphs.append(
            f"This record was {run['revised']}. The earlier revision stays recorded and verifiable; "
            f"--all-revisions in `certrisk runs` lists it."
        )
    return Section(
        "tier",
        "Batch tier and reasons",
        paragraphs=paragraphs,
        bullets=reasons,
        notes=["Tier low means no factor of the score fired; it is not evidence that a sample is benign."],
    )


#: What a report says about a review's record.
REVIEW_NOTE = (
    "Each decision is an append-only record with its own audit-chain entry (`certrisk verify` covers it); "
    "a changed decision is a new record and the latest decides the review state. Evidence for NIST AI "
    f"RMF {', '.join(REVIEW_RMF)}."
)


def review_table(reviews: pd.DataFrame, *, run_column: bool = False) -> Table:
    """Review decisions, newest first: when, decision, reviewer, source, revision (or the run), comment."""
    rows = []
    for r in reviews.itertuples(index=False):
        where = f"{r.dag_id} / {r.run_id}" if run_column else str(r.revision)
        rows.append(
            [fmt_time(r.decided_at), DECISION_WORDS.get(r.decision, r.decision), str(r.reviewer), str(r.source),
             where, str(r.comment) or "-"]
        )  # fmt: skip
    return Table(
        ["Decided", "Decision", "Reviewer", "Source", "Run" if run_column else "Revision", "Comment"],
        rows,
        caption="Review decisions on the record, newest first",
        widths=[0.15, 0.1, 0.13, 0.11, 0.17 if run_column else 0.08, 0.34 if run_column else 0.43],
    )


def _current_reviews(data: RunData) -> pd.DataFrame:
    """The decisions on the revision the report shows."""
    reviews = data.reviews
    if reviews is None or not len(reviews):
        return pd.DataFrame(columns=["decision"])
    return reviews.loc[reviews["revision"] == int(data.run["revision"])]


def _review_section(data: RunData) -> Section:
    run = data.run
    state = run.get("review") or ""
    current = _current_reviews(data)
    if len(current):
        latest = current.iloc[0]
        said = f': "{latest["comment"]}"' if latest["comment"] else ""
        lead = f"Review state: {state}, {fmt_time(latest['decided_at'])} (source {latest['source']}){said}."
    elif state == "pending":
        lead = (
            f"Review state: pending. The policy in force asks for a reviewer's decision on batches from tier "
            f"{run.get('review_at_tier')}; this batch is tier {run['tier']} and no decision is recorded yet."
        )
    else:
        lead = "No review was asked for this batch (no review section in the policy, or a tier below it) and none is recorded."
    sec = Section("review", "Human review", paragraphs=[lead], notes=[REVIEW_NOTE])
    if data.reviews is not None and len(data.reviews):
        sec.tables.append(review_table(data.reviews))
        if len(current) < len(data.reviews):
            sec.notes.append("Decisions on earlier revisions of this run are listed with their revision.")
    return sec


def _review_evidence(data: RunData) -> pd.DataFrame:
    """The run's RMF evidence rows with its review decisions (NIST AI RMF ``REVIEW_RMF``) added."""
    current = _current_reviews(data)
    if not len(current):
        return data.evidence
    detail = f"{len(current)} decision(s); latest: {data.run.get('review') or current.iloc[0]['decision']}"
    rows = pd.DataFrame(
        [[sid, REVIEW_EVIDENCE, detail] for sid in REVIEW_RMF], columns=list(data.evidence.columns)
    )
    return pd.concat([data.evidence, rows], ignore_index=True)


def last_verify_facts(last: dict | None) -> list[tuple[str, str]]:
    """The newest stored ``certrisk verify`` result as a provenance fact."""
    if last is None:
        return [("Last full verify", "none stored: run `certrisk verify` (it stores its result)")]
    outcome = "intact" if last["ok"] else f"BROKEN at {last.get('first_bad_run') or 'the chain'}"
    when = f"{fmt_time(last['verified_at'])} by {last['verified_by']}"
    text = f"{outcome}, {when}: {int(last['rows_checked']):,} rows, head {last['head']}"
    return [("Last full verify", text)]


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
    high = counts[Tier.HIGH.value] + counts[Tier.CRITICAL.value]
    return Section(
        "distribution",
        "Risk distribution and tier counts",
        facts=[
            ("Mean risk", fmt_num(data.run["mean_risk"])),
            ("Median / 90th / 99th percentile", " / ".join(fmt_num(q) for q in quant)),
            ("Samples at high or critical", f"{high} ({fmt_pct(high / n)})"),
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


def _abstention_test_facts(facts: BatchFacts, policy) -> list[tuple[str, str]]:
    """The one-sided test of the batch's abstention rate against the reference's, as recorded."""
    if not facts.abstention_test:
        return [("Test", "not run: no reference abstention rate was recorded")]
    out = [
        ("Test", f"{facts.abstention_test} (one-sided: batch abstains more often than the reference)"),
        ("p-value", fmt_p(facts.abstention_p_value)),
    ]
    if policy is not None:
        out.append(("Level", fmt_p(policy.scoring.abstention_p)))
    elevated = facts.abstention_elevated
    out.append(("Elevated", "not recorded" if elevated is None else "yes" if elevated else "no"))
    return out


def _abstention_section(data: RunData, facts: BatchFacts, policy) -> Section:
    run = data.run
    k = round(float(run["abstention_rate"]) * int(run["n_samples"]))
    ref = facts.reference_abstention_rate
    return Section(
        "abstention",
        "Abstention against the reference",
        paragraphs=[
            (
                "Abstention (no certificate at the policy's noise and confidence, or certification methods that "
                "disagree) is the one reliable signal a certificate gives; a rate above the reference's is tested "
                "one-sided."
            )
        ],
        facts=[
            ("Abstention rate", f"{fmt_pct(run['abstention_rate'])} ({k} of {run['n_samples']} samples)"),
            ("Reference abstention rate", fmt_pct(ref) if ref is not None else "not recorded"),
            *_abstention_test_facts(facts, policy),
        ],
    )


def _drift_table(d: pd.DataFrame) -> Table:
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
    return Table(
        ["Test", "Family", "Feature", "Statistic", "p-value", "Corrected p (q)", "Effect size", "Drift"],
        rows,
        caption="Drift tests, corrected across test families (rejected first)",
    )


def _drift_section(data: RunData, facts: BatchFacts) -> Section:
    sec = Section("drift", "Drift against the reference set")
    sec.facts.append(("Drift detected", "yes" if data.run["drift"] else "no"))
    if facts.n_drift_tests is not None:
        rejected = facts.n_drift_tests_rejected or 0
        sec.facts.append(
            ("Tests", f"{rejected} of {facts.n_drift_tests} drift test(s) rejected after correction")
        )
    d = data.drift_tests
    if d is None:
        sec.notes.append(
            "Per-test statistics are in the engineer edition; the compliance views carry the "
            "drift flag and the count of rejected tests."
        )
    elif len(d):
        sec.tables.append(_drift_table(d))
    else:
        sec.paragraphs.append("No drift test was recorded for this run.")
    return sec


def _rules_table(expectations: pd.DataFrame) -> Table:
    observed = "observed_value" in expectations.columns  # the compliance view has no observed values
    rows = [
        [r.expectation, r.severity, r.level, "passed" if r.success else "failed", str(r.unexpected_count)]
        + ([str(r.observed_value)[:60]] if observed else [str(r.column)])
        for r in expectations.sort_values("success").itertuples(index=False)
    ]
    last = "Observed" if observed else "Column"
    return Table(
        ["Expectation", "Severity", "Level", "Result", "Unexpected", last],
        rows,
        caption="Rule expectations (failed first)",
    )


def _rules_section(data: RunData, facts: BatchFacts) -> Section:
    s = data.samples
    sec = Section("rules", "Rule outcomes")
    failing = int((s["factor_rules"] > 0).sum()) if len(s) else 0
    sec.facts.append(("Samples failing a row-level rule", f"{failing} of {len(s)}"))
    if facts.rule_pass_rate is not None:
        sec.facts.append(("Expectations", f"rule expectation pass rate {facts.rule_pass_rate:.3f}"))
    if data.rule_expectations is None:
        sec.notes.append("Per-expectation results are in the engineer edition.")
    elif len(data.rule_expectations):
        sec.tables.append(_rules_table(data.rule_expectations))
    return sec


def _not_measured(names: tuple[str, ...] | None) -> str:
    """What the run did not measure, from the summary's list ("" where it records none)."""
    if names is None:
        return ""
    return f"not measured in this run: {', '.join(names)}" if names else "every factor and test was measured"


def _crosswalk_section(data: RunData, facts: BatchFacts) -> Section:
    have, missing = crosswalk(_review_evidence(data), not_measured=_not_measured(facts.not_measured))
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


def _seeds_facts(data: RunData) -> list[tuple[str, str]]:
    """How the run's seeds were derived, and the batch file and devices, from the stored summary."""
    run, s = data.run, data.summary
    if s is None:
        return [("Seeds", f"derived from run key {run['dag_id']}/{run['run_id']}, sample_id and method")]
    key = s.get("run_key") or (s.get("seeds") or {}).get("run_key") or f"{run['dag_id']}/{run['run_id']}"
    seeds = f"derived from run key {key}, sample_id and method"
    if data.certificates is not None and len(data.certificates):
        seeds += f"; {data.certificates['seed'].nunique()} distinct seeds recorded"
    facts = [("Seeds", seeds)]
    if s.get("batch_sha256"):
        facts.append(("Batch file", f"sha256 {s['batch_sha256']}"))
    if s.get("devices"):
        facts.append(("Devices", ", ".join(map(str, s["devices"]))))
    return facts


def _provenance_section(data: RunData, policy) -> Section:
    run = data.run
    superseded = "" if run["is_current"] else ", superseded"
    facts = [
        ("certrisk version", str(run["package_version"])),
        ("DAG and run", f"{run['dag_id']} / {run['run_id']} (revision {run['revision']}{superseded})"),
        ("Recorded by", str(run.get("recorded_by") or "not recorded (written before certrisk kept it)")),
        *([("Revision", str(run["revised"]))] if run.get("revised") else []),
        ("Batch", str(run["batch"])),
        ("Created / recorded", f"{fmt_time(run['created_at'])} / {fmt_time(run['recorded_at'])}"),
        ("Model", f"{run['model']} sha256 {run['model_sha256']}"),
        ("Policy", f"sha256 {run['policy_sha256']}"),
        ("Manifest digest", str(run["manifest_digest"])),
        *_seeds_facts(data),
    ]
    if policy is not None:
        facts.append(("Reference set", str(policy.data.reference)))
    facts += audit_facts(data.audit) + last_verify_facts(data.last_verify)
    return Section("provenance", "Provenance", facts=facts)


def _headline(data: RunData) -> list[tuple[str, str]]:
    run = data.run
    high = int(data.samples["tier"].isin(FLAGGED_TIERS).sum())
    revised = (
        [("Revised", f"yes: was tier {run.get('previous_tier') or 'unknown'}")] if run.get("revised") else []
    )
    return [
        ("Batch tier", str(run["tier"])),
        *revised,
        *([("Review", str(run["review"]))] if run.get("review") else []),
        ("Samples", f"{int(run['n_samples']):,}"),
        ("Abstention rate", fmt_pct(run["abstention_rate"])),
        ("Mean risk", fmt_num(run["mean_risk"])),
        ("High or critical samples", f"{high}"),
        ("Drift", "detected" if run["drift"] else "none detected"),
    ]


def run_report(data: RunData, *, generated_at: datetime | None = None) -> Report:
    """The per-run report of ``data`` (its edition decides what it may show)."""
    policy = _policy(data.policy_text) if data.edition is Edition.ENGINEER else None
    facts = data.facts if data.facts is not None else BatchFacts.from_row(data.run)
    run = data.run
    samples_sec, frame = samples_section(data)
    sections = [
        _tier_section(data),
        _review_section(data),
        _distribution_section(data),
        _abstention_section(data, facts, policy),
        _drift_section(data, facts),
        _rules_section(data, facts),
        samples_sec,
        detection_section(data.evaluation, str(run["model"])),
        methods_section(data),
        limitations_section(data, policy),
        _crosswalk_section(data, facts),
        _provenance_section(data, policy),
    ]
    return Report(
        kind="run",
        edition=data.edition,
        title=f"certrisk run report: {run['model']}",
        subtitle=f"{run['dag_id']} / {run['run_id']}, created {fmt_time(run['created_at'])}",
        tier=str(run["tier"]),
        headline=_headline(data),
        sections=sections,
        csv=frame,
        generated_at=generated_at or utc_now(),
        edition_note=EDITION_NOTES[data.edition],
    )
