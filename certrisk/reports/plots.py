"""Report figures as PNG bytes (matplotlib, Agg backend; nothing is shown or kept open).

Each function takes plain arrays or frames and returns the PNG of one figure, which the HTML
renderer inlines as base64 and the PDF renderer embeds.
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg", force=False)

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from certrisk.schemas.clock import as_utc_timestamp
from certrisk.schemas.enums import Tier

TIER_COLORS = {
    Tier.LOW.value: "#8fb3cc",
    Tier.MEDIUM.value: "#e3b341",
    Tier.HIGH.value: "#e0702c",
    Tier.CRITICAL.value: "#b3261e",
}
INK = "#1f2933"
GRID = "#d9dee3"
DPI = 120
#: A day axis is at least this many days wide, so one day of data is not one wall-to-wall bar.
MIN_DAY_SPAN = 3
#: At most about this many day ticks (every k-th day beyond).
MAX_DAY_TICKS = 10


def _style(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.spines[["left", "bottom"]].set_color("#9aa5b1")
    ax.tick_params(colors=INK, labelsize=8)
    ax.yaxis.grid(True, color=GRID, linewidth=0.6)
    ax.set_axisbelow(True)


def day_axis(ax, days) -> tuple[float, float]:
    """Fit the x axis to the UTC days in ``days`` (dates or timestamps): from the first day to the
    last, half a day either side (wider, centred, when fewer than ``MIN_DAY_SPAN`` days), day
    ticks labelled "Dec 01". Matplotlib's default for one day is an axis of years. Returns the
    limits (matplotlib date numbers)."""
    stamps = pd.to_datetime(pd.Series(list(days)), utc=True).dt.tz_localize(None).dt.normalize()
    first, last = mdates.date2num(stamps.min()), mdates.date2num(stamps.max())
    span = last - first + 1
    pad = 0.5 + max(0.0, (MIN_DAY_SPAN - span) / 2)
    limits = (first - pad, last + pad)
    ax.set_xlim(*limits)
    ax.xaxis.set_major_locator(mdates.DayLocator(interval=max(1, math.ceil(span / MAX_DAY_TICKS))))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%b %d"))
    return limits


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    plt.close(fig)
    return buf.getvalue()


def tier_counts(counts: dict[str, int]) -> bytes:
    """Bar chart of samples per tier (low to critical), each bar labelled with its count."""
    tiers = [t.value for t in Tier]
    values = [int(counts.get(t, 0)) for t in tiers]
    fig, ax = plt.subplots(figsize=(4.2, 2.6))
    bars = ax.bar(tiers, values, color=[TIER_COLORS[t] for t in tiers], width=0.65)
    for bar, v in zip(bars, values, strict=True):
        ax.annotate(
            str(v),
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
            color=INK,
            xytext=(0, 2),
            textcoords="offset points",
        )
    ax.set_ylabel("samples", fontsize=8, color=INK)
    ax.set_title("Samples per tier", fontsize=9, color=INK, loc="left")
    ax.margins(y=0.15)
    _style(ax)
    return _png(fig)


def risk_distribution(risk: np.ndarray, tiers: np.ndarray) -> bytes:
    """Histogram of per-sample risk in [0, 1], stacked by tier."""
    bins = np.linspace(0.0, 1.0, 21)
    fig, ax = plt.subplots(figsize=(5.2, 2.6))
    data, colors, labels = [], [], []
    for t in Tier:
        sel = np.asarray(risk)[np.asarray(tiers) == t.value]
        data.append(sel)
        colors.append(TIER_COLORS[t.value])
        labels.append(t.value)
    ax.hist(data, bins=bins, stacked=True, color=colors, label=labels, edgecolor="white", linewidth=0.4)
    ax.set_xlim(0, 1)
    ax.set_xlabel("risk", fontsize=8, color=INK)
    ax.set_ylabel("samples", fontsize=8, color=INK)
    ax.set_title("Risk distribution", fontsize=9, color=INK, loc="left")
    ax.legend(fontsize=7, frameon=False, ncols=4, loc="upper center")
    ax.margins(y=0.2)
    _style(ax)
    return _png(fig)


def factor_prevalence(shares: dict[str, float]) -> bytes:
    """Horizontal bars: share of samples in which each risk factor contributes."""
    names = list(shares)[::-1]
    values = [100.0 * shares[n] for n in names]
    fig, ax = plt.subplots(figsize=(4.6, 2.6))
    ax.barh(names, values, color="#52606d", height=0.6)
    for y, v in enumerate(values):
        ax.annotate(
            f"{v:.0f}%", (v, y), va="center", fontsize=7, color=INK, xytext=(3, 0), textcoords="offset points"
        )
    ax.set_xlim(0, 110)
    ax.set_xlabel("% of samples where the factor contributes", fontsize=8, color=INK)
    ax.set_title("Risk factors", fontsize=9, color=INK, loc="left")
    _style(ax)
    ax.yaxis.grid(False)
    ax.xaxis.grid(True, color=GRID, linewidth=0.6)
    return _png(fig)


def radius_histograms(certificates: pd.DataFrame) -> bytes:
    """Engineer edition: histogram of certified radii per method (abstentions left out), in each method's norm."""
    methods = list(pd.unique(certificates["method"]))
    fig, axes = plt.subplots(
        1, max(len(methods), 1), figsize=(3.4 * max(len(methods), 1), 2.6), squeeze=False
    )
    for ax, method in zip(axes[0], methods, strict=False):
        rows = certificates.loc[(certificates["method"] == method) & ~certificates["abstained"].astype(bool)]
        norm = rows["norm"].iloc[0] if len(rows) else ""
        ax.hist(
            rows["radius"].to_numpy(dtype=float), bins=20, color="#3e7cb1", edgecolor="white", linewidth=0.4
        )
        ax.set_title(f"{method}: certified radius ({norm})", fontsize=9, color=INK, loc="left")
        ax.set_xlabel(f"radius ({norm})", fontsize=8, color=INK)
        ax.set_ylabel("samples", fontsize=8, color=INK)
        _style(ax)
    return _png(fig)


