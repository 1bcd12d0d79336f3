"""``render(report, fmt)``: the one way a report becomes the bytes of a file, in every format."""

from __future__ import annotations

from certrisk.reports.document import Report
from certrisk.reports.html import render_html
from certrisk.schemas.errors import InputError
from certrisk.schemas.spreadsheet import safe_frame

#: The formats ``render`` writes.
FORMATS = ("html", "pdf", "csv")


def render(report: Report, fmt: str) -> bytes:
    """``report`` as the bytes of an ``fmt`` file: ``html`` (one self-contained UTF-8 document),
    ``pdf`` (A4 landscape) or ``csv`` (UTF-8, the report's frame without an index, every text
    cell a spreadsheet would run as a formula neutralised)."""
    fmt = str(fmt).lower()
    if fmt == "html":
        return render_html(report).encode("utf-8")
    if fmt == "pdf":
        # reportlab loads only when a PDF is asked for (the dashboard never asks)
        from certrisk.reports.pdf import render_pdf

        return render_pdf(report)
    if fmt == "csv":
        return safe_frame(report.csv).to_csv(index=False).encode("utf-8")
    raise InputError(f"unknown report format {fmt!r}; known: {list(FORMATS)}")
