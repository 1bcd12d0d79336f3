"""What the dashboard's pages show, as plain values for its template and JSON: rows of the runs
table, pages of a list, the stored audit-chain status, trends and NIST AI RMF coverage.

Every read is bounded: a list is read one page at a time (at most ``MAX_ROWS`` rows deep), the
audit chain's status is the stored result of the last ``certrisk verify`` (never a full verify
on a page view), and a run's page verifies that one run only. Nothing here names the database.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlencode

import pandas as pd

from certrisk.governance.store import GovernanceStore
from certrisk.reports import plots
from certrisk.reports.dashboard_urls import airflow_run_page, engineer_run_page, run_page
from certrisk.reports.document import FLAGGED_TIERS
from certrisk.reports.formatting import fmt_num, fmt_pct, fmt_time
from certrisk.schemas.errors import InputError

#: Rows of a list page unless asked otherwise, and the most a page may hold.
DEFAULT_LIMIT = 25
MAX_LIMIT = 200
#: How deep a list may be paged (page * limit): a page view never reads more rows than this.
MAX_ROWS = 10_000


@dataclass(frozen=True)
class Paging:
    """One page of a list: ``page`` counts from 1, ``limit`` rows per page."""

    page: int = 1
    limit: int = DEFAULT_LIMIT

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise InputError(f"limit must be from 1 to {MAX_LIMIT}, got {self.limit}")
        if self.page < 1 or self.page * self.limit > MAX_ROWS:
            raise InputError(
                f"page must be from 1 to {MAX_ROWS // self.limit} at limit {self.limit}, got {self.page}"
            )

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.limit

    def window(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
        """This page's rows of ``frame`` (every row up to the page's end, and one more) and whether
        another page follows."""
        return frame.iloc[self.offset : self.offset + self.limit], len(frame) > self.offset + self.limit

    def links(self, path: str, has_next: bool, **params) -> dict:
        """``page``, ``limit`` and the URLs of the previous and next pages (None at either end)."""
        kept = {k: v for k, v in params.items() if v is not None}

        def url(page: int) -> str:
            return f"{path}?{urlencode({**kept, 'page': page, 'limit': self.limit})}"

        return {
            "page": self.page,
            "limit": self.limit,
            "prev": url(self.page - 1) if self.page > 1 else None,
            "next": url(self.page + 1) if has_next else None,
        }


def runs_page(
    store: GovernanceStore, paging: Paging, *, model: str | None = None
) -> tuple[pd.DataFrame, bool]:
    """One page of the current runs, newest first, and whether another page follows. Reads at most
    ``paging.page * paging.limit + 1`` rows (bounded by ``MAX_ROWS``)."""
    runs = store.list_runs(model=model, limit=paging.offset + paging.limit + 1)
    return paging.window(runs)


def json_value(value):
    """A cell as JSON: NaN as null, timestamps in the reports' one representation."""
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, pd.Timestamp | datetime):
        return fmt_time(value)
    return value


def json_records(frame: pd.DataFrame) -> list[dict]:
    return [{k: json_value(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def _review_state(row) -> str:
    value = getattr(row, "review", None)
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return "-"
    return str(value)


def run_rows(runs: pd.DataFrame, root: str, *, engineer: bool = False) -> list[dict]:
    """The runs table's rows: when, model, batch, run (its report and Airflow run), tier, figures,
    review state and the leading reason. ``engineer`` adds the engineer edition's link."""
    rows = []
    for r in runs.itertuples(index=False):
        rows.append(
            {
                "created": fmt_time(r.created_at),
                "model": r.model,
                "batch": r.batch,
                "dag_id": r.dag_id,
                "run_id": r.run_id,
                "report": run_page(r.dag_id, r.run_id, mount=root),
                "engineer": engineer_run_page(r.dag_id, r.run_id, mount=root) if engineer else None,
                "airflow": airflow_run_page(r.dag_id, r.run_id),
                "tier": r.tier,
                "n_samples": f"{int(r.n_samples):,}",
                "abstention": fmt_pct(r.abstention_rate),
                "mean_risk": fmt_num(r.mean_risk),
                "drift": "detected" if r.drift else "-",
                "review": _review_state(r),
                # a superseding revision shows first: the previous tier, who and why
                "reason": "; ".join(t for t in (r.revised, str((r.reasons or ["-"])[0])) if t),
            }
        )
    return rows


def verify_status(store: GovernanceStore) -> dict:
    """The stored result of the last ``certrisk verify``, in words (``GovernanceStore.last_verify``)."""
    last = store.last_verify()
    if last is None:
        return {
            "state": "never",
            "text": "No verify of the audit chain is stored yet: run `certrisk verify`.",
            "facts": [],
        }
    ok = bool(last.get("ok"))
    facts = [
        ("Verified at", fmt_time(last.get("verified_at")) if last.get("verified_at") is not None else "-"),
        ("Verified by", str(last.get("verified_by") or "-")),
        ("Outcome", "intact" if ok else "BROKEN"),
        ("Chain head", str(last.get("head") or "-")),
        ("Rows checked", f"{int(last.get('rows_checked') or 0):,}"),
        ("Message", str(last.get("message") or "")),
    ]
    text = f"Last `certrisk verify`: {'intact' if ok else 'BROKEN'} ({facts[0][1]}, by {facts[1][1]})."
    return {"state": "intact" if ok else "broken", "text": text, "facts": facts}


def verify_json(store: GovernanceStore) -> dict:
    last = store.last_verify()
    return {"last_verify": None if last is None else {k: json_value(v) for k, v in last.items()}}


def model_trends(period: pd.DataFrame, trend: pd.DataFrame) -> list[dict]:
    """Per model: a one-line summary of its runs in the period and its daily trend figure."""
    models = []
    for name, g in trend.groupby("model", sort=True):
        model_runs = period.loc[period["model"] == name]
        flagged = int(model_runs["tier"].isin(FLAGGED_TIERS).sum())
        summary = (
            f"{len(model_runs)} runs, {int(model_runs['n_samples'].sum()):,} samples, {flagged} at tier high or "
            f"critical; latest tier {model_runs['tier'].iloc[0] if len(model_runs) else 'n/a'}."
        )
        models.append({"name": name, "summary": summary, "png": plots.daily_trend(g)})
    return models


def rmf_by_function(coverage: pd.DataFrame) -> list[tuple[str, list[dict]]]:
    rmf: dict[str, list[dict]] = {}
    for r in coverage.itertuples(index=False):
        rmf.setdefault(r.function, []).append(
            {"id": r.subcategory_id, "text": r.text, "covered": bool(r.covered), "n_runs": int(r.n_runs)}
        )
    return list(rmf.items())
