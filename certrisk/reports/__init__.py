"""Compliance reports: per run and per period, in two editions, as HTML, PDF or CSV.

::

    from certrisk.governance.store import GovernanceStore
    from certrisk.reports import build_run_report, render, write_report

    report = build_run_report(GovernanceStore(url), "scheduled__2026-01-02", edition="compliance")
    write_report(report, "run.html")          # or .pdf, .csv
    pdf = render(report, "pdf")               # the bytes of a file, in any of FORMATS

``run_report`` and ``period_report`` turn what a source read into a ``Report`` (sections of
paragraphs, facts, tables and figures); ``render`` lays it out in each format, so every format
says the same thing.

The ``compliance`` edition reads only the compliance views (tiers, factors, aggregates, RMF
evidence): no radius or confidence bound anywhere. The ``engineer`` edition adds the raw
certificates, per-test drift statistics, rule results and per-method resource figures.
``certrisk.reports.dashboard`` serves the same content under ``/certrisk`` in Airflow's API server.
"""

from certrisk.reports.build import build_period_report, build_run_report, parse_period, write_report
from certrisk.reports.document import Report
from certrisk.reports.period_content import period_report
from certrisk.reports.rendering import FORMATS, render
from certrisk.reports.run_content import run_report

__all__ = [
    "FORMATS",
    "Report",
    "build_period_report",
    "build_run_report",
    "parse_period",
    "period_report",
    "render",
    "run_report",
    "write_report",
]
