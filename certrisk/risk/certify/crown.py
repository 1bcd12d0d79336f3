"""CROWN (Zhang et al. 2018): backward linear relaxation bounds that hold for the model as executed.

A linear specification ``Lambda z`` of the logits (the margins ``z_y - z_j``, or one neuron) is
pushed backward through the network: through an affine layer ``Lambda (W x + b) = (Lambda W) x +
Lambda b``; through a ReLU with pre-activation bounds ``[l, u]`` by its linear relaxation, chosen
per coefficient sign for a lower bound: below by ``s h`` (s = 1 if u > -l else 0, the adaptive
lower slope; exact for stable neurons), above by ``u / (u - l) (h - l)``. At the input the linear
function is minimised over the ball in closed form: ``Lambda_0 x0 - eps ||Lambda_0||_*``.

Pre-activation bounds come from interval propagation (``intermediate="ibp"``: CROWN-IBP, the cheap
option) or from CROWN itself run backward from each ReLU layer for the neurons the intervals leave
unstable, intersected with the intervals (``intermediate="crown"``).

Soundness for the arithmetic that runs (as in ``bounds``): every pre-activation bound holds for the
model's own forward pass (each affine layer may add its float error ``e``,
``|e| <= delta (|W| |x| + |b|) + zeta``, bounded with magnitudes from the intervals), and the
certifier's float64 arithmetic is accounted for: at each affine layer the backward product
``fl(Lambda W)``, the bias sum and the model's error cost at most ``|Lambda| (tau psi + zeta)`` with
``psi >= |W| |x| + |b|``; relaxation slopes are rounded so the lines stay above the ReLU; sums are
rounded outward. The returned margin bound is the larger of CROWN's and IBP's (both are sound).
"""

from __future__ import annotations

import numpy as np
import torch

from certrisk.risk.certify.batch import CertificateBatch, DeterministicRun
from certrisk.risk.certify.bounds import (
    Box,
    bound_problem,
    certified_margin,
    cpu_peak,
    ibp_certify,
    ibp_step,
    start_box,
)
from certrisk.risk.certify.inputs import check_positive
from certrisk.risk.certify.linear_maps import AffineMap, MaxPool, Relu, Reshape, linear_maps
from certrisk.risk.certify.norms import as_norm
from certrisk.risk.certify.rounding import Execution, down, execution_for, gamma, inflate, scalar_up, up
from certrisk.risk.certify.rows import Rows, conv_rows
from certrisk.risk.certify.search import SEARCH_RTOL, largest_certified
from certrisk.risk.certify.stats import round_down
from certrisk.schemas.enums import Method, Norm
from certrisk.schemas.errors import InputError

INTERMEDIATE = ("crown", "ibp")
#: Float64 entries per chunk of backward rows (memory of one chunk ~ 8 bytes x 6 x this).
CHUNK_ENTRIES = 2**22


def _sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over every axis after the first two (rows (Bc, S, ...) to (Bc, S))."""
    return t.flatten(2).sum(dim=2)


def _dot(lam: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``sum(lam * t)`` over every axis after the first two, (Bc, S); t of shape (Bc, 1 or S, ...)
    (no temporary of lam's size)."""
    a, b = lam.flatten(2), t.flatten(2)
    if b.shape[1] == 1 and a.shape[1] != 1:
        return (a @ b.transpose(1, 2))[:, :, 0]
    return torch.einsum("bsn,bsn->bs", a, b)


