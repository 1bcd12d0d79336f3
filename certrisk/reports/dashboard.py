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
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from markupsafe import Markup

import certrisk
from certrisk.governance.store import GovernanceStore, mask_url
from certrisk.reports import plots
from certrisk.reports.build import build_period_report, build_run_report
from certrisk.reports.content import fmt_num, fmt_pct, fmt_time
from certrisk.reports.html import environment, render_html, stylesheet
from certrisk.reports.sources import RunNotFoundError
from certrisk.schemas.enums import Edition, Tier
from certrisk.schemas.errors import CertriskError, StoreError
from certrisk.schemas.rmf import catalog
from certrisk.schemas.settings import default_db_url

RECENT_RUNS = 50


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


def _problem_page(app: FastAPI, request: Request, exc: Exception) -> HTMLResponse:
    missing = isinstance(exc, DatabaseMissing)
    title = "No governance database yet" if missing else "The governance database is not available"
    hint = (
        "Runs appear here once a certrisk DAG has recorded one (for example `certrisk demo`), or set "
        "CERTRISK_DB_URL to the governance database."
        if missing
        else "Check CERTRISK_DB_URL and that the schema is migrated (`certrisk db upgrade`)."
    )
    html = (
        environment()
        .get_template("dashboard.html.j2")
        .render(
            css=Markup(stylesheet()),
            message_title=title,
            message=str(exc),
            hint=hint,
            db=_db_label(app),
            version=certrisk.__version__,
            generated=fmt_time(datetime.now(UTC)),
            root=request.scope.get("root_path", ""),
        )
    )
    return HTMLResponse(html, status_code=503)


def _db_label(app: FastAPI) -> str:
    return mask_url(app.state.db_url or default_db_url())


def _overview(app: FastAPI, request: Request, days: int) -> str:
    store = _store(app)
    runs = store.list_runs(limit=RECENT_RUNS)
    since = datetime.now(UTC) - timedelta(days=days)
    period = store.list_runs(since=since)
    trend = store.trend(days=days)
    coverage = store.rmf_coverage()
    rows = [
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
            "reason": str((r.reasons or ["-"])[0]),
        }
        for r in runs.itertuples(index=False)
    ]
    models = []
    for name, g in trend.groupby("model", sort=True):
        model_runs = period.loc[period["model"] == name]
        flagged = int(model_runs["tier"].isin([Tier.HIGH.value, Tier.CRITICAL.value]).sum())
        summary = (
            f"{len(model_runs)} runs, {int(model_runs['n_samples'].sum()):,} samples, {flagged} at tier high or "
            f"critical; latest tier {model_runs['tier'].iloc[0] if len(model_runs) else 'n/a'}."
        )
        models.append({"name": name, "summary": summary, "png": plots.daily_trend(g)})
    rmf: dict[str, list[dict]] = {}
    for r in coverage.itertuples(index=False):
        rmf.setdefault(r.function, []).append(
            {"id": r.subcategory_id, "text": r.text, "covered": bool(r.covered), "n_runs": int(r.n_runs)}
        )
    flagged_total = int(period["tier"].isin([Tier.HIGH.value, Tier.CRITICAL.value]).sum())
    kpis = [
        (f"Runs, last {days} days", str(len(period))),
        ("High or critical runs", str(flagged_total)),
        ("Samples scored", f"{int(period['n_samples'].sum()):,}"),
        ("Models", str(period["model"].nunique())),
        ("RMF subcategories evidenced", f"{int(coverage['covered'].sum())} of {len(catalog())}"),
    ]
    return (
        environment()
        .get_template("dashboard.html.j2")
        .render(
            css=Markup(stylesheet()),
            message=None,
            db=_db_label(app),
            kpis=kpis,
            runs=rows,
            models=models,
            days=days,
            rmf=list(rmf.items()),
            covered=int(coverage["covered"].sum()),
            total=len(catalog()),
            version=certrisk.__version__,
            generated=fmt_time(datetime.now(UTC)),
            root=request.scope.get("root_path", ""),
        )
    )


def create_app(db_url: str | None = None) -> FastAPI:
    """The dashboard app. ``db_url`` None reads ``CERTRISK_DB_URL`` (or the default) per request."""
    app = FastAPI(
        title="certrisk dashboard",
        description="Runs, trends and NIST AI RMF coverage from the certrisk governance database (compliance views).",
        version=certrisk.__version__,
    )
    app.state.db_url = db_url
    app.state.stores = {}

    def guarded(request: Request, build) -> HTMLResponse:
        try:
            return HTMLResponse(build())
        except CertriskError as exc:
            if isinstance(exc, RunNotFoundError):
                return HTMLResponse(f"<p>{Markup.escape(str(exc))}</p>", status_code=404)
            return _problem_page(app, request, exc)

    @app.get("/", response_class=HTMLResponse)
    def overview(request: Request, days: int = Query(30, ge=1, le=3650)) -> HTMLResponse:
        return guarded(request, lambda: _overview(app, request, days))

    @app.get("/runs/{dag_id}/{run_id}", response_class=HTMLResponse)
    def run_page(request: Request, dag_id: str, run_id: str) -> HTMLResponse:
        def build():
            report = build_run_report(_store(app), run_id, dag_id=dag_id, edition=Edition.COMPLIANCE)
            return render_html(report, back_link=request.scope.get("root_path", "") + "/")

        return guarded(request, build)

    @app.get("/period", response_class=HTMLResponse)
    def period_page(
        request: Request, model: str | None = None, days: int = Query(30, ge=1, le=3650)
    ) -> HTMLResponse:
        def build():
            report = build_period_report(_store(app), model=model, days=days, edition=Edition.COMPLIANCE)
            return render_html(report, back_link=request.scope.get("root_path", "") + "/")

        return guarded(request, build)

    def api(build):
        try:
            return JSONResponse(build())
        except CertriskError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)

    @app.get("/api/runs")
    def api_runs(model: str | None = None, limit: int = Query(RECENT_RUNS, ge=1, le=10_000)) -> JSONResponse:
        def build():
            runs = _store(app).list_runs(model=model, limit=limit)
            return _records(runs.drop(columns=["limitations"]))

        return api(build)

    @app.get("/api/trend")
    def api_trend(model: str | None = None, days: int = Query(30, ge=1, le=3650)) -> JSONResponse:
        return api(lambda: _records(_store(app).trend(model=model, days=days).astype({"day": str})))

    @app.get("/api/rmf-coverage")
    def api_rmf(model: str | None = None) -> JSONResponse:
        return api(lambda: _records(_store(app).rmf_coverage(model=model)))

    @app.get("/health")
    def health() -> JSONResponse:
        try:
            n = len(_store(app).list_runs(limit=1))
        except CertriskError as exc:
            return JSONResponse({"status": "unavailable", "detail": str(exc)}, status_code=503)
        return JSONResponse({"status": "ok", "database": _db_label(app), "has_runs": bool(n)})

    return app


#: The app the AirflowPlugin registers.
app = create_app()
