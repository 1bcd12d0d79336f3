"""The coefficients a CROWN backward pass carries, dense or as windows of a convolutional layer.

A specification of a convolution's neuron depends on a small window of the layers before it
(the receptive field), not on the whole image: carrying only that window (as auto_LiRPA's
"patches" do) makes the backward pass of every neuron of a convolutional layer several times
cheaper than a dense coefficient tensor. Positions of a window outside the layer (the zero
padding of a convolution) always hold a zero coefficient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from certrisk.risk.certify.linear_maps import AffineMap


class Rows:
    """Coefficients of S specifications for each of Bc inputs (the batch rows ``sel``, (Bc,)).

    Dense: ``lam`` of shape (Bc, S, *shape). Windowed (``oy``, ``ox`` of shape (Bc, S)): ``lam`` of
    shape (Bc, S, C, ph, pw) on a (C, H, W) layer; ``lam[..., i, j]`` is the coefficient of
    position (oy + i, ox + j).
    """

    def __init__(self, lam, sel, shape, oy=None, ox=None):
        self.lam, self.sel, self.shape, self.oy, self.ox = lam, sel, tuple(shape), oy, ox

    @property
    def windowed(self) -> bool:
        return self.oy is not None

    def like(self, lam: torch.Tensor) -> Rows:
        """The same geometry with other coefficients."""
        return Rows(lam, self.sel, self.shape, self.oy, self.ox)

    def align(self, t: torch.Tensor) -> torch.Tensor:
        """A per-input tensor (B, C', H, W) (any channel count) or (B, *shape), aligned with
        ``lam``: (Bc, 1, ...) dense, (Bc, S, C', ph, pw) windowed."""
        if not self.windowed:
            return t[self.sel].unsqueeze(1)
        tp, yy, xx = self._grid(t[self.sel])
        bc, s, _, ph, pw = self.lam.shape
        c = tp.shape[1]
        cols = F.unfold(tp, (ph, pw))  # (Bc, C ph pw, positions)
        pos = yy[:, :, 0] * (tp.shape[3] - pw + 1) + xx[:, :, 0]  # (Bc, S)
        got = cols.gather(2, pos[:, None, :].expand(bc, cols.shape[1], s))
        return got.transpose(1, 2).reshape(bc, s, c, ph, pw)

    def _grid(self, t: torch.Tensor):
        """t (Bc, C, H, W) zero-padded so every window fits, and the index grids (Bc, S, ph/pw)."""
        ph, pw = self.lam.shape[-2:]
        h, w = self.shape[1:]
        top, left = max(0, -int(self.oy.min())), max(0, -int(self.ox.min()))
        bottom = max(0, int(self.oy.max()) + ph - h)
        right = max(0, int(self.ox.max()) + pw - w)
        tp = F.pad(t, (left, right, top, bottom))
        yy = (self.oy + top)[:, :, None] + torch.arange(ph, device=t.device)
        xx = (self.ox + left)[:, :, None] + torch.arange(pw, device=t.device)
        return tp, yy, xx

    def masked(self) -> Rows:
        """Zero the coefficients of window positions outside the layer."""
        ph, pw = self.lam.shape[-2:]
        h, w = self.shape[1:]
        ys = self.oy[:, :, None] + torch.arange(ph, device=self.lam.device)
        xs = self.ox[:, :, None] + torch.arange(pw, device=self.lam.device)
        inside = ((ys >= 0) & (ys < h))[:, :, :, None] & ((xs >= 0) & (xs < w))[:, :, None, :]
        return self.like(self.lam * inside[:, :, None].to(self.lam.dtype))

    def dense(self) -> Rows:
        """The dense form (Bc, S, *shape)."""
        if not self.windowed:
            return self
        bc, s, c = self.lam.shape[:3]
        canvas = torch.zeros(bc, c, *self.shape[1:], dtype=self.lam.dtype, device=self.lam.device)
        tp, yy, xx = self._grid(canvas)
        full = torch.zeros((bc, s, *tp.shape[1:]), dtype=self.lam.dtype, device=self.lam.device)
        b = torch.arange(bc, device=tp.device)[:, None, None, None, None]
        r = torch.arange(s, device=tp.device)[None, :, None, None, None]
        ch = torch.arange(c, device=tp.device)[None, None, :, None, None]
        full[b, r, ch, yy[:, :, None, :, None], xx[:, :, None, None, :]] = self.lam
        top, left = max(0, -int(self.oy.min())), max(0, -int(self.ox.min()))
        h, w = self.shape[1:]
        return Rows(full[..., top : top + h, left : left + w].contiguous(), self.sel, self.shape)

    def reshape(self, shape) -> Rows:
        rows = self.dense()
        return Rows(rows.lam.reshape(*rows.lam.shape[:2], *shape), rows.sel, shape)

    def backward(self, op: AffineMap) -> Rows:
        """``Lambda W`` through an affine map, onto its input (windows kept where they stay small)."""
        if self.windowed and _window_map(op):
            return self._window_backward(op)
        rows = self.dense()
        bc, s = rows.lam.shape[:2]
        lam = op.backward(rows.lam.reshape(bc * s, *op.out_shape)).view(bc, s, *op.in_shape)
        return Rows(lam, rows.sel, op.in_shape)

    def _window_backward(self, op: AffineMap) -> Rows:
        bc, s = self.lam.shape[:2]
        if op.kind == "batchnorm":
            return Rows(self.lam * op.weight.unsqueeze(0), self.sel, op.in_shape, self.oy, self.ox)
        p = op.params
        if op.kind == "conv":
            weight, stride, dilation, groups = op.weight, p["stride"], p["dilation"], p["groups"]
            pad = p["padding"]
        else:
            c = op.in_shape[0]
            kh, kw = p["kernel_size"]
            weight = torch.full((c, 1, kh, kw), 1.0 / (kh * kw), dtype=self.lam.dtype, device=self.lam.device)
            stride, dilation, groups, pad = p["stride"], (1, 1), c, p["padding"]
        lam = F.conv_transpose2d(self.lam.flatten(0, 1), weight, None, stride, 0, 0, groups, dilation)
        oy, ox = self.oy * stride[0] - pad[0], self.ox * stride[1] - pad[1]
        rows = Rows(lam.view(bc, s, *lam.shape[1:]), self.sel, op.in_shape, oy, ox).masked()
        ph, pw = rows.lam.shape[-2:]
        if ph >= op.in_shape[1] and pw >= op.in_shape[2]:
            return rows.dense()
        return rows


def _window_map(op: AffineMap) -> bool:
    """Whether the map's backward pass keeps windows: a convolution, a 2-d BatchNorm, or an
    average pooling that is a plain depthwise convolution."""
    if op.kind in ("conv",) or (op.kind == "batchnorm" and len(op.in_shape) == 3):
        return True
    if op.kind != "avgpool":
        return False
    p = op.params
    plain_pad = p["padding"] == (0, 0) or p["count_include_pad"]
    return plain_pad and not p["ceil_mode"] and not p["divisor_override"]


def conv_rows(op: AffineMap, sel, idx: torch.Tensor, sign: torch.Tensor) -> Rows:
    """Windowed rows ``sign * e_idx W`` of a convolution: idx, sign (Bc, S) into its flat output."""
    p = op.params
    w = op.weight
    c_out, c_in_g, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = p["stride"], p["padding"], p["dilation"]
    c_in = op.in_shape[0]
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    kernel = torch.zeros(c_out, c_in, eh, ew, dtype=w.dtype, device=w.device)
    per = c_out // p["groups"]
    for g in range(p["groups"]):
        kernel[g * per : (g + 1) * per, g * c_in_g : (g + 1) * c_in_g, ::dh, ::dw] = w[
            g * per : (g + 1) * per
        ]
    _, oh, ow = op.out_shape
    o, y, x = idx // (oh * ow), (idx // ow) % oh, idx % ow
    lam = kernel[o] * sign[:, :, None, None, None]
    return Rows(lam, sel, op.in_shape, y * sh - ph, x * sw - pw).masked()