class CrownPass:
    """One bound evaluation: the maps, inputs (B, *input_shape) float64, radii eps (B,), the
    pre-activation bounds of every ReLU (``pre``, each (B, *shape), holding executed values) and
    the float error slack of every affine layer (``slack``, (B, *out_shape))."""

    def __init__(self, ops, x64: torch.Tensor, eps: torch.Tensor, norm: Norm, exe: Execution | None):
        if any(isinstance(op, MaxPool) for op in ops):
            raise InputError("crown: MaxPool2d is not supported (use ibp, or AvgPool2d)")
        self.ops, self.x64, self.eps, self.norm, self.exe = ops, x64, eps, norm, exe
        self.pre: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.slack: dict[int, torch.Tensor] = {}
        self.relax: dict[int, tuple] = {}
        self.box: Box | None = None

    def prepare(self, intermediate: str) -> CrownPass:
        """Interval propagation through the network, refining each ReLU's pre-activation bounds
        by CROWN when ``intermediate == "crown"``; fills ``pre``, ``slack`` and the logit box."""
        if intermediate not in INTERMEDIATE:
            raise InputError(f"crown: intermediate must be one of {INTERMEDIATE}, got {intermediate!r}")
        box = start_box(self.x64, self.eps, self.norm, self.exe)
        for i, op in enumerate(self.ops):
            if isinstance(op, Relu):
                lo, hi = box.merged()
                source = self._source(i)
                if intermediate == "crown" and source is not None:
                    lo, hi = self._refine(source, lo, hi)
                self.pre[i] = (lo, hi)
                self.relax[i] = torch.cat(relaxation(lo, hi), dim=1)
                box = Box(lo, hi, None if self.exe is None else torch.zeros_like(lo))
            elif isinstance(op, AffineMap):
                self.slack[i] = self._slack(op, box)
            box = ibp_step(op, box, self.exe)
        self.box = box
        return self

    def _slack(self, op: AffineMap, box: Box) -> torch.Tensor:
        """``tau psi + zeta`` per output: the float error of the model's evaluation of this layer,
        of the backward product, of the bias sum and of the float64 weights (see module doc)."""
        k = scalar_up(inflate(op.n_dot) * (1.0 + op.theta))
        psi = up(op.forward(box.magnitude(), absolute=True) * k)
        if op.psi_const is not None:
            psi = up(psi + op.psi_const)
        rel = 0.0 if self.exe is None else op.exec_rel(self.exe)
        absolute = 0.0 if self.exe is None else op.exec_abs(self.exe)
        tau = scalar_up(rel + op.theta + gamma(max(op.n_back, op.n_out) + 4))
        return up(up(psi * tau) + absolute)

    def _source(self, i: int) -> int | None:
        """Index of the affine layer whose output feeds ReLU i through reshapes only; None when
        there is none or it is the first affine layer (whose interval bounds are already exact)."""
        j = i - 1
        while j >= 0 and isinstance(self.ops[j], Reshape):
            j -= 1
        if j < 0 or not isinstance(self.ops[j], AffineMap):
            return None
        if all(isinstance(op, Reshape) for op in self.ops[:j]):
            return None
        return j

    def _refine(self, t: int, lo: torch.Tensor, hi: torch.Tensor):
        """CROWN bounds of the unstable outputs of affine layer t, intersected with [lo, hi]."""
        shape = lo.shape[1:]
        lo, hi = lo.flatten(1).clone(), hi.flatten(1).clone()
        unstable = (lo < 0) & (hi > 0)
        counts = unstable.sum(dim=1)
        width = max(int(np.prod(getattr(op, "in_shape", (1,)))) for op in self.ops[: t + 1])
        if self.ops[t].kind == "conv":  # windows: about the kernel's support, growing backward
            width = min(width, 4 * int(np.prod(self.ops[t].weight.shape[1:])) * self.ops[t].params["groups"])
        per = max(1, CHUNK_ENTRIES // (2 * max(int(counts.max()), 1) * width))
        for start in range(0, lo.shape[0], per):
            stop = min(lo.shape[0], start + per)
            m = int(counts[start:stop].max())
            if m > 0:
                self._refine_chunk(t, start, stop, m, unstable[start:stop], lo, hi)
        return lo.view(-1, *shape), hi.view(-1, *shape)

    def _refine_chunk(self, t, start, stop, m, unstable, lo, hi) -> None:
        sel = torch.arange(start, stop, device=lo.device)
        order = torch.sort(unstable.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :m]
        valid = unstable.gather(1, order).to(torch.float64)
        idx = torch.cat([order, order], dim=1)
        sign = torch.cat([valid, -valid], dim=1)
        lower = self.lower(self._rows(t, sel, idx, sign))
        new_lo, new_hi = lower[:, :m], -lower[:, m:]
        ok = valid > 0
        cur_lo, cur_hi = lo[sel].gather(1, order), hi[sel].gather(1, order)
        lo[sel[:, None], order] = torch.where(ok, torch.maximum(cur_lo, new_lo), cur_lo)
        hi[sel[:, None], order] = torch.where(ok, torch.minimum(cur_hi, new_hi), cur_hi)

    def _rows(self, t: int, sel, idx: torch.Tensor, sign: torch.Tensor):
        """The backward state after affine layer t for the specifications ``sign * e_idx``."""
        op = self.ops[t]
        bc, s = idx.shape
        if op.kind == "conv":
            rows = conv_rows(op, sel, idx, sign)
        else:
            lam = op.rows(idx.flatten()).view(bc, s, *op.in_shape)
            rows = Rows(lam * sign.view(bc, s, *([1] * len(op.in_shape))), sel, op.in_shape)
        pen = self.slack[t][sel].flatten(1).gather(1, idx) * sign.abs()
        acc = torch.zeros_like(pen)
        if op.bias is not None:
            acc = sign * op.bias.expand(1, *op.out_shape).flatten(1)[0][idx]
        return t - 1, rows, acc, pen

    def spec(self, sel: torch.Tensor, lam: torch.Tensor):
        """The backward state for specifications lam (Bc, S, *logit_shape) on the network's output."""
        zeros = torch.zeros(lam.shape[:2], dtype=torch.float64, device=lam.device)
        return len(self.ops) - 1, Rows(lam, sel, lam.shape[2:]), zeros, zeros.clone()

    def lower(self, state) -> torch.Tensor:
        """Lower bounds (Bc, S) of the specifications at this pass's eps."""
        a, dual = self.linear(state)
        return down(a - up(self.eps[state[1].sel][:, None] * dual))

    def linear(self, state) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, dual), each (Bc, S): for every radius e <= eps, the specification is at least
        ``A - e * dual`` over the ball of radius e (the relaxations stay valid on smaller balls)."""
        i, rows, acc, pen = state
        while i >= 0:
            op = self.ops[i]
            if isinstance(op, AffineMap):
                rows, acc, pen = self._affine(i, op, rows, acc, pen)
            elif isinstance(op, Relu):
                rows, acc, pen = self._relu(i, rows, acc, pen)
            else:
                rows = rows.reshape(op.in_shape)
            i -= 1
        return self._concretize(rows, acc, pen)

    def _affine(self, i, op: AffineMap, rows: Rows, acc, pen):
        lam = rows.lam
        pen = up(pen + up(_dot(lam.abs(), rows.align(self.slack[i])) * inflate(op.n_out)))
        if op.bias is not None:
            acc = down(acc + _sum(lam * op.bias.unsqueeze(0)))
        return rows.backward(op), acc, pen

    def _relu(self, i, rows: Rows, acc, pen):
        s_low, slope, intercept, hmax = rows.align(self.relax[i]).chunk(4, dim=2)
        lam = rows.lam
        pos = lam.clamp(min=0)
        neg = lam - pos
        new = pos * s_low + neg * slope
        acc = down(acc + _dot(neg, intercept))
        n = int(np.prod(self.pre[i][0].shape[1:]))
        pen = up(pen + up(_dot(new.abs(), hmax) * scalar_up(gamma(n + 6) * inflate(n))))
        return rows.like(new), acc, pen

    def _concretize(self, rows: Rows, acc, pen):
        flat = rows.lam.flatten(2)
        x0 = rows.align(self.x64).flatten(2)
        d = int(np.prod(self.x64.shape[1:]))
        dot = _dot(flat, x0)
        absflat = flat.abs()
        absdot = up(_dot(absflat, x0.abs()) * inflate(d))
        if self.norm == Norm.LINF:
            dual = up(absflat.sum(dim=2) * inflate(d))
        else:
            dual = up(up(torch.einsum("bsn,bsn->bs", flat, flat) * inflate(2 * d)).sqrt())
        a = down(down(acc + dot) - up(pen + up(absdot * gamma(d + 2))))
        return a, dual


def relaxation(lo: torch.Tensor, hi: torch.Tensor):
    """ReLU relaxation for pre-activations in [lo, hi] (each (B, *shape)): the lower slope s (1 if
    hi > -lo else 0 for unstable neurons, exact otherwise), the upper line ``slope * h + intercept``
    (slope rounded up so the line stays above the ReLU on [lo, hi]) and ``max(|lo|, |hi|)``; the
    pass keeps them concatenated along axis 1 (B, 4 * shape[0], *shape[1:])."""
    active = lo >= 0
    unstable = (lo < 0) & (hi > 0)
    s_low = (active | (unstable & (hi > -lo))).to(torch.float64)
    slope = torch.where(unstable, up(hi / down(hi - lo)), active.to(torch.float64))
    intercept = torch.where(unstable, up(-lo * slope), torch.zeros_like(lo))
    return s_low, slope, intercept, torch.maximum(lo.abs(), hi.abs())


def margin_specs(y: torch.Tensor, k: int) -> torch.Tensor:
    """Rows ``e_y - e_j`` for every class j, shape (B, K, K) float64 (row y is zero)."""
    eye = torch.eye(k, dtype=torch.float64, device=y.device)
    return eye[y][:, None, :] - eye[None, :, :]


def crown_margins(ops, x64, y, eps, norm: Norm, exe, intermediate: str):
    """CROWN's (A, dual) of the margins ``z_y - z_j`` (each (B, K); column y is +inf, 0) and the
    IBP margin lower bound (B,) at eps, for the model as executed (``exe``).

    For every radius e <= eps: every executed margin over the ball of radius e is at least
    ``A - e * dual``; at e = eps also at least the IBP bound.
    """
    run = CrownPass(ops, x64, eps, norm, exe).prepare(intermediate)
    shape = run.box.lo.shape[1:]
    b = x64.shape[0]
    sel = torch.arange(b, device=x64.device)
    specs = margin_specs(y, int(np.prod(shape))).view(b, -1, *shape)
    a, dual = run.linear(run.spec(sel, specs))
    col = y[:, None]
    a = a.scatter(1, col, float("inf"))
    dual = dual.scatter(1, col, 0.0)
    ibp = certified_margin(ops, x64, y, eps, norm, exe)
    return a, dual, ibp


def crown_logit_bounds(ops, x64, eps, norm: Norm, exe, intermediate: str):
    """Lower and upper bounds (B, K) of the logits over the ball, exact and as executed: CROWN's
    intersected with the interval bounds."""
    run = CrownPass(ops, x64, eps, norm, exe).prepare(intermediate)
    shape = run.box.lo.shape[1:]
    b, k = x64.shape[0], int(np.prod(shape))
    eye = torch.eye(k, dtype=torch.float64, device=x64.device).expand(b, k, k)
    sel = torch.arange(b, device=x64.device)
    lower = run.lower(run.spec(sel, torch.cat([eye, -eye], dim=1).reshape(b, 2 * k, *shape)))
    lo, hi = run.box.merged()
    return torch.maximum(lower[:, :k], lo.flatten(1)), torch.minimum(-lower[:, k:], hi.flatten(1))


def crown_bounds(
    model, x, eps, norm: Norm | str = "linf", *, intermediate: str = "crown"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds on the logits over the lp ball of radius eps around each input.

    Parameters
    ----------
    model : nn.Sequential of the layers ``crown_certify`` supports
    x : tensor or array of shape (B, *input_shape)
    eps : radius (>= 0), a number or an array of shape (B,)
    norm : "linf" or "l2"
    intermediate : "crown" or "ibp" (see ``crown_certify``)

    Returns
    -------
    (lower, upper): float64 tensors of shape (B, K) on the model's device, CROWN's intersected
    with the interval bounds: every logit of every point of the ball lies between them, both
    for the exact network and for the model's forward pass in its own dtype on inputs given in
    that dtype.
    """
    ops, xt, e, nrm, exe = bound_problem(model, x, eps, norm, what="crown_bounds")
    with torch.inference_mode():
        return crown_logit_bounds(ops, xt, e, nrm, exe, intermediate)


