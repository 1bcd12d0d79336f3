"""Multiple-testing correction across every drift test of a batch.

``adjust_p_values`` with ``"family-bh"`` is the weighted Benjamini-Hochberg procedure (Genovese,
Roeder and Wasserman 2006) with weights that give every test family the same share of the error
budget: with F families of sizes m_f among m tests, a test of family f has weight m / (F m_f)
(the weights average 1) and ``q = BH(p / w)``. It controls the false discovery rate under
independence, and "any q < alpha" is a weighted Simes global test. ``"bh"`` pools the p-values
with equal weights (FDR under independence or PRDS); ``"by"`` (Benjamini-Yekutieli) and
``"holm"`` (family-wise error) hold under any dependence, at a cost in power.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from certrisk.schemas.errors import InputError

Correction = Literal["family-bh", "bh", "by", "holm"]


def bh_qvalues(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), same order as the input.

    ``q_(i) = min_{j >= i} min(1, m p_(j) / j)`` over the sorted p-values. Rejecting q < alpha
    controls the FDR at alpha under independence or PRDS.

    Parameters
    ----------
    p_values : array of shape (m,)

    Returns
    -------
    array of shape (m,), float64
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    q = np.empty(m)
    q[order] = q_sorted
    return q


def family_weights(families: Sequence[str]) -> np.ndarray:
    """Weights giving each family the same total weight; they average 1.

    A test of family f (m_f tests of m in all, F families) gets weight m / (F * m_f). Returns an
    array of shape (m,), in the order of ``families``.
    """
    fam = pd.Series(list(families), dtype="object")
    if fam.empty:
        return np.empty(0)
    sizes = fam.map(fam.value_counts()).to_numpy(dtype=np.float64)
    return len(fam) / (fam.nunique() * sizes)


def adjust_p_values(
    p_values: np.ndarray, method: Correction = "bh", *, families: Sequence[str] | None = None
) -> np.ndarray:
    """Adjusted p-values of shape (m,): ``family-bh`` (weighted BH with equal weight per family,
    FDR under independence; needs ``families``, one name per p-value), ``bh`` (FDR, PRDS),
    ``by`` (FDR, any dependence), ``holm`` (FWER)."""
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    if m == 0:
        return p.copy()
    if method == "family-bh":
        if families is None or len(families) != m:
            given = "none" if families is None else len(families)
            raise InputError(
                f"family-bh correction needs one family name per p-value: {given} name(s) for {m} p-value(s)"
            )
        return np.minimum(bh_qvalues(p / family_weights(families)), 1.0)
    if method == "bh":
        return bh_qvalues(p)
    if method == "by":
        return np.minimum(bh_qvalues(p) * np.sum(1.0 / np.arange(1, m + 1)), 1.0)
    if method == "holm":
        order = np.argsort(p, kind="stable")
        scaled = np.minimum(p[order] * (m - np.arange(m)), 1.0)
        q = np.empty(m)
        q[order] = np.maximum.accumulate(scaled)
        return q
    raise InputError(f"unknown correction {method!r}; known: family-bh, bh, by, holm")
