"""The one check of sample data: every risk computation that takes samples validates them here.

Samples arrive as numpy arrays, torch tensors or DataFrames, one row per sample. Whatever the
caller, a bad sample set fails with the same InputError, naming what was passed (``what``), the
feature column, the first row at fault and, when ids are given, its sample id: no rows, an empty
sample shape, non-numeric features, NaN or inf, feature sets that differ between the reference and
a batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from certrisk.schemas.columns import finite_or_raise
from certrisk.schemas.errors import InputError


def check_samples(x: np.ndarray | torch.Tensor, *, what: str, ids: Sequence[str] | None = None) -> None:
    """Raise InputError unless x holds at least one sample, each of a non-empty shape, numeric and finite.

    Parameters
    ----------
    x : array or tensor of shape (n_samples, ...)
        A 1-D array is one value per sample.
    what : name of the data in messages ("batch", "reference", "smooth_certify", ...)
    ids : sequence of n_samples sample ids, or None; a row at fault is named with its id
    """
    if isinstance(x, np.ndarray) and not np.issubdtype(x.dtype, np.number):
        raise InputError(f"{what}: samples must be numeric, got dtype {x.dtype}")
    if x.ndim < 1:
        raise InputError(f"{what}: samples must have shape (n_samples, ...), got a scalar")
    if x.shape[0] == 0:
        raise InputError(f"{what}: empty (0 rows)")
    if any(d == 0 for d in x.shape[1:]):
        raise InputError(f"{what}: sample shape {tuple(x.shape[1:])} has an empty dimension")
    if isinstance(x, torch.Tensor):
        if not (x.is_floating_point() or x.is_complex()):
            return
        finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
        if bool(finite.all()):
            return
        x = np.where(finite.cpu().numpy(), 0.0, np.nan)  # the rows at fault, for the one message
    finite_or_raise(np.abs(x) if np.iscomplexobj(x) else x, what=what, ids=ids)


def _frame_columns(frame: pd.DataFrame, features: Sequence[str] | None, what: str) -> np.ndarray:
    """The feature columns of a frame as float64 (n_samples, n_features), in ``features`` order."""
    if features is None:
        raise InputError(f"{what}: a DataFrame needs the feature names")
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise InputError(f"{what}: missing feature column(s) {missing}")
    non_numeric = [
        c
        for c in features
        if not pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c])
    ]
    if non_numeric:
        raise InputError(
            f"{what}: non-numeric feature column(s) {non_numeric[:10]} (dtype {frame[non_numeric[0]].dtype})"
        )
    # copy=True: under pandas 3 copy-on-write the no-copy array is read-only; torch warns on it
    return frame.loc[:, list(features)].to_numpy(dtype=np.float64, copy=True)


def sample_matrix(
    data: np.ndarray | torch.Tensor | pd.DataFrame,
    *,
    what: str,
    features: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
) -> np.ndarray:
    """Samples as a checked float64 matrix of shape (n_samples, n_features).

    Parameters
    ----------
    data : DataFrame, or array / tensor of shape (n_samples, ...)
        A DataFrame gives its ``features`` columns in that order (each numeric, not bool); an
        array is flattened per sample (a 1-D array is one feature).
    what : name of the data in messages
    features : feature names; required for a DataFrame, and for an array its width must match
    ids : sample ids naming the row at fault, or None

    Raises InputError (see ``check_samples``) naming ``what``, the column or the row at fault.
    """
    if isinstance(data, pd.DataFrame):
        arr = _frame_columns(data, features, what)
    else:
        if isinstance(data, torch.Tensor):
            data = data.detach().cpu().numpy()
        raw = np.asarray(data)
        if not np.issubdtype(raw.dtype, np.number) or raw.ndim == 0:
            raise InputError(
                f"{what}: samples must be numeric, of shape (n_samples, ...); got dtype {raw.dtype}, "
                f"shape {raw.shape}"
            )
        width = int(np.prod(raw.shape[1:]))  # 1 for a 1-D array: one feature
        arr = raw.astype(np.float64, copy=False).reshape(raw.shape[0], width)
        if features is not None and arr.shape[1] != len(features):
            raise InputError(
                f"{what}: {arr.shape[1]} feature column(s), but {len(features)} feature name(s) given"
            )
    check_samples(arr, what=what, ids=ids)
    return arr


def sample_pair(
    reference,
    batch,
    *,
    features: Sequence[str] | None = None,
    batch_ids: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The reference and a batch as checked float64 matrices with the same features.

    Returns (reference of shape (n_reference, n_features), batch of shape (n_batch, n_features)).
    Raises InputError as ``sample_matrix`` does, and "feature sets differ" when the two widths do.
    """
    x = sample_matrix(reference, what="reference", features=features)
    y = sample_matrix(batch, what="batch", features=features, ids=batch_ids)
    if x.shape[1] != y.shape[1]:
        raise InputError(f"feature sets differ: reference has {x.shape[1]} features, batch has {y.shape[1]}")
    return x, y
