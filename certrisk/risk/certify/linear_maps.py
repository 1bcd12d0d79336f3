"""A sequential network as a list of float64 maps that the sound bound methods walk through.

Each affine layer (Linear, Conv2d, AvgPool2d, eval BatchNorm) becomes an ``AffineMap``: ``W x``,
``|W| x`` and ``Lambda W`` (the backward pass of CROWN) in float64, its bias, and the constants the
float error bounds of ``rounding`` need: how many terms each output's dot product has in the
model's forward pass (``n_dot``) and in the backward product (``n_back``), and how far the float64
weights may be from the layer's exact ones (``theta``, relative: 0 for Linear/Conv2d, whose float
weights are exact in float64; a few ulps for BatchNorm's ``gamma / sqrt(var + eps)``). ReLU,
MaxPool2d and Flatten keep their own types; Identity and eval Dropout are dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from certrisk.risk.certify.rounding import Execution, gamma, scalar_up, up
from certrisk.schemas.errors import InputError


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


@dataclass
class AffineMap:
    """``y = W x + b`` of one layer in float64; x of shape (N, *in_shape), y (N, *out_shape).

    ``psi_const`` (non-negative, broadcastable to (1, *out_shape)) is added to ``|W| |x|`` in the
    error bounds: ``|b|`` for Linear/Conv2d, ``|alpha| |mean| + |beta|`` for BatchNorm. ``matmul``:
    the model computes it as a matmul/convolution (TF32 may apply).
    """

    kind: str
    in_shape: tuple
    out_shape: tuple
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    psi_const: torch.Tensor | None
    n_dot: int
    n_back: int
    theta: float
    matmul: bool
    params: dict = field(default_factory=dict)

    @property
    def n_out(self) -> int:
        return math.prod(self.out_shape)

    def forward(self, x: torch.Tensor, absolute: bool = False) -> torch.Tensor:
        """``W x`` (or ``|W| x``) without the bias."""
        w = self.weight.abs() if absolute and self.weight is not None else self.weight
        p = self.params
        if self.kind == "linear":
            return F.linear(x, w)
        if self.kind == "conv":
            return F.conv2d(x, w, None, p["stride"], p["padding"], p["dilation"], p["groups"])
        if self.kind == "avgpool":
            return F.avg_pool2d(x, **p)
        return x * w

    def backward(self, lam: torch.Tensor) -> torch.Tensor:
        """``Lambda W``: lam of shape (R, *out_shape) to (R, *in_shape)."""
        p = self.params
        if self.kind == "linear":
            return lam @ self.weight
        if self.kind == "conv":
            return F.conv_transpose2d(
                lam, self.weight, None, p["stride"], p["padding"], p["out_pad"], p["groups"], p["dilation"]
            )
        if self.kind == "avgpool":
            shape = (lam.shape[0], *self.in_shape)
            like = torch.zeros((), dtype=lam.dtype, device=lam.device).expand(shape)
            return torch.ops.aten.avg_pool2d_backward(
                lam,
                like,
                p["kernel_size"],
                p["stride"],
                p["padding"],
                p["ceil_mode"],
                p["count_include_pad"],
                p["divisor_override"],
            )
        return lam * self.weight

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """``e_i W`` for output indices idx (R,) into the flattened output: (R, *in_shape), exact."""
        if self.kind == "linear":
            return self.weight[idx]
        if self.kind == "conv":
            return _conv_rows(self, idx)
        one_hot = torch.zeros(idx.shape[0], self.n_out, dtype=torch.float64, device=idx.device)
        one_hot[torch.arange(idx.shape[0], device=idx.device), idx] = 1.0
        return self.backward(one_hot.view(-1, *self.out_shape))

    def row_norms(self) -> torch.Tensor:
        """Upper bounds of ``||W_i||_2`` for each output of a Linear or Conv2d, shape (1, *out_shape)."""
        if self.kind == "linear":
            sq = (self.weight * self.weight).sum(dim=1).view(1, -1)
        else:
            ones = torch.ones((1, *self.in_shape), dtype=torch.float64, device=self.weight.device)
            sq = _square(self).forward(ones)
        return up(up(sq * scalar_up(1.0 + 2.0 * gamma(2 * self.n_dot + 2))).clamp_min(0).sqrt())

    def exec_rel(self, exe: Execution) -> float:
        """Relative error bound of the model's own evaluation of this layer (on ``|W||x| + psi_const``)."""
        if self.matmul:
            return exe.dot_error(self.n_dot)
        return exe.sum_error(self.n_dot if self.kind == "avgpool" else 16)

    def exec_abs(self, exe: Execution) -> float:
        return exe.absolute(self.n_dot)


