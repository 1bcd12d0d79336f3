"""How a report writes numbers, times and lists: one rule per kind of value, shared by every
section and format. A value that was not recorded (None, NaN, NA) reads "n/a"."""

from __future__ import annotations

import math

import pandas as pd

from certrisk.reports.sources import AuditStatus
from certrisk.schemas.clock import as_utc_timestamp

NOT_RECORDED = "n/a"


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def present(value) -> bool:
    """A recorded number (not None, NA or NaN)."""
    return value is not None and not pd.isna(value)


def fmt_num(value, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals, e.g. 0.125 -> "0.125"."""
    if _missing(value):
        return NOT_RECORDED
    return f"{float(value):.{digits}f}"


def fmt_pct(value, digits: int = 1) -> str:
    """A share in [0, 1] as a percentage, e.g. 0.125 -> "12.5%"."""
    if _missing(value):
        return NOT_RECORDED
    return f"{100.0 * float(value):.{digits}f}%"


def fmt_p(value) -> str:
    """A p-value: scientific below 1e-3 ("3.00e-06"), four decimals above ("0.0421")."""
    if _missing(value):
        return NOT_RECORDED
    return f"{float(value):.2e}" if float(value) < 1e-3 else f"{float(value):.4f}"


def fmt_time(value) -> str:
    """A time in UTC to the minute, e.g. "2026-01-02 03:04 UTC" (naive times are taken as UTC)."""
    if value is None or pd.isna(value):
        return NOT_RECORDED
    return as_utc_timestamp(value).strftime("%Y-%m-%d %H:%M UTC")


def fmt_bytes(value) -> str:
    """A size in bytes as MiB, e.g. 50331648 -> "48.0 MiB"."""
    if value is None or pd.isna(value):
        return NOT_RECORDED
    return f"{float(value) / 2**20:.1f} MiB"


def as_list(value) -> list[str]:
    """A recorded list (JSON array, numpy array, one string or nothing) as a list of strings."""
    if _missing(value):
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def leading_factors(row: pd.Series, k: int = 3) -> str:
    """The sample's largest factor contributions, e.g. "abstention 0.60, rules 0.12"."""
    names = as_list(row.get("top_factors"))[:k]
    return ", ".join(f"{n} {float(row[f'factor_{n}']):.2f}" for n in names) or "none"


def audit_facts(audit: AuditStatus) -> list[tuple[str, str]]:
    """The audit chain's state (and its head, when known) as provenance facts."""
    status = ("intact" if audit.ok else "BROKEN") if audit.checked else "not checked"
    facts = [("Audit chain", f"{status}: {audit.message}")]
    if audit.head:
        facts.append(("Audit chain head", audit.head))
    return facts
