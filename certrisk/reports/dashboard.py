"""The certrisk dashboard: a FastAPI app that Airflow 3's API server mounts at ``/certrisk``
(``CertriskPlugin.fastapi_apps``), behind Airflow's auth manager.

Routes (relative to the mount point), each answering 401 without a login and 403 without the
permission (see ``certrisk.plugin_auth``):

* compliance edition (tiers, factors, aggregates, review decisions; no radius or bound):
  ``/`` (runs, a page at a time; daily trends per model; NIST AI RMF coverage; the stored audit
  chain status), ``/runs/{dag_id}/{run_id}`` (a run's report, with a verify of that run only),
  ``/period?model=NAME&days=30``, and as JSON ``/api/runs``, ``/api/trend``,
  ``/api/rmf-coverage``, ``/api/reviews`` (paginated: ``page``, ``limit``), ``/api/verify`` (the
  stored result of the last ``certrisk verify``) and ``/health``;
* engineer edition (raw certificates, radii): ``/engineer/runs/{dag_id}/{run_id}``.

No page runs a full verify and no page or error names the database. The database is
``$CERTRISK_DB_URL`` or the default SQLite file under ``$CERTRISK_HOME``, read at each request; a
missing or unreachable one gives a page that says so (HTTP 503), and a missing SQLite file is not
created.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from markupsafe import Markup

import certrisk
from certrisk.governance.store import GovernanceStore, mask_url
from certrisk.reports.dashboard_pages import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Paging,
    json_records,
    model_trends,
    rmf_by_function,
    run_rows,
    runs_page,
    verify_json,
    verify_status,
)
from certrisk.reports.document import FLAGGED_TIERS
from certrisk.reports.formatting import fmt_time
from certrisk.reports.html import environment, render_html, stylesheet
from certrisk.reports.period_content import period_report
from certrisk.reports.run_content import run_report
from certrisk.reports.sources import AuditStatus, RunNotFoundError, source_for
from certrisk.schemas.clock import utc_now
from certrisk.schemas.enums import Edition
from certrisk.schemas.errors import CertriskError, InputError, StoreError
from certrisk.schemas.rmf import catalog
from certrisk.schemas.settings import default_db_url

log = logging.getLogger(__name__)

#: Days of a period: 1 to 3650.
Days = Annotated[int, Query(ge=1, le=3650)]
PageNo = Annotated[int, Query(ge=1)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
#: A guard: for an edition, the FastAPI dependency that admits a request to its routes (raising
#: 401/403 otherwise) and sets ``request.state.certrisk_editions``, the editions the caller may read.
Guard = Callable[[Edition], Callable[..., Any]]


def open_access(edition: Edition) -> Callable[[Request], None]:
    """A guard that admits everyone to every edition: for tests and a dashboard run outside Airflow
    on a trusted machine only. Airflow's API server gets ``certrisk.plugin_auth.airflow_guard``."""

    def admit(request: Request) -> None:
        request.state.certrisk_editions = frozenset(Edition)

    return admit


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


def _root(request: Request) -> str:
    """Where the app is mounted (``/certrisk`` in Airflow's API server)."""
    return request.scope.get("root_path", "")


def _may_read(request: Request, edition: Edition) -> bool:
    return edition in getattr(request.state, "certrisk_editions", frozenset())


def _page(request: Request, **context) -> str:
    """The dashboard template rendered with the footer's facts and ``context``."""
    return (
        environment()
        .get_template("dashboard.html.j2")
        .render(
            css=Markup(stylesheet()),
            version=certrisk.__version__,
            generated=fmt_time(utc_now()),
            root=_root(request),
            **context,
        )
    )


def _problem_page(request: Request, exc: CertriskError) -> HTMLResponse:
    """503 with what to do; the error itself goes to the log only (it may name the database)."""
    log.warning("certrisk dashboard: %s: %s", type(exc).__name__, exc)
    if isinstance(exc, DatabaseMissing):
        title = "No governance database yet"
        hint = (
            "Runs appear here once a certrisk DAG has recorded one (for example `certrisk demo`), or "
            "set CERTRISK_DB_URL to the governance database."
        )
    else:
        title = "The governance database is not available"
        hint = (
            "Check CERTRISK_DB_URL and that the schema is migrated (`certrisk db upgrade`); the API "
            "server's log names the error."
        )
    html = _page(request, message_title=title, message=f"{type(exc).__name__}.", hint=hint)
    return HTMLResponse(html, status_code=503)


