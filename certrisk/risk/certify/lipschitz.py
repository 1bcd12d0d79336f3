"""A verified upper bound on the l2 Lipschitz constant of a network's logits, and margin
certificates that hold for the model as executed.

The network's constant is bounded by the product of per-layer l2 operator-norm bounds (ReLU,
Flatten, Identity and eval-mode Dropout are 1-Lipschitz), each proved, never estimated
(``spectral``; power iteration converges from below and an SVD only estimates):

- Linear: the spectral norm, verified by a Cholesky certificate above the SVD estimate.
- Conv2d (zero padding, any stride, dilation, groups): the supremum over the torus of the
  per-frequency matrix norms, on a ``FREQ_GRID`` x ``FREQ_GRID`` grid plus the bound of the
  variation between grid points (``spectral.conv_norm_bound``).
- AvgPool2d: Schur's test, ``sqrt(max column sum * max row sum)`` of the averaging matrix.
- MaxPool2d: ``sqrt(c)`` where c bounds the number of windows holding one input.
- BatchNorm (eval): ``max |gamma / sqrt(var + eps)|``, rounded outward.

Products and closed forms are rounded up. Nothing here reads or writes files: constants are
memoised through an injected cache (``get_or_compute(kind, key, compute)``, e.g. the operators'
ArtifactCache), by default an in-memory dict, keyed by ``ALGORITHM``, ``FREQ_GRID`` and a sha256
of every layer's type, settings, weights and buffers.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from certrisk.risk.certify.batch import CertificateBatch, DeterministicRun
from certrisk.risk.certify.bounds import cpu_peak, margin_bounds
from certrisk.risk.certify.linear_maps import AffineMap, linear_maps
from certrisk.risk.certify.network import sequential_layers
from certrisk.risk.certify.rounding import U64, down, execution_for, inflate, scalar_up, up
from certrisk.risk.certify.spectral import conv_norm_bound, matrix_norm_bound
from certrisk.risk.certify.stats import round_down
from certrisk.schemas.enums import Method, Norm
from certrisk.schemas.errors import InputError

FREQ_GRID = 128
#: Version of the constants' algorithm; part of every cache key (bump it when the math changes).
ALGORITHM = "lipschitz-layer-constants/2 (Cholesky-verified spectral norms, Fourier grid + spread)"
CACHE_KIND = "lipschitz"


class MemoryCache:
    """The default constant cache: a dict in memory, keyed by the canonical form of the key."""

    def __init__(self):
        self._values: dict[str, np.ndarray] = {}

    def get_or_compute(self, kind: str, key: dict, compute: Callable[[], np.ndarray]) -> np.ndarray:
        name = kind + ":" + repr(sorted(key.items()))
        if name not in self._values:
            self._values[name] = np.array(compute(), dtype=np.float64)
        return self._values[name].copy()


_DEFAULT_CACHE = MemoryCache()


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _pool_count(kernel, stride, dilation) -> int:
    kh, kw = _pair(kernel)
    sh, sw = _pair(stride if stride is not None else kernel)
    dh, dw = _pair(dilation)
    ch = -(-kh // sh) if dh == 1 else kh
    cw = -(-kw // sw) if dw == 1 else kw
    return ch * cw


def _avgpool_constant(layer: nn.AvgPool2d) -> float:
    kh, kw = _pair(layer.kernel_size)
    count = _pool_count(layer.kernel_size, layer.stride, 1)
    if layer.divisor_override:
        weight = 1.0 / layer.divisor_override
    elif (_pair(layer.padding) == (0, 0) or layer.count_include_pad) and not layer.ceil_mode:
        weight = 1.0 / (kh * kw)
    else:
        weight = 1.0
    return scalar_up(math.sqrt(scalar_up(count * weight * weight * kh * kw)))


def _batchnorm_constant(layer: nn.Module) -> float:
    var = layer.running_var.detach().to("cpu", torch.float64)
    scale = down(down(var + float(layer.eps)).sqrt())
    num = (
        torch.ones_like(var) if layer.weight is None else layer.weight.detach().to("cpu", torch.float64).abs()
    )
    return float(up(num / scale).max())


def layer_constant(layer: nn.Module) -> float:
    """Verified upper bound on one layer's l2 Lipschitz constant (see the module docstring)."""
    if isinstance(layer, (nn.ReLU, nn.Flatten, nn.Identity, nn.Dropout)):
        return 1.0
    if isinstance(layer, nn.Linear):
        return matrix_norm_bound(layer.weight.detach().to("cpu", torch.float64))
    if isinstance(layer, nn.Conv2d):
        return conv_norm_bound(layer.weight, layer.groups, layer.dilation, FREQ_GRID)
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return _batchnorm_constant(layer)
    if isinstance(layer, nn.AvgPool2d):
        return _avgpool_constant(layer)
    if isinstance(layer, nn.MaxPool2d):
        return scalar_up(math.sqrt(_pool_count(layer.kernel_size, layer.stride, layer.dilation)))
    raise InputError(f"no Lipschitz bound for {type(layer).__name__}")


def model_hash(layers) -> str:
    """sha256 over each layer's type and settings (its repr) and its weights and buffers."""
    h = hashlib.sha256()
    for layer in layers:
        h.update(repr(layer).encode())
        for name, t in layer.state_dict().items():
            arr = t.detach().to("cpu").contiguous()
            if arr.dtype == torch.bfloat16:
                arr = arr.float()
            h.update(f"{name}:{arr.dtype}:{tuple(arr.shape)}".encode())
            h.update(arr.numpy().tobytes())
    return h.hexdigest()


