"""The payload of one governance write (``RunRecord``) and its validation into canonical rows.

Validation happens before any connection is opened, so bad input never leaves a trace in the
database: missing columns, duplicate sample ids, NaN, inf or out-of-range risk, unknown tiers,
factor names or RMF subcategory ids, certificates for samples the run does not have, and a
summary that disagrees with the rows or is out of range (``summary_figures.reconcile``: the
stored figures are the ones the rows give) all raise ``InputError`` naming the table, column,
row, sample id or summary key.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd

from certrisk.governance.chain import (
    RunHeader,
    canonical_json,
    column_reprs,
    iso_utc,
    manifest_of,
    row_digests_of,
    strict_json,
    table_digest,
)
from certrisk.governance.summary_figures import reconcile
from certrisk.schemas.clock import as_utc
from certrisk.schemas.columns import (
    CERTIFICATE_COLUMNS,
    DRIFT_TEST_COLUMNS,
    FACTORS,
    RULE_EXPECTATION_COLUMNS,
    RULE_SAMPLE_COLUMNS,
    SAMPLE_ID,
    SAMPLE_RISK_COLUMNS,
    conform,
    empty_frame,
    finite_or_raise,
)
from certrisk.schemas.enums import Tier
from certrisk.schemas.errors import InputError
from certrisk.schemas.rmf import catalog
from certrisk.schemas.tables import RMF_EVIDENCE_COLUMNS, ROW_TABLES

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TIERS = frozenset(t.value for t in Tier)
#: Summary keys a caller must supply: the batch tier (its rules are the scorer's; every other
#: batch figure is derived from the rows, ``summary_figures``).
REQUIRED_SUMMARY_KEYS = ("tier",)


@dataclass(frozen=True)
class RunRecord:
    """Everything one pipeline run records. Frames follow the specs in ``schemas.columns``.

    ``created_at`` is the run's logical time in UTC (naive values are taken as UTC).
    ``summary`` is the batch-level JSON (n_samples, abstention_rate, mean_risk, tier, reasons,
    drift, tier_counts, risk_quantiles, seeds, limitations, ...); it must be JSON-serializable
    without NaN. ``rmf_evidence`` lists (subcategory_id, evidence_kind, detail).
    Every frame except ``sample_risk`` may be empty (or None).
    """

    dag_id: str
    run_id: str
    batch_id: str
    created_at: datetime
    model_name: str
    model_sha256: str
    model_format: str
    policy_name: str
    policy_sha256: str
    policy_text: str
    package_version: str
    summary: dict
    sample_risk: pd.DataFrame
    certificates: pd.DataFrame | None = None
    rule_samples: pd.DataFrame | None = None
    rule_expectations: pd.DataFrame | None = None
    drift_tests: pd.DataFrame | None = None
    rmf_evidence: list = field(default_factory=list)


@dataclass
class TableRows:
    """One table's rows in canonical form, a column at a time: canonical values, their reprs
    (what the row digests are computed over, see ``chain``) and the row digests."""

    columns: tuple[str, ...]
    dtypes: tuple[str, ...]
    values: list[list]  # per column, canonical values (lists of str for JSON columns)
    reprs: list[list[str]]  # per column, repr of each value
    digests: list[str]

    @property
    def n(self) -> int:
        return len(self.digests)

    @property
    def json_columns(self) -> frozenset:
        return frozenset(c for c, d in zip(self.columns, self.dtypes, strict=True) if d == "object")

    def insert_columns(self) -> list[list]:
        """Per column, the values as a driver takes them: JSON columns as JSON text (None stays
        None); every other column is its canonical values list itself (not a copy)."""
        out = []
        for col, dtype in zip(self.values, self.dtypes, strict=True):
            if dtype == "object":
                col = _json_texts(col)
            out.append(col)
        return out


def _json_texts(col: list) -> list:
    cache: dict = {}
    dumped = []
    for v in col:
        if v is None:
            dumped.append(None)
            continue
        key = tuple(v)
        text = cache.get(key)
        if text is None:
            text = cache[key] = canonical_json(v)
        dumped.append(text)
    return dumped


@dataclass
class PreparedRun:
    """A validated ``RunRecord``: its canonical summary, UTC creation time, row tables, header,
    manifest and manifest digest (what ``write_run`` writes)."""

    record: RunRecord
    header: RunHeader
    summary: dict
    created_at: datetime
    tables: dict[str, TableRows]
    manifest: dict
    manifest_digest: str


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, datetime):
        return iso_utc(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _canonical_floats(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """A float column as float64 with -0.0 -> 0.0, and the mask of its NaN (canonically None)."""
    arr = series.to_numpy(dtype=np.float64, na_value=np.nan) + 0.0
    return arr, np.isnan(arr)


def canonical_column(series: pd.Series, dtype: str) -> list:
    """Canonical Python values of one column (see ``chain``): NaN -> None, -0.0 -> 0.0.

    Converts the whole column at once (no per-row pandas access).
    """
    if dtype == "float64":
        arr, nan = _canonical_floats(series)
        vals = arr.tolist()
        for i in np.flatnonzero(nan).tolist():
            vals[i] = None
        return vals
    if dtype == "int64":
        return series.to_numpy(dtype=np.int64).tolist()
    if dtype == "bool":
        if series.isna().any():  # an optional column left out: None, not False
            return [None if v is None else bool(v) for v in series.to_numpy(dtype=object, na_value=None)]
        return series.to_numpy(dtype=bool).tolist()
    if dtype == "string":
        return series.to_numpy(dtype=object, na_value=None).tolist()
    # object: lists of str (parquet gives numpy arrays)
    out = []
    for v in series.to_numpy(dtype=object).tolist():
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out.append(None)
        elif type(v) is list and all(type(x) is str for x in v):
            out.append(v)
        elif isinstance(v, str):
            out.append([v])
        else:
            out.append([str(x) for x in v])
    return out


def table_rows(frame: pd.DataFrame, spec, *, table: str) -> TableRows:
    """Canonical values, reprs and row digests of ``frame`` (conformed to ``spec``)."""
    dtypes = tuple(spec.values())
    values, reprs = [], []
    seen_floats: list[tuple[np.ndarray, list[str]]] = []
    for name, dtype in spec.items():
        col = canonical_column(frame[name], dtype)
        if dtype == "float64":
            arr, nan = _canonical_floats(frame[name])
            bits = np.where(nan, np.nan, arr).view(np.int64)
            # columns that repeat another bit for bit (radius and radius_l2 of an l2 certificate)
            # reuse its reprs: formatting floats is most of the work
            texts = next((t for b, t in seen_floats if np.array_equal(b, bits)), None)
            if texts is None:
                texts = column_reprs(arr, dtype, none_mask=nan)
                seen_floats.append((bits, texts))
        else:
            texts = column_reprs(col, dtype)
        values.append(col)
        reprs.append(texts)
    digests = row_digests_of(reprs) if len(frame) else []
    return TableRows(tuple(spec), dtypes, values, reprs, digests)


def table_manifests(tables: dict[str, TableRows]) -> dict[str, tuple[int, str, tuple]]:
    """{table: (rows, table digest, (column, dtype) pairs)}: what ``chain.manifest_of`` takes."""
    return {
        name: (t.n, table_digest(t.digests), tuple(zip(t.columns, t.dtypes, strict=True)))
        for name, t in tables.items()
    }


def _frame(value, spec, *, table: str) -> pd.DataFrame:
    if value is None:
        return empty_frame(spec)
    if not isinstance(value, pd.DataFrame):
        raise InputError(f"{table}: expected a pandas DataFrame, got {type(value).__name__}")
    if value.empty and not all(name in value.columns for name in spec):
        return empty_frame(spec)
    return conform(value, spec, table=table)


def _first_duplicate(frame: pd.DataFrame, cols: list[str], *, table: str) -> None:
    dup = frame.duplicated(subset=cols, keep="first")
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        key = {c: frame[c].iloc[row] for c in cols}
        raise InputError(f"{table}: duplicate key {key} at row {row}; {int(dup.sum())} duplicate row(s)")


def _check_names(frame: pd.DataFrame, col: str, allowed, *, table: str, what: str) -> None:
    checked: set = set()
    for row, items in enumerate(frame[col].to_numpy(dtype=object).tolist()):
        if items is None or (isinstance(items, float) and math.isnan(items)):
            continue
        items = (items,) if isinstance(items, str) else tuple(items)
        if items in checked:
            continue
        bad = [x for x in items if x not in allowed]
        if bad:
            sid = frame[SAMPLE_ID].iloc[row] if SAMPLE_ID in frame.columns else None
            who = f" (sample_id {sid!r})" if sid is not None else ""
            raise InputError(f"{table}: unknown {what} {bad} in column {col!r}, row {row}{who}")
        checked.add(items)


def _check_known_samples(frame: pd.DataFrame, known: set, *, table: str) -> None:
    if frame.empty:
        return
    ids = frame[SAMPLE_ID].to_numpy(dtype=object, na_value=None).tolist()
    unknown = np.fromiter((i not in known for i in ids), dtype=bool, count=len(ids))
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise InputError(
            f"{table}: sample_id {ids[row]!r} (row {row}) is not in sample_risk; "
            f"{int(unknown.sum())} row(s) affected"
        )


def _require_str(value, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"run record: {name} must be a non-empty string, got {value!r}")
    return value


def _check_fields(record: RunRecord) -> datetime:
    """Check the record's scalar fields; returns ``created_at`` as an aware UTC datetime."""
    if not isinstance(record, RunRecord):
        raise InputError(f"write_run expects a RunRecord, got {type(record).__name__}")
    for name in ("dag_id", "run_id", "batch_id", "model_name", "policy_name", "package_version"):
        _require_str(getattr(record, name), name)
    for name in ("model_sha256", "policy_sha256"):
        value = getattr(record, name)
        if not isinstance(value, str) or not _SHA256.match(value):
            raise InputError(f"run record: {name} must be 64 lowercase hex digits, got {value!r}")
    if not isinstance(record.policy_text, str):
        raise InputError("run record: policy_text must be a string")
    created = record.created_at
    if isinstance(created, pd.Timestamp):
        created = created.to_pydatetime()
    if not isinstance(created, datetime):
        raise InputError(f"run record: created_at must be a datetime, got {created!r}")
    return as_utc(created)