def _html(request: Request, build: Callable[[], str]) -> HTMLResponse:
    """``build()``'s page; an unknown run gives 404, bad paging 400, any other certrisk error the
    problem page."""
    try:
        return HTMLResponse(build())
    except RunNotFoundError:
        params = request.path_params
        text = f"No recorded run {params.get('run_id', '')!r} of DAG {params.get('dag_id', '')!r}."
        return HTMLResponse(_page(request, message_title="Run not found", message=text), status_code=404)
    except InputError as exc:
        return HTMLResponse(_page(request, message_title="Bad request", message=str(exc)), status_code=400)
    except CertriskError as exc:
        return _problem_page(request, exc)


def _json(build: Callable[[], object]) -> JSONResponse:
    """``build()``'s data as JSON; bad input gives 400, an unavailable database 503 (unnamed)."""
    try:
        return JSONResponse(build())
    except InputError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    except CertriskError as exc:
        log.warning("certrisk dashboard: %s: %s", type(exc).__name__, exc)
        what = "no governance database yet" if isinstance(exc, DatabaseMissing) else "database unavailable"
        return JSONResponse({"error": what}, status_code=503)


# ------------------------------------------------------------------------------------ pages


def _overview(request: Request, days: int, paging: Paging) -> str:
    store = _store(request.app)
    runs, has_next = runs_page(store, paging)
    period = store.list_runs(since=utc_now() - timedelta(days=days))
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
        request,
        message=None,
        kpis=kpis,
        runs=run_rows(runs, _root(request), engineer=_may_read(request, Edition.ENGINEER)),
        pages=paging.links(_root(request) + "/", has_next, days=days),
        models=model_trends(period, store.trend(days=days)),
        days=days,
        rmf=rmf_by_function(coverage),
        covered=covered,
        total=len(catalog()),
        verify=verify_status(store),
    )


def _run_audit(store: GovernanceStore, dag_id: str, run_id: str) -> AuditStatus:
    """A verify of this one run (bounded), as the report's provenance states it."""
    report = store.verify_run(dag_id, run_id)
    message = f"this run re-checked on viewing ({report.rows_checked:,} rows): {report.message}"
    return AuditStatus(True, bool(report.ok), message, report.head, int(report.runs_checked))


def _stored_audit(store: GovernanceStore) -> AuditStatus:
    """The stored result of the last ``certrisk verify`` (not re-checked on viewing)."""
    last = store.last_verify()
    if last is None:
        return AuditStatus(False, False, "no verify stored yet: run `certrisk verify`")
    when = fmt_time(last["verified_at"]) if last.get("verified_at") is not None else "-"
    message = f"stored result of `certrisk verify` at {when} by {last.get('verified_by') or '-'}: {last.get('message') or ''}"
    return AuditStatus(True, bool(last.get("ok")), message, last.get("head"), 0)


def _run_html(request: Request, dag_id: str, run_id: str, edition: Edition) -> str:
    store = _store(request.app)
    data = source_for(edition, store, verify=False).run(run_id, dag_id=dag_id)
    data.audit = _run_audit(store, dag_id, run_id)
    return render_html(run_report(data), back_link=_root(request) + "/")


# ------------------------------------------------------------------------------------ routes

#: Compliance edition routes, relative to where the app is mounted.
compliance = APIRouter()
#: Engineer edition routes (raw certificates): a stricter permission.
engineer = APIRouter()


@compliance.get("/", response_class=HTMLResponse)
def overview(
    request: Request, days: Days = 30, page: PageNo = 1, limit: Limit = DEFAULT_LIMIT
) -> HTMLResponse:
    return _html(request, lambda: _overview(request, days, Paging(page, limit)))