def _square(m: AffineMap) -> AffineMap:
    return AffineMap(
        m.kind, m.in_shape, m.out_shape, m.weight * m.weight, None, None, 1, 1, 0.0, False, m.params
    )


def _conv_rows(m: AffineMap, idx: torch.Tensor) -> torch.Tensor:
    """Rows of a convolution's matrix, written as kernels placed on a zero canvas."""
    p = m.params
    w = m.weight
    c_out, c_in_g, kh, kw = w.shape
    _, oh, ow = m.out_shape
    c_in, ih, iw = m.in_shape
    (sh, sw), (ph, pw), (dh, dw) = p["stride"], p["padding"], p["dilation"]
    ch_top = max(ih + 2 * ph, (oh - 1) * sh + (kh - 1) * dh + 1)
    cw_top = max(iw + 2 * pw, (ow - 1) * sw + (kw - 1) * dw + 1)
    r = idx.shape[0]
    canvas = torch.zeros(r, c_in, ch_top, cw_top, dtype=torch.float64, device=w.device)
    o = idx // (oh * ow)
    y = (idx // ow) % oh
    x = idx % ow
    group = o // (c_out // p["groups"])
    ci = group[:, None] * c_in_g + torch.arange(c_in_g, device=w.device)[None, :]  # (R, Cg)
    dy = torch.arange(kh, device=w.device) * dh
    dx = torch.arange(kw, device=w.device) * dw
    rr = torch.arange(r, device=w.device)[:, None, None, None]
    yy = (y * sh)[:, None, None, None] + dy[None, None, :, None]
    xx = (x * sw)[:, None, None, None] + dx[None, None, None, :]
    canvas[rr, ci[:, :, None, None], yy, xx] = w[o]
    return canvas[:, :, ph : ph + ih, pw : pw + iw].contiguous()


def _linear(layer: nn.Linear, in_shape: tuple) -> AffineMap:
    w = layer.weight.detach().double()
    b = None if layer.bias is None else layer.bias.detach().double().view(1, -1)
    n = w.shape[1] + (b is not None)
    return AffineMap(
        "linear", in_shape, (w.shape[0],), w, b, None if b is None else b.abs(), n, w.shape[0], 0.0, True
    )


def _conv(layer: nn.Conv2d, in_shape: tuple) -> AffineMap:
    w = layer.weight.detach().double()
    if isinstance(layer.padding, str) and layer.padding != "valid":
        raise InputError(
            f"Conv2d with padding={layer.padding!r} is not supported; give the padding in pixels"
        )
    p = {
        "stride": _pair(layer.stride),
        "padding": (0, 0) if isinstance(layer.padding, str) else _pair(layer.padding),
        "dilation": _pair(layer.dilation),
        "groups": layer.groups,
    }
    out = F.conv2d(torch.zeros((1, *in_shape), dtype=torch.float64, device=w.device), w, None, **p).shape[1:]
    kh, kw = w.shape[2:]
    out_pad = []
    for axis in range(2):
        k = (kh, kw)[axis]
        natural = (
            (out[1 + axis] - 1) * p["stride"][axis]
            - 2 * p["padding"][axis]
            + p["dilation"][axis] * (k - 1)
            + 1
        )
        out_pad.append(in_shape[1 + axis] - natural)
    p["out_pad"] = tuple(out_pad)
    b = None if layer.bias is None else layer.bias.detach().double().view(1, -1, 1, 1)
    n_dot = w.shape[1] * kh * kw + (b is not None)
    n_back = (w.shape[0] // layer.groups) * kh * kw
    return AffineMap(
        "conv", in_shape, tuple(out), w, b, None if b is None else b.abs(), n_dot, n_back, 0.0, True, p
    )


def _avgpool(layer: nn.AvgPool2d, in_shape: tuple, device) -> AffineMap:
    p = {
        "kernel_size": _pair(layer.kernel_size),
        "stride": _pair(layer.stride if layer.stride is not None else layer.kernel_size),
        "padding": _pair(layer.padding),
        "ceil_mode": bool(layer.ceil_mode),
        "count_include_pad": bool(layer.count_include_pad),
        "divisor_override": layer.divisor_override,
    }
    out = F.avg_pool2d(torch.zeros((1, *in_shape), dtype=torch.float64, device=device), **p).shape[1:]
    (kh, kw), (sh, sw) = p["kernel_size"], p["stride"]
    n_dot = kh * kw + 1
    n_back = (-(-kh // sh)) * (-(-kw // sw)) + 1
    return AffineMap("avgpool", in_shape, tuple(out), None, None, None, n_dot, n_back, 0.0, False, p)


def _batchnorm(layer: nn.Module, in_shape: tuple) -> AffineMap:
    """Eval BatchNorm ``(x - mean) / sqrt(var + eps) * gamma + beta`` as ``alpha x + (beta - mean alpha)``."""
    shape = (1, -1) + (1,) * (len(in_shape) - 1)
    mean = layer.running_mean.detach().double()
    alpha = (layer.running_var.detach().double() + float(layer.eps)).rsqrt()
    beta = torch.zeros_like(mean)
    if layer.weight is not None:
        alpha = alpha * layer.weight.detach().double()
    if layer.bias is not None:
        beta = layer.bias.detach().double()
    bias = beta - mean * alpha
    psi = up(up(alpha.abs() * mean.abs()) + beta.abs())
    return AffineMap(
        "batchnorm",
        in_shape,
        in_shape,
        alpha.view(shape),
        bias.view(shape),
        psi.view(shape),
        2,
        1,
        gamma(8),
        False,
    )


@dataclass(frozen=True)
class Relu:
    in_shape: tuple


@dataclass(frozen=True)
class Reshape:
    in_shape: tuple
    out_shape: tuple


@dataclass(frozen=True)
class MaxPool:
    layer: nn.MaxPool2d
    in_shape: tuple
    out_shape: tuple


def linear_maps(layers: list[nn.Module], input_shape: tuple, device) -> list:
    """The maps of ``layers`` (from ``network.sequential_layers``) for inputs of ``input_shape``."""
    ops: list = []
    shape = tuple(input_shape)
    for layer in layers:
        if isinstance(layer, (nn.Identity, nn.Dropout)):
            continue
        try:
            op = _one(layer, shape, device)
        except RuntimeError as exc:
            raise InputError(f"{type(layer).__name__} rejects inputs of shape {shape}: {exc}") from exc
        ops.append(op)
        shape = getattr(op, "out_shape", shape)
    return ops


def _one(layer: nn.Module, shape: tuple, device):
    if isinstance(layer, nn.Linear):
        if len(shape) != 1 or shape[0] != layer.in_features:
            raise InputError(f"Linear({layer.in_features}, ...) gets inputs of shape {shape}")
        return _linear(layer, shape)
    if isinstance(layer, nn.Conv2d):
        return _conv(layer, shape)
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return _batchnorm(layer, shape)
    if isinstance(layer, nn.AvgPool2d):
        return _avgpool(layer, shape, device)
    if isinstance(layer, nn.ReLU):
        return Relu(shape)
    if isinstance(layer, nn.Flatten):
        out = layer(torch.zeros((1, *shape))).shape[1:]
        return Reshape(shape, tuple(out))
    if isinstance(layer, nn.MaxPool2d):
        out = layer(torch.zeros((1, *shape))).shape[1:]
        return MaxPool(layer, shape, tuple(out))
    raise InputError(f"no float64 map for layer {type(layer).__name__}")
