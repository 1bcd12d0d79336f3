"""The "Measured detection" section of both report editions: what the model's risk tiers caught of
the attack suite of its newest recorded evaluation (``certrisk evaluate``), and what they missed.

Aggregates only (shares, AUROC, budgets), so the compliance edition shows it too. NIST AI RMF
MEASURE 2.7 (security and resilience evaluated), 2.5 (validity limits), 2.6 (safety metrics) and
1.1 (what is not measured is said).
"""

from __future__ import annotations

import pandas as pd

from certrisk.reports.document import Section, Table
from certrisk.reports.formatting import fmt_num, fmt_pct, fmt_time


def _budget(row: pd.Series) -> str:
    return f"{fmt_num(row['budget_fraction'], 2)} ({row['norm']} {fmt_num(row['eps'], 3)})"


def _row(row: pd.Series) -> list[str]:
    return [
        str(row["family"]),
        _budget(row),
        fmt_pct(row["success_rate"]),
        fmt_pct(row["abstention_rate"]),
        fmt_pct(row["share_high"]),
        fmt_num(row["auroc"], 3),
        fmt_pct(row["cert_share_high"]),
        fmt_num(row["cert_auroc"], 3),
    ]


def _misses(results: pd.DataFrame) -> list[str]:
    """One plain sentence per scored family and budget that left successful attacks below high."""
    out = []
    for _, row in results.iterrows():
        if row.get("adaptive") is True or not row.get("scored", True) or not row["n_successful"]:
            continue
        missed = 1.0 - float(row["share_high"])
        if missed > 0:
            out.append(
                f"{fmt_pct(missed)} of the successful {row['family']} attacks at budget {_budget(row)} "
                "stayed below tier high."
            )
    return out


def detection_section(evaluation: dict | None, model: str) -> Section:
    """The section for ``evaluation`` (``GovernanceStore.latest_evaluation``), or one that says
    plainly that the model's detection of attacks has not been measured."""
    sec = Section("detection", "Measured detection: what the risk tiers catch and miss")
    if evaluation is None:
        sec.paragraphs.append(
            f"No evaluation of measured detection is recorded for model {model}: what a tier means "
            "against attacks is unmeasured for this model. Run `certrisk evaluate --policy POLICY --db URL`."
        )
        return sec
    results = evaluation["results"]
    clean_fa = results["clean_false_alarm"].dropna()
    sec.paragraphs.append(
        f"Evaluation of {fmt_time(evaluation['created_at'])} on {evaluation['n_clean']} held-out clean "
        "samples: every attacked set went through the production scoring path. Budgets are fractions of "
        "the median distance from a sample to the nearest reference sample of another class; within half "
        "of it an input is scored as an attack. Clean samples at tier high or above: "
        f"{fmt_pct(clean_fa.iloc[0]) if len(clean_fa) else '-'}. The certificate-only columns score "
        "abstention and radius rank alone, so the gain of the signals that do not trust the certificate "
        "is visible."
    )
    sec.tables.append(
        Table(
            [
                "Family",
                "Budget",
                "Success",
                "Abstained",
                ">= high",
                "AUROC",
                "Cert. only >= high",
                "Cert. AUROC",
            ],
            [_row(r) for _, r in results.iterrows()],
            caption="Measured detection per attack family and budget (successful attacks)",
        )
    )
    misses = _misses(results)
    sec.paragraphs.append(
        "Misses: " + " ".join(misses)
        if misses
        else "Misses: none of the scored families left a successful attack below tier high."
    )
    sec.paragraphs.append(
        "These figures hold for the attacks measured, at their budgets, on this model and reference. "
        "An adaptive attacker who knows the detector may evade it (the adaptive family is reported as "
        "measured and sets no target); a tier is never a statement that a sample was not attacked."
    )
    return sec
