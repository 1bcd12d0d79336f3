"""The certrisk AirflowPlugin (entry point group ``airflow.plugins``).

Registers, in Airflow's API server and UI:

* the certrisk dashboard, a FastAPI app mounted at ``/certrisk`` behind Airflow's auth manager
  (``certrisk.reports.dashboard``, guarded by ``certrisk.plugin_auth.airflow_guard``);
* ``external_views``: "certrisk" in the navigation bar (top level), and a "certrisk report" tab on
  every DAG run's page that opens that run's compliance report;
* the "certrisk report" operator extra link on the report and score tasks (``RunReportLink``);
* template macros for DAG authors.
"""

from __future__ import annotations

from typing import ClassVar

from airflow.plugins_manager import AirflowPlugin

from certrisk.operators.links import RunReportLink, operator_ref
from certrisk.reports.dashboard_urls import MOUNT


def certrisk_home() -> str:
    """Macro: ``{{ macros.certrisk.certrisk_home() }}``, the state directory."""
    from certrisk.schemas.settings import certrisk_home as home

    return str(home())


def certrisk_artifacts(dag_id: str, run_id: str) -> str:
    """Macro: the default artifact directory of a run."""
    from certrisk.schemas.settings import artifacts_root

    return str(artifacts_root() / dag_id / run_id)


def _dashboard() -> dict:
    from certrisk.plugin_auth import airflow_guard
    from certrisk.reports.dashboard import create_app

    return {"app": create_app(guard=airflow_guard), "url_prefix": MOUNT, "name": "certrisk"}


#: Airflow's UI shows a view with a ``url_route`` inside its own frame, at ``/plugin/<url_route>``
#: (the DAG run tab at ``/dags/<dag>/runs/<run>/plugin/<url_route>``); for a ``dag_run`` view it
#: fills ``{DAG_ID}`` and ``{RUN_ID}`` in ``href``.
EXTERNAL_VIEWS = [
    {
        "name": "certrisk",
        "href": f"{MOUNT}/",
        "destination": "nav",
        "nav_top_level": True,
        "url_route": "certrisk",
    },
    {
        "name": "certrisk report",
        "href": f"{MOUNT}/runs/{{DAG_ID}}/{{RUN_ID}}",
        "destination": "dag_run",
        "url_route": "certrisk-run-report",
    },
]


class RegisteredRunReportLink(RunReportLink):
    """``RunReportLink`` on the operators whose tasks carry it in Airflow's UI: the API server
    computes it for their task instances (no XCom needed), whether or not the class declares it.
    The operators are named, not imported (``operator_ref``)."""

    operators: ClassVar[list] = [
        operator_ref("certrisk.operators.report", "ComplianceReportOperator"),
        operator_ref("certrisk.operators.score", "RiskScoreOperator"),
    ]


class CertriskPlugin(AirflowPlugin):
    name = "certrisk"
    macros: ClassVar[list] = [certrisk_home, certrisk_artifacts]
    fastapi_apps: ClassVar[list] = [_dashboard()]
    external_views: ClassVar[list] = EXTERNAL_VIEWS
    operator_extra_links: ClassVar[list] = [RegisteredRunReportLink()]
