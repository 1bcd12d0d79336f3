"""Interval bound propagation (Gowal et al. 2018), with an exact l2 first layer and a margin head.

Bounds are computed in float64 on the model's device from float64 copies of the weights. A box
is carried as (centre, radius): an affine map sends it to (W c + b, |W| r), monotone layers
(ReLU, MaxPool) map its corners. For ``norm="l2"`` the input ball is kept exact up to the first
affine layer, whose i-th output lies in ``W_i x + b_i +- eps * ||W_i||_2`` (the dual norm of l2
is l2); after it the bounds are boxes. The guarantee is about the real-valued network whose
weights are the model's; float64 rounding error is far below the float32 model's own.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from certrisk.risk.certify.batch import CertificateBatch, DeterministicRun
from certrisk.risk.certify.inputs import as_batch, check_positive, place
from certrisk.risk.certify.network import sequential_layers, split_last_linear
from certrisk.risk.certify.norms import as_norm
from certrisk.risk.certify.stats import round_down
from certrisk.schemas.enums import Method, Norm
from certrisk.schemas.errors import InputError

#: Relative tolerance of the eps search: the reported radius r satisfies r <= r* and
#: r >= r* / (1 + SEARCH_RTOL), where r* is the largest eps at which IBP certifies the input
#: (IBP is monotone in eps). Inputs with r* below SEARCH_MIN_EPS report abstention.
SEARCH_RTOL = 1e-3
SEARCH_MIN_EPS = 2.0**-40
SEARCH_START_EPS = 2.0**-6


def _per_input(eps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return eps.view(-1, *([1] * (like.ndim - 1)))


class _State:
    """Centre and radius of a box, or (radius None) an exact l2 ball of radius eps around centre."""

    def __init__(self, centre: torch.Tensor, radius: torch.Tensor | None, eps: torch.Tensor):
        self.centre = centre
        self.radius = radius
        self.eps = eps

    def box(self) -> torch.Tensor:
        if self.radius is None:
            self.radius = _per_input(self.eps, self.centre).expand_as(self.centre).clone()
        return self.radius


def _affine_dual(layer: nn.Module, state: _State) -> torch.Tensor:
    """eps * ||row||_2 of each output of an affine layer (exact bound over the l2 ball)."""
    w = layer.weight.double()
    if isinstance(layer, nn.Linear):
        row = w.norm(dim=1)
        return _per_input(state.eps, state.centre[:, :1]) * row
    ones = torch.ones_like(state.centre)
    sq = F.conv2d(ones, w * w, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    return _per_input(state.eps, sq) * sq.clamp_min(0).sqrt()


def _step(layer: nn.Module, state: _State) -> _State:
    c = state.centre
    if isinstance(layer, (nn.Identity, nn.Dropout)):
        return state
    if isinstance(layer, nn.Flatten):
        r = None if state.radius is None else layer(state.radius)
        return _State(layer(c), r, state.eps)
    if isinstance(layer, nn.Linear):
        w = layer.weight.double()
        b = None if layer.bias is None else layer.bias.double()
        centre = F.linear(c, w, b)
        if state.radius is None:
            return _State(centre, _affine_dual(layer, state), state.eps)
        return _State(centre, F.linear(state.radius, w.abs()), state.eps)
    if isinstance(layer, nn.Conv2d):
        w = layer.weight.double()
        b = None if layer.bias is None else layer.bias.double()
        args = (layer.stride, layer.padding, layer.dilation, layer.groups)
        centre = F.conv2d(c, w, b, *args)
        if state.radius is None:
            return _State(centre, _affine_dual(layer, state), state.eps)
        return _State(centre, F.conv2d(state.radius, w.abs(), None, *args), state.eps)
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        scale = (layer.running_var.double() + layer.eps).rsqrt()
        if layer.weight is not None:
            scale = scale * layer.weight.double()
        shift = -layer.running_mean.double() * scale
        if layer.bias is not None:
            shift = shift + layer.bias.double()
        shape = (1, -1) + (1,) * (c.ndim - 2)
        scale, shift = scale.view(shape), shift.view(shape)
        return _State(c * scale + shift, state.box() * scale.abs(), state.eps)
    if isinstance(layer, nn.ReLU):
        r = state.box()
        lo, hi = F.relu(c - r), F.relu(c + r)
        return _State((hi + lo) / 2, (hi - lo) / 2, state.eps)
    if isinstance(layer, nn.AvgPool2d):
        return _State(layer(c), layer(state.box()), state.eps)
    if isinstance(layer, nn.MaxPool2d):
        r = state.box()
        lo, hi = layer(c - r), layer(c + r)
        return _State((hi + lo) / 2, (hi - lo) / 2, state.eps)
    raise InputError(f"interval_bounds: unsupported layer {type(layer).__name__}")


def _propagate(layers, x64: torch.Tensor, eps: torch.Tensor, norm: Norm) -> _State:
    state = _State(x64, None, eps)
    if norm == Norm.LINF:
        state.box()
    elif norm != Norm.L2:
        raise InputError(f"interval_bounds: norm must be 'linf' or 'l2', got {norm.value!r}")
    for layer in layers:
        state = _step(layer, state)
    return state


def _eps_tensor(eps, b: int, dev, what: str) -> torch.Tensor:
    arr = np.asarray(eps, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(b, float(arr))
    if arr.shape != (b,):
        raise InputError(f"{what}: eps must be a number or an array of shape ({b},), got shape {arr.shape}")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise InputError(f"{what}: eps must be finite and >= 0")
    return torch.as_tensor(arr, dtype=torch.float64, device=dev)


def interval_bounds(model, x, eps, norm: Norm | str = "linf") -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds on the logits over the lp ball of radius eps around each input.

    Parameters
    ----------
    model : nn.Sequential of Linear, Conv2d, ReLU, Flatten, BatchNorm1d/2d (eval), AvgPool2d,
        MaxPool2d, Identity, Dropout (eval); other layers raise InputError naming them
    x : tensor or array of shape (B, *input_shape)
    eps : radius (>= 0), a number or an array of shape (B,)
    norm : "linf" or "l2" (l2 exact at the first affine layer, boxes after it)

    Returns
    -------
    (lower, upper): float64 tensors of shape (B, K) on the model's device; every logit of every
    point of the ball lies between them.
    """
    what = "interval_bounds"
    nrm = as_norm(norm)
    sequential_layers(model, what)
    model, dev = place(model, None)
    xt = as_batch(x, what=what, device=dev, dtype=torch.float64)
    layers = sequential_layers(model, what)
    e = _eps_tensor(eps, xt.shape[0], dev, what)
    with torch.inference_mode():
        state = _propagate(layers, xt, e, nrm)
        r = state.box()
        return state.centre - r, state.centre + r


