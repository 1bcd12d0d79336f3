"""Nearest neighbours and per-sample novelty against the reference set.

Distances are computed with ``torch.cdist`` in row blocks on the run-time device, so no full
n_queries x n_reference matrix exists beyond the memory bound.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from certrisk.risk.device import DEFAULT_MAX_BYTES, resolve_device
from certrisk.risk.drift.inputs import paired_matrices
from certrisk.schemas.columns import NOVELTY_COLUMNS, SAMPLE_ID, conform
from certrisk.schemas.errors import InputError


def knn_distances(
    queries: np.ndarray,
    reference: np.ndarray,
    *,
    k: int = 1,
    p: float = 2.0,
    exclude_self: bool = False,
    device: str | torch.device | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> np.ndarray:
    """Distances to the k nearest reference points, sorted ascending, shape (n_queries, k).

    Distances are lp (``p`` = 1, 2 or inf), float64, computed with ``torch.cdist`` in row
    blocks of at most ``max_bytes`` (never a full n_queries x n_reference matrix beyond it).
    ``exclude_self``: queries are the reference itself (same order) and each row skips its own
    index (leave-one-out); duplicates of a point still count at distance 0.
    """
    q = torch.as_tensor(np.asarray(queries, dtype=np.float64))
    r = torch.as_tensor(np.asarray(reference, dtype=np.float64))
    n_ref = r.shape[0]
    avail = n_ref - (1 if exclude_self else 0)
    if not 1 <= k <= avail:
        raise InputError(
            f"knn_distances: k must lie in [1, {avail}] for a reference of {n_ref} samples, got {k}"
        )
    dev = resolve_device(device)
    r = r.to(dev)
    rows = int(max(1, (max_bytes // 2) // max(1, n_ref * 8)))
    out = np.empty((q.shape[0], k))
    for i in range(0, q.shape[0], rows):
        j = min(i + rows, q.shape[0])
        d = torch.cdist(q[i:j].to(dev), r, p=p)
        if exclude_self:
            d[torch.arange(j - i, device=dev), torch.arange(i, j, device=dev)] = float("inf")
        out[i:j] = torch.topk(d, k, dim=1, largest=False).values.cpu().numpy()
    return out


def novelty(
    reference: np.ndarray | pd.DataFrame,
    batch: np.ndarray | pd.DataFrame,
    *,
    k: int = 5,
    ids: Sequence[str],
    features: Sequence[str] | None = None,
    domain_probability: np.ndarray | None = None,
    device: str | torch.device | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> pd.DataFrame:
    """Per-sample novelty against the reference set.

    ``knn_distance``: l2 distance from each batch sample to its k-th nearest reference sample.
    ``novelty_percentile``: the share of reference samples whose own leave-one-out k-th nearest
    neighbour distance is <= that distance (0..1; under exchangeability with the reference,
    ``1 - percentile`` is a conservative conformal p-value up to a 1 / (n_reference + 1) term).
    ``domain_probability``: the classifier test's out-of-fold probability, NaN when not given.

    Parameters
    ----------
    reference : array of shape (n_reference, n_features), n_reference > k
    batch : array of shape (n_batch, n_features)
    ids : sequence of str, length n_batch
    domain_probability : array of shape (n_batch,) or None

    Returns
    -------
    DataFrame
        NOVELTY_COLUMNS, one row per batch sample, in batch order.
    """
    ids = [str(i) for i in ids]
    x, y = paired_matrices(reference, batch, features, batch_ids=ids)
    if len(ids) != len(y):
        raise InputError(f"novelty: {len(ids)} id(s) for {len(y)} batch sample(s)")
    if len(x) <= k:
        raise InputError(f"novelty: reference of {len(x)} samples is too small for k={k}")
    ref_loo = np.sort(knn_distances(x, x, k=k, exclude_self=True, device=device, max_bytes=max_bytes)[:, -1])
    dist = knn_distances(y, x, k=k, device=device, max_bytes=max_bytes)[:, -1]
    pct = np.searchsorted(ref_loo, dist, side="right") / len(ref_loo)
    if domain_probability is None:
        dom = np.full(len(y), np.nan)
    else:
        dom = np.asarray(domain_probability, dtype=np.float64)
        if dom.shape != (len(y),):
            raise InputError(f"novelty: domain_probability has shape {dom.shape}, expected ({len(y)},)")
    frame = pd.DataFrame(
        {SAMPLE_ID: ids, "knn_distance": dist, "novelty_percentile": pct, "domain_probability": dom}
    )
    return conform(frame, NOVELTY_COLUMNS, table="novelty")
