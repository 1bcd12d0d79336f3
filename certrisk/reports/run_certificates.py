"""The run report's sections about certificates: the top-risk samples (and the CSV frame of every
sample), the certification methods compared, and the limitations statement with the policy's
certification parameters.

The compliance edition has no certificate table (``RunData.certificates`` is None): it shows whether
a sample was certified, per-method shares and costs from v_method_cost, never a radius or a bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from certrisk.reports import plots
from certrisk.reports.document import Figure, Section, Table
from certrisk.reports.formatting import (
    NOT_RECORDED,
    as_list,
    fmt_bytes,
    fmt_num,
    fmt_pct,
    leading_factors,
    present,
)
from certrisk.reports.sources import RunData
from certrisk.schemas.columns import FACTORS
from certrisk.schemas.enums import Edition
from certrisk.schemas.policy import CROWNSpec, IBPSpec, SmoothingSpec

#: Rows of the top-risk sample table in HTML and PDF (the CSV holds every sample).
TOP_SAMPLES = 25

COST_COLUMNS = ["Time / sample", "Total time", "Peak memory", "Forward passes / sample"]


# ------------------------------------------------------------------------------------ samples


@dataclass
class _CertificateColumns:
    """The engineer edition's certificate columns: one radius per method, one p_lower per method
    that has a confidence bound, read from ``wide`` (one row per sample_id)."""

    wide: pd.DataFrame | None
    methods: list[str]
    bounded: list[str]
    norms: dict[str, str]

    @property
    def headers(self) -> list[str]:
        radii = [f"Radius {m} ({self.norms.get(m, '')})" for m in self.methods]
        return ["Prediction (base)", *radii, *(f"p_lower {m}" for m in self.bounded)]

    def cells(self, r: pd.Series) -> list[str]:
        row = [f"{int(r['prediction'])} ({int(r['base_prediction'])})"]
        row += [fmt_num(r.get(f"radius_{m}"), 4) for m in self.methods]
        return row + [fmt_num(r.get(f"p_lower_{m}"), 4) for m in self.bounded]


def _certificate_columns(data: RunData) -> _CertificateColumns:
    c = data.certificates
    if c is None or not len(c):
        return _CertificateColumns(None, [], [], {})
    wide = c.pivot_table(index="sample_id", columns="method", values=["radius", "p_lower"], aggfunc="first")
    wide.columns = [f"{value}_{method}" for value, method in wide.columns]
    wide = wide.reset_index()
    methods = sorted(c["method"].unique())
    bounded = [m for m in methods if f"p_lower_{m}" in wide and wide[f"p_lower_{m}"].notna().any()]
    norms = dict(zip(c["method"], c["norm"], strict=False))
    return _CertificateColumns(wide, methods, bounded, norms)


def _samples_frame(merged: pd.DataFrame, certs: _CertificateColumns | None) -> pd.DataFrame:
    """The CSV frame: every sample with the compliance columns; the engineer edition adds its
    predictions and certificate columns."""
    base = ["sample_id", "tier", "risk", "abstained", *(f"factor_{f}" for f in FACTORS), "top_factors"]
    frame = merged[base + (["prediction", "base_prediction"] if certs is not None else [])].copy()
    if certs is not None and certs.wide is not None:
        frame = frame.merge(certs.wide, on="sample_id", how="left")
    frame["top_factors"] = [";".join(as_list(v)) for v in frame["top_factors"]]
    return frame


def samples_section(data: RunData) -> tuple[Section, pd.DataFrame]:
    """The riskiest samples with their leading factors, and the CSV frame of every sample."""
    s = data.samples.sort_values("risk", ascending=False, kind="stable").reset_index(drop=True)
    certs = _certificate_columns(data) if data.edition is Edition.ENGINEER else None
    cols = ["Sample", "Tier", "Risk", "Certificate", "Leading factors"]
    merged = s
    if certs is not None:
        cols += certs.headers
        if certs.wide is not None:
            merged = s.merge(certs.wide, on="sample_id", how="left")
    rows = []
    for _, r in merged.head(TOP_SAMPLES).iterrows():
        row = [
            str(r["sample_id"]),
            str(r["tier"]),
            fmt_num(r["risk"]),
            "abstained" if bool(r["abstained"]) else "certified",
            leading_factors(r),
        ]
        rows.append(row + (certs.cells(r) if certs is not None else []))
    sec = Section(
        "samples",
        "Top-risk samples",
        paragraphs=[
            (
                f"The {min(TOP_SAMPLES, len(s))} riskiest of {len(s)} samples, with the factors that contribute most "
                "to each risk. The CSV format lists every sample."
            )
        ],
        tables=[Table(cols, rows, tier_column=1)],
    )
    if certs is None:
        sec.notes.append(
            "Certificate shows whether the sample obtained a certificate; certified radii and "
            "confidence bounds are withheld from this edition."
        )
    return sec, _samples_frame(merged, certs)


# ------------------------------------------------------------------------------------ methods


def _cost_cells(r) -> list[str]:
    """Per-sample time, total time, peak memory and forward passes per sample of a v_method_cost row."""
    n = int(r.n_samples)
    timed = present(r.total_seconds)
    return [
        f"{1000 * r.total_seconds / n:.2f} ms" if timed else NOT_RECORDED,
        f"{r.total_seconds:.2f} s" if timed else NOT_RECORDED,
        fmt_bytes(r.peak_bytes) if present(r.peak_bytes) else NOT_RECORDED,
        f"{int(r.forward_passes) / n:,.0f}" if present(r.forward_passes) else NOT_RECORDED,
    ]


def _method_costs_section(data: RunData, sec: Section) -> Section:
    """The compliance edition's comparison: per-method aggregates from v_method_cost."""
    costs = data.method_costs
    if costs is not None and len(costs):
        sec.facts.append(("Certification methods", ", ".join(str(m) for m in costs["method"])))
    sec.facts.append(("Samples not abstained", fmt_pct(1.0 - float(data.run["abstention_rate"]))))
    if costs is None or not len(costs):
        sec.notes.append("Per-method time, memory and forward passes are in the engineer edition.")
        return sec
    rows = [
        [str(r.method), f"{int(r.n_samples):,}", fmt_pct(r.share_certified), fmt_pct(r.share_abstained)]
        + _cost_cells(r)
        for r in costs.itertuples(index=False)
    ]
    sec.paragraphs.append(
        "What each method costs on this batch: wall time amortised per sample, the batch's peak "
        "memory, forward passes per sample, and the shares of samples certified and abstained."
    )
    sec.tables.append(
        Table(
            ["Method", "Samples", "Certified", "Abstained", *COST_COLUMNS],
            rows,
            caption="Resource comparison of the certification methods",
        )
    )
    return sec


