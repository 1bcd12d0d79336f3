"""PDF with reportlab (pure Python): the same sections, facts, tables and figures as the HTML."""

from __future__ import annotations

import io
import re
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.enums import TA_LEFT
from reportlab.lib.pagesizes import A4, landscape
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.lib.utils import ImageReader
from reportlab.platypus import (
    Image,
    KeepTogether,
    ListFlowable,
    ListItem,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

import certrisk
from certrisk.reports.document import Report, Section
from certrisk.reports.document import Table as ReportTable
from certrisk.reports.formatting import fmt_time
from certrisk.reports.plots import TIER_COLORS

_BOLD = re.compile(r"\*\*(.+?)\*\*")
INK = colors.HexColor("#1f2933")
MUTED = colors.HexColor("#52606d")
LINE = colors.HexColor("#d9dee3")


def _styles() -> dict[str, ParagraphStyle]:
    base = getSampleStyleSheet()
    body = ParagraphStyle(
        "body",
        parent=base["BodyText"],
        fontName="Helvetica",
        fontSize=9,
        leading=12,
        textColor=INK,
        alignment=TA_LEFT,
    )
    return {
        "title": ParagraphStyle(
            "title",
            parent=base["Title"],
            fontName="Helvetica-Bold",
            fontSize=18,
            leading=22,
            alignment=TA_LEFT,
            textColor=INK,
            spaceAfter=2,
        ),
        "sub": ParagraphStyle("sub", parent=body, textColor=MUTED, fontSize=10),
        "h2": ParagraphStyle(
            "h2",
            parent=base["Heading2"],
            fontName="Helvetica-Bold",
            fontSize=13,
            leading=16,
            textColor=INK,
            spaceBefore=10,
            spaceAfter=4,
        ),
        "h3": ParagraphStyle("h3", parent=body, fontName="Helvetica-Bold", fontSize=10, spaceBefore=6),
        "body": body,
        "small": ParagraphStyle("small", parent=body, fontSize=8, leading=10, textColor=MUTED),
        "cell": ParagraphStyle("cell", parent=body, fontSize=7.5, leading=9.2),
        "head": ParagraphStyle("head", parent=body, fontName="Helvetica-Bold", fontSize=7.5, leading=9.2),
        "note": ParagraphStyle(
            "note",
            parent=body,
            fontSize=8.5,
            backColor=colors.HexColor("#fff8e6"),
            borderPadding=5,
            textColor=colors.HexColor("#3e4c59"),
        ),
    }


def _text(value: str) -> str:
    return escape(str(value))


def _markdown(text: str, st) -> list:
    out: list = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = [ln.rstrip() for ln in block.splitlines() if ln.strip()]
        if not lines:
            continue
        if lines[0].startswith("## "):
            out.append(Paragraph(_inline(lines[0][3:]), st["h3"]))
            lines = lines[1:]
            if not lines:
                continue
        if all(ln.lstrip().startswith("- ") for ln in lines):
            items = [ListItem(Paragraph(_inline(ln.lstrip()[2:]), st["body"]), leftIndent=10) for ln in lines]
            out.append(ListFlowable(items, bulletType="bullet", start="\u2022", leftIndent=10))
        else:
            out.append(Paragraph(_inline(" ".join(lines)), st["body"]))
        out.append(Spacer(1, 3))
    return out


def _inline(text: str) -> str:
    return _BOLD.sub(r"<b>\1</b>", _text(text))


def _table(t: ReportTable, st, width: float) -> Table:
    n = len(t.columns)
    widths = [w * width for w in t.widths] if t.widths and len(t.widths) == n else [width / n] * n
    data = [[Paragraph(_text(c), st["head"]) for c in t.columns]]
    data += [[Paragraph(_text(c), st["cell"]) for c in row] for row in t.rows] or [
        [Paragraph("none", st["cell"])] + [Paragraph("", st["cell"])] * (n - 1)
    ]
    table = Table(data, colWidths=widths, repeatRows=1)
    style = [
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eef1f4")),
        ("LINEBELOW", (0, 0), (-1, -1), 0.3, LINE),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("LEFTPADDING", (0, 0), (-1, -1), 3),
        ("RIGHTPADDING", (0, 0), (-1, -1), 3),
        ("TOPPADDING", (0, 0), (-1, -1), 2),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
    ]
    if t.tier_column is not None:
        for i, row in enumerate(t.rows, start=1):
            color = TIER_COLORS.get(row[t.tier_column])
            if color:
                style.append(("BACKGROUND", (t.tier_column, i), (t.tier_column, i), colors.HexColor(color)))
    table.setStyle(TableStyle(style))
    return table


def _image(png: bytes, max_width: float) -> Image:
    reader = ImageReader(io.BytesIO(png))
    w, h = reader.getSize()
    scale = min(max_width / w, 72.0 / 110)  # about the size the figure was drawn at
    return Image(io.BytesIO(png), width=w * scale, height=h * scale)


def _headline(report: Report, st, width: float) -> Table:
    """The headline figures as one row of labelled cells."""
    value = ParagraphStyle("kv", parent=st["body"], fontSize=13, leading=16)
    n = len(report.headline)
    kpi = Table(
        [
            [Paragraph(_text(k), st["small"]) for k, _ in report.headline],
            [Paragraph(f"<b>{_text(v)}</b>", value) for _, v in report.headline],
        ],
        colWidths=[width / max(n, 1)] * n,
    )
    kpi.setStyle(
        TableStyle(
            [
                ("BOX", (0, 0), (-1, -1), 0.4, LINE),
                ("INNERGRID", (0, 0), (-1, -1), 0.4, LINE),
                ("BACKGROUND", (0, 0), (-1, -1), colors.white),
            ]
        )
    )
    return kpi


def _bullets(items: list[str], st) -> ListFlowable:
    return ListFlowable(
        [ListItem(Paragraph(_text(b), st["body"]), leftIndent=10) for b in items],
        bulletType="bullet",
        start="\u2022",
        leftIndent=10,
    )


def _facts(facts: list[tuple[str, str]], st, width: float) -> Table:
    table = Table(
        [[Paragraph(_text(k), st["small"]), Paragraph(_text(v), st["cell"])] for k, v in facts],
        colWidths=[0.22 * width, 0.78 * width],
    )
    table.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("TOPPADDING", (0, 0), (-1, -1), 1),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 1),
            ]
        )
    )
    return table


