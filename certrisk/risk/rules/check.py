"""Validate a batch against a suite and attribute each row-level failure to its samples.

``check_rules`` turns the suite into GX expectations, validates the batch frame with result
format COMPLETE keyed by the ``sample_id`` column, and returns two tables:

* one row per sample (RULE_SAMPLE_COLUMNS): how many row-level expectations it failed, the
  highest severity among them and their names;
* one row per expectation (RULE_EXPECTATION_COLUMNS): success, observed value, unexpected count
  and ``level``. Map expectations (per-value, per-pair, per-record) are ``level="row"`` and
  attribute failures to samples; aggregate expectations (means, quantiles, row or column counts)
  are ``level="batch"``: they give a batch-level result only and never mark a sample.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from certrisk.risk.rules.gx import instantiate, is_row_level, run_suite
from certrisk.schemas.columns import (
    RULE_EXPECTATION_COLUMNS,
    RULE_SAMPLE_COLUMNS,
    SAMPLE_ID,
    conform,
)
from certrisk.schemas.enums import Severity
from certrisk.schemas.errors import InputError, PolicyError
from certrisk.schemas.policy import ExpectationSpec
from certrisk.schemas.rmf import evidence_ids

ROW = "row"
BATCH = "batch"

#: Column-bearing keyword arguments of GX expectations, checked against the frame up front.
_COLUMN_KWARGS = ("column", "column_A", "column_B")
_COLUMN_LIST_KWARGS = ("column_list",)


@dataclass(frozen=True)
class RuleResults:
    """Outcome of validating one batch against a suite.

    Attributes
    ----------
    samples : DataFrame
        RULE_SAMPLE_COLUMNS, one row per input row, in input order. ``failed`` lists the display
        names of the row-level expectations the sample failed (empty list when none).
    expectations : DataFrame
        RULE_EXPECTATION_COLUMNS, one row per expectation in suite order.
    """

    samples: pd.DataFrame
    expectations: pd.DataFrame

    @property
    def n_samples(self) -> int:
        return len(self.samples)

    @property
    def pass_rate(self) -> float:
        """Share of samples that failed no row-level expectation (1.0 for an empty table)."""
        if len(self.samples) == 0:
            return 1.0
        return float((self.samples["n_failed"] == 0).mean())

    @property
    def success(self) -> bool:
        """True when every expectation, row- and batch-level, succeeded."""
        return bool(self.expectations["success"].all())

    @property
    def failed_expectations(self) -> list[str]:
        """Display names of the expectations that did not succeed, in suite order."""
        return self.expectations.loc[~self.expectations["success"], "expectation"].tolist()

    @property
    def batch_failures(self) -> list[str]:
        """Failed batch-level (aggregate) expectations: they mark no sample, only the batch."""
        e = self.expectations
        return e.loc[(~e["success"]) & (e["level"] == BATCH), "expectation"].tolist()

    def summary(self) -> dict[str, Any]:
        """Small JSON-able summary for XCom and the batch record."""
        sev = self.samples["max_severity"].value_counts()
        return {
            "n_samples": self.n_samples,
            "n_expectations": len(self.expectations),
            "pass_rate": self.pass_rate,
            "success": self.success,
            "failed_expectations": self.failed_expectations,
            "batch_failures": self.batch_failures,
            "samples_by_severity": {str(s): int(sev.get(str(s), 0)) for s in Severity},
        }


def _columns_of(spec: ExpectationSpec) -> list[str]:
    """The frame columns an expectation's arguments name, in argument order."""
    cols = [spec.kwargs[k] for k in _COLUMN_KWARGS if k in spec.kwargs]
    for k in _COLUMN_LIST_KWARGS:
        cols.extend(spec.kwargs.get(k) or [])
    return [str(c) for c in cols]


