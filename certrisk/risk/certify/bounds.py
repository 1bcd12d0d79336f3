"""Interval bound propagation (Gowal et al. 2018) that holds for the model as executed.

Bounds are propagated in float64 with outward rounding (``rounding``): every elementwise result
is stepped toward -inf or +inf, and every sum or matrix product carries the a-priori bound of its
own float error. Each layer's box ``[lo, hi]`` holds the exact (real-arithmetic) network's values
over the input ball, and ``err`` bounds how far the model's own forward pass in its dtype can be
from them (``Execution``: the dot-product error bound ``gamma_n (|W| |x| + |b|)`` per layer,
propagated through the next layers; ReLU and max pooling are exact). For ``norm="l2"`` the ball
is kept exact up to the first Linear/Conv2d, whose i-th output lies in
``W_i x + b_i +- eps ||W_i||_2``; after it the bounds are boxes.

A certificate needs the executed argmax constant over the ball: the lower bound of the exact
margin ``z_y - z_j`` minus the bound of the executed logits' float error must be > 0 for every
j != y (a tie is a change: ``argmax`` picks the first index). The guarantee covers inputs given in
the model's dtype inside the ball (``Execution.covers`` says which arithmetic).
"""

from __future__ import annotations

import numpy as np
import torch

from certrisk.risk.certify.batch import CertificateBatch, DeterministicRun
from certrisk.risk.certify.inputs import as_batch, check_positive, model_dtype, place
from certrisk.risk.certify.linear_maps import AffineMap, MaxPool, Relu, Reshape, linear_maps
from certrisk.risk.certify.network import sequential_layers
from certrisk.risk.certify.norms import as_norm
from certrisk.risk.certify.rounding import (
    U64,
    Execution,
    centre_radius,
    down,
    execution_for,
    gamma,
    inflate,
    scalar_up,
    up,
)
from certrisk.risk.certify.search import SEARCH_RTOL, eps_tensor, largest_certified
from certrisk.risk.certify.stats import round_down
from certrisk.schemas.enums import Method, Norm
from certrisk.schemas.errors import InputError

__all__ = ["SEARCH_RTOL", "Box", "ibp_certify", "ibp_step", "interval_bounds", "margin_bounds", "start_box"]


