"""Per-sample data rules with Great Expectations.

A policy lists expectations (a GX expectation type, its arguments, a severity and the NIST AI
RMF subcategories it evidences). ``check_rules`` turns them into an ExpectationSuite on an
ephemeral GX context, validates the batch frame with result format COMPLETE keyed by the
``sample_id`` column, and returns two tables:

* one row per sample (RULE_SAMPLE_COLUMNS): how many row-level expectations it failed, the
  highest severity among them and their names;
* one row per expectation (RULE_EXPECTATION_COLUMNS): success, observed value, unexpected count
  and ``level``. Map expectations (per-value, per-pair, per-record) are ``level="row"`` and
  attribute failures to samples; aggregate expectations (means, quantiles, row or column counts)
  are ``level="batch"``: they give a batch-level result only and never mark a sample.

``profile_expectations`` derives a default suite from the reference set (not-null and range per
feature, column count) and ``build_expectations`` merges it with the policy's explicit entries.

GX is imported lazily (about 2 s) and its logger raised to WARNING: under Airflow's logging it
otherwise prints hundreds of registration lines.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pandas as pd

from certrisk.schemas.columns import (
    RULE_EXPECTATION_COLUMNS,
    RULE_SAMPLE_COLUMNS,
    SAMPLE_ID,
    conform,
)
from certrisk.schemas.enums import Severity
from certrisk.schemas.errors import InputError, PolicyError
from certrisk.schemas.policy import ExpectationSpec, RulesSpec
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


def _gx():
    """Import GX once, with its logger quietened."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx

    return gx


@cache
def _expectation_class(type_name: str):
    _gx()
    from great_expectations.exceptions import ExpectationNotFoundError
    from great_expectations.expectations.registry import get_expectation_impl

    try:
        return get_expectation_impl(type_name)
    except ExpectationNotFoundError:
        return None


def _is_row_level(cls) -> bool:
    from great_expectations.expectations.expectation import (
        ColumnMapExpectation,
        ColumnPairMapExpectation,
        MulticolumnMapExpectation,
    )

    return issubclass(cls, ColumnMapExpectation | ColumnPairMapExpectation | MulticolumnMapExpectation)


def _instantiate(spec: ExpectationSpec, key: str):
    """Build the GX expectation for ``spec``; PolicyError names ``key`` on any failure."""
    cls = _expectation_class(spec.type)
    if cls is None:
        raise PolicyError(
            f"{key}.type: Great Expectations does not know expectation type {spec.type!r} "
            f"(expectation {spec.display_name!r})"
        )
    try:
        return cls(**spec.kwargs, meta={"certrisk_name": spec.display_name})
    except Exception as exc:  # noqa: BLE001 - pydantic or GX validation of user kwargs
        raise PolicyError(
            f"{key}.kwargs: invalid arguments for {spec.type!r} (expectation {spec.display_name!r}): "
            f"{' '.join(str(exc).split())}"
        ) from None


def validate_expectation_types(expectations: Sequence[ExpectationSpec], *, key: str = "expectations") -> None:
    """Raise PolicyError naming ``<key>[i].type`` for the first type GX does not know."""
    for i, spec in enumerate(expectations):
        if _expectation_class(spec.type) is None:
            raise PolicyError(
                f"{key}[{i}].type: Great Expectations does not know expectation type {spec.type!r}"
            )


def _columns_of(spec: ExpectationSpec) -> list[str]:
    cols = [spec.kwargs[k] for k in _COLUMN_KWARGS if k in spec.kwargs]
    for k in _COLUMN_LIST_KWARGS:
        cols.extend(spec.kwargs.get(k) or [])
    return [str(c) for c in cols]


