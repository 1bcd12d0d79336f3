"""A sound upper bound on the l2 Lipschitz constant of a network's logits, and margin certificates.

The network's constant is bounded by the product of per-layer l2 operator-norm bounds (ReLU,
Flatten, Identity and eval-mode Dropout are 1-Lipschitz):

- Linear: the exact spectral norm (float64 SVD).
- Conv2d (zero padding, any stride, dilation, groups): a zero-padded convolution of an n x n
  input is a crop of a circular convolution on a grid large enough to avoid wrap-around, whose
  operator norm is ``max_w ||K^(w)||_2`` over the grid's frequencies w, where
  ``K^(w) = sum_ab K[:, :, a, b] e^{-i w.(a, b)}`` (Sedghi et al. 2019); striding subsamples the
  output. So ``sup_w ||K^(w)||_2`` over the whole torus bounds every input size. It is evaluated on
  a G x G grid (``FREQ_GRID``) and made sound for the points between grid frequencies by the
  perturbation bound ``||K^(w) - K^(w_g)||_2 <= sum_ab ||K_ab||_2 (|a'| + |b'|) pi / G`` (centred
  offsets a', b'), which is added to the grid maximum. Power iteration is not used: it converges
  from below.
- AvgPool2d: Schur's test, ``sqrt(max column sum * max row sum)`` of the averaging matrix.
- MaxPool2d: ``sqrt(c)`` where c bounds the number of windows holding one input.
- BatchNorm (eval): ``max |gamma / sqrt(var + eps)|``.

Every factor is inflated by a relative 1e-9 against float error. Constants are cached by a hash of
the layers' types, settings and weights, in memory and under ``cache_dir()/lipschitz``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import tempfile
import warnings

import numpy as np
import torch
from torch import nn

from certrisk.risk.certify.batch import CertificateBatch, DeterministicRun
from certrisk.risk.certify.network import sequential_layers, split_last_linear
from certrisk.risk.certify.stats import round_down
from certrisk.schemas.enums import Method, Norm
from certrisk.schemas.settings import cache_dir

FREQ_GRID = 128
_INFLATE = 1.0 + 1e-9
_memory_cache: dict[str, list[float]] = {}


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_norm_bound(weight: torch.Tensor, groups: int = 1, dilation=(1, 1), grid: int = FREQ_GRID) -> float:
    """Upper bound on the l2 operator norm of a 2-d convolution with this kernel, any input size.

    weight : tensor of shape (c_out, c_in / groups, kh, kw). See the module docstring.
    """
    w = weight.detach().to("cpu", torch.float64)
    c_out, c_in_g, kh, kw = w.shape
    if groups > 1:
        full = torch.zeros(c_out, c_in_g * groups, kh, kw, dtype=torch.float64)
        per = c_out // groups
        for g in range(groups):
            full[g * per : (g + 1) * per, g * c_in_g : (g + 1) * c_in_g] = w[g * per : (g + 1) * per]
        w = full
    dh, dw = _pair(dilation)
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    size = max(
        grid * max(dh, dw), eh, ew
    )  # finer grid for dilated kernels: the spread term grows with offsets
    padded = torch.zeros(w.shape[0], w.shape[1], size, size, dtype=torch.float64)
    padded[:, :, 0:eh:dh, 0:ew:dw] = w
    spectrum = torch.fft.fft2(padded)  # (c_out, c_in, G, G)
    mats = spectrum.permute(2, 3, 0, 1)  # (G, G, c_out, c_in)
    grid_max = float(torch.linalg.matrix_norm(mats, ord=2).max())
    taps = torch.linalg.matrix_norm(w.permute(2, 3, 0, 1), ord=2)  # (kh, kw)
    a = (torch.arange(kh, dtype=torch.float64) * dh - (kh - 1) * dh / 2).abs()
    b = (torch.arange(kw, dtype=torch.float64) * dw - (kw - 1) * dw / 2).abs()
    spread = float((taps * (a[:, None] + b[None, :])).sum()) * math.pi / size
    # Never worse than the triangle inequality bound sum_ab ||K_ab||_2.
    return min(grid_max + spread, float(taps.sum())) * _INFLATE


def _pool_count(kernel, stride, dilation) -> int:
    kh, kw = _pair(kernel)
    sh, sw = _pair(stride if stride is not None else kernel)
    dh, dw = _pair(dilation)
    ch = -(-kh // sh) if dh == 1 else kh
    cw = -(-kw // sw) if dw == 1 else kw
    return ch * cw


def layer_constant(layer: nn.Module) -> float:
    """Upper bound on one layer's l2 Lipschitz constant (see the module docstring)."""
    if isinstance(layer, (nn.ReLU, nn.Flatten, nn.Identity, nn.Dropout)):
        return 1.0
    if isinstance(layer, nn.Linear):
        return (
            float(torch.linalg.matrix_norm(layer.weight.detach().to("cpu", torch.float64), ord=2)) * _INFLATE
        )
    if isinstance(layer, nn.Conv2d):
        return conv_norm_bound(layer.weight, layer.groups, layer.dilation)
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        scale = (layer.running_var.detach().double() + layer.eps).rsqrt()
        if layer.weight is not None:
            scale = scale * layer.weight.detach().double()
        return float(scale.abs().max()) * _INFLATE
    if isinstance(layer, nn.AvgPool2d):
        kh, kw = _pair(layer.kernel_size)
        count = _pool_count(layer.kernel_size, layer.stride, 1)
        if layer.divisor_override:
            weight = 1.0 / layer.divisor_override
        elif (_pair(layer.padding) == (0, 0) or layer.count_include_pad) and not layer.ceil_mode:
            weight = 1.0 / (kh * kw)
        else:
            weight = 1.0
        row_sum = weight * kh * kw
        return math.sqrt(count * weight * row_sum) * _INFLATE
    if isinstance(layer, nn.MaxPool2d):
        return math.sqrt(_pool_count(layer.kernel_size, layer.stride, layer.dilation)) * _INFLATE
    raise TypeError(f"no Lipschitz bound for {type(layer).__name__}")


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


