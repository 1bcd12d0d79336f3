"""Signals that do not trust the certificate: does the prediction agree with the reference set?

A certified attack moves an input a short way (within half the distance to another class, by
the evaluation's budgets) yet changes the model's class: its nearest reference samples still
carry the class it came from. Deep k-nearest-neighbours (Papernot and McDaniel 2018) turns this
into a conformal test; here, for a representation z (the input itself, or the model's
penultimate features) and a predicted class c:

    score(z, c) = d_c(z) / (d_c(z) + d_other(z))

with d_c the mean distance to the k nearest reference samples *of class c* and d_other the mean
distance to the k nearest reference samples of any other class: 0 when the predicted class's
samples are much closer than any other's, 1/2 on a boundary between reference classes, towards 1
when the prediction disagrees with every nearby reference sample. Its conformal p-value against
held-out clean calibration samples (``certrisk.risk.conformal``) is super-uniform for clean
inputs (``disagreement_factor`` = 1 - p). The production factor (``signal_frame``) records that
p-value for explanation and weighs a continuous scale instead (``certrisk.risk.calibration.
signal_scale``): 0 below the clean calibration scores' tail, rising to 1 at the boundary 1/2,
which neither ties among clean samples nor adds noise to most of them.

Distances are computed in row blocks with ``torch.cdist`` on the given device.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from certrisk.risk.calibration import signal_scale
from certrisk.risk.conformal import conformal_pvalues
from certrisk.schemas.columns import SAMPLE_ID, SIGNAL_COLUMNS, conform
from certrisk.schemas.errors import InputError

DEFAULT_K = 10
_BLOCK_BYTES = 64 * 2**20


def _norm_p(norm: str) -> float:
    return {"l1": 1.0, "l2": 2.0, "linf": float("inf")}[norm]


def class_distances(
    queries: np.ndarray,
    index: np.ndarray,
    index_labels: np.ndarray,
    predicted: np.ndarray,
    *,
    k: int = DEFAULT_K,
    norm: str = "l2",
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Mean distance to the k nearest index samples of the predicted class and of other classes.

    queries : array of shape (n, d); index : array of shape (m, d); index_labels : int (m,);
    predicted : int (n,), the class each query is predicted as. Returns (d_same, d_other), each
    float64 of shape (n,). k is capped by the smallest class's size.
    """
    q = torch.as_tensor(np.asarray(queries, dtype=np.float64).reshape(len(queries), -1))
    x = torch.as_tensor(np.asarray(index, dtype=np.float64).reshape(len(index), -1)).to(device)
    y = torch.as_tensor(np.asarray(index_labels, dtype=np.int64)).to(device)
    pred = torch.as_tensor(np.asarray(predicted, dtype=np.int64))
    if q.shape[1] != x.shape[1]:
        raise InputError(f"class_distances: queries have {q.shape[1]} features, the index {x.shape[1]}")
    if len(pred) != len(q):
        raise InputError(f"class_distances: {len(pred)} predictions for {len(q)} queries")
    counts = torch.bincount(y)
    smallest = int(counts[counts > 0].min()) if len(counts) else 0
    kk = min(k, smallest, len(x) - smallest)
    if kk < 1:
        raise InputError("class_distances: the index needs samples of at least two classes")
    p = _norm_p(norm)
    rows = max(1, _BLOCK_BYTES // max(1, 8 * len(x)))
    same = np.empty(len(q))
    other = np.empty(len(q))
    for i in range(0, len(q), rows):
        d = torch.cdist(q[i : i + rows].to(device), x, p=p)
        is_same = y[None, :] == pred[i : i + rows].to(device)[:, None]
        inf = torch.tensor(float("inf"), dtype=d.dtype, device=device)
        same[i : i + rows] = torch.where(is_same, d, inf).topk(kk, largest=False).values.mean(1).cpu().numpy()
        other[i : i + rows] = (
            torch.where(is_same, inf, d).topk(kk, largest=False).values.mean(1).cpu().numpy()
        )
    return same, other


def disagreement_score(d_same: np.ndarray, d_other: np.ndarray) -> np.ndarray:
    """``d_same / (d_same + d_other)`` in [0, 1], shape (n,); predicted class with no reference
    sample (d_same inf) gives 1; both distances 0 gives 1/2."""
    d_same = np.asarray(d_same, dtype=np.float64)
    d_other = np.asarray(d_other, dtype=np.float64)
    total = d_same + d_other
    out = np.divide(d_same, total, out=np.full_like(total, 0.5), where=(total > 0) & np.isfinite(d_same))
    return np.where(np.isinf(d_same), 1.0, out)


def disagreement_factor(scores: np.ndarray, calibration_scores: np.ndarray) -> np.ndarray:
    """1 - the conformal p-value of each score among clean calibration scores, shape (n,).

    Under exchangeability with the calibration samples, a clean sample's factor exceeds 1 - a
    with probability at most a.
    """
    return 1.0 - conformal_pvalues(calibration_scores, scores)


def neighbour_scores(
    queries: np.ndarray,
    predicted: np.ndarray,
    index: np.ndarray,
    index_labels: np.ndarray,
    *,
    k: int = DEFAULT_K,
    norm: str = "l2",
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """``disagreement_score`` of each query against the index, float64 of shape (n,).

    queries : array of shape (n, d); predicted : int (n,), the class each query is compared with
    (a negative class, ABSTAIN, has no reference sample: score 1); index : (m, d) with int labels
    (m,); k and norm as in ``class_distances``.
    """
    return disagreement_score(
        *class_distances(queries, index, index_labels, predicted, k=k, norm=norm, device=device)
    )


def signal_frame(
    name: str, ids, scores: np.ndarray, calibration_scores: np.ndarray, *, tail: float
) -> pd.DataFrame:
    """SIGNAL_COLUMNS rows of one signal: its ``score``, the conformal ``p_value`` of the score
    among the clean ``calibration_scores`` (shape (n_calibration,)) and the ``factor``
    ``signal_scale(calibration_scores, score, tail=tail)``, one row per id (scores of shape (n,) in
    [0, 1])."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(s) != len(ids):
        raise InputError(f"signal {name!r}: {len(s)} score(s) for {len(ids)} sample id(s)")
    frame = pd.DataFrame(
        {
            SAMPLE_ID: [str(i) for i in ids],
            "signal": name,
            "score": s,
            "p_value": conformal_pvalues(calibration_scores, s),
            "factor": signal_scale(calibration_scores, s, tail=tail),
        }
    )
    return conform(frame, SIGNAL_COLUMNS, table="signals")
