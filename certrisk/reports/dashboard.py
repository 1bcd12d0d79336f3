"""The certrisk dashboard: a FastAPI app that Airflow 3's API server mounts at ``/certrisk``
(``CertriskPlugin.fastapi_apps``). It reads only the compliance views.

Routes (relative to the mount point):

* ``/``: recent runs with their tiers, daily trends per model, NIST AI RMF coverage;
* ``/runs/{dag_id}/{run_id}``: the compliance edition of a run's report;
* ``/period?model=NAME&days=30``: the compliance edition of a period report;
* ``/api/runs``, ``/api/trend``, ``/api/rmf-coverage``: the same data as JSON;
* ``/health``: whether the governance database answers.

The database is ``$CERTRISK_DB_URL`` or the default SQLite file under ``$CERTRISK_HOME``, read at
each request. A missing or unreachable database gives a page that says so (HTTP 503), never an
error in the API server; a missing SQLite file is not created.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

import pandas as pd
import sqlalchemy as sa
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from markupsafe import Markup

import certrisk
from certrisk.governance.store import GovernanceStore, mask_url
from certrisk.reports import plots
from certrisk.reports.build import build_period_report, build_run_report
from certrisk.reports.document import FLAGGED_TIERS
from certrisk.reports.formatting import fmt_num, fmt_pct, fmt_time
from certrisk.reports.html import environment, render_html, stylesheet
from certrisk.reports.sources import RunNotFoundError
from certrisk.schemas.clock import utc_now
from certrisk.schemas.enums import Edition
from certrisk.schemas.errors import CertriskError, StoreError
from certrisk.schemas.rmf import catalog
from certrisk.schemas.settings import default_db_url

RECENT_RUNS = 50
#: Days of a period: 1 to 3650.
Days = Annotated[int, Query(ge=1, le=3650)]


class DatabaseMissing(StoreError):
    """The governance database file does not exist yet."""


def _store(app: FastAPI) -> GovernanceStore:
    url = app.state.db_url or default_db_url()
    parsed = sa.make_url(url)
    local = parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")
    if local and not Path(parsed.database).expanduser().is_file():
        raise DatabaseMissing(f"no governance database at {mask_url(url)} yet")
    stores = app.state.stores
    if url not in stores:
        stores[url] = GovernanceStore(url)
    return stores[url]


def _clean(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, pd.Timestamp | datetime):
        return fmt_time(value)
    return value


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{k: _clean(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def _db_label(app: FastAPI) -> str:
    return mask_url(app.state.db_url or default_db_url())


def _root(request: Request) -> str:
    """Where the app is mounted (``/certrisk`` in Airflow's API server)."""
    return request.scope.get("root_path", "")


def _page(app: FastAPI, request: Request, **context) -> str:
    """The dashboard template rendered with the footer's facts and ``context``."""
    return (
        environment()
        .get_template("dashboard.html.j2")
        .render(
            css=Markup(stylesheet()),
            db=_db_label(app),
            version=certrisk.__version__,
            generated=fmt_time(utc_now()),
            root=_root(request),
            **context,
        )
    )


def _problem_page(app: FastAPI, request: Request, exc: Exception) -> HTMLResponse:
    missing = isinstance(exc, DatabaseMissing)
    title = "No governance database yet" if missing else "The governance database is not available"
    hint = (
        "Runs appear here once a certrisk DAG has recorded one (for example `certrisk demo`), or set "
        "CERTRISK_DB_URL to the governance database."
        if missing
        else "Check CERTRISK_DB_URL and that the schema is migrated (`certrisk db upgrade`)."
    )
    html = _page(app, request, message_title=title, message=str(exc), hint=hint)
    return HTMLResponse(html, status_code=503)


# ------------------------------------------------------------------------------------ overview


def _run_rows(runs: pd.DataFrame) -> list[dict]:
    return [
        {
            "created": fmt_time(r.created_at),
            "model": r.model,
            "dag_id": r.dag_id,
            "run_id": r.run_id,
            "tier": r.tier,
            "n_samples": f"{int(r.n_samples):,}",
            "abstention": fmt_pct(r.abstention_rate),
            "mean_risk": fmt_num(r.mean_risk),
            "drift": "detected" if r.drift else "-",
            # a superseding revision shows first: the previous tier, who and why
            "reason": "; ".join(t for t in (r.revised, str((r.reasons or ["-"])[0])) if t),
        }
        for r in runs.itertuples(index=False)
    ]


def _model_trends(period: pd.DataFrame, trend: pd.DataFrame) -> list[dict]:
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


def _rmf_by_function(coverage: pd.DataFrame) -> list[tuple[str, list[dict]]]:
    rmf: dict[str, list[dict]] = {}
    for r in coverage.itertuples(index=False):
        rmf.setdefault(r.function, []).append(
            {"id": r.subcategory_id, "text": r.text, "covered": bool(r.covered), "n_runs": int(r.n_runs)}
        )
    return list(rmf.items())


def _overview(app: FastAPI, request: Request, days: int) -> str:
    store = _store(app)
    runs = store.list_runs(limit=RECENT_RUNS)
    period = store.list_runs(since=utc_now() - timedelta(days=days))
    trend = store.trend(days=days)
    coverage = store.rmf_coverage()
    covered = int(coverage["covered"].sum())
    kpis = [
        (f"Runs, last {days} days", str(len(period))),
        ("High or critical runs", str(int(period["tier"].isin(FLAGGED_TIERS).sum()))),
        ("Samples scored", f"{int(period['n_samples'].sum()):,}"),
        ("Models", str(period["model"].nunique())),
        ("RMF subcategories evidenced", f"{covered} of {len(catalog())}"),
    ]
    return _page(
        app,
        request,
        message=None,
        kpis=kpis,
        runs=_run_rows(runs),
        models=_model_trends(period, trend),
        days=days,
        rmf=_rmf_by_function(coverage),
        covered=covered,
        total=len(catalog()),
    )


# ------------------------------------------------------------------------------------ routes


def _html(request: Request, build: Callable[[], str]) -> HTMLResponse:
    """``build()``'s page; an unknown run gives 404, any other certrisk error the problem page."""
    try:
        return HTMLResponse(build())
    except RunNotFoundError as exc:
        return HTMLResponse(f"<p>{Markup.escape(str(exc))}</p>", status_code=404)
    except CertriskError as exc:
        return _problem_page(request.app, request, exc)


def _json(build: Callable[[], object]) -> JSONResponse:
    """``build()``'s data as JSON; a certrisk error gives 503 with the error."""
    try:
        return JSONResponse(build())
    except CertriskError as exc:
        return JSONResponse({"error": str(exc)}, status_code=503)


#: The dashboard's routes, relative to where the app is mounted.
router = APIRouter()


@router.get("/", response_class=HTMLResponse)
def overview(request: Request, days: Days = 30) -> HTMLResponse:
    return _html(request, lambda: _overview(request.app, request, days))


@router.get("/runs/{dag_id}/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, dag_id: str, run_id: str) -> HTMLResponse:
    def build() -> str:
        store = _store(request.app)
        report = build_run_report(store, run_id, dag_id=dag_id, edition=Edition.COMPLIANCE)
        return render_html(report, back_link=_root(request) + "/")

    return _html(request, build)


@router.get("/period", response_class=HTMLResponse)
def period_page(request: Request, model: str | None = None, days: Days = 30) -> HTMLResponse:
    def build() -> str:
        store = _store(request.app)
        report = build_period_report(store, model=model, days=days, edition=Edition.COMPLIANCE)
        return render_html(report, back_link=_root(request) + "/")

    return _html(request, build)


@router.get("/api/runs")
def api_runs(
    request: Request, model: str | None = None, limit: int = Query(RECENT_RUNS, ge=1, le=10_000)
) -> JSONResponse:
    def build() -> list[dict]:
        runs = _store(request.app).list_runs(model=model, limit=limit)
        return _records(runs.drop(columns=["limitations"]))

    return _json(build)


@router.get("/api/trend")
def api_trend(request: Request, model: str | None = None, days: Days = 30) -> JSONResponse:
    return _json(lambda: _records(_store(request.app).trend(model=model, days=days).astype({"day": str})))


@router.get("/api/rmf-coverage")
def api_rmf(request: Request, model: str | None = None) -> JSONResponse:
    return _json(lambda: _records(_store(request.app).rmf_coverage(model=model)))


@router.get("/health")
def health(request: Request) -> JSONResponse:
    try:
        n = len(_store(request.app).list_runs(limit=1))
    except CertriskError as exc:
        return JSONResponse({"status": "unavailable", "detail": str(exc)}, status_code=503)
    return JSONResponse({"status": "ok", "database": _db_label(request.app), "has_runs": bool(n)})


def create_app(db_url: str | None = None) -> FastAPI:
    """The dashboard app. ``db_url`` None reads ``CERTRISK_DB_URL`` (or the default) per request."""
    app = FastAPI(
        title="certrisk dashboard",
        description="Runs, trends and NIST AI RMF coverage from the certrisk governance database (compliance views).",
        version=certrisk.__version__,
    )
    app.state.db_url = db_url
    app.state.stores = {}
    app.include_router(router)
    return app


#: The app the AirflowPlugin registers.
app = create_app()