def _json(value: Any) -> str:
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
    names = [s.display_name for s in specs]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise PolicyError(
                f"expectations[{i}].name: display name {name!r} is already used by expectations[{seen[name]}]; "
                "give one of them a distinct 'name'"
            )
        seen[name] = i

    gx_expectations = []
    levels = []
    for i, spec in enumerate(specs):
        key = f"expectations[{i}]"
        exp = _instantiate(spec, key)
        missing = [c for c in _columns_of(spec) if c not in frame.columns]
        if missing:
            raise InputError(
                f"rules: batch has no column(s) {missing} named by {key} ({spec.display_name!r})"
            )
        gx_expectations.append(exp)
        levels.append(ROW if _is_row_level(type(exp)) else BATCH)

    n = len(frame)
    n_failed = np.zeros(n, dtype=np.int64)
    max_rank = np.zeros(n, dtype=np.int64)
    failed: list[list[str]] = [[] for _ in range(n)]
    rows: list[dict[str, Any]] = []

    results = _run_suite(frame, id_column, gx_expectations) if specs else []
    position = {sid: i for i, sid in enumerate(ids.tolist())}
    for spec, level, res in zip(specs, levels, results):
        severity = Severity(spec.severity)
        rmf = list(spec.rmf) if spec.rmf else list(evidence_ids("rules"))
        cols = _columns_of(spec)
        row = {
            "expectation": spec.display_name,
            "expectation_type": spec.type,
            "column": ",".join(cols) if cols else None,
            "severity": severity.value,
            "level": level,
            "rmf_ids": rmf,
        }
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
            hit = np.fromiter(
                (position[str(d[id_column])] for d in index_list), dtype=np.int64, count=len(index_list)
            )
            hit = np.unique(hit)
            n_failed[hit] += 1
            np.maximum.at(max_rank, hit, severity.rank)
            for j in hit.tolist():
                failed[j].append(spec.display_name)
            observed = {
                k: result[k]
                for k in ("element_count", "unexpected_count", "unexpected_percent", "missing_count")
                if k in result
            }
        else:
            observed = result.get("observed_value", result.get("details"))
        row.update(success=bool(res.success), observed_value=_json(observed), unexpected_count=unexpected)
        rows.append(row)

    order = Severity.ordered()
    samples = pd.DataFrame(
        {
            SAMPLE_ID: ids.to_numpy(),
            "n_failed": n_failed,
            "max_severity": [order[r].value for r in max_rank],
            "failed": failed,
        }
    )
    table = pd.DataFrame(rows, columns=list(RULE_EXPECTATION_COLUMNS)) if rows else None
    if table is None:
        table = pd.DataFrame({c: pd.Series(dtype="object") for c in RULE_EXPECTATION_COLUMNS})
    return RuleResults(
        samples=conform(samples, RULE_SAMPLE_COLUMNS, table="rule_samples"),
        expectations=conform(table, RULE_EXPECTATION_COLUMNS, table="rule_expectations"),
    )


def _run_suite(frame: pd.DataFrame, id_column: str, gx_expectations: list) -> list:
    """Validate ``frame`` on a fresh ephemeral context; results in suite order."""
    gx = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    asset = ctx.data_sources.add_pandas("certrisk").add_dataframe_asset("batch")
    batch = asset.add_batch_definition_whole_dataframe("whole").get_batch(
        batch_parameters={"dataframe": frame.reset_index(drop=True)}
    )
    suite = ctx.suites.add(gx.ExpectationSuite(name="certrisk_rules"))
    for exp in gx_expectations:
        suite.add_expectation(exp)
    # Batch.validate keeps the results in memory: the ValidationDefinition path also serialises
    # them into a results store, which costs time on large unexpected lists and chokes on numpy
    # bools in some expectations' details.
    outcome = batch.validate(
        suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [id_column]}
    )
    by_name = {r.expectation_config.meta.get("certrisk_name"): r for r in outcome.results}
    return [by_name[exp.meta["certrisk_name"]] for exp in gx_expectations]


