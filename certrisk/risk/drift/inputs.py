"""Input checks shared by the drift tests: reference and batch as float64 feature matrices.

Every check raises InputError naming the side ("reference" or "batch"), the feature or the row
at fault.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from certrisk.schemas.columns import finite_or_raise
from certrisk.schemas.errors import InputError


def feature_matrix(
    data: np.ndarray | pd.DataFrame, features: Sequence[str] | None, *, what: str, ids=None
) -> np.ndarray:
    """Float64 array of shape (n, n_features); InputError names the feature or row at fault.

    DataFrames are selected by ``features``; arrays are taken in column order (1-D arrays as one
    feature, higher ranks flattened per row). ``ids`` name the rows in the NaN/inf message.
    """
    if isinstance(data, pd.DataFrame):
        if features is None:
            raise InputError(f"{what}: a DataFrame needs the feature names")
        missing = [f for f in features if f not in data.columns]
        if missing:
            raise InputError(f"{what}: missing feature column(s) {missing}")
        try:
            arr = data.loc[:, list(features)].to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{what}: features must be numeric: {exc}") from None
    else:
        arr = np.asarray(data, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            arr = arr.reshape(arr.shape[0], -1)
        if features is not None and arr.shape[1] != len(features):
            raise InputError(
                f"{what}: {arr.shape[1]} feature column(s), but {len(features)} feature name(s) given"
            )
    if arr.shape[0] == 0:
        raise InputError(f"{what}: empty (0 rows)")
    finite_or_raise(arr, what=what, ids=ids)
    return arr


def check_same_features(reference, batch, features: Sequence[str] | None) -> None:
    """Name the features one side lacks (DataFrames), or the width mismatch (arrays)."""
    if features is None:
        return
    features = list(features)
    sides = (("reference", reference, "batch"), ("batch", batch, "reference"))
    for what, data, other in sides:
        if isinstance(data, pd.DataFrame):
            missing = [f for f in features if f not in data.columns]
            if missing:
                raise InputError(
                    f"feature sets differ: {what} lacks feature(s) {missing} (expected like the {other})"
                )
        else:
            arr = np.asarray(data)
            width = int(np.prod(arr.shape[1:])) if arr.ndim > 1 else 1
            if arr.ndim >= 1 and width != len(features):
                raise InputError(
                    f"feature sets differ: {what} has {width} feature column(s), expected {len(features)} "
                    f"({features[:3]}...)"
                )


def paired_matrices(reference, batch, features=None, *, batch_ids=None) -> tuple[np.ndarray, np.ndarray]:
    """Reference and batch as float64 arrays of shapes (n_reference, d) and (n_batch, d)."""
    check_same_features(reference, batch, features)
    x = feature_matrix(reference, features, what="reference")
    y = feature_matrix(batch, features, what="batch", ids=batch_ids)
    if x.shape[1] != y.shape[1]:
        raise InputError(f"feature sets differ: reference has {x.shape[1]} features, batch has {y.shape[1]}")
    return x, y


def select_columns(data, features: list[str], names: list[str]):
    """The columns ``names`` of an array laid out as ``features`` (DataFrames pass through)."""
    if isinstance(data, pd.DataFrame) or names == features:
        return data
    arr = np.asarray(data)
    return arr[:, [features.index(f) for f in names]]
