"""The certrisk AirflowPlugin (entry point group ``airflow.plugins``).

Registers template macros for DAG authors and the certrisk dashboard, a FastAPI app that Airflow's
API server mounts at ``/certrisk`` (runs, trends and NIST AI RMF coverage from the compliance views;
see ``certrisk.reports.dashboard``).
"""

from __future__ import annotations

from typing import ClassVar

from airflow.plugins_manager import AirflowPlugin


def certrisk_home() -> str:
    """Macro: ``{{ macros.certrisk.certrisk_home() }}``, the state directory."""
    from certrisk.schemas.settings import certrisk_home as home

    return str(home())


def certrisk_artifacts(dag_id: str, run_id: str) -> str:
    """Macro: the default artifact directory of a run."""
    from certrisk.schemas.settings import artifacts_root

    return str(artifacts_root() / dag_id / run_id)


def _dashboard() -> dict:
    from certrisk.reports.dashboard import app

    return {"app": app, "url_prefix": "/certrisk", "name": "certrisk"}


class CertriskPlugin(AirflowPlugin):
    name = "certrisk"
    macros: ClassVar[list] = [certrisk_home, certrisk_artifacts]
    fastapi_apps: ClassVar[list] = [_dashboard()]
