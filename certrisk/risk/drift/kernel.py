"""Kernel two-sample test (the "kernel" family): Gaussian-kernel MMD^2 with a permutation p-value.

The p-value ``(b + 1) / (B + 1)`` (b of B random permutations reach the observed statistic)
satisfies P(p <= a) <= a for every a under the null that reference and batch samples are
exchangeable (e.g. i.i.d. from one distribution), for any sample size, kernel and bandwidth; it
is never 0, and never below 1 / (B + 1).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from certrisk.risk.device import DEFAULT_MAX_BYTES, resolve_device
from certrisk.risk.drift.inputs import paired_matrices
from certrisk.schemas.errors import InputError

#: Points used to estimate the median-heuristic bandwidth (pairwise distances: n^2 / 2 of them).
BANDWIDTH_SUBSAMPLE = 1000


@dataclass(frozen=True)
class MMDResult:
    """Kernel two-sample test.

    statistic: unbiased MMD^2 (may be slightly negative under the null), Gaussian kernel
    ``exp(-||x - y||_2^2 / (2 bandwidth^2))``; p_value: ``(b + 1) / (n_permutations + 1)``;
    bandwidth: in the features' units (l2).
    """

    statistic: float
    p_value: float
    bandwidth: float
    n_permutations: int
    seconds: float = 0.0
    device: str = "cpu"

    def test_row(self) -> dict[str, Any]:
        """This test as one DRIFT_TEST_COLUMNS row of family "kernel" (no q-value yet); effect
        size the MMD itself, ``sqrt(max(MMD^2, 0))``."""
        return {
            "test": "mmd",
            "family": "kernel",
            "feature": "*",
            "statistic": self.statistic,
            "p_value": self.p_value,
            "effect_size": math.sqrt(max(self.statistic, 0.0)),
            "effect_name": "mmd",
        }


def median_bandwidth(z: np.ndarray, *, seed: int = 0, max_points: int = BANDWIDTH_SUBSAMPLE) -> float:
    """Median heuristic: the median l2 distance between distinct points of ``z``.

    ``z`` has shape (n, d); above ``max_points`` points a seeded subsample is used. Falls back
    to the mean nonzero distance, then 1.0, when the median is 0 (many duplicate points).
    """
    from scipy.spatial.distance import pdist

    z = np.asarray(z, dtype=np.float64)
    if len(z) > max_points:
        rng = np.random.default_rng(seed)
        z = z[rng.choice(len(z), size=max_points, replace=False)]
    d = pdist(z)
    if d.size == 0:
        return 1.0
    med = float(np.median(d))
    if med > 0:
        return med
    nz = d[d > 0]
    return float(nz.mean()) if nz.size else 1.0


def mmd_permutation_masks(
    n_reference: int, n_batch: int, n_permutations: int, *, seed: int = 0
) -> np.ndarray:
    """The permutations ``mmd_test`` uses, as boolean masks of shape (n_permutations, n).

    Row j is True at the pooled positions permutation j assigns to the reference side; pooled
    order is reference rows then batch rows. Provided so baselines can replay the same test.
    """
    return np.stack([m.numpy() for m in _permutation_masks(n_reference, n_batch, n_permutations, seed)])


def _permutation_masks(
    n_reference: int, n_batch: int, n_permutations: int, seed: int
) -> Iterator[torch.Tensor]:
    """Random reference-side masks of the pooled sample, from a seeded CPU generator (so the
    permutations are the same on every device)."""
    n = n_reference + n_batch
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    for _ in range(n_permutations):
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.randperm(n, generator=g)[:n_reference]] = True
        yield mask


def _mmd2_from_forms(aka, ra, total, m1, m2):
    """Unbiased MMD^2 from a^T K a, r^T a (r = K 1) and 1^T K 1, with unit kernel diagonal."""
    bkb = total - 2.0 * ra + aka
    akb = ra - aka
    return (aka - m1) / (m1 * (m1 - 1)) + (bkb - m2) / (m2 * (m2 - 1)) - 2.0 * akb / (m1 * m2)


def mmd_test(
    reference: np.ndarray | pd.DataFrame,
    batch: np.ndarray | pd.DataFrame,
    *,
    n_permutations: int = 1000,
    seed: int = 0,
    device: str | torch.device | None = None,
    features: Sequence[str] | None = None,
    bandwidth: float | None = None,
    dtype: torch.dtype = torch.float64,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> MMDResult:
    """Gaussian-kernel MMD^2 permutation test.

    The pooled kernel matrix is never held whole: its rows are computed in blocks on ``device``
    and multiplied with a block of permutation indicator columns, so every statistic is a
    quadratic form ``a^T K a`` (a = the reference-side indicator of one permutation). The (n x P)
    indicator block takes max_bytes / 2 and a (rows x n) kernel block max_bytes / 4 (two
    temporaries of that size exist while it is built), so the peak stays under 2 x max_bytes
    plus the pooled data; when P permutations do not fit in one pass the kernel blocks are
    recomputed per pass. For 10,000 x 10,000 samples (n = 20,000) in float64 at the default
    bound: P = 800 permutations per pass, 400 kernel rows per block.

    Parameters
    ----------
    reference : array of shape (n_reference, n_features), n_reference >= 2
    batch : array of shape (n_batch, n_features), n_batch >= 2
    n_permutations : int
        B random permutations (from ``mmd_permutation_masks(..., seed=seed)``).
    seed : int
        Seeds the permutations and the bandwidth subsample.
    device : torch device or None
        None picks cuda when available, else cpu.
    bandwidth : float or None
        Kernel bandwidth in feature units; None: the median heuristic on the pooled sample.
    dtype : torch dtype
        float64 by default: the statistic is a small difference of large sums.
    max_bytes : int
        Memory bound of the intermediate blocks.

    Returns
    -------
    MMDResult
        p_value ``(b + 1) / (B + 1)`` with b the permutations whose statistic is >= the observed
        one: exactly valid under exchangeability, never 0.
    """
    if n_permutations < 1:
        raise InputError(f"mmd_test: n_permutations must be >= 1, got {n_permutations}")
    x, y = paired_matrices(reference, batch, features)
    m1, m2 = len(x), len(y)
    if m1 < 2 or m2 < 2:
        raise InputError(f"mmd_test needs at least 2 samples per side, got reference {m1}, batch {m2}")
    start = time.perf_counter()
    dev = resolve_device(device)
    pooled = np.concatenate([x, y])
    sigma = float(bandwidth) if bandwidth is not None else median_bandwidth(pooled, seed=seed)
    if not sigma > 0:
        raise InputError(f"mmd_test: bandwidth must be > 0, got {sigma}")
    gamma = 1.0 / (2.0 * sigma * sigma)
    z = torch.as_tensor(pooled, dtype=dtype, device=dev)
    n = m1 + m2
    item = torch.finfo(dtype).bits // 8
    cols = int(max(1, min(n_permutations + 1, (max_bytes // 2) // (n * item))))
    rows = int(max(1, min(n, (max_bytes // 4) // (n * item))))
    sq = (z * z).sum(dim=1)

    identity = torch.zeros(n, dtype=torch.bool)
    identity[:m1] = True
    masks = _permutation_masks(m1, m2, n_permutations, seed)

    row_sums: torch.Tensor | None = None
    stats_all = []
    first = True
    remaining = n_permutations + 1
    while remaining > 0:
        width = min(cols, remaining)
        block = [identity] if first else []
        block.extend(next(masks) for _ in range(width - len(block)))
        a = torch.stack(block, dim=1).to(device=dev, dtype=dtype)  # (n, P)
        aka = torch.zeros(a.shape[1], dtype=dtype, device=dev)
        sums = torch.empty(n, dtype=dtype, device=dev) if row_sums is None else None
        for i in range(0, n, rows):
            j = min(i + rows, n)
            d2 = (sq[i:j, None] + sq[None, :] - 2.0 * (z[i:j] @ z.T)).clamp_min_(0.0)
            k = torch.exp_(d2.mul_(-gamma))  # (rows, n)
            if sums is not None:
                sums[i:j] = k.sum(dim=1)
            aka += (a[i:j] * (k @ a)).sum(dim=0)
        if sums is not None:
            row_sums = sums
        ra = row_sums @ a
        stats_all.append(_mmd2_from_forms(aka, ra, row_sums.sum(), m1, m2).cpu())
        remaining -= width
        first = False
    values = torch.cat(stats_all).numpy()
    observed = float(values[0])
    b = int(np.count_nonzero(values[1:] >= observed))
    return MMDResult(
        statistic=observed,
        p_value=(b + 1) / (n_permutations + 1),
        bandwidth=sigma,
        n_permutations=n_permutations,
        seconds=time.perf_counter() - start,
        device=str(dev),
    )