@compliance.get("/runs/{dag_id}/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, dag_id: str, run_id: str) -> HTMLResponse:
    return _html(request, lambda: _run_html(request, dag_id, run_id, Edition.COMPLIANCE))


@engineer.get("/engineer/runs/{dag_id}/{run_id}", response_class=HTMLResponse)
def engineer_run_page(request: Request, dag_id: str, run_id: str) -> HTMLResponse:
    return _html(request, lambda: _run_html(request, dag_id, run_id, Edition.ENGINEER))


@compliance.get("/period", response_class=HTMLResponse)
def period_page(request: Request, model: str | None = None, days: Days = 30) -> HTMLResponse:
    def build() -> str:
        store = _store(request.app)
        data = source_for(Edition.COMPLIANCE, store, verify=False).period(model=model, days=days)
        data.audit = _stored_audit(store)
        return render_html(period_report(data), back_link=_root(request) + "/")

    return _html(request, build)


def _listing(request: Request, frame: pd.DataFrame, paging: Paging, has_next: bool, **params) -> dict:
    links = paging.links(request.url.path, has_next, **params)
    return {"items": json_records(frame), **links}


def _frame_page(request: Request, frame: pd.DataFrame, paging: Paging, **params) -> dict:
    rows, has_next = paging.window(frame)
    return _listing(request, rows, paging, has_next, **params)


@compliance.get("/api/runs")
def api_runs(
    request: Request, model: str | None = None, page: PageNo = 1, limit: Limit = DEFAULT_LIMIT
) -> JSONResponse:
    def build() -> dict:
        paging = Paging(page, limit)
        runs, has_next = runs_page(_store(request.app), paging, model=model)
        return _listing(request, runs.drop(columns=["limitations"]), paging, has_next, model=model)

    return _json(build)


@compliance.get("/api/trend")
def api_trend(
    request: Request, model: str | None = None, days: Days = 30, page: PageNo = 1, limit: Limit = MAX_LIMIT
) -> JSONResponse:
    def build() -> dict:
        trend = _store(request.app).trend(model=model, days=days).astype({"day": str})
        return _frame_page(request, trend, Paging(page, limit), model=model, days=days)

    return _json(build)


@compliance.get("/api/rmf-coverage")
def api_rmf(request: Request, model: str | None = None, page: PageNo = 1, limit: Limit = 100) -> JSONResponse:
    def build() -> dict:
        coverage = _store(request.app).rmf_coverage(model=model)
        return _frame_page(request, coverage, Paging(page, limit), model=model)

    return _json(build)


@compliance.get("/api/reviews")
def api_reviews(
    request: Request,
    dag_id: str | None = None,
    run_id: str | None = None,
    page: PageNo = 1,
    limit: Limit = DEFAULT_LIMIT,
) -> JSONResponse:
    def build() -> dict:
        paging = Paging(page, limit)
        reviews = _store(request.app).reviews(dag_id=dag_id, run_id=run_id, limit=paging.offset + limit + 1)
        return _frame_page(request, reviews, paging, dag_id=dag_id, run_id=run_id)

    return _json(build)


@compliance.get("/api/verify")
def api_verify(request: Request) -> JSONResponse:
    return _json(lambda: verify_json(_store(request.app)))


@compliance.get("/health")
def health(request: Request) -> JSONResponse:
    """Whether the governance database answers (its name stays out of the answer)."""
    return _json(lambda: {"status": "ok", "has_runs": bool(len(_store(request.app).list_runs(limit=1)))})


def create_app(db_url: str | None = None, *, guard: Guard) -> FastAPI:
    """The dashboard app. ``db_url`` None reads ``CERTRISK_DB_URL`` (or the default) per request;
    ``guard`` admits requests per edition (``certrisk.plugin_auth.airflow_guard`` in Airflow,
    ``open_access`` in tests)."""
    app = FastAPI(
        title="certrisk dashboard",
        description="Runs, trends, reviews and NIST AI RMF coverage from the certrisk governance database.",
        version=certrisk.__version__,
        # no anonymous /docs, /redoc or /openapi.json: every route the app serves is guarded
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.db_url = db_url
    app.state.stores = {}
    app.include_router(compliance, dependencies=[Depends(guard(Edition.COMPLIANCE))])
    app.include_router(engineer, dependencies=[Depends(guard(Edition.ENGINEER))])
    return app
