"""The largest certified radius of a deterministic bound method, by bracketing and bisection."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from certrisk.risk.certify.stats import round_down
from certrisk.schemas.errors import InputError

#: Relative tolerance of the eps search: the reported radius r satisfies r <= r* and
#: r >= r* / (1 + SEARCH_RTOL), where r* is the largest eps the method certifies (for a method
#: monotone in eps, such as IBP). Inputs with r* below SEARCH_MIN_EPS report abstention.
SEARCH_RTOL = 1e-3
SEARCH_MIN_EPS = 2.0**-40
SEARCH_START_EPS = 2.0**-6
_MAX_ROUNDS = 200


def eps_tensor(eps, b: int, dev, what: str) -> torch.Tensor:
    """eps (a number or an array of shape (b,), finite and >= 0) as a float64 tensor (b,)."""
    arr = np.asarray(eps, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(b, float(arr))
    if arr.shape != (b,):
        raise InputError(f"{what}: eps must be a number or an array of shape ({b},), got shape {arr.shape}")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise InputError(f"{what}: eps must be finite and >= 0")
    return torch.as_tensor(arr, dtype=torch.float64, device=dev)


def largest_certified(
    certified: Callable[[np.ndarray, np.ndarray], np.ndarray | tuple[np.ndarray, np.ndarray]],
    b: int,
    *,
    rtol: float = SEARCH_RTOL,
    soft: bool = False,
    floor: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Search each input's largest certified radius.

    certified(idx, trial) -> array of shape idx.shape: for inputs ``idx`` (int array) at radii
    ``trial``, a radius <= trial that the method proves (``trial`` itself when it certifies the
    ball of radius trial, 0 when nothing; a method that proves a smaller radius on the way may
    return it), or a pair (that array, estimates) where an estimate guesses the largest
    certified radius (it only steers the next trial; NaN when none). Doubling from 2^-6 (or a
    jump to the estimate) and halving bracket the largest certified trial, bisection narrows the
    bracket until ``hi - lo <= rtol * hi``. ``soft``: a proved trial's estimate also lowers hi (for methods whose estimate over-estimates the largest certified radius, as
    CROWN's does: its relaxations loosen on larger balls). ``floor``: radii (b,) already proved
    by another sound method; the search starts above them and never returns less.

    Returns (radius float64 (b,), the largest proved radius rounded down, 0 when none was found
    above SEARCH_MIN_EPS; calls int64 (b,): how many times each input was checked).
    """
    lo = np.zeros(b) if floor is None else np.maximum(np.asarray(floor, dtype=np.float64), 0.0)
    hi = np.full(b, np.inf)
    trial = np.where(lo > 0, np.maximum(2.0 * lo, SEARCH_START_EPS), SEARCH_START_EPS)
    guess = np.full(b, np.nan)
    spent = np.zeros(b, dtype=np.int64)
    open_ = np.ones(b, dtype=bool)
    for _ in range(_MAX_ROUNDS):
        idx = np.flatnonzero(open_)
        if idx.size == 0:
            break
        out = certified(idx, trial[idx])
        got, est = out if isinstance(out, tuple) else (out, np.full(idx.size, np.nan))
        got = np.nan_to_num(np.asarray(got, dtype=np.float64), nan=0.0)  # NaN bounds prove nothing
        est = np.asarray(est, dtype=np.float64)
        spent[idx] += 1
        proved = got >= trial[idx]
        lo[idx] = np.maximum(lo[idx], np.minimum(got, trial[idx]))
        hi[idx] = np.where(proved, hi[idx], np.minimum(hi[idx], trial[idx]))
        if soft:  # a proved trial's estimate caps the bracket (a guess, it only steers the trials)
            capped = proved & (est >= lo[idx])
            hi[idx] = np.where(capped, np.minimum(hi[idx], est), hi[idx])
        guess[idx] = np.where(proved, est, np.nan)
        bracketed = (lo > 0) & np.isfinite(hi)
        done = bracketed & (hi - lo <= rtol * hi)
        give_up = (lo == 0) & (hi < SEARCH_MIN_EPS)
        too_big = np.isinf(hi) & (lo > 2.0**40)
        open_ &= ~(done | give_up | too_big)
        trial = _next_trial(lo, hi, guess, rtol)
    radius = round_down(lo)
    return (radius if floor is None else np.maximum(radius, floor)), spent


def _next_trial(lo: np.ndarray, hi: np.ndarray, guess: np.ndarray, rtol: float) -> np.ndarray:
    """Double (or jump halfway to a guess above lo, at most to 64 lo), halve, or bisect (or try
    a guess inside the bracket that leaves room on both sides)."""
    with np.errstate(invalid="ignore"):
        jump = np.isfinite(guess) & (guess > lo * (1.0 + rtol))
        upward = np.where(jump, np.minimum((lo + guess) / 2.0, 64.0 * lo), lo * 2.0)
        inside = jump & (guess < hi - rtol * hi / 2)
        middle = np.where(inside, guess, (lo + hi) / 2.0)
    return np.where(np.isinf(hi), upward, np.where(lo == 0, hi / 2.0, middle))