def cache_key(layers) -> dict:
    """Everything the per-layer constants depend on: algorithm version, grid, layers and weights."""
    return {
        "algorithm": ALGORITHM,
        "freq_grid": FREQ_GRID,
        "layers": len(layers),
        "weights_sha256": model_hash(layers),
    }


def layer_constants(model, cache=None) -> list[float]:
    """Per-layer Lipschitz bounds of an nn.Sequential model, memoised in ``cache`` (see the
    module docstring). A cached value that is not one finite non-negative number per layer
    raises InputError naming the key."""
    layers = sequential_layers(model, "lipschitz_constant")
    key = cache_key(layers)
    store = _DEFAULT_CACHE if cache is None else cache
    values = np.asarray(
        store.get_or_compute(CACHE_KIND, key, lambda: np.array([layer_constant(layer) for layer in layers]))
    )
    if values.shape != (len(layers),) or not np.isfinite(values).all() or (values < 0).any():
        raise InputError(
            f"lipschitz cache entry {key['weights_sha256']} ({key['algorithm']}) holds {values.shape} values, "
            f"expected {len(layers)} finite non-negative layer constants"
        )
    return [float(v) for v in values]


def _product(values) -> float:
    out = 1.0
    for v in values:
        out = scalar_up(out * v)
    return out


def lipschitz_constant(model, cache=None) -> float:
    """Verified upper bound on the l2 Lipschitz constant of the logits of the exact network:
    ``||f(x) - f(x')||_2 <= L ||x - x'||_2``.

    model : nn.Sequential of the layers listed in the module docstring (InputError naming any
    other). cache : see ``layer_constants``.
    """
    return _product(layer_constants(model, cache))


def _scales(ops, consts, n_body: int, y: torch.Tensor, k: int) -> torch.Tensor:
    """Upper bounds of the Lipschitz constant of each margin ``z_y - z_j``, shape (B, K)."""
    head = ops[-1] if isinstance(ops[-1], AffineMap) and ops[-1].kind == "linear" else None
    if head is None:
        full = scalar_up(math.sqrt(2.0) * scalar_up(_product(consts)))
        return torch.full((y.shape[0], k), full, dtype=torch.float64, device=y.device)
    w = head.weight
    d = w[y][:, None, :] - w[None, :, :]
    norms = up(up((d * d).sum(dim=2) * inflate(2 * w.shape[1])).sqrt())
    return up(norms * scalar_up(_product(consts[:n_body]) * (1.0 + 4 * U64)))


def _radius(exact: torch.Tensor, pen: torch.Tensor, scale: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    num = down(exact - pen).clamp_min(0)
    ratio = torch.where(scale > 0, down(num / scale), torch.full_like(num, float("inf")))
    return ratio.scatter(1, y[:, None], float("inf")).min(dim=1).values


def lipschitz_certify(model, x, *, seed=0, device=None, cache=None) -> CertificateBatch:
    """Certify each input's predicted class y with the global Lipschitz bound, l2 radius.

    When the model ends in a Linear layer (W, b) after a body with Lipschitz bound L_body, the
    exact margin ``m_j(x) = (W_y - W_j) h(x) + b_y - b_j`` is ``||W_y - W_j||_2 L_body``-Lipschitz;
    otherwise ``sqrt(2) L`` bounds the logit differences. The radius is
    ``min_j (m_j_lower(x) - e_j) / L_j`` rounded down, where ``m_j_lower`` is a rigorous float64
    lower bound of the exact margin at x and ``e_j`` bounds the float error of the model's own
    forward pass over the ball (computed over a first, larger radius that contains it), so the
    executed argmax is constant over the ball. For a single Linear layer the radius is the exact
    distance to the nearest pairwise boundary less the forward error.

    x : tensor or array of shape (B, *input_shape). cache : see ``layer_constants``. Returns a
    CertificateBatch with ``alpha`` 0, ``p_lower`` NaN, ``n_used`` 0, ``n_forward`` 2 (two float64
    bound propagations per input); inputs with no room above the forward error abstain;
    ``extra`` holds ``lipschitz_constant`` and ``execution``.
    """
    what = "lipschitz_certify"
    run = DeterministicRun.begin(model, x, seed=seed, device=device, what=what)
    xt, dev = run.x, run.device
    consts = layer_constants(model, cache)
    n_body = len(run.layers) - 1
    while n_body >= 0 and isinstance(run.layers[n_body], (nn.Identity, nn.Dropout)):
        n_body -= 1
    ops = linear_maps(run.layers, tuple(xt.shape[1:]), dev)
    exe = execution_for(run.dtype, dev)
    b = xt.shape[0]
    with torch.inference_mode():
        y = run.model(xt).argmax(1)
        x64 = xt.double()
        zero = torch.zeros(b, dtype=torch.float64, device=dev)
        exact, pen = margin_bounds(ops, x64, y, zero, Norm.L2, exe)
        scale = _scales(ops, consts, n_body, y, exact.shape[1])
        first = _radius(exact, pen, scale, y)
        first = torch.where(torch.isfinite(first), first, torch.zeros_like(first))
        _, pen_ball = margin_bounds(ops, x64, y, first, Norm.L2, exe)
        radius = torch.minimum(_radius(exact, pen_ball, scale, y), first).cpu().numpy()
    radius = round_down(radius)
    ok = np.isfinite(radius) & (radius > 0)
    return run.finish(
        method=Method.LIPSCHITZ,
        norm=Norm.L2,
        y=y.cpu().numpy(),
        ok=ok,
        radius=np.where(ok, radius, 0.0),
        n_forward=np.full(b, 2, dtype=np.int64),
        cpu_peak=cpu_peak(x64, ops, 4),
        extra={"lipschitz_constant": _product(consts), "execution": {"covers": exe.covers}},
    )
