"""Build a report from the governance store and write it as HTML, PDF or CSV."""

from __future__ import annotations

import re
from pathlib import Path

from certrisk.governance.store import GovernanceStore
from certrisk.reports.document import Report
from certrisk.reports.period_content import period_report
from certrisk.reports.rendering import FORMATS, render
from certrisk.reports.run_content import run_report
from certrisk.reports.sources import source_for
from certrisk.schemas.enums import Edition
from certrisk.schemas.errors import InputError

_PERIOD = re.compile(r"^\s*(\d+)\s*d?\s*$")


def parse_period(text: str | int) -> int:
    """Days in a period written as "30d" or "30"."""
    match = _PERIOD.match(str(text))
    if not match or int(match.group(1)) < 1:
        raise InputError(f"period must look like '30d' (a positive number of days), got {text!r}")
    return int(match.group(1))


def build_run_report(
    store: GovernanceStore,
    run_id: str,
    *,
    edition: Edition | str = Edition.COMPLIANCE,
    dag_id: str | None = None,
    revision: int | None = None,
    verify: bool = True,
) -> Report:
    """The per-run report of ``run_id`` (current revision unless ``revision``) in ``edition``.

    The compliance edition reads only the compliance views; ``verify`` checks the audit chain
    (a connection that may not read the raw tables reports that it could not).
    """
    data = source_for(edition, store, verify=verify).run(run_id, dag_id=dag_id, revision=revision)
    return run_report(data)


def build_period_report(
    store: GovernanceStore,
    *,
    model: str | None,
    days: int | str = 30,
    edition: Edition | str = Edition.COMPLIANCE,
    verify: bool = True,
) -> Report:
    """The report over the last ``days`` days (e.g. 30 or "30d") of ``model`` (None: every model)."""
    data = source_for(edition, store, verify=verify).period(model=model, days=parse_period(days))
    return period_report(data)


def write_report(report: Report, path: str | Path, fmt: str | None = None) -> Path:
    """Write ``report`` to ``path`` as html, pdf or csv (default: from the suffix); returns the path."""
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".") or "html").lower()
    if fmt not in FORMATS:  # before any directory is made
        raise InputError(f"unknown report format {fmt!r}; known: {list(FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(render(report, fmt))
    tmp.replace(path)
    return path
