"""One representation of time: timezone-aware UTC. Every naive timestamp certrisk reads (SQLite
returns them naive) is taken as UTC; an aware one is converted."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime; a naive value is taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def as_utc_timestamp(value) -> pd.Timestamp:
    """``value`` (datetime, ISO string or pandas Timestamp) as an aware UTC pandas Timestamp."""
    stamp = pd.Timestamp(value)
    return stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)


def utc_now() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(UTC)