def _method(intermediate: str):
    """The method recorded in the certificates: "crown" or "crown-ibp" (a Method member once the
    enum has them)."""
    name = "crown" if intermediate == "crown" else "crown-ibp"
    try:
        return Method(name)
    except ValueError:
        return name


def _proved(a, dual, ibp, trial: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(proved, estimate), each (B,). proved <= trial: trial where CROWN's bound at trial or IBP's
    certifies, else the largest e with ``A - e * dual > 0`` for every margin (0 when none): the
    relaxations hold on smaller balls. estimate: that e without the cap (a guess of the largest
    certified radius, for the search)."""
    free = (
        torch.where(
            a > 0,
            torch.where(
                dual > 0, down(down(a / dual.clamp_min(2.0**-1074))), torch.full_like(a, float("inf"))
            ),
            torch.zeros_like(a),
        )
        .min(dim=1)
        .values
    )
    return torch.where(ibp > 0, trial, torch.minimum(free, trial)), free


def crown_certify(
    model,
    x,
    eps: float | None = None,
    norm: Norm | str = "linf",
    *,
    intermediate: str = "crown",
    seed=0,
    device=None,
) -> CertificateBatch:
    """Certify each input's predicted class with CROWN, for the model as executed.

    The predicted class y is the model's argmax on x (in its dtype). An input is certified at eps
    when, for every j != y, the lower bound of the executed margin ``z_y - z_j`` over the ball is
    > 0: CROWN's bound (see the module docstring) or, when larger, IBP's.

    eps given: radius = eps for certified inputs. eps None: the largest eps found by search
    (``search.largest_certified``), starting above IBP's searched radius (so never below it); each
    evaluation at a trial eps also proves every radius e <= eps with ``A - e * dual > 0`` (the
    relaxations hold on smaller balls), which the search keeps. The radius is the largest proved,
    rounded down.

    Parameters
    ----------
    model : nn.Sequential of Linear, Conv2d, ReLU, Flatten, BatchNorm1d/2d (eval), AvgPool2d,
        Identity, Dropout (eval); others (MaxPool2d included) raise InputError naming them
    x : tensor or array of shape (B, *input_shape)
    norm : "linf" or "l2"
    intermediate : "crown" (pre-activation bounds by CROWN where the intervals leave neurons
        unstable) or "ibp" (CROWN-IBP: interval pre-activation bounds, cheaper and looser)

    Returns a CertificateBatch with ``alpha`` 0, ``p_lower`` NaN, ``n_used`` 0, ``n_forward`` the
    bound evaluations per input (CROWN's and, with the search, IBP's) plus one plain forward,
    method "crown" or "crown-ibp", and
    ``extra["execution"]["covers"]`` naming the execution the guarantee covers.
    """
    what = "crown_certify"
    nrm = as_norm(norm)
    if nrm not in (Norm.LINF, Norm.L2):
        raise InputError(f"{what}: norm must be 'linf' or 'l2', got {nrm.value!r}")
    if intermediate not in INTERMEDIATE:
        raise InputError(f"{what}: intermediate must be one of {INTERMEDIATE}, got {intermediate!r}")
    if eps is not None:
        check_positive(eps, "eps", what)
    run = DeterministicRun.begin(model, x, seed=seed, device=device, what=what)
    ops = linear_maps(run.layers, tuple(run.x.shape[1:]), run.device)
    exe = execution_for(run.dtype, run.device)
    b = run.x.shape[0]
    with torch.inference_mode():
        y = run.model(run.x).argmax(1)
        x64 = run.x.double()

        def certified(idx: np.ndarray, trial: np.ndarray) -> np.ndarray:
            sel = torch.as_tensor(idx, device=run.device)
            e = torch.as_tensor(trial, dtype=torch.float64, device=run.device)
            a, dual, ibp = crown_margins(ops, x64[sel], y[sel], e, nrm, exe, intermediate)
            proved, estimate = _proved(a, dual, ibp, e)
            return proved.cpu().numpy(), estimate.cpu().numpy()

        if eps is not None:
            ok = certified(np.arange(b), np.full(b, float(eps)))[0] >= float(eps)
            radius = np.where(ok, round_down(np.full(b, float(eps))), 0.0)
            spent = np.ones(b, dtype=np.int64)
        else:
            floor = ibp_certify(run.model, run.x, norm=nrm, device=run.device)
            radius, spent = largest_certified(certified, b, soft=True, floor=floor.radius)
            spent = spent + floor.n_forward - 1
            ok = radius > 0
    extra = {"execution": {"covers": exe.covers}, "intermediate": intermediate}
    return run.finish(
        method=_method(intermediate),
        norm=nrm,
        y=y.cpu().numpy(),
        ok=ok,
        radius=radius,
        n_forward=spent + 1,
        cpu_peak=cpu_peak(x64, ops, 12),
        eps=float(eps) if eps is not None else float("nan"),
        extra=extra if eps is not None else {**extra, "search_rtol": SEARCH_RTOL},
    )
