"""Verified upper bounds on spectral norms: of matrices and of 2-d convolutions (any input size).

An SVD (or power iteration, which converges from below) only estimates ``||M||_2``. The bound
here is proved: for a candidate s slightly above the estimate, a Cholesky factorisation of
``t I - fl(M^H M)`` that runs to completion shows ``s^2 I - M^H M`` is positive semidefinite,
hence ``||M||_2 <= s``. The factorisation's backward error ``|dA| <= gamma_{n+1} |R^H| |R|``
(Higham 2002, Theorem 10.3, any order of the inner products) is bounded by
``gamma / (1 - gamma) trace(A) <= gamma / (1 - gamma) n s^2`` and the error of the Gram matrix by
``gamma_m ||M||_F^2``; t subtracts both from s^2 (rounded down), so success proves the bound.
When no candidate up to 1.0625 times the estimate verifies, the Frobenius norm (rounded up) is
used. Constants are generous (gamma of 4(n+1) terms covers complex arithmetic).

Convolutions (zero padding, any stride, dilation, groups): a zero-padded convolution of an n x n
input is a crop of a circular convolution on a grid large enough to avoid wrap-around, whose
operator norm is ``max_w ||K(w)||_2`` over the grid's frequencies, ``K(w) = sum_ab K_ab
e^{-i w.(a, b)}`` (Sedghi et al. 2019); striding subsamples the output. So ``sup_w ||K(w)||_2``
over the torus bounds every input size. It is evaluated on a G x G grid, ``K(w)`` summed directly
from the taps (its float error, trigonometric functions included, bounded by
``(2^-46 + gamma_{4 taps + 8}) ||sum_ab |K_ab| ||_F``), and made sound between grid points by
``||K(w) - K(w_g)||_2 <= sum_ab ||K_ab||_2 (|a'| + |b'|) pi / G`` (centred offsets).
"""

from __future__ import annotations

import math

import torch

from certrisk.risk.certify.rounding import down, gamma, inflate, scalar_up, up

#: Relative margins above the SVD estimate tried in turn by the Cholesky verification.
_LADDER = (2.0**-33, 2.0**-26, 2.0**-20, 2.0**-14, 2.0**-8, 2.0**-4)
#: Bound of the float error of one computed phase e^{-i theta}, |theta| < 2 pi (argument rounding
#: and a 1-ulp cos/sin, generously).
_PHASE_ERROR = 2.0**-46
#: Matrix entries per chunk of frequencies.
_CHUNK_ENTRIES = 2**21


def _frobenius_up(mats: torch.Tensor) -> torch.Tensor:
    """Upper bounds of ``||M||_F`` for each matrix of (N, m, n), shape (N,)."""
    flat = torch.view_as_real(mats).flatten(-3) if mats.is_complex() else mats.flatten(-2)
    total = torch.linalg.vector_norm(flat, dim=-1)
    return up(total * scalar_up(1.0 + 2.0 * gamma(2 * flat.shape[-1] + 4)))