def trend_figure(trend: pd.DataFrame):
    """The figure of ``daily_trend`` (its x axis spans the days in ``trend``)."""
    fig, ax = plt.subplots(figsize=(6.4, 2.8))
    for model, rows in trend.groupby("model", sort=True):
        days = pd.to_datetime(rows["day"])
        for column, label, marker, color in (
            ("abstention_rate", "abstention rate", "o", "#b3261e"),
            ("mean_risk", "mean risk", "s", "#3e7cb1"),
        ):
            ax.plot(
                days,
                rows[column],
                marker=marker,
                markersize=3,
                linewidth=1.4,
                label=f"{label} ({model})",
                color=color,
            )
    top = float(np.nanmax(trend[["abstention_rate", "mean_risk"]].to_numpy())) if len(trend) else 0.8
    ax.set_ylim(0, max(1e-3, top * 1.25))
    if len(trend):
        day_axis(ax, trend["day"])
    ax.set_title("Daily abstention rate and mean risk", fontsize=9, color=INK, loc="left")
    ax.legend(fontsize=7, frameon=False, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2)
    _style(ax)
    return fig


def daily_trend(trend: pd.DataFrame) -> bytes:
    """Daily abstention rate and mean risk, one line each (per model when several)."""
    return _png(trend_figure(trend))


def runs_by_tier_figure(runs: pd.DataFrame):
    """The figure of ``runs_by_tier`` (its x axis spans the runs' days)."""
    fig, ax = plt.subplots(figsize=(6.4, 2.6))
    if len(runs):
        day = pd.Series([as_utc_timestamp(v).normalize() for v in runs["created_at"]], index=runs.index)
        table = pd.crosstab(day, runs["tier"]).reindex(columns=[t.value for t in Tier], fill_value=0)
        bottom = np.zeros(len(table))
        x = mdates.date2num(pd.to_datetime(table.index, utc=True).tz_localize(None))
        for t in table.columns:
            ax.bar(x, table[t].to_numpy(), bottom=bottom, color=TIER_COLORS[t], label=t, width=0.8)
            bottom += table[t].to_numpy()
        day_axis(ax, table.index)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("runs", fontsize=8, color=INK)
    ax.set_title("Runs per day by batch tier", fontsize=9, color=INK, loc="left")
    ax.legend(fontsize=7, frameon=False, ncols=4, loc="lower right", bbox_to_anchor=(1.0, 1.0))
    ax.margins(y=0.1)
    _style(ax)
    return fig


def runs_by_tier(runs: pd.DataFrame) -> bytes:
    """Stacked bars: recorded runs per day, by batch tier."""
    return _png(runs_by_tier_figure(runs))


def rmf_coverage_over_time(per_day: pd.DataFrame, total: int) -> bytes:
    """Line: NIST AI RMF subcategories evidenced per day, and the cumulative count, out of ``total``."""
    fig, ax = plt.subplots(figsize=(6.4, 2.6))
    if len(per_day):
        days = pd.to_datetime(per_day["day"])
        ax.plot(
            days, per_day["evidenced"], marker="o", markersize=3, color="#52606d", label="evidenced that day"
        )
        ax.plot(
            days,
            per_day["cumulative"],
            linestyle="--",
            color="#3e7cb1",
            label="evidenced so far in the period",
        )
        fig.autofmt_xdate()
    ax.axhline(total, color="#9aa5b1", linewidth=0.8)
    ax.annotate(
        f"{total} subcategories in the Core",
        (0.01, total),
        xycoords=("axes fraction", "data"),
        fontsize=7,
        color="#52606d",
        va="bottom",
    )
    ax.set_ylim(0, total * 1.12)
    ax.set_title("NIST AI RMF subcategories evidenced", fontsize=9, color=INK, loc="left")
    ax.legend(fontsize=7, frameon=False, loc="center left")
    _style(ax)
    return _png(fig)