def profile_expectations(
    reference_frame: pd.DataFrame,
    *,
    feature_columns: Sequence[str],
    tolerance: float = 0.0,
    id_column: str = SAMPLE_ID,
    n_columns: int | None = None,
) -> list[ExpectationSpec]:
    """A default suite derived from the reference set.

    Per feature: ``expect_column_values_to_not_be_null`` (critical) and
    ``expect_column_values_to_be_between`` over the reference's [min, max] widened on each side
    by ``tolerance`` times the span (warning). For the table:
    ``expect_table_column_count_to_equal`` (critical) with ``n_columns``, default the id column
    plus the features (the batch layout of DataSpec).

    Display names are the default ``<type>:<column>``, so a policy entry with the same type and
    column replaces the profiled one in ``build_expectations``.

    Parameters
    ----------
    reference_frame : DataFrame of shape (n_reference, n_columns)
        Must hold every feature column, numeric and finite.
    feature_columns : sequence of str
        Features to profile, in model order.
    tolerance : float, >= 0
        Share of each feature's span added below its minimum and above its maximum.

    Returns
    -------
    list of ExpectationSpec
        2 * n_features + 1 expectations.
    """
    if tolerance < 0 or not math.isfinite(tolerance):
        raise PolicyError(f"rules.range_tolerance: must be finite and >= 0, got {tolerance}")
    features = [str(c) for c in feature_columns]
    missing = [c for c in features if c not in reference_frame.columns]
    if missing:
        raise InputError(f"reference: missing feature column(s) {missing}")
    if len(reference_frame) == 0:
        raise InputError("reference: empty reference set; cannot profile rules")
    rmf = evidence_ids("rules")
    out: list[ExpectationSpec] = []
    for c in features:
        col = reference_frame[c]
        if not pd.api.types.is_numeric_dtype(col):
            raise InputError(f"reference: feature {c!r} is not numeric (dtype {col.dtype})")
        values = col.to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            row = int(np.flatnonzero(~np.isfinite(values))[0])
            raise InputError(f"reference: feature {c!r} holds NaN or inf in row {row}")
        lo, hi = float(values.min()), float(values.max())
        pad = tolerance * (hi - lo)
        out.append(
            ExpectationSpec(
                type="expect_column_values_to_not_be_null",
                kwargs={"column": c},
                severity=Severity.CRITICAL,
                rmf=rmf,
            )
        )
        out.append(
            ExpectationSpec(
                type="expect_column_values_to_be_between",
                kwargs={"column": c, "min_value": lo - pad, "max_value": hi + pad},
                severity=Severity.WARNING,
                rmf=rmf,
            )
        )
    out.append(
        ExpectationSpec(
            type="expect_table_column_count_to_equal",
            kwargs={"value": int(n_columns if n_columns is not None else len(features) + 1)},
            severity=Severity.CRITICAL,
            rmf=rmf,
        )
    )
    return out


def build_expectations(
    rules: RulesSpec,
    reference_frame: pd.DataFrame | None,
    feature_columns: Sequence[str],
    *,
    id_column: str = SAMPLE_ID,
    n_columns: int | None = None,
) -> list[ExpectationSpec]:
    """The suite a run validates: the profiled defaults (when ``rules.profile``) plus the policy's.

    A policy entry whose display name equals a profiled one replaces it in place; other policy
    entries follow the profiled ones in policy order. Types are checked here, so an unknown type
    fails with the policy key path (``rules.expectations[i].type``) before any data is read.
    """
    validate_expectation_types(rules.expectations, key="rules.expectations")
    explicit = list(rules.expectations)
    if rules.profile:
        if reference_frame is None:
            raise InputError("rules.profile is true but no reference frame was given")
        base = profile_expectations(
            reference_frame,
            feature_columns=feature_columns,
            tolerance=rules.range_tolerance,
            id_column=id_column,
            n_columns=n_columns,
        )
    else:
        base = []
    overrides = {s.display_name: s for s in explicit}
    merged = [overrides.pop(s.display_name, s) for s in base]
    used = {s.display_name for s in merged}
    merged.extend(s for s in explicit if s.display_name not in used)
    return merged