def _gram(mats: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The smaller Gram matrix of each of (N, m, n) and the length of its inner products."""
    m, n = mats.shape[-2:]
    return (mats.mH @ mats if n <= m else mats @ mats.mH), max(m, n)


def _verified(gram: torch.Tensor, inner: int, s: torch.Tensor, fro: torch.Tensor) -> torch.Tensor:
    """Whether ``||M_i||_2 <= s_i`` is proved from the computed Gram matrices (N, k, k) of M_i
    (inner products of ``inner`` terms) and upper bounds ``fro`` of ``||M_i||_F``; bool (N,)."""
    k = gram.shape[-1]
    gram_err = up(fro * fro * gamma(4 * inner + 8))
    g = gamma(4 * (k + 1))
    chol = up(s * s * scalar_up(k * g / (1.0 - g)))
    t = down(down(s * s - gram_err) - chol)
    diag = torch.diagonal(gram, dim1=-2, dim2=-1).real
    a = -gram
    idx = torch.arange(k, device=gram.device)
    a[..., idx, idx] = down(t[:, None] - diag).to(a.dtype)
    _, info = torch.linalg.cholesky_ex(a)
    return (info == 0) & torch.isfinite(s) & torch.isfinite(t) & (t > 0)


def _estimate(gram: torch.Tensor) -> torch.Tensor:
    """Estimated ``||M||_2`` from the Gram matrices (not a bound)."""
    return torch.linalg.eigvalsh(gram)[..., -1].clamp_min(0).sqrt()


def matrix_norm_bounds(mats: torch.Tensor) -> torch.Tensor:
    """Verified upper bounds of ``||M_i||_2`` for a batch of float64 (or complex128) matrices.

    mats : tensor of shape (N, m, n). Returns float64 (N,) on the same device.
    """
    mats = mats.detach()
    fro = _frobenius_up(mats)
    gram, inner = _gram(mats)
    estimate = _estimate(gram)
    bound = fro.clone()
    pending = torch.ones_like(fro, dtype=torch.bool)
    for rel in _LADDER:
        if not bool(pending.any()):
            break
        sel = pending.nonzero().flatten()
        s = up(up(estimate[sel] * (1.0 + rel)) + 2.0**-1000)
        ok = _verified(gram[sel], inner, s, fro[sel])
        bound[sel[ok]] = torch.minimum(s[ok], fro[sel[ok]])
        pending[sel[ok]] = False
    return bound


def max_norm_bound(mats: torch.Tensor) -> float:
    """Verified upper bound of ``max_i ||M_i||_2`` over a batch (N, m, n), one shared candidate."""
    mats = mats.detach()
    fro = _frobenius_up(mats)
    gram, inner = _gram(mats)
    top = float(_estimate(gram).max())
    for rel in _LADDER:
        s = float(up(torch.tensor(top * (1.0 + rel) + 2.0**-1000, dtype=torch.float64)))
        s_all = torch.full_like(fro, s)
        if bool(_verified(gram, inner, s_all, fro).all()):
            return min(s, float(fro.max()))
    return float(fro.max())


def matrix_norm_bound(mat: torch.Tensor) -> float:
    """Verified upper bound of ``||M||_2`` of one matrix (m, n)."""
    return float(matrix_norm_bounds(mat.to(torch.float64)[None])[0])


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _full_kernel(weight: torch.Tensor, groups: int) -> torch.Tensor:
    w = weight.detach().to("cpu", torch.float64)
    c_out, c_in_g, kh, kw = w.shape
    if groups == 1:
        return w
    full = torch.zeros(c_out, c_in_g * groups, kh, kw, dtype=torch.float64)
    per = c_out // groups
    for g in range(groups):
        full[g * per : (g + 1) * per, g * c_in_g : (g + 1) * c_in_g] = w[g * per : (g + 1) * per]
    return full


def conv_norm_bound(weight: torch.Tensor, groups: int = 1, dilation=(1, 1), grid: int = 128) -> float:
    """Verified upper bound on the l2 operator norm of a 2-d convolution, any input size.

    weight : tensor of shape (c_out, c_in / groups, kh, kw). See the module docstring.
    """
    w = _full_kernel(weight, groups)
    c_out, c_in, kh, kw = w.shape
    dh, dw = _pair(dilation)
    size = max(grid * max(dh, dw), (kh - 1) * dh + 1, (kw - 1) * dw + 1)
    taps_w = w.permute(2, 3, 0, 1).reshape(kh * kw, c_out, c_in)
    taps = matrix_norm_bounds(taps_w).view(kh, kw)
    a = torch.arange(kh, dtype=torch.int64) * dh
    b = torch.arange(kw, dtype=torch.int64) * dw
    k1 = torch.arange(size, dtype=torch.int64)
    k2 = torch.arange(size // 2 + 1, dtype=torch.int64)  # K(-w) = conj K(w): half the torus suffices
    # phase index (k1 a + k2 b) mod size, exact in integers: (size, size // 2 + 1, kh, kw)
    steps = (
        k1[:, None, None, None] * a[None, None, :, None] + k2[None, :, None, None] * b[None, None, None, :]
    ) % size
    theta = steps.reshape(-1, kh * kw).double() * (2.0 * math.pi / size)
    phase = torch.complex(theta.cos(), -theta.sin())  # (frequencies, taps)
    kernel = taps_w.reshape(kh * kw, c_out * c_in).to(torch.complex128)
    chunk = max(1, _CHUNK_ENTRIES // (c_out * c_in))
    grid_max = max(
        max_norm_bound((phase[start : start + chunk] @ kernel).view(-1, c_out, c_in))
        for start in range(0, phase.shape[0], chunk)
    )
    spread_abs = up(w.abs().sum(dim=(2, 3)) * inflate(kh * kw))
    coefficient_error = up(
        _frobenius_up(spread_abs[None])[0] * scalar_up(_PHASE_ERROR + gamma(4 * kh * kw + 8))
    )
    ca = (torch.arange(kh, dtype=torch.float64) * dh - (kh - 1) * dh / 2).abs()
    cb = (torch.arange(kw, dtype=torch.float64) * dw - (kw - 1) * dw / 2).abs()
    spread = scalar_up(
        float(up((taps * (ca[:, None] + cb[None, :])).sum() * inflate(kh * kw))) * math.pi / size
    )
    on_grid = scalar_up(grid_max + float(coefficient_error))
    triangle = float(up(taps.sum() * inflate(kh * kw)))
    return min(scalar_up(on_grid + spread), triangle)
