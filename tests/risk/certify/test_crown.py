"""CROWN: exact on one affine layer, containing sampled and attacked logits, never looser than
IBP, sound against PGD; windows of convolutional rows agree with the dense pass."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from torch import nn

from certrisk.risk.audit import pgd_attack, pgd_numpy
from certrisk.risk.certify import certify_with_spec, crown, ibp_certify, interval_bounds, method_available
from certrisk.risk.certify.bounds import certified_margin
from certrisk.risk.certify.crown import crown_bounds, crown_certify, crown_margins
from certrisk.risk.certify.linear_maps import linear_maps
from certrisk.risk.certify.rounding import execution_for
from certrisk.risk.certify.rows import Rows
from certrisk.schemas.enums import Norm
from certrisk.schemas.errors import InputError


@pytest.fixture(autouse=True)
def one_thread():
    """Small networks: threads only add synchronisation (and, on a loaded machine, waiting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _ball(x: torch.Tensor, eps: float, norm: str, count: int, gen) -> torch.Tensor:
    """count points of the ball around each row of x (half on its boundary), (B, count, *shape)."""
    b, d = x.shape[0], x[0].numel()
    g = torch.randn(b, count, d, generator=gen, dtype=torch.float64)
    if norm == "linf":
        delta = (torch.rand(b, count, d, generator=gen, dtype=torch.float64) * 2 - 1) * eps
        delta[:, : count // 2] = eps * g[:, : count // 2].sign()
    else:
        g = g / g.norm(dim=2, keepdim=True)
        scale = torch.ones(b, count, 1, dtype=torch.float64)
        scale[:, count // 2 :] = torch.rand(b, count - count // 2, 1, generator=gen, dtype=torch.float64) ** (
            1 / d
        )
        delta = eps * g * scale
    return (x.double().reshape(b, 1, d) + delta).view(b, count, *x.shape[1:])


def _cnn() -> nn.Sequential:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(5, 3, 2, padding=1, dilation=2),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Flatten(),
        nn.Linear(12, 6),
        nn.ReLU(),
        nn.Identity(),
        nn.Linear(6, 4),
    )
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.uniform_(-2, 2)
    return model.eval()


def _mlp() -> nn.Sequential:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)
    ).eval()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_single_linear_layer_is_exact(norm):
    torch.manual_seed(0)
    layer = nn.Linear(6, 4).double()
    x = torch.randn(5, 6, dtype=torch.float64)
    eps = 0.37
    lo, hi = crown_bounds(nn.Sequential(layer), x, eps, norm=norm)
    w, b = layer.weight.detach(), layer.bias.detach()
    dual = w.abs().sum(dim=1) if norm == "linf" else w.norm(dim=1)
    centre = x @ w.T + b
    torch.testing.assert_close(lo, centre - eps * dual, rtol=0, atol=1e-12)
    torch.testing.assert_close(hi, centre + eps * dual, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.3)])
@pytest.mark.parametrize("intermediate", ["crown", "ibp"])
def test_bounds_contain_sampled_and_attacked_logits(dtype, norm, eps, intermediate):
    """4 inputs x 2,000 sampled points (half on the boundary) plus PGD points toward every
    logit's extremes, evaluated exactly (float64) and in the model's dtype."""
    gen = torch.Generator().manual_seed(3)
    for model, x in (
        (_cnn(), torch.rand(4, 2, 8, 8, generator=gen)),
        (_mlp(), torch.randn(4, 5, generator=gen)),
    ):
        model = model.to(dtype)
        x = x.to(dtype)
        lo, hi = crown_bounds(model, x, eps, norm=norm, intermediate=intermediate)
        pts = _ball(x, eps, norm, 2000, gen)
        model64 = _double(model)
        with torch.no_grad():
            exact = model64(pts.flatten(0, 1)).view(4, 2000, -1)
            executed = model(pts.flatten(0, 1).to(dtype)).double().view(4, 2000, -1)
        for z in (exact, executed):
            assert (z >= lo[:, None]).all() and (z <= hi[:, None]).all()
        for k in range(lo.shape[1]):
            for sign in (1.0, -1.0):
                adv = _pgd_extreme(model, x, k, sign, eps, norm)
                with torch.no_grad():
                    z = model(adv).double()
                assert (z[:, k] >= lo[:, k]).all() and (z[:, k] <= hi[:, k]).all()


def _double(model):
    import copy

    return copy.deepcopy(model).double()


def _pgd_extreme(model, x, k: int, sign: float, eps: float, norm: str) -> torch.Tensor:
    """Points of the ball pushing logit k up (sign 1) or down, by projected gradient steps."""

    class Push(nn.Module):
        def forward(self, t):
            z = model(t)
            return torch.stack([sign * z[:, k], torch.zeros_like(z[:, k])], dim=1)

    target = torch.ones(x.shape[0], dtype=torch.int64)
    adv, _ = pgd_attack(Push(), x, target, eps=eps, norm=norm, steps=30, clip=None)
    return adv


