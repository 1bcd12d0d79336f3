"""Certificate context: how a certified radius compares with the geometry of real data.

A radius alone says little (DESIGN.md, principle 3). For each certified sample this module
records, in the certificate's own norm:

* ``dist_other_class``: distance to the nearest reference sample of another class, and
  ``dist_same_class``: to the nearest of the predicted class (classes from the reference labels,
  or from the model's predictions on the reference when it has no labels);
* ``share_ref_in_ball``: the share of all reference samples inside the closed certified ball;
* ``radius_over_dist``: radius / dist_other_class. Above 1 the certificate claims a constant
  prediction over a ball that holds a real sample of another class: either that reference sample
  is misclassified or the certificate is unsound;
* ``radius_percentile``: the radius's place in the reference set's own radius distribution
  (computed once per model and policy and cached under ``CERTRISK_HOME``).

None of these is a guarantee of safety: they rank certificates against real data.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from certrisk.risk.drift import resolve_device
from certrisk.schemas.columns import CONTEXT_COLUMNS, SAMPLE_ID, conform, finite_or_raise
from certrisk.schemas.enums import Norm
from certrisk.schemas.errors import InputError
from certrisk.schemas.settings import cache_dir

#: Default bound on the (batch x reference) distance pairs held at once: 2^24 float64 = 128 MiB.
DEFAULT_MAX_PAIRS = 2**24


def _flat(x: np.ndarray, *, what: str, ids=None) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.shape[0] == 0:
        raise InputError(f"{what}: empty (0 rows)")
    arr = arr.reshape(arr.shape[0], -1)
    finite_or_raise(arr, what=what, ids=ids)
    return arr


def radius_percentile(radius: np.ndarray | float, reference_radii: np.ndarray) -> np.ndarray:
    """Empirical CDF of the reference radii at ``radius``: share of reference radii <= radius.

    Parameters
    ----------
    radius : array of shape (n,) or float
        Radii in the certificate's norm.
    reference_radii : array of shape (n_reference,)
        The same method's radii on the reference set (abstentions count as 0).

    Returns
    -------
    array of shape (n,), values in [0, 1].
    """
    ref = np.sort(np.asarray(reference_radii, dtype=np.float64).ravel())
    if ref.size == 0:
        raise InputError("reference_radii: empty; cannot rank radii")
    finite_or_raise(ref, what="reference_radii")
    r = np.atleast_1d(np.asarray(radius, dtype=np.float64))
    return np.searchsorted(ref, r, side="right") / ref.size


def reference_radii_key(key_parts: dict[str, Any]) -> str:
    """sha256 hex digest of the key parts (JSON, sorted keys)."""
    blob = json.dumps(key_parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def cached_reference_radii(key_parts: dict[str, Any], compute: Callable[[], np.ndarray]) -> np.ndarray:
    """The reference set's radii, computed once per key and cached as .npy under ``cache_dir()``.

    Parameters
    ----------
    key_parts : dict
        What the radii depend on, e.g. ``{"model_sha256": ..., "policy_sha256": ...,
        "reference_sha256": ..., "method": "smoothing"}``. The file name is their sha256; a
        ``.json`` sidecar records them.
    compute : callable returning array of shape (n_reference,)
        Called only on a cache miss. Radii must be finite and >= 0 (abstentions 0).

    Returns
    -------
    array of shape (n_reference,), float64, read-only when loaded from the cache.
    """
    key = reference_radii_key(key_parts)
    folder = cache_dir() / "reference_radii"
    path = folder / f"{key}.npy"
    if path.exists():
        return np.load(path, allow_pickle=False)
    radii = np.asarray(compute(), dtype=np.float64).ravel()
    finite_or_raise(radii, what="reference radii")
    if (radii < 0).any():
        raise InputError(f"reference radii: negative value in row {int(np.flatnonzero(radii < 0)[0])}")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npy.tmp")
    with os.fdopen(fd, "wb") as fh:
        np.save(fh, radii, allow_pickle=False)
    os.replace(tmp, path)  # atomic: concurrent tasks never read a half-written file
    (folder / f"{key}.json").write_text(json.dumps(key_parts, sort_keys=True, default=str, indent=1))
    return radii


def certificate_context(
    batch_X: np.ndarray,
    radius: np.ndarray,
    prediction: np.ndarray,
    reference_X: np.ndarray,
    reference_labels: np.ndarray | None,
    *,
    norm: Norm | str,
    ids: Sequence[str],
    method: str,
    reference_radii: np.ndarray | None = None,
    reference_predictions: np.ndarray | None = None,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    device: str | torch.device | None = None,
) -> pd.DataFrame:
    """Per-sample context of certificates against the reference set.

    Parameters
    ----------
    batch_X : array of shape (n_batch, ...)
        Inputs as the model sees them (flattened to n_features).
    radius : array of shape (n_batch,)
        Certified radius in ``norm``; 0 where abstained.
    prediction : array of shape (n_batch,), int
        Certified class; -1 (any negative) = abstained.
    reference_X : array of shape (n_reference, ...)
    reference_labels : array of shape (n_reference,) or None
        Classes of the reference samples; None: use ``reference_predictions``.
    norm : Norm
        Norm of the radius; distances use it (l1, l2, linf).
    ids : sequence of str, length n_batch
    method : str
        Certification method, copied to the ``method`` column.
    reference_radii : array of shape (n_reference,) or None
        The method's radii on the reference set (see ``cached_reference_radii``); None leaves
        ``radius_percentile`` NaN.
    reference_predictions : array of shape (n_reference,) or None
        Model predictions on the reference, used when it has no labels.
    max_pairs : int
        At most this many batch-reference distances are held at once (row blocks).
    device : torch device or None
        None picks cuda when available.

    Returns
    -------
    DataFrame
        CONTEXT_COLUMNS, one row per batch sample in input order. Distances are in ``norm`` and
        the features' units. For an abstained sample (no certified class, no ball):
        ``dist_other_class`` and ``dist_same_class`` are NaN, ``share_ref_in_ball``,
        ``radius_over_dist`` and ``radius_percentile`` are 0. For a certified sample whose
        class has no reference sample, ``dist_same_class`` is NaN (likewise
        ``dist_other_class`` and ``radius_over_dist`` when every reference sample has its
        class); ``radius_over_dist`` is inf when a reference sample of another class coincides
        with the input (distance 0) and the radius is positive.
    """
    ids = [str(i) for i in ids]
    try:
        norm = Norm(norm)
    except ValueError:
        raise InputError(f"norm: unknown norm {norm!r}; known: {[n.value for n in Norm]}") from None
    x = _flat(batch_X, what="batch", ids=ids)
    ref = _flat(reference_X, what="reference")
    if x.shape[1] != ref.shape[1]:
        raise InputError(
            f"feature sets differ: reference has {ref.shape[1]} features, batch has {x.shape[1]}"
        )
    n = len(x)
    if len(ids) != n:
        raise InputError(f"context: {len(ids)} id(s) for {n} batch sample(s)")
    r = np.asarray(radius, dtype=np.float64).ravel()
    pred = np.asarray(prediction).ravel()
    if r.shape != (n,) or pred.shape != (n,):
        raise InputError(f"context: radius {r.shape} and prediction {pred.shape} must have shape ({n},)")
    finite_or_raise(r, what="radius", ids=ids)
    if (r < 0).any():
        row = int(np.flatnonzero(r < 0)[0])
        raise InputError(f"radius: negative in row {row} (sample_id {ids[row]!r})")
    if not np.issubdtype(pred.dtype, np.integer):
        raise InputError(f"prediction: integer classes expected, got dtype {pred.dtype}")
    classes = reference_labels if reference_labels is not None else reference_predictions
    if classes is None:
        raise InputError("reference has no labels: pass reference_labels or reference_predictions")
    classes = np.asarray(classes).ravel()
    if classes.shape != (len(ref),):
        raise InputError(f"reference labels: shape {classes.shape}, expected ({len(ref)},)")
    if not np.issubdtype(classes.dtype, np.integer):
        raise InputError(f"reference labels: integer classes expected, got dtype {classes.dtype}")
    abstained = pred < 0

    dev = resolve_device(device)
    ref_t = torch.as_tensor(ref, device=dev)
    cls_t = torch.as_tensor(classes.astype(np.int64), device=dev)
    rows = int(max(1, max_pairs // max(1, len(ref))))
    d_same = np.empty(n)
    d_other = np.empty(n)
    inside = np.empty(n)
    for i in range(0, n, rows):
        j = min(i + rows, n)
        d = torch.cdist(torch.as_tensor(x[i:j], device=dev), ref_t, p=norm.p)  # (rows, n_reference)
        p_t = torch.as_tensor(pred[i:j].astype(np.int64), device=dev)
        same = cls_t[None, :] == p_t[:, None]
        inf = torch.tensor(float("inf"), dtype=d.dtype, device=dev)
        d_same[i:j] = torch.where(same, d, inf).amin(dim=1).cpu().numpy()
        d_other[i:j] = torch.where(same, inf, d).amin(dim=1).cpu().numpy()
        r_t = torch.as_tensor(r[i:j], device=dev)
        inside[i:j] = (d <= r_t[:, None]).to(d.dtype).mean(dim=1).cpu().numpy()
    d_same[~np.isfinite(d_same)] = np.nan
    d_other[~np.isfinite(d_other)] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(d_other > 0, r / d_other, np.where(np.isnan(d_other), np.nan, np.inf))
    ratio[(r == 0) & ~np.isnan(d_other)] = 0.0
    if reference_radii is None:
        pct = np.full(n, np.nan)
    else:
        pct = radius_percentile(r, reference_radii)

    d_same[abstained] = np.nan
    d_other[abstained] = np.nan
    inside[abstained] = 0.0
    ratio[abstained] = 0.0
    pct[abstained] = 0.0
    frame = pd.DataFrame(
        {
            SAMPLE_ID: ids,
            "method": str(method),
            "dist_other_class": d_other,
            "dist_same_class": d_same,
            "share_ref_in_ball": inside,
            "radius_over_dist": ratio,
            "radius_percentile": pct,
        }
    )
    return conform(frame, CONTEXT_COLUMNS, table="context")