def _json(value: Any) -> str:
    """Canonical JSON of a GX observed value: numpy scalars and arrays as Python values, NaN and
    inf as null, keys sorted."""

    def default(obj):
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        return str(obj)

    def clean(obj):
        if isinstance(obj, float) and not math.isfinite(obj):
            return None
        if isinstance(obj, dict):
            return {str(k): clean(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [clean(v) for v in obj]
        if isinstance(obj, np.generic):
            return clean(obj.item())
        return obj

    return json.dumps(clean(value), default=default, sort_keys=True)


def _check_frame(frame: pd.DataFrame, id_column: str) -> pd.Series:
    """The ids as a string Series; InputError names a missing id column, or the row of a
    missing or duplicate id."""
    if not isinstance(frame, pd.DataFrame):
        raise InputError(f"rules: expected a pandas DataFrame, got {type(frame).__name__}")
    if id_column not in frame.columns:
        raise InputError(f"rules: batch has no id column {id_column!r}; columns: {list(frame.columns)[:20]}")
    ids = frame[id_column].astype("string")
    if ids.isna().any():
        row = int(np.flatnonzero(ids.isna().to_numpy())[0])
        raise InputError(f"rules: id column {id_column!r} is missing in row {row}")
    dup = ids.duplicated()
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise InputError(f"rules: duplicate {id_column} {ids.iloc[row]!r} (row {row}); ids must be unique")
    return ids


def check_rules(
    frame: pd.DataFrame,
    expectations: Sequence[ExpectationSpec],
    *,
    id_column: str = SAMPLE_ID,
) -> RuleResults:
    """Validate a batch against a list of expectations and attribute failures to samples.

    Parameters
    ----------
    frame : DataFrame of shape (n_samples, n_columns)
        The batch: ``id_column`` (unique per row) plus the columns the expectations name.
        Must hold at least one row.
    expectations : sequence of ExpectationSpec
        The suite, e.g. from ``build_expectations``. Display names must be unique.
    id_column : str
        Column whose values identify rows in GX's ``unexpected_index_list``.

    Returns
    -------
    RuleResults
        ``samples`` with one row per input row (input order) and ``expectations`` with one row
        per expectation. A sample's ``max_severity`` is the highest Severity among the row-level
        expectations it failed ("none" when it failed none). Batch-level (aggregate)
        expectations appear only in ``expectations``, with ``level="batch"`` and
        ``unexpected_count`` 0.

    Raises
    ------
    PolicyError
        Unknown expectation type or invalid arguments (naming ``expectations[i]``), duplicate
        display names.
    InputError
        Empty batch, missing or duplicate ids, or a column named by an expectation that the
        frame lacks.
    """
    ids = _check_frame(frame, id_column)
    if len(frame) == 0:
        raise InputError("rules: empty batch (0 rows); nothing to validate")
    specs = list(expectations)
    _check_unique_names(specs)
    gx_expectations, levels = _prepare(specs, frame)
    results = run_suite(frame, id_column, gx_expectations) if specs else []
    tally = _SampleTally.for_ids(ids.tolist())
    rows = [
        _expectation_row(spec, level, res, id_column=id_column, tally=tally)
        for spec, level, res in zip(specs, levels, results)
    ]
    if rows:
        table = pd.DataFrame(rows, columns=list(RULE_EXPECTATION_COLUMNS))
    else:
        table = pd.DataFrame({c: pd.Series(dtype="object") for c in RULE_EXPECTATION_COLUMNS})
    return RuleResults(
        samples=conform(tally.frame(ids), RULE_SAMPLE_COLUMNS, table="rule_samples"),
        expectations=conform(table, RULE_EXPECTATION_COLUMNS, table="rule_expectations"),
    )


def _check_unique_names(specs: list[ExpectationSpec]) -> None:
    """PolicyError naming both ``expectations[i]`` that share a display name."""
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs):
        name = spec.display_name
        if name in seen:
            raise PolicyError(
                f"expectations[{i}].name: display name {name!r} is already used by expectations[{seen[name]}]; "
                "give one of them a distinct 'name'"
            )
        seen[name] = i


def _prepare(specs: list[ExpectationSpec], frame: pd.DataFrame) -> tuple[list, list[str]]:
    """The GX expectation of each spec and its level (ROW or BATCH), in suite order.

    PolicyError names ``expectations[i]`` for an unknown type or bad arguments; InputError names
    the columns an expectation needs that the frame lacks.
    """
    gx_expectations = []
    levels = []
    for i, spec in enumerate(specs):
        key = f"expectations[{i}]"
        exp = instantiate(spec, key)
        missing = [c for c in _columns_of(spec) if c not in frame.columns]
        if missing:
            raise InputError(
                f"rules: batch has no column(s) {missing} named by {key} ({spec.display_name!r})"
            )
        gx_expectations.append(exp)
        levels.append(ROW if is_row_level(type(exp)) else BATCH)
    return gx_expectations, levels


@dataclass
class _SampleTally:
    """Row-level failures per sample, gathered expectation by expectation.

    ``n_failed`` and ``max_rank`` (the highest Severity rank failed, 0 for none) are arrays of
    shape (n_samples,) in input order; ``failed`` lists each sample's failed display names.
    """

    position: dict[str, int]
    n_failed: np.ndarray
    max_rank: np.ndarray
    failed: list[list[str]]

    @classmethod
    def for_ids(cls, ids: list[str]) -> _SampleTally:
        n = len(ids)
        return cls(
            position={sid: i for i, sid in enumerate(ids)},
            n_failed=np.zeros(n, dtype=np.int64),
            max_rank=np.zeros(n, dtype=np.int64),
            failed=[[] for _ in range(n)],
        )

    def add(self, sample_ids: list[str], severity: Severity, name: str) -> None:
        """Mark the samples ``sample_ids`` (repeats count once) as failing expectation ``name``."""
        hit = np.fromiter((self.position[s] for s in sample_ids), dtype=np.int64, count=len(sample_ids))
        hit = np.unique(hit)
        self.n_failed[hit] += 1
        np.maximum.at(self.max_rank, hit, severity.rank)
        for j in hit.tolist():
            self.failed[j].append(name)

    def frame(self, ids: pd.Series) -> pd.DataFrame:
        """One row per sample: id, n_failed, max_severity (a Severity value), failed."""
        order = Severity.ordered()
        return pd.DataFrame(
            {
                SAMPLE_ID: ids.to_numpy(),
                "n_failed": self.n_failed,
                "max_severity": [order[r].value for r in self.max_rank],
                "failed": self.failed,
            }
        )


def _expectation_row(
    spec: ExpectationSpec, level: str, res, *, id_column: str, tally: _SampleTally
) -> dict[str, Any]:
    """One RULE_EXPECTATION_COLUMNS row from a GX validation result; a row-level result's
    unexpected rows go to ``tally``. InputError when GX raised while evaluating it."""
    severity = Severity(spec.severity)
    info = res.exception_info or {}
    if info.get("raised_exception"):
        raise InputError(
            f"rules: expectation {spec.display_name!r} ({spec.type}) raised in Great Expectations: "
            f"{info.get('exception_message')}"
        )
    result = dict(res.result or {})
    unexpected = 0
    if level == ROW:
        index_list = result.get("unexpected_index_list") or []
        unexpected = int(result.get("unexpected_count") or 0)
        tally.add([str(d[id_column]) for d in index_list], severity, spec.display_name)
        observed = {
            k: result[k]
            for k in ("element_count", "unexpected_count", "unexpected_percent", "missing_count")
            if k in result
        }
    else:
        observed = result.get("observed_value", result.get("details"))
    cols = _columns_of(spec)
    return {
        "expectation": spec.display_name,
        "expectation_type": spec.type,
        "column": ",".join(cols) if cols else None,
        "severity": severity.value,
        "level": level,
        "success": bool(res.success),
        "observed_value": _json(observed),
        "unexpected_count": unexpected,
        "rmf_ids": list(spec.rmf) if spec.rmf else list(evidence_ids("rules")),
    }
