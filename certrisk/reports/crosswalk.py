"""The run report's NIST AI RMF crosswalk: two tables laid out from ``certrisk.schemas.rmf.coverage``,
the one place that turns evidence rows into coverage per subcategory."""

from __future__ import annotations

import pandas as pd

from certrisk.reports.document import Table
from certrisk.schemas.rmf import coverage

#: The subcategory whose row states what the run did not measure (NIST AI RMF MEASURE 1.1).
UNMEASURED_SUBCATEGORY = "MEASURE 1.1"


def crosswalk(evidence: pd.DataFrame, *, not_measured: str = "") -> tuple[Table, Table]:
    """The run's crosswalk: the subcategories its ``evidence`` rows (columns subcategory_id,
    evidence_kind, detail) evidence, with the Core text and this run's evidence, and the
    subcategories it does not evidence, with what is not measured and why. ``not_measured`` fills
    the "Not measured" cell of MEASURE 1.1 when the run evidences it."""
    rows = evidence[["subcategory_id", "evidence_kind", "detail"]].itertuples(index=False)
    have_rows, missing_rows = [], []
    for entry in coverage(rows):
        sub = entry.subcategory
        if entry.evidenced:
            gap = not_measured if sub.id == UNMEASURED_SUBCATEGORY else ""
            have_rows.append([sub.id, sub.text, "; ".join(entry.evidence), gap or "-"])
        else:
            missing_rows.append([sub.id, sub.text, entry.note])
    n = len(have_rows) + len(missing_rows)
    have = Table(
        ["Subcategory", "NIST AI RMF 1.0 Core", "Evidence in this run", "Not measured"],
        have_rows,
        caption=f"{len(have_rows)} of {n} subcategories evidenced by this run",
        widths=[0.1, 0.36, 0.36, 0.18],
    )
    missing = Table(
        ["Subcategory", "NIST AI RMF 1.0 Core", "Not measured by this run"],
        missing_rows,
        caption=f"{len(missing_rows)} subcategories this run does not evidence",
        widths=[0.1, 0.45, 0.45],
    )
    return have, missing
