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
  (the method's certificates on the reference, held by the ``ReferenceProfile``).

None of these is a guarantee of safety: they rank certificates against real data. The reference
is a fitted ``ReferenceProfile`` (``certrisk.risk.reference``); this module reads no files.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from certrisk.risk.device import resolve_device
from certrisk.risk.inputs import sample_matrix
from certrisk.risk.reference import ReferenceProfile
from certrisk.schemas.columns import CONTEXT_COLUMNS, SAMPLE_ID, conform, finite_or_raise
from certrisk.schemas.enums import Norm
from certrisk.schemas.errors import InputError
from certrisk.schemas.policy import MethodSpec

#: Default bound on the (batch x reference) distance pairs held at once: 2^24 float64 = 128 MiB.
DEFAULT_MAX_PAIRS = 2**24


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


def _certificates(radius, prediction, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(radius float64 (n,), prediction (n,)) checked against the n ids."""
    n = len(ids)
    r = np.array(radius, dtype=np.float64).ravel()  # a copy: pandas may hand out read-only arrays
    pred = np.asarray(prediction).ravel()
    if r.shape != (n,) or pred.shape != (n,):
        raise InputError(f"context: radius {r.shape} and prediction {pred.shape} must have shape ({n},)")
    finite_or_raise(r, what="radius", ids=ids)
    if (r < 0).any():
        row = int(np.flatnonzero(r < 0)[0])
        raise InputError(f"radius: negative in row {row} (sample_id {ids[row]!r})")
    if not np.issubdtype(pred.dtype, np.integer):
        raise InputError(f"prediction: integer classes expected, got dtype {pred.dtype}")
    return r, pred


def _nearest(x, r, pred, ref: np.ndarray, classes: np.ndarray, norm: Norm, max_pairs: int, device):
    """Per batch row: distance to the nearest reference sample of the same and of another class
    (inf when there is none) and the share of reference samples within the radius; float64 (n,) each."""
    n = len(x)
    dev = resolve_device(device)
    ref_t = torch.as_tensor(ref, device=dev)
    cls_t = torch.as_tensor(classes, device=dev)
    rows = int(max(1, max_pairs // max(1, len(ref))))
    d_same, d_other, inside = np.empty(n), np.empty(n), np.empty(n)
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
    return d_same, d_other, inside


def _context(
    profile: ReferenceProfile,
    batch_X,
    radius,
    prediction,
    reference_radii,
    *,
    norm,
    ids,
    method: str,
    max_pairs: int,
    device,
) -> pd.DataFrame:
    profile.check_fitted()
    ids = [str(i) for i in ids]
    try:
        norm = Norm(norm)
    except ValueError:
        raise InputError(f"norm: unknown norm {norm!r}; known: {[n.value for n in Norm]}") from None
    x = sample_matrix(batch_X, what="batch", ids=ids if len(ids) == len(batch_X) else None)
    if x.shape[1] != profile.n_features_in_:
        raise InputError(
            f"feature sets differ: reference has {profile.n_features_in_} features, batch has {x.shape[1]}"
        )
    if len(ids) != len(x):
        raise InputError(f"context: {len(ids)} id(s) for {len(x)} batch sample(s)")
    r, pred = _certificates(radius, prediction, ids)
    if profile.labels_ is None:
        raise InputError("reference has no labels: pass reference_labels or reference_predictions")
    abstained = pred < 0  # ABSTAIN, or any other negative class
    d_same, d_other, inside = _nearest(
        x, r, pred, profile.features_, profile.labels_, norm, max_pairs, device
    )
    d_same[~np.isfinite(d_same)] = np.nan
    d_other[~np.isfinite(d_other)] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(d_other > 0, r / d_other, np.where(np.isnan(d_other), np.nan, np.inf))
    ratio[(r == 0) & ~np.isnan(d_other)] = 0.0
    pct = np.full(len(x), np.nan) if reference_radii is None else radius_percentile(r, reference_radii)
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


def profile_context(
    profile: ReferenceProfile,
    batch_X: np.ndarray,
    radius: np.ndarray,
    prediction: np.ndarray,
    *,
    norm: Norm | str,
    ids: Sequence[str],
    method: str,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    device: str | torch.device | None = None,
) -> pd.DataFrame:
    """Per-sample context of one method's certificates against a fitted reference profile.

    Parameters
    ----------
    profile : fitted ReferenceProfile (features and classes; the method's reference certificates,
        when fitted with them, give ``radius_percentile``, else it is NaN)
    batch_X : array of shape (n_batch, ...)
        Inputs as the model sees them (flattened to n_features).
    radius : array of shape (n_batch,)
        Certified radius in ``norm``; 0 where abstained.
    prediction : array of shape (n_batch,), int
        Certified class; ``ABSTAIN`` (any negative) = abstained.
    norm : Norm
        Norm of the radius; distances use it (l1, l2, linf).
    ids : sequence of str, length n_batch
    method : str
        Certification method, copied to the ``method`` column.
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
    profile.check_fitted()
    ref_radii = None
    if str(method) in profile.radii_:
        # ranked against the certified reference radii; when the reference certified nothing (a
        # broken model abstains everywhere) against all of them, abstentions counting as 0
        ref_radii = profile.certified_radii(method)
        ref_radii = ref_radii if ref_radii.size else profile.radii_[str(method)]
    return _context(
        profile,
        batch_X,
        radius,
        prediction,
        ref_radii,
        norm=norm,
        ids=ids,
        method=method,
        max_pairs=max_pairs,
        device=device,
    )


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
    """Per-sample context of certificates against a reference given as arrays.

    As ``profile_context`` on ``ReferenceProfile().fit(reference_X, reference_labels,
    predictions=reference_predictions)``, with these parameters in place of the profile:

    reference_X : array of shape (n_reference, ...)
    reference_labels : array of shape (n_reference,) or None
        Classes of the reference samples; None: use ``reference_predictions``.
    reference_radii : array of shape (n_radii,) or None
        The method's radii on the reference samples it certified; None leaves
        ``radius_percentile`` NaN.
    reference_predictions : array of shape (n_reference,) or None
        Model predictions on the reference, used when it has no labels.

    Returns the frame ``profile_context`` describes.
    """
    profile = ReferenceProfile().fit(reference_X, reference_labels, predictions=reference_predictions)
    return _context(
        profile,
        batch_X,
        radius,
        prediction,
        reference_radii,
        norm=norm,
        ids=ids,
        method=method,
        max_pairs=max_pairs,
        device=device,
    )


def batch_context(
    profile: ReferenceProfile,
    batch_X: np.ndarray,
    certificates: pd.DataFrame,
    *,
    ids: Sequence[str],
    specs: Sequence[MethodSpec],
    max_pairs: int = DEFAULT_MAX_PAIRS,
    device: str | torch.device | None = None,
) -> pd.DataFrame:
    """Context of every listed method's certificates of a batch, one block of rows per method.

    certificates : frame with CERTIFICATE_COLUMNS (at least sample_id, method, radius,
        prediction) holding, for each spec in ``specs``, one row per id in ``ids``.
    specs : the policy's method specs, in output order; each gives its method and norm.
    Other parameters as in ``profile_context``. Returns CONTEXT_COLUMNS.
    """
    frames = []
    for spec in specs:
        method = str(spec.method)
        rows = certificates[certificates["method"] == method].set_index(SAMPLE_ID)
        missing = [i for i in ids if i not in rows.index]
        if missing:
            raise InputError(f"certificates: no {method!r} certificate for sample_id {missing[0]!r}")
        rows = rows.loc[list(ids)]
        frames.append(
            profile_context(
                profile,
                batch_X,
                rows["radius"].to_numpy(dtype=np.float64),
                rows["prediction"].to_numpy(dtype=np.int64),
                norm=str(spec.norm),
                ids=ids,
                method=method,
                max_pairs=max_pairs,
                device=device,
            )
        )
    if not frames:
        raise InputError("batch_context: no methods to put in context")
    return pd.concat(frames, ignore_index=True)
