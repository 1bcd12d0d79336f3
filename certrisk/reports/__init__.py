"""Compliance reports: per run and per period, in two editions, as HTML, PDF or CSV.

::

    from certrisk.governance.store import GovernanceStore
    from certrisk.reports import build_run_report, write_report

    report = build_run_report(GovernanceStore(url), "scheduled__2026-01-02", edition="compliance")
    write_report(report, "run.html")          # or .pdf, .csv

The ``compliance`` edition reads only the compliance views (tiers, factors, aggregates, RMF
evidence): no radius or confidence bound anywhere. The ``engineer`` edition adds the raw
certificates, per-test drift statistics, rule results and per-method resource figures.
``certrisk.reports.dashboard`` serves the same content under ``/certrisk`` in Airflow's API server.
"""

from certrisk.reports.build import FORMATS, build_period_report, build_run_report, parse_period, write_report
from certrisk.reports.content import Report, period_report, run_report

__all__ = [
    "FORMATS",
    "Report",
    "build_period_report",
    "build_run_report",
    "parse_period",
    "period_report",
    "run_report",
    "write_report",
]