def _per_input(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


class Box:
    """Bounds of one layer's values over the input ball, each of shape (B, *shape), float64.

    ``[lo, hi]`` holds the exact network's values; ``err`` (None when no execution is modelled)
    bounds ``|executed - exact|`` elementwise. ``ball`` (shape (B,)) marks an l2 ball of that
    radius around ``lo`` (= ``hi``) not yet through an affine map.
    """

    def __init__(self, lo, hi, err=None, ball=None):
        self.lo, self.hi, self.err, self.ball = lo, hi, err, ball

    def as_box(self) -> Box:
        if self.ball is None:
            return self
        e = _per_input(self.ball, self.lo)
        return Box(down(self.lo - e), up(self.hi + e), self.err)

    def merged(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lower, upper) holding both the exact and the executed values."""
        box = self.as_box()
        if box.err is None:
            return box.lo, box.hi
        return down(box.lo - box.err), up(box.hi + box.err)

    def magnitude(self) -> torch.Tensor:
        """Upper bound of ``|value|`` (exact or executed)."""
        lo, hi = self.merged()
        return torch.maximum(lo.abs(), hi.abs())


def start_box(x64: torch.Tensor, eps: torch.Tensor, norm: Norm, exe: Execution | None) -> Box:
    """The input ball: a box for linf, an exact ball for l2; inputs are exact (err 0)."""
    err = None if exe is None else torch.zeros_like(x64)
    if norm == Norm.L2:
        return Box(x64, x64, err, eps)
    if norm != Norm.LINF:
        raise InputError(f"interval bounds: norm must be 'linf' or 'l2', got {norm.value!r}")
    e = _per_input(eps, x64)
    return Box(down(x64 - e), up(x64 + e), err)


def _affine(op: AffineMap, box: Box, exe: Execution | None) -> Box:
    ball = box.ball is not None and op.kind in ("linear", "conv")
    if not ball:
        box = box.as_box()
    b = box.lo.shape[0]
    k = scalar_up(inflate(op.n_dot) * (1.0 + op.theta) * (1.0 + 4 * U64))
    if ball:
        c = box.lo
        w_r = up(box.ball.view(-1, *([1] * len(op.out_shape))) * op.row_norms())
        w_mag = up(op.forward(c.abs(), absolute=True) * k)
        psi = up(w_mag + w_r)
        w_err = None
    else:
        c, r = centre_radius(box.lo, box.hi)
        mag = up(c.abs() + r) if box.err is None else up(up(c.abs() + r) + box.err)
        parts = [r, mag] + ([] if box.err is None else [box.err])
        out = op.forward(torch.cat(parts), absolute=True).split(b)
        w_r, psi = up(out[0] * k), up(out[1] * k)
        w_err = None if box.err is None else up(out[2] * k)
    if op.psi_const is not None:
        psi = up(psi + op.psi_const)
    centre = op.forward(c)
    if op.bias is not None:
        centre = centre + op.bias
    rad = up(w_r + up(psi * scalar_up(gamma(op.n_dot + 2) + op.theta)))
    err = None
    if exe is not None:
        err = up(up(psi * op.exec_rel(exe)) + op.exec_abs(exe))
        if w_err is not None:
            err = up(err + w_err)
    return Box(down(centre - rad), up(centre + rad), err)


def ibp_step(op, box: Box, exe: Execution | None) -> Box:
    """One layer of interval propagation (see the module docstring)."""
    if isinstance(op, AffineMap):
        return _affine(op, box, exe)
    if isinstance(op, Reshape):
        shape = (-1, *op.out_shape)
        err = None if box.err is None else box.err.reshape(shape)
        return Box(box.lo.reshape(shape), box.hi.reshape(shape), err, box.ball)
    box = box.as_box()
    if isinstance(op, Relu):
        err = None if box.err is None else torch.where(up(box.hi + box.err) <= 0, 0.0, box.err)
        return Box(box.lo.clamp_min(0), box.hi.clamp_min(0), err)
    if isinstance(op, MaxPool):
        err = None if box.err is None else op.layer(box.err)
        return Box(op.layer(box.lo), op.layer(box.hi), err)
    raise InputError(f"interval bounds: no step for {type(op).__name__}")


def _propagate(ops, x64, eps, norm, exe) -> Box:
    box = start_box(x64, eps, norm, exe)
    for op in ops:
        box = ibp_step(op, box, exe)
    return box


def _linear_head(head: AffineMap, box: Box, y: torch.Tensor, exe: Execution | None):
    """Bounds of ``z_y - z_j`` through the last Linear (W, b), tighter than ``lower_y - upper_j``."""
    w = head.weight
    n = w.shape[1]
    bias = (
        head.bias.view(-1)
        if head.bias is not None
        else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    )
    d = w[y][:, None, :] - w[None, :, :]  # (B, K, n)
    k = scalar_up(inflate(n) * (1.0 + 4 * U64))
    if box.ball is not None:
        c = box.lo.flatten(1)
        sq = up((d * d).sum(dim=2) * inflate(2 * n))
        rad = up(box.ball[:, None] * up(sq.sqrt()))
        psi = up(up(c.abs() @ w.abs().T * k) + up(box.ball[:, None] * head.row_norms().view(1, -1)))
        err_term = None
    else:
        c, r = centre_radius(box.lo.flatten(1), box.hi.flatten(1))
        err = None if box.err is None else box.err.flatten(1)
        mag = up(c.abs() + r) if err is None else up(up(c.abs() + r) + err)
        parts = torch.stack([r] + ([] if err is None else [err]), dim=2)  # (B, n, 1 or 2)
        prod = up(torch.bmm(d.abs(), parts) * k)  # (B, K, 1 or 2)
        rad = prod[..., 0]
        err_term = None if err is None else prod[..., 1]
        psi = up(mag @ w.abs().T * k)
    psi = up(psi + bias.abs()[None, :])
    pair = up(psi.gather(1, y[:, None]) + psi)  # (B, K): psi_y + psi_j
    mid = torch.einsum("bkn,bn->bk", d, c) + (bias[y][:, None] - bias[None, :])
    exact = down(mid - up(rad + up(pair * scalar_up(gamma(n + 4) + 2 * U64))))
    pen = torch.zeros_like(exact)
    if exe is not None:
        pen = up(up(pair * head.exec_rel(exe)) + 2 * head.exec_abs(exe))
        if err_term is not None:
            pen = up(pen + err_term)
    return exact, pen


def margin_bounds(ops, x64, y, eps, norm: Norm, exe: Execution | None):
    """Lower bound of the exact margin ``z_y - z_j`` over the ball and the bound of its executed
    float error, each of shape (B, K); column y is +inf and 0.

    The executed margin of every input of the ball (in the model's dtype) is at least
    ``exact - pen``. ``exe`` None: the exact network only (pen 0).
    """
    head = ops[-1] if isinstance(ops[-1], AffineMap) and ops[-1].kind == "linear" else None
    box = _propagate(ops[:-1] if head is not None else ops, x64, eps, norm, exe)
    if head is not None:
        exact, pen = _linear_head(head, box, y, exe)
    else:
        box = box.as_box()
        lo, hi = box.lo.flatten(1), box.hi.flatten(1)
        exact = down(lo.gather(1, y[:, None]) - hi)
        pen = torch.zeros_like(exact)
        if box.err is not None:
            err = box.err.flatten(1)
            pen = up(err.gather(1, y[:, None]) + err)
    col = y[:, None]
    exact = exact.scatter(1, col, float("inf"))
    return exact, pen.scatter(1, col, 0.0)


def certified_margin(ops, x64, y, eps, norm, exe) -> torch.Tensor:
    """``min_j (exact_j - pen_j)`` rounded down, shape (B,): the input is certified when > 0."""
    exact, pen = margin_bounds(ops, x64, y, eps, norm, exe)
    return down(exact - pen).min(dim=1).values


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
    (lower, upper): float64 tensors of shape (B, K) on the model's device. Every logit of every
    point of the ball lies between them, both for the exact network and for the model's forward
    pass in its own dtype on inputs given in that dtype.
    """
    ops, xt, e, nrm, exe = bound_problem(model, x, eps, norm, what="interval_bounds")
    with torch.inference_mode():
        lo, hi = _propagate(ops, xt, e, nrm, exe).merged()
        return lo.flatten(1), hi.flatten(1)


def bound_problem(model, x, eps, norm, *, what: str):
    """What a bound pass over the ball needs, checked once for IBP and CROWN: the layers' float64
    maps, the inputs (float64, on the model's device), the per-input eps, the norm and the
    execution (dtype and device class) the bounds must hold for."""
    nrm = as_norm(norm)
    sequential_layers(model, what)
    model, dev = place(model, None)
    xt = as_batch(x, what=what, device=dev, dtype=torch.float64)
    ops = linear_maps(sequential_layers(model, what), tuple(xt.shape[1:]), dev)
    e = eps_tensor(eps, xt.shape[0], dev, what)
    return ops, xt, e, nrm, execution_for(model_dtype(model), dev)


def ibp_certify(
    model, x, eps: float | None = None, norm: Norm | str = "linf", *, seed=0, device=None
) -> CertificateBatch:
    """Certify each input's predicted class with interval bounds, for the model as executed.

    The predicted class y is the model's argmax on x (in its dtype). An input is certified at eps
    when, for every j != y, the lower bound of the exact margin z_y - z_j over the ball exceeds
    the bound of the forward pass's own float error (see the module docstring); otherwise it
    abstains (prediction -1, radius 0).

    eps given: radius = eps for certified inputs. eps None: the radius is the largest eps found by
    search at which the input is certified (``search.largest_certified``): doubling/halving from
    2^-6 to bracket it, then bisection until hi - lo <= SEARCH_RTOL * hi; the radius is the largest
    eps verified, rounded down.

    x : tensor or array of shape (B, *input_shape). ``seed`` is recorded only (IBP is deterministic).
    Returns a CertificateBatch with ``alpha`` 0, ``p_lower`` NaN, ``n_used`` 0, ``n_forward`` the
    bound propagations spent per input plus one plain forward, and ``extra["execution"]["covers"]`` naming
    the execution the guarantee covers.
    """
    what = "ibp_certify"
    nrm = as_norm(norm)
    if nrm not in (Norm.LINF, Norm.L2):
        raise InputError(f"{what}: norm must be 'linf' or 'l2', got {nrm.value!r}")
    if eps is not None:
        check_positive(eps, "eps", what)
    run = DeterministicRun.begin(model, x, seed=seed, device=device, what=what)
    xt = run.x
    ops = linear_maps(run.layers, tuple(xt.shape[1:]), run.device)
    exe = execution_for(run.dtype, run.device)
    b = xt.shape[0]
    with torch.inference_mode():
        y = run.model(xt).argmax(1)
        x64 = xt.double()

        def certified(idx: np.ndarray, trial: np.ndarray) -> np.ndarray:
            sel = torch.as_tensor(idx, device=run.device)
            e = torch.as_tensor(trial, dtype=torch.float64, device=run.device)
            ok = (certified_margin(ops, x64[sel], y[sel], e, nrm, exe) > 0).cpu().numpy()
            return np.where(ok, trial, 0.0)

        if eps is not None:
            radius = certified(np.arange(b), np.full(b, float(eps)))
            ok = radius > 0
            radius = np.where(ok, round_down(radius), 0.0)
            spent = np.ones(b, dtype=np.int64)
        else:
            radius, spent = largest_certified(certified, b)
            ok = radius > 0
    return run.finish(
        method=Method.IBP,
        norm=nrm,
        y=y.cpu().numpy(),
        ok=ok,
        radius=radius,
        n_forward=spent + 1,
        cpu_peak=cpu_peak(x64, ops, 4),
        eps=float(eps) if eps is not None else float("nan"),
        extra={"execution": {"covers": exe.covers}, **({"search_rtol": SEARCH_RTOL} if eps is None else {})},
    )


def cpu_peak(x64: torch.Tensor, ops, copies: int) -> tuple[int, str]:
    """Estimated peak bytes on CPU: ``copies`` float64 tensors of the widest layer for the batch,
    plus the float64 weights."""
    largest = x64[0].numel()
    params = 0
    for op in ops:
        largest = max(largest, int(np.prod(getattr(op, "out_shape", (1,)))))
        w = getattr(op, "weight", None)
        params += 0 if w is None else w.numel()
    est = int(params * 8 + copies * largest * x64.shape[0] * 8)
    return est, f"estimate ({copies} float64 tensors of the widest layer + weights)"
