"""Where the dashboard's pages live: one place for the paths that Airflow's UI (external views,
operator extra links), review requests and the pages themselves link to.

Paths are relative to Airflow's API server (``[api] base_url``): the dashboard is the plugin app
mounted at ``MOUNT``; a run's page in Airflow's own UI is ``/dags/<dag_id>/runs/<run_id>``.
"""

from __future__ import annotations

from urllib.parse import quote

#: Where Airflow's API server mounts the dashboard (``CertriskPlugin.fastapi_apps``).
MOUNT = "/certrisk"


def _part(value: str) -> str:
    return quote(str(value), safe="")


def run_page(dag_id: str, run_id: str, base_url: str = "", *, mount: str = MOUNT) -> str:
    """The compliance edition of one run's report on the dashboard (``mount``: where the app is
    mounted, the request's root path inside the app)."""
    return f"{base_url.rstrip('/')}{mount}/runs/{_part(dag_id)}/{_part(run_id)}"


def engineer_run_page(dag_id: str, run_id: str, base_url: str = "", *, mount: str = MOUNT) -> str:
    """The engineer edition of one run's report (raw certificates; a stricter permission)."""
    return f"{base_url.rstrip('/')}{mount}/engineer/runs/{_part(dag_id)}/{_part(run_id)}"


def airflow_run_page(dag_id: str, run_id: str, base_url: str = "") -> str:
    """The run in Airflow's own UI."""
    return f"{base_url.rstrip('/')}/dags/{_part(dag_id)}/runs/{_part(run_id)}"
