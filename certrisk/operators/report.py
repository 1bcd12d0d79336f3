"""ComplianceReportOperator: write a run's report (HTML and PDF by default) as run artifacts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context

from certrisk.operators.base import GovernanceOperator
from certrisk.operators.links import RunReportLink
from certrisk.schemas.enums import Edition
from certrisk.schemas.errors import InputError


class ComplianceReportOperator(GovernanceOperator):
    """Render the per-run report of this DAG run from the governance record and write it under the
    run's artifact directory as ``report-<edition>.<format>``.

    A report is a side path (STYLE.md, 7): when it cannot be built the task logs a warning and
    returns ``{"status": "failed", ...}`` instead of failing the DAG run, whose record has landed.

    :param recorded: the governance write's dict (orders this task after the write; templated).
    :param edition: ``compliance`` (default; tiers, factors, aggregates) or ``engineer``.
    :param formats: any of ``html``, ``pdf``, ``csv``.
    :param certrisk_conn_id: see GovernanceOperator.
    """

    template_fields: Sequence[str] = (*GovernanceOperator.template_fields, "recorded", "edition")
    ui_color = "#e6f4ea"
    #: "certrisk report" on the task in Airflow's UI: this run's report on the dashboard.
    operator_extra_links = (RunReportLink(),)

    def __init__(
        self,
        *,
        recorded: Any = None,
        edition: str = Edition.COMPLIANCE.value,
        formats: Sequence[str] = ("html", "pdf"),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.recorded = recorded
        self.edition = edition
        self.formats = tuple(formats)

    def run(self, context: Context) -> dict:
        from certrisk.reports import FORMATS, build_run_report, render

        unknown = sorted(set(self.formats) - set(FORMATS))
        if unknown:
            raise InputError(f"ComplianceReportOperator: unknown format(s) {unknown}; known: {list(FORMATS)}")
        dag_run = context["dag_run"]
        edition = Edition(str(self.edition))
        try:
            report = build_run_report(
                self.hook.get_store(), dag_run.run_id, dag_id=dag_run.dag_id, edition=edition
            )
            root = self.run_dir(context)
            paths = {}
            for fmt in self.formats:
                path = root / f"report-{edition.value}.{fmt}"
                path.write_bytes(render(report, fmt))
                paths[fmt] = str(path)
        except Exception as exc:  # noqa: BLE001 - a report is a side path: warn, never fail the run
            self.log.warning(
                "report: the %s report of %s/%s failed: %s: %s",
                edition.value,
                dag_run.dag_id,
                dag_run.run_id,
                type(exc).__name__,
                exc,
            )
            return {"status": "failed", "edition": edition.value, "error": f"{type(exc).__name__}: {exc}"}
        self.log.info("report: %s edition written: %s", edition.value, ", ".join(paths.values()))
        return {"status": "written", "edition": edition.value, "tier": report.tier, **paths}