def _figures(figures: list, width: float) -> Table:
    """Figures side by side, up to three per row."""
    per_row = min(len(figures), 3)
    cell = width / per_row
    imgs = [_image(f.png, cell - 4) for f in figures]
    rows = [imgs[i : i + per_row] for i in range(0, len(imgs), per_row)]
    rows[-1] += [""] * (per_row - len(rows[-1]))
    return Table(rows, colWidths=[cell] * per_row)


def _section(s: Section, st, width: float) -> list:
    """One section's flowables: title, paragraphs, bullets and facts kept together, then the
    markdown statement, figures, tables and notes."""
    head: list = [Paragraph(_text(s.title), st["h2"])]
    head += [Paragraph(_text(p), st["body"]) for p in s.paragraphs]
    if s.bullets:
        head.append(_bullets(s.bullets, st))
    if s.facts:
        head.append(_facts(s.facts, st, width))
    story: list = [KeepTogether(head)]
    if s.markdown:
        story += _markdown(s.markdown, st)
    if s.figures:
        story.append(_figures(s.figures, width))
    for t in s.tables:
        if t.caption:
            story.append(Paragraph(_text(t.caption), st["small"]))
        story += [_table(t, st, width), Spacer(1, 4)]
    return story + [Paragraph(_text(n), st["small"]) for n in s.notes]


def _footer(report: Report, page, margin: float):
    """The page callback that writes the version, edition, generation time and page number."""

    def draw(canvas, doc) -> None:
        canvas.saveState()
        canvas.setFont("Helvetica", 7)
        canvas.setFillColor(MUTED)
        canvas.drawString(
            margin,
            8 * mm,
            f"certrisk {certrisk.__version__} | {report.edition.value} edition | "
            f"generated {fmt_time(report.generated_at)}",
        )
        canvas.drawRightString(page[0] - margin, 8 * mm, f"page {doc.page}")
        canvas.restoreState()

    return draw


def render_pdf(report: Report) -> bytes:
    """The report as PDF bytes (A4 landscape, so wide tables keep readable columns)."""
    st = _styles()
    buf = io.BytesIO()
    page = landscape(A4)
    margin = 14 * mm
    doc = SimpleDocTemplate(
        buf,
        pagesize=page,
        leftMargin=margin,
        rightMargin=margin,
        topMargin=margin,
        bottomMargin=margin,
        title=report.title,
        author=f"certrisk {certrisk.__version__}",
    )
    width = page[0] - 2 * margin
    story: list = [
        Paragraph(_text(report.title), st["title"]),
        Paragraph(_text(f"{report.subtitle} | {report.edition.value} edition"), st["sub"]),
        Spacer(1, 6),
        Paragraph(_text(report.edition_note), st["note"]),
        Spacer(1, 8),
        _headline(report, st, width),
        Spacer(1, 6),
    ]
    for s in report.sections:
        story += _section(s, st, width)
    footer = _footer(report, page, margin)
    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return buf.getvalue()