def _margin_lower(layers, x64: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Lower bound of min_{j != y} (z_y - z_j) over the ball, shape (B,).

    When the model ends in a Linear (W, b), the differences are bounded through it directly:
    (W_y - W_j) h + (b_y - b_j) over the box (or ball) of h, which is tighter than lower_y - upper_j.
    """
    body, last = split_last_linear(layers)
    if last is None:
        state = _propagate(layers, x64, eps, norm)
        r = state.box()
        lower, upper = state.centre - r, state.centre + r
        margin = lower.gather(1, y[:, None]) - upper
    else:
        state = _propagate(body, x64, eps, norm)
        w = last.weight.double()
        b = (
            last.bias.double()
            if last.bias is not None
            else torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
        )
        diff_w = w[y][:, None, :] - w[None, :, :]  # (B, K, h)
        diff_b = b[y][:, None] - b[None, :]  # (B, K)
        centre = state.centre.flatten(1)
        margin = torch.einsum("bkh,bh->bk", diff_w, centre) + diff_b
        if state.radius is None:
            margin = margin - eps[:, None] * diff_w.norm(dim=2)
        else:
            margin = margin - torch.einsum("bkh,bh->bk", diff_w.abs(), state.radius.flatten(1))
    margin = margin.scatter(1, y[:, None], float("inf"))
    return margin.min(dim=1).values


def ibp_certify(
    model, x, eps: float | None = None, norm: Norm | str = "linf", *, seed=0, device=None
) -> CertificateBatch:
    """Certify each input's predicted class with interval bounds.

    The predicted class y is the model's argmax on x. An input is certified at eps when the lower
    bound of z_y - z_j over the ball is positive for every j != y (margin form, see
    ``_margin_lower``); otherwise it abstains (prediction -1, radius 0).

    eps given: radius = eps for certified inputs. eps None: the radius is the largest eps found by
    search at which the input is certified: doubling/halving from 2^-6 to bracket it, then
    bisection until hi - lo <= SEARCH_RTOL * hi; the radius is the largest eps actually verified,
    rounded down, so it never exceeds what IBP certifies (IBP bounds grow with eps).

    x : tensor or array of shape (B, *input_shape). ``seed`` is recorded only (IBP is deterministic).
    Returns a CertificateBatch with ``alpha`` 0 (deterministic), ``p_lower`` NaN, ``n_used`` 0 and
    ``n_forward`` the bound propagations spent per input (1 with eps given), plus one plain forward.
    """
    what = "ibp_certify"
    nrm = as_norm(norm)
    if nrm not in (Norm.LINF, Norm.L2):
        raise InputError(f"{what}: norm must be 'linf' or 'l2', got {nrm.value!r}")
    if eps is not None:
        check_positive(eps, "eps", what)
    run = DeterministicRun.begin(model, x, seed=seed, device=device, what=what)
    model, dev, layers, xt = run.model, run.device, run.layers, run.x
    b = xt.shape[0]
    with torch.inference_mode():
        y = model(xt).argmax(1)
        x64 = xt.double()
        if eps is not None:
            e = torch.full((b,), float(eps), dtype=torch.float64, device=dev)
            ok = (_margin_lower(layers, x64, y, e, nrm) > 0).cpu().numpy()
            radius = np.where(ok, round_down(np.full(b, float(eps))), 0.0)
            spent = np.ones(b, dtype=np.int64)
        else:
            radius, spent = _search(layers, x64, y, nrm)
            ok = radius > 0
    return run.finish(
        method=Method.IBP,
        norm=nrm,
        y=y.cpu().numpy(),
        ok=ok,
        radius=radius,
        n_forward=spent + 1,
        cpu_peak=_cpu_peak(x64, layers),
        eps=float(eps) if eps is not None else float("nan"),
        extra={"search_rtol": SEARCH_RTOL} if eps is None else {},
    )


def _search(layers, x64: torch.Tensor, y: torch.Tensor, norm: Norm) -> tuple[np.ndarray, np.ndarray]:
    b = x64.shape[0]
    lo = np.zeros(b)
    hi = np.full(b, np.inf)
    trial = np.full(b, SEARCH_START_EPS)
    spent = np.zeros(b, dtype=np.int64)
    open_ = np.ones(b, dtype=bool)
    dev = x64.device
    for _ in range(200):
        idx = np.flatnonzero(open_)
        if idx.size == 0:
            break
        sel = torch.as_tensor(idx, device=dev)
        e = torch.as_tensor(trial[idx], dtype=torch.float64, device=dev)
        ok = (_margin_lower(layers, x64[sel], y[sel], e, norm) > 0).cpu().numpy()
        spent[idx] += 1
        lo[idx] = np.where(ok, trial[idx], lo[idx])
        hi[idx] = np.where(ok, hi[idx], trial[idx])
        bracketed = (lo > 0) & np.isfinite(hi)
        done = bracketed & (hi - lo <= SEARCH_RTOL * hi)
        give_up = (lo == 0) & (hi < SEARCH_MIN_EPS)
        too_big = np.isinf(hi) & (lo > 2.0**40)
        open_ &= ~(done | give_up | too_big)
        trial = np.where(np.isinf(hi), lo * 2.0, np.where(lo == 0, hi / 2.0, (lo + hi) / 2.0))
    return round_down(lo), spent


def _cpu_peak(x64: torch.Tensor, layers) -> tuple[int, str]:
    dev = x64.device
    params = sum(p.numel() for layer in layers for p in layer.parameters()) * 8
    state = _State(x64[:1], torch.zeros_like(x64[:1]), torch.zeros(1, dtype=torch.float64, device=dev))
    largest = state.centre.numel()
    with torch.inference_mode():
        for layer in layers:
            state = _step(layer, state)
            largest = max(largest, state.centre.numel())
    # centre, radius and two temporaries of the widest layer, float64, for the whole batch
    return int(
        params + 4 * largest * x64.shape[0] * 8
    ), "estimate (4 float64 tensors of the widest layer + weights)"
