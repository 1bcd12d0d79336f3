"""The suite a run validates: defaults profiled from the reference set, merged with the
policy's explicit expectations.

``profile_expectations`` derives a default suite from the reference set (not-null and range per
feature, column count) and ``build_expectations`` merges it with the policy's explicit entries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from certrisk.risk.rules.gx import validate_expectation_types
from certrisk.schemas.columns import SAMPLE_ID
from certrisk.schemas.enums import Severity
from certrisk.schemas.errors import InputError, PolicyError
from certrisk.schemas.policy import ExpectationSpec, RulesSpec
from certrisk.schemas.rmf import evidence_ids


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