def test_crown_is_never_looser_than_ibp_and_usually_tighter(trained_cnn, digits):
    x, _ = digits
    xs = torch.as_tensor(x[:64])
    ops = linear_maps(list(trained_cnn), (1, 8, 8), torch.device("cpu"))
    exe = execution_for(torch.float32, torch.device("cpu"))
    y = trained_cnn(xs).argmax(1)
    for norm, e in ((Norm.LINF, 0.02), (Norm.L2, 0.1)):
        eps = torch.full((64,), e, dtype=torch.float64)
        a, dual, ibp = crown_margins(ops, xs.double(), y, eps, norm, exe, "crown")
        own = (a - eps[:, None] * dual).min(dim=1).values
        assert torch.equal(ibp, certified_margin(ops, xs.double(), y, eps, norm, exe))
        assert (own > ibp).float().mean() > 0.9
        cert_c = crown_certify(trained_cnn, xs, eps=e, norm=norm.value)
        cert_i = ibp_certify(trained_cnn, xs, eps=e, norm=norm.value)
        assert (~cert_c.abstained >= ~cert_i.abstained).all()
        assert (~cert_c.abstained).sum() > (~cert_i.abstained).sum()


def test_windows_of_conv_rows_match_the_dense_pass(monkeypatch):
    model = _cnn().double()
    x = torch.rand(3, 2, 8, 8, dtype=torch.float64)
    lo, hi = crown_bounds(model, x, 0.05)

    def dense_rows(op, sel, idx, sign):
        lam = op.rows(idx.flatten()).view(*idx.shape, *op.in_shape)
        return Rows(lam * sign[:, :, None, None, None], sel, op.in_shape)

    monkeypatch.setattr(crown, "conv_rows", dense_rows)
    lo_d, hi_d = crown_bounds(model, x, 0.05)
    torch.testing.assert_close(lo, lo_d, rtol=0, atol=1e-12)
    torch.testing.assert_close(hi, hi_d, rtol=0, atol=1e-12)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_search_radius_is_certified_and_pgd_finds_nothing_inside(trained_cnn, digits, norm):
    x, _ = digits
    xs = x[:24]
    cert = crown_certify(trained_cnn, xs, norm=norm)
    ibp = ibp_certify(trained_cnn, xs, norm=norm)
    assert cert.extra["search_rtol"] > 0 and np.isnan(cert.eps)
    assert str(cert.method) == "crown" and "float32" in cert.extra["execution"]["covers"]
    ok = np.flatnonzero(~cert.abstained)
    assert ok.size >= 20
    assert np.median(cert.radius) > 2 * np.median(ibp.radius)
    again = crown_certify(trained_cnn, xs[ok], eps=float(cert.radius[ok].min()), norm=norm)
    assert not again.abstained.any()
    for i in ok[:8]:
        _, hit = pgd_numpy(
            trained_cnn,
            xs[i : i + 1],
            cert.prediction[i : i + 1],
            eps=float(cert.radius[i]),
            norm=norm,
            steps=30,
            restarts=2,
            clip=None,
        )
        assert not hit.any(), (i, cert.radius[i])


def test_crown_ibp_lies_between_ibp_and_crown(trained_cnn, digits):
    x, _ = digits
    xs = x[:16]
    full = crown_certify(trained_cnn, xs, norm="linf")
    cheap = crown_certify(trained_cnn, xs, norm="linf", intermediate="ibp")
    ibp = ibp_certify(trained_cnn, xs, norm="linf")
    assert str(cheap.method) == "crown-ibp"
    assert np.median(ibp.radius) < np.median(cheap.radius) < np.median(full.radius)


def test_unsupported_inputs_are_named():
    pooled = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(18, 2))
    with pytest.raises(InputError, match="MaxPool2d"):
        crown_certify(pooled, np.zeros((1, 1, 8, 8), np.float32), eps=0.1)
    assert method_available(pooled, "crown")[0] is False
    assert method_available(_mlp(), "crown-ibp") == (True, "")
    with pytest.raises(InputError, match="intermediate"):
        crown_certify(_mlp(), np.zeros((1, 5), np.float32), eps=0.1, intermediate="lp")
    with pytest.raises(InputError, match="norm"):
        crown_certify(_mlp(), np.zeros((1, 5), np.float32), eps=0.1, norm="l1")
    with pytest.raises(InputError, match="Tanh"):
        crown_certify(
            nn.Sequential(nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 2)), np.zeros((1, 5), np.float32)
        )


def test_dispatch_runs_a_crown_spec():
    model = _mlp()
    x = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
    for method, intermediate in (("crown", "crown"), ("crown-ibp", "ibp")):
        spec = types.SimpleNamespace(method=method, eps=0.05, norm="linf")
        got = certify_with_spec(model, x, spec, seeds=np.arange(6))
        want = crown_certify(model, x, eps=0.05, norm="linf", intermediate=intermediate)
        assert str(got.method) == method
        np.testing.assert_array_equal(got.prediction, want.prediction)
        np.testing.assert_array_equal(got.seed, np.arange(6))


def test_bounds_are_never_looser_than_interval_bounds():
    model = _cnn()
    x = torch.rand(4, 2, 8, 8)
    lo_c, hi_c = crown_bounds(model, x, 0.1)
    lo_i, hi_i = interval_bounds(model, x, 0.1)
    slack = 1e-12 * (hi_i - lo_i)
    assert (lo_c >= lo_i - slack).all() and (hi_c <= hi_i + slack).all()
    assert (hi_c - lo_c).mean() < 0.5 * (hi_i - lo_i).mean()