def _sample_frame(record: RunRecord) -> pd.DataFrame:
    """``sample_risk`` conformed and checked: sample ids present and unique, finite risk, known
    tiers, factor names and RMF subcategory ids."""
    if record.sample_risk is None or len(record.sample_risk) == 0:
        raise InputError(f"sample_risk: run {record.dag_id}/{record.run_id} has no samples")
    samples = _frame(record.sample_risk, SAMPLE_RISK_COLUMNS, table="sample_risk")
    if samples[SAMPLE_ID].isna().any():
        row = int(np.flatnonzero(samples[SAMPLE_ID].isna().to_numpy())[0])
        raise InputError(f"sample_risk: missing sample_id at row {row}")
    _first_duplicate(samples, [SAMPLE_ID], table="sample_risk")
    ids = samples[SAMPLE_ID].to_numpy(dtype=object)
    risk = samples["risk"].to_numpy(dtype=np.float64, na_value=np.nan)
    finite_or_raise(risk, what="sample_risk: risk", ids=ids)
    outside = (risk < 0.0) | (risk > 1.0)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise InputError(
            f"sample_risk: risk {float(risk[row])!r} at row {row} (sample_id {ids[row]!r}) is outside [0, 1]; "
            f"{int(outside.sum())} row(s) affected"
        )
    bad_tier = ~samples["tier"].isin(_TIERS).to_numpy()
    if bad_tier.any():
        row = int(np.flatnonzero(bad_tier)[0])
        raise InputError(
            f"sample_risk: unknown tier {samples['tier'].iloc[row]!r} at row {row} (sample_id {ids[row]!r}); "
            f"known tiers: {sorted(_TIERS, key=lambda t: Tier(t).rank)}"
        )
    _check_names(samples, "top_factors", set(FACTORS), table="sample_risk", what="factor(s)")
    _check_names(samples, "rmf_ids", catalog(), table="sample_risk", what="NIST AI RMF subcategory id(s)")
    return samples