def _cache_path(key: str):
    return cache_dir() / "lipschitz" / f"{key}.json"


def layer_constants(model) -> list[float]:
    """Per-layer Lipschitz bounds of an nn.Sequential model (cached by model hash)."""
    layers = sequential_layers(model, "lipschitz_constant")
    key = model_hash(layers)
    if key in _memory_cache:
        return list(_memory_cache[key])
    path = _cache_path(key)
    try:
        consts = json.loads(path.read_text())["layer_constants"]
        if len(consts) == len(layers):
            _memory_cache[key] = consts
            return list(consts)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    consts = [layer_constant(layer) for layer in layers]
    _memory_cache[key] = consts
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump({"model_hash": key, "layer_constants": consts, "freq_grid": FREQ_GRID}, fh)
        os.replace(tmp, path)
    except OSError as exc:
        warnings.warn(f"lipschitz cache not written to {path}: {exc}", stacklevel=2)
    return list(consts)


def _product(values) -> float:
    out = 1.0
    for v in values:
        out *= v
    return out * _INFLATE


def lipschitz_constant(model) -> float:
    """Sound upper bound on the l2 Lipschitz constant of the logits: ``||f(x) - f(x')||_2 <= L ||x - x'||_2``.

    model : nn.Sequential of the layers listed in the module docstring (InputError naming any
    other). Cached by a hash of the layers and weights.
    """
    return _product(layer_constants(model))


def lipschitz_certify(model, x, *, seed=0, device=None) -> CertificateBatch:
    """Certify each input's predicted class y with the global Lipschitz bound, l2 radius.

    When the model ends in a Linear layer (W, b) after a body with Lipschitz bound L_body, the
    margin ``m_j(x) = (W_y - W_j) h(x) + b_y - b_j`` is ``||W_y - W_j||_2 L_body``-Lipschitz, so
    no class change exists within ``min_j m_j(x) / (||W_y - W_j||_2 L_body)``; otherwise the bound
    ``sqrt(2) L`` on the logit differences is used. Margins are computed in float64 from float64
    copies of the layers, and the radius is rounded down, so it never exceeds the distance to the
    decision boundary. For a single Linear layer it is the exact distance to the nearest pairwise
    boundary (for two classes: the exact distance to the boundary).

    x : tensor or array of shape (B, *input_shape). Returns a CertificateBatch with ``alpha`` 0,
    ``p_lower`` NaN, ``n_used`` 0, ``n_forward`` 1 (one float64 forward pass per input); inputs
    with no positive margin abstain.
    """
    what = "lipschitz_certify"
    run = DeterministicRun.begin(model, x, seed=seed, device=device, what=what)
    model, dev, layers, xt = run.model, run.device, run.layers, run.x
    bsz = xt.shape[0]
    consts = layer_constants(model)
    body, last = split_last_linear(layers)
    with torch.inference_mode():
        y = model(xt).argmax(1)
        h = xt.double()
        width = h[0].numel()
        for layer in body if last is not None else layers:
            h = _float64_layer(layer)(h)
            width = max(width, h[0].numel())
        if last is not None:
            w = last.weight.detach().double()
            b = (
                last.bias.detach().double()
                if last.bias is not None
                else torch.zeros(w.shape[0], dtype=torch.float64, device=dev)
            )
            logits = torch.nn.functional.linear(h.flatten(1), w, b)
            diff_norm = (w[y][:, None, :] - w[None, :, :]).norm(dim=2)  # (B, K)
            scale = diff_norm * _product(consts[: len(body)])
        else:
            logits = h
            scale = torch.full_like(logits, math.sqrt(2.0) * _product(consts))
        margin = logits.gather(1, y[:, None]) - logits
        ratio = torch.where(scale > 0, margin / scale, torch.full_like(margin, float("inf")))
        ratio = ratio.scatter(1, y[:, None], float("inf"))
        radius = round_down(ratio.min(dim=1).values.cpu().numpy())
    ok = np.isfinite(radius) & (radius > 0)
    params = sum(p.numel() for layer in layers for p in layer.parameters()) * 8
    return run.finish(
        method=Method.LIPSCHITZ,
        norm=Norm.L2,
        y=y.cpu().numpy(),
        ok=ok,
        radius=radius,
        n_forward=np.ones(bsz, dtype=np.int64),
        cpu_peak=(
            int(params + 3 * width * bsz * 8),
            "estimate (3 float64 activations of the widest layer + weights)",
        ),
        extra={"lipschitz_constant": _product(consts)},
    )


def _float64_layer(layer: nn.Module) -> nn.Module:
    """A float64 copy of a layer (the model itself is left untouched)."""
    if not any(True for _ in layer.parameters()) and not any(True for _ in layer.buffers()):
        return layer
    return copy.deepcopy(layer).double()