def _certificate_method_row(method: str, g: pd.DataFrame) -> list[str]:
    """One method's certificates summarised: norm, count, share certified, cost, devices, median radius."""
    certified = ~g["abstained"].astype(bool)
    median = float(g.loc[certified, "radius"].median()) if certified.any() else float("nan")
    ms = 1000 * float(g["seconds"].mean())
    return [
        str(method),
        str(g["norm"].iloc[0]),
        str(len(g)),
        fmt_pct(1.0 - g["abstained"].astype(bool).mean()),
        f"{1000 * g['seconds'].mean():.2f} ms",
        f"{g['seconds'].sum():.2f} s",
        fmt_bytes(g["peak_bytes"].max()),
        f"{g['n_forward'].mean():,.0f}",
        ", ".join(sorted(set(g["device"].astype(str)))),
        fmt_num(median, 4),
        fmt_num(median / ms, 4) if ms > 0 else "-",
    ]


def methods_section(data: RunData) -> Section:
    """Certification methods compared: cost and yield per method (radii in the engineer edition)."""
    sec = Section("methods", "Certification methods compared")
    c = data.certificates
    if c is None:
        return _method_costs_section(data, sec)
    if not len(c):
        sec.paragraphs.append("No certificate rows were recorded for this run.")
        return sec
    rows = [_certificate_method_row(method, g) for method, g in c.groupby("method", sort=True)]
    sec.paragraphs.append(
        "What each method costs and what it yields on this batch: wall time amortised per sample, the "
        "batch's peak memory, forward passes per sample, and the share of samples certified. The last "
        "two columns are the trade-off to choose by: how tight each method's certificates are (median "
        "radius, in its own norm) and how much radius a millisecond of compute buys."
    )
    sec.tables.append(
        Table(
            [
                "Method",
                "Norm",
                "Samples",
                "Certified",
                *COST_COLUMNS,
                "Device",
                "Median radius",
                "Radius per ms",
            ],
            rows,
            caption="Resource comparison of the certification methods",
        )
    )
    sec.figures.append(
        Figure("Certified radii", plots.radius_histograms(c), "histograms of certified radii per method")
    )
    return sec


# ------------------------------------------------------------------------------------ limitations


def _method_parameters(m) -> list[str]:
    """Method, norm, noise or eps, confidence and sample counts of one certification method."""
    if isinstance(m, SmoothingSpec):
        return [
            m.method.value,
            m.norm.value,
            f"sigma = {m.sigma}",
            f"alpha = {m.alpha}",
            f"n0 = {m.n0}, n = {m.n}",
        ]
    if isinstance(m, IBPSpec | CROWNSpec):
        eps = m.eps if m.eps is not None else "searched"
        return [m.method.value, m.norm.value, f"eps = {eps}", "-", "-"]
    return [m.method.value, m.norm.value, "-", "-", "-"]


def limitations_section(data: RunData, policy) -> Section:
    """The recorded limitations statement (markdown) and, where the policy is readable, the
    certification parameters it states."""
    sec = Section("limitations", "Limitations: what the certificates cover and what they do not")
    sec.markdown = str(data.run.get("limitations") or "")
    if not sec.markdown:
        sec.paragraphs.append("No limitations statement was recorded with this run.")
    if policy is not None:
        sec.tables.append(
            Table(
                ["Method", "Norm", "Noise / eps", "Confidence", "Samples"],
                [_method_parameters(m) for m in policy.certification.methods],
                caption="Certification parameters of the recorded policy",
            )
        )
    return sec