def _evidence_frame(items) -> pd.DataFrame:
    """``rmf_evidence`` (subcategory_id, evidence_kind, detail) triples as a string frame."""
    evidence_rows = list(items or [])
    cat = catalog()
    for i, item in enumerate(evidence_rows):
        if len(item) != 3 or not all(isinstance(x, str) for x in item):
            raise InputError(
                f"rmf_evidence: item {i} must be (subcategory_id, evidence_kind, detail) strings: {item!r}"
            )
        if item[0] not in cat:
            raise InputError(f"rmf_evidence: unknown NIST AI RMF subcategory id {item[0]!r} in item {i}")
    return pd.DataFrame(evidence_rows, columns=list(RMF_EVIDENCE_COLUMNS)).astype("string")


def _row_frames(record: RunRecord, samples: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Every row table's frame by table name (``ROW_TABLES`` order), checked against ``samples``."""
    known = set(samples[SAMPLE_ID].to_numpy(dtype=object).tolist())
    certs = _frame(record.certificates, CERTIFICATE_COLUMNS, table="certificates")
    _first_duplicate(certs, [SAMPLE_ID, "method"], table="certificates")
    _check_known_samples(certs, known, table="certificates")
    rule_s = _frame(record.rule_samples, RULE_SAMPLE_COLUMNS, table="rule_samples")
    _first_duplicate(rule_s, [SAMPLE_ID], table="rule_samples")
    _check_known_samples(rule_s, known, table="rule_samples")
    rule_e = _frame(record.rule_expectations, RULE_EXPECTATION_COLUMNS, table="rule_expectations")
    _check_names(
        rule_e, "rmf_ids", catalog(), table="rule_expectations", what="NIST AI RMF subcategory id(s)"
    )
    drift = _frame(record.drift_tests, DRIFT_TEST_COLUMNS, table="drift_tests")
    return {
        "sample_risk": samples,
        "certificate": certs,
        "rule_sample": rule_s,
        "rule_result": rule_e,
        "drift_test": drift,
        "rmf_evidence": _evidence_frame(record.rmf_evidence),
    }


def _canonical_summary(value, frames: dict[str, pd.DataFrame]) -> dict:
    """The batch summary as canonical JSON read back, checked against the rows and completed from
    them (``summary_figures.reconcile``)."""
    if not isinstance(value, dict):
        raise InputError(f"summary: expected a dict, got {type(value).__name__}")
    missing = [k for k in REQUIRED_SUMMARY_KEYS if k not in value]
    if missing:
        raise InputError(f"summary: missing key(s) {missing}")
    try:
        summary = strict_json(
            canonical_json(json.loads(json.dumps(value, default=_json_default, allow_nan=False)))
        )
    except (TypeError, ValueError) as exc:
        raise InputError(f"summary: not JSON-serializable without NaN/inf: {exc}") from exc
    summary = reconcile(summary, frames["sample_risk"], frames["drift_test"], frames["rule_result"])
    return strict_json(canonical_json(summary))


def run_header(record: RunRecord, created_at: datetime, summary: dict) -> RunHeader:
    """The digested header of ``record``: its key, provenance and the summary's batch figures."""
    return RunHeader(
        dag_id=record.dag_id,
        run_id=record.run_id,
        batch_id=record.batch_id,
        created_at=created_at,
        model_name=record.model_name,
        model_sha256=record.model_sha256,
        policy_name=record.policy_name,
        policy_sha256=record.policy_sha256,
        policy_text=record.policy_text,
        package_version=record.package_version,
        n_samples=int(summary["n_samples"]),
        abstention_rate=float(summary["abstention_rate"]),
        mean_risk=float(summary["mean_risk"]),
        tier=summary["tier"],
        drift=bool(summary.get("drift", False)),
        summary=summary,
    )


def prepare(record: RunRecord) -> PreparedRun:
    """Validate ``record`` and compute its canonical rows, digests and manifest.

    Raises InputError naming the field, table, column, row and sample id at fault.
    """
    created = _check_fields(record)
    samples = _sample_frame(record)
    frames = _row_frames(record, samples)
    summary = _canonical_summary(record.summary, frames)
    tables = {name: table_rows(frames[name], spec, table=name) for name, _table, spec in ROW_TABLES}
    header = run_header(record, created, summary)
    manifest, digest = manifest_of(header.digest(), table_manifests(tables))
    return PreparedRun(record, header, summary, created, tables, manifest, digest)
