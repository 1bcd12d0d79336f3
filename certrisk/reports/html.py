"""Self-contained HTML: one file, CSS and figures inline (base64 PNG), no external resources."""

from __future__ import annotations

import base64
import re
from functools import lru_cache
from importlib import resources

import jinja2
from markupsafe import Markup, escape

import certrisk
from certrisk.reports.document import Report
from certrisk.reports.formatting import fmt_time

TIER_LABELS = ("Batch tier", "Worst tier")
_BOLD = re.compile(r"\*\*(.+?)\*\*")


def markdown_html(text: str) -> Markup:
    """The markdown subset the limitations statement uses: ``## `` headings, ``- `` bullets,
    ``**bold**`` and paragraphs separated by blank lines. Everything else is escaped text."""
    out = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = [ln.rstrip() for ln in block.splitlines() if ln.strip()]
        if not lines:
            continue
        if lines[0].startswith("## "):
            out.append(f"<h2>{_inline(lines[0][3:])}</h2>")
            lines = lines[1:]
            if not lines:
                continue
        if all(ln.lstrip().startswith("- ") for ln in lines):
            items = "".join(f"<li>{_inline(ln.lstrip()[2:])}</li>" for ln in lines)
            out.append(f"<ul>{items}</ul>")
        else:
            out.append(f"<p>{_inline(' '.join(lines))}</p>")
    return Markup("\n".join(out))


def _inline(text: str) -> str:
    return _BOLD.sub(r"<strong>\1</strong>", str(escape(text)))


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("certrisk.reports", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["markdown"] = markdown_html
    env.filters["b64"] = lambda data: base64.b64encode(data).decode("ascii")
    return env


@lru_cache(maxsize=1)
def stylesheet() -> str:
    return resources.files("certrisk.reports").joinpath("templates/style.css").read_text("utf-8")


def render_html(report: Report, *, back_link: str | None = None) -> str:
    """The report as one self-contained HTML document."""
    template = environment().get_template("report.html.j2")
    return template.render(
        report=report,
        css=Markup(stylesheet()),
        tier_labels=TIER_LABELS,
        version=certrisk.__version__,
        generated=fmt_time(report.generated_at),
        back_link=back_link,
    )
