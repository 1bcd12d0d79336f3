"""Radii across lp norms (Cullen et al. 2022, Theorem 2).

In dimension d, the lq ball of radius ``min(d^(1/q - 1/p), 1) * r`` lies inside the lp ball of
radius r, so an lp certificate of radius r also certifies that lq radius.
"""

from __future__ import annotations

import numpy as np

from certrisk.risk.certify.stats import round_down
from certrisk.schemas.enums import Norm
from certrisk.schemas.errors import InputError


def as_norm(value: Norm | str) -> Norm:
    """The Norm named by ``value`` ("l1", "l2", "linf" or a Norm); InputError otherwise."""
    if isinstance(value, Norm):
        return value
    try:
        return Norm(str(value).lower())
    except ValueError:
        raise InputError(f"unknown norm {value!r}; expected one of {[n.value for n in Norm]}") from None


def norm_factor(from_norm: Norm | str, to_norm: Norm | str, dim: int) -> float:
    """``min(d^(1/q - 1/p), 1)`` for an lp radius (p = from_norm) stated in lq (q = to_norm)."""
    if int(dim) < 1:
        raise InputError(f"translate_radius: dim must be >= 1, got {dim}")
    p = as_norm(from_norm).p
    q = as_norm(to_norm).p
    exponent = (0.0 if np.isinf(q) else 1.0 / q) - (0.0 if np.isinf(p) else 1.0 / p)
    return float(min(float(dim) ** exponent, 1.0))


def translate_radius(radius, from_norm: Norm | str, to_norm: Norm | str, dim: int) -> np.ndarray:
    """The lq radius an lp certificate still covers: ``min(d^(1/q - 1/p), 1) * r``.

    Parameters
    ----------
    radius : float or array of shape (B,), radii in ``from_norm`` (p)
    from_norm, to_norm : "l1", "l2", "linf" (or Norm)
    dim : input dimension d (number of features)

    Returns float64 array of the radii's shape, in ``to_norm``, rounded down (unchanged when the
    factor is exactly 1).
    """
    r = np.asarray(radius, dtype=np.float64)
    factor = norm_factor(from_norm, to_norm, dim)
    if factor == 1.0:
        return r.copy()
    return round_down(r * factor)
