"""The report model, independent of the format: a ``Report`` of ``Section``s holding paragraphs,
bullets, facts, a markdown statement, ``Table``s of preformatted cells and ``Figure``s (PNG), plus
the frame the CSV format writes. The HTML and PDF renderers only lay it out, so both formats say
the same thing."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd

from certrisk.schemas.enums import Edition, Tier

#: The tiers a report counts as "high or critical" (samples and runs it flags).
FLAGGED_TIERS = (Tier.HIGH.value, Tier.CRITICAL.value)

#: What each edition holds and who may read it, stated at the top of every report.
EDITION_NOTES = {
    Edition.COMPLIANCE: (
        "Compliance edition: tiers, factors and aggregates read from the compliance views. It holds no "
        "certified radius and no confidence bound: raw certificates can guide an attacker and are "
        "readable by engineers and auditors only."
    ),
    Edition.ENGINEER: (
        "Engineer edition: includes raw certificates (radii, lower confidence bounds p_lower), per-test "
        "drift statistics and per-method resource figures. Do not circulate beyond trusted roles: raw "
        "certificates can guide an attacker."
    ),
}


@dataclass
class Table:
    """A table of preformatted cells. ``tier_column``: index of a column shown as a tier badge;
    ``widths``: shares of the page width per column (the PDF reads them)."""

    columns: list[str]
    rows: list[list[str]]
    caption: str = ""
    tier_column: int | None = None
    widths: list[float] | None = None


@dataclass
class Figure:
    """A PNG figure with its title and the alternative text of the HTML image."""

    title: str
    png: bytes
    alt: str


@dataclass
class Section:
    """One titled section; ``key`` names it for tests and links (e.g. "abstention")."""

    key: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)
    markdown: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    """A rendered-to-be report. ``csv`` is the frame the CSV format writes."""

    kind: str
    edition: Edition
    title: str
    subtitle: str
    tier: str | None
    headline: list[tuple[str, str]]
    sections: list[Section]
    csv: pd.DataFrame
    generated_at: datetime
    edition_note: str = ""

    def text(self) -> str:
        """Every word and number of the report as plain text (for search and tests)."""
        parts = [self.title, self.subtitle, self.edition_note]
        parts += [f"{k} {v}" for k, v in self.headline]
        for s in self.sections:
            parts += [s.title, *s.paragraphs, *s.bullets, s.markdown, *s.notes]
            parts += [f"{k} {v}" for k, v in s.facts]
            for t in s.tables:
                parts += [t.caption, " ".join(t.columns)]
                parts += [" ".join(r) for r in t.rows]
        return "\n".join(p for p in parts if p)
