"""Operator extra links: buttons on a task instance in Airflow's UI that open certrisk pages."""

from __future__ import annotations

from airflow.sdk import BaseOperatorLink, conf

from certrisk.reports.dashboard_urls import run_page


def operator_ref(module: str, name: str) -> type:
    """A stand-in for an operator class in a plugin's link registration (``BaseOperatorLink.operators``).

    Airflow's API server attaches a plugin's link to a serialized task whose class has that
    ``__name__`` and ``__module__``, and reads nothing else of the class; naming the operators this
    way keeps the plugin from importing them (and torch with them) into every Airflow process that
    loads plugins. tests/reports/test_dashboard.py checks each reference against the real class.
    """
    return type(name, (), {"__module__": module, "__doc__": f"Reference to {module}.{name}."})


class RunReportLink(BaseOperatorLink):
    """ "certrisk report": the compliance edition of this task's DAG run on the certrisk dashboard
    (``<[api] base_url>/certrisk/runs/<dag_id>/<run_id>``; relative without a base URL).

    The task runner stores it as an XCom when the task ends (operators that list it in
    ``operator_extra_links``); ``CertriskPlugin`` also registers it for the report and score
    operators, so the API server computes it for their tasks from the task instance's key alone.
    """

    name = "certrisk report"

    @property
    def xcom_key(self) -> str:
        return "_link_certrisk_report"

    def get_link(self, operator, *, ti_key) -> str:
        return run_page(ti_key.dag_id, ti_key.run_id, conf.get("api", "base_url", fallback="") or "")
