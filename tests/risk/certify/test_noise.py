"""The counter-based noise generator against a pure-Python reference and against N(0, 1).

Every statistical assertion runs with fixed keys, so it is deterministic; the bound stated next to
it is the probability that a generator drawing truly independent standard normals would fail it.
A z-score bound of 5 fails with probability 5.7e-7 (two-sided); a KS p-value bound of 1e-6 fails
with probability 1e-6.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import kstest, norm

from certrisk.risk.certify import noise
from certrisk.risk.certify.noise import GOLDEN, as_int64, mix64_int, normal_rows, row_keys

Z = 5.0  # two-sided false-failure probability 2 * norm.sf(5) = 5.7e-7 per check


def _draw(keys, rows, width, dtype=torch.float32, device="cpu"):
    keys = torch.as_tensor(np.asarray(keys, dtype=np.int64), device=device)
    rows = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=device)
    out = torch.full((len(keys), width), float("nan"), dtype=dtype, device=device)
    return normal_rows(keys, rows, width, out=out)


def _reference(key: int, row: int, width: int) -> np.ndarray:
    """The module docstring's formulas in Python integers and float64."""
    rk = mix64_int((key & ((1 << 64) - 1)) ^ mix64_int(row * GOLDEN + noise._ROW_SALT))
    words = (width + 1) // 2
    z = np.empty(2 * words)
    for p in range(words):
        h = mix64_int(rk + (p + 1) * GOLDEN)
        u1 = ((h >> 32) + 0.5) / 2.0**32
        u2 = ((h & 0xFFFFFFFF) + 0.5) / 2.0**32
        z[p] = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
        z[words + p] = math.sqrt(-2.0 * math.log(u1)) * math.sin(2.0 * math.pi * u2)
    return np.concatenate([z[:words], z[words : words + width - words]])


def test_bits_and_values_match_the_reference():
    keys = [0, 1, -1, as_int64(1 << 63), as_int64(0x0123456789ABCDEF), 42]
    rows = [0, 1, 5, 2**33 + 7, 99_999, 2**62]
    got = row_keys(torch.tensor(keys), torch.tensor(rows)).tolist()
    for k, r, g in zip(keys, rows, got):
        assert g == as_int64(mix64_int((k & ((1 << 64) - 1)) ^ mix64_int(r * GOLDEN + noise._ROW_SALT)))
    for width in (1, 2, 7, 64):
        out64 = _draw(keys, rows, width, torch.float64).numpy()
        out32 = _draw(keys, rows, width, torch.float32).numpy()
        ref = np.stack([_reference(k, r, width) for k, r in zip(keys, rows)])
        np.testing.assert_allclose(out64, ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(out32, ref, rtol=1e-5, atol=1e-5)


def test_noise_does_not_depend_on_how_rows_are_grouped(monkeypatch):
    """A row's noise is a function of (key, row): drawing rows in pieces, in another order, or in
    smaller internal blocks gives the same bits."""
    keys = np.repeat([11, 12, 13], 40)
    rows = np.tile(np.arange(40), 3)
    whole = _draw(keys, rows, 9)
    perm = np.random.default_rng(0).permutation(len(keys))
    shuffled = _draw(keys[perm], rows[perm], 9)
    assert torch.equal(shuffled, whole[perm])
    parts = torch.cat([_draw(keys[:17], rows[:17], 9), _draw(keys[17:], rows[17:], 9)])
    assert torch.equal(parts, whole)
    monkeypatch.setattr(noise, "BLOCK_WORDS", 7)
    assert torch.equal(_draw(keys, rows, 9), whole)
    assert torch.isfinite(whole).all()


@pytest.mark.parametrize("width", [64, 5])
def test_marginal_is_standard_normal(width):
    """200,000 values from one stream and 200,000 from 4,000 streams of 50 values: mean and variance
    within 5 standard errors, KS against scipy.stats.norm with p > 1e-6, and the share beyond
    |z| > 3 within 5 binomial standard deviations. About 1e-5 false-failure probability in all."""
    one = (
        _draw(np.full(200_000 // width, 1234567), np.arange(200_000 // width), width).double().numpy().ravel()
    )
    many = _draw(np.arange(4000) * 7919, np.zeros(4000), 50).double().numpy().ravel()
    for z in (one, many):
        m = z.size
        assert abs(z.mean()) < Z / math.sqrt(m)
        assert abs(z.var() - 1.0) < Z * math.sqrt(2.0 / m)
        assert kstest(z, norm.cdf).pvalue > 1e-6
        p3 = 2 * norm.sf(3.0)
        assert abs((np.abs(z) > 3).sum() - m * p3) < Z * math.sqrt(m * p3 * (1 - p3))
        assert np.abs(z).max() <= math.sqrt(64 * math.log(2)) + 1e-4  # the documented tail cut


def test_no_correlation_across_elements_rows_and_keys():
    """Pearson correlations of pairs that share a key, a row or a position, each over m >= 40,000
    pairs, lie within 5 / sqrt(m) of 0 (each fails with probability 5.7e-7 under independence)."""
    width, n_rows = 64, 2000
    a = _draw(np.full(n_rows, 5), np.arange(n_rows), width).double().numpy()
    b = _draw(np.full(n_rows, 6), np.arange(n_rows), width).double().numpy()  # neighbouring key
    c = _draw(np.full(n_rows, 5), np.arange(n_rows) + n_rows, width).double().numpy()  # next rows
    w = width // 2
    pairs = {
        "next element": (a[:, :-1], a[:, 1:]),
        "cos / sin halves of one word": (a[:, :w], a[:, w:]),
        "next row": (a[:-1], a[1:]),
        "neighbouring key, same row": (a, b),
        "same key, row + 2000": (a, c),
        "squares, next element": (a[:, :-1] ** 2, a[:, 1:] ** 2),
        "squares, cos / sin halves": (a[:, :w] ** 2, a[:, w:] ** 2),
    }
    for name, (u, v) in pairs.items():
        u, v = u.ravel(), v.ravel()
        r = np.corrcoef(u, v)[0, 1]
        assert abs(r) < Z / math.sqrt(u.size), (name, r)


def test_float_dtypes():
    keys, rows = np.arange(100), np.arange(100)
    ref = _draw(keys, rows, 16, torch.float64)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        got = _draw(keys, rows, 16, dtype)
        assert got.dtype == dtype and torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), ref, rtol=1e-2, atol=1e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_draws_the_cpu_noise():
    """Same integer bits on both devices; the floats differ by the devices' rounding only."""
    keys = np.arange(3000) * 104729 - 10**12
    rows = np.arange(3000) * 3
    cpu = _draw(keys, rows, 64)
    cuda = _draw(keys, rows, 64, device="cuda")
    assert torch.equal(
        row_keys(torch.tensor(keys), torch.tensor(rows)),
        row_keys(torch.tensor(keys).cuda(), torch.tensor(rows).cuda()).cpu(),
    )
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-5, atol=1e-5)
