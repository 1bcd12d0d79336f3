"""Interval bounds: exact on one affine layer, containing sampled logits, sound against PGD."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from certrisk.risk.audit import pgd_numpy
from certrisk.risk.certify import ibp_certify, interval_bounds
from certrisk.risk.certify.bounds import SEARCH_RTOL
from certrisk.schemas.errors import InputError


def _ball_points(x: np.ndarray, eps: float, norm: str, count: int, rng) -> np.ndarray:
    """``count`` points of the lp ball around each row of x (half on the boundary), float64."""
    d = x[0].size
    if norm == "linf":
        delta = rng.uniform(-eps, eps, size=(len(x), count, d))
        delta[:, : count // 2] = eps * np.sign(delta[:, : count // 2])  # vertices
    else:
        g = rng.normal(size=(len(x), count, d))
        g /= np.linalg.norm(g, axis=2, keepdims=True)
        scale = np.ones((len(x), count, 1))
        scale[:, count // 2 :] = rng.uniform(size=(len(x), count - count // 2, 1)) ** (1 / d)
        delta = eps * g * scale
    return x.reshape(len(x), 1, d) + delta


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_single_linear_layer_is_exact(norm):
    torch.manual_seed(0)
    layer = nn.Linear(6, 4).double()
    model = nn.Sequential(layer)
    x = torch.randn(5, 6, dtype=torch.float64)
    eps = 0.37
    lo, hi = interval_bounds(model, x, eps, norm=norm)
    w, b = layer.weight.detach(), layer.bias.detach()
    dual = w.abs().sum(dim=1) if norm == "linf" else w.norm(dim=1)
    centre = x @ w.T + b
    torch.testing.assert_close(lo, centre - eps * dual, rtol=0, atol=1e-12)
    torch.testing.assert_close(hi, centre + eps * dual, rtol=0, atol=1e-12)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_bounds_contain_sampled_logits_of_trained_cnn(trained_cnn, digits, norm):
    """10 inputs x 1,000 points of the ball = 10,000 points, half on its boundary."""
    x, _ = digits
    xs = x[:10]
    eps = 0.03 if norm == "linf" else 0.3
    lo, hi = interval_bounds(trained_cnn, xs, eps, norm=norm)
    pts = _ball_points(xs.astype(np.float64), eps, norm, 1000, np.random.default_rng(0))
    model64 = _double(trained_cnn)
    with torch.no_grad():
        logits = model64(torch.as_tensor(pts.reshape(-1, 1, 8, 8))).reshape(10, 1000, -1)
    assert (logits >= lo[:, None, :] - 1e-9).all()
    assert (logits <= hi[:, None, :] + 1e-9).all()


def _double(model):
    import copy

    return copy.deepcopy(model).double()


def test_all_supported_layers_contain_samples():
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Identity(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1, bias=False),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4, 8),
        nn.BatchNorm1d(8),
        nn.Dropout(0.3),
        nn.ReLU(),
        nn.Linear(8, 3),
    )
    with torch.no_grad():
        for bn in (model[1], model[9]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(-2, 2)
    model = model.double().eval()
    x = np.random.default_rng(2).uniform(size=(4, 1, 8, 8))
    for norm, eps in (("linf", 0.05), ("l2", 0.4)):
        lo, hi = interval_bounds(model, x, eps, norm=norm)
        pts = _ball_points(x, eps, norm, 500, np.random.default_rng(3))
        with torch.no_grad():
            logits = model(torch.as_tensor(pts.reshape(-1, 1, 8, 8))).reshape(4, 500, -1)
        assert (logits >= lo[:, None] - 1e-9).all() and (logits <= hi[:, None] + 1e-9).all()


def test_unsupported_layer_is_named():
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    with pytest.raises(InputError, match=r"unsupported layer 1 \(Tanh\)"):
        interval_bounds(model, np.zeros((1, 4), np.float32), 0.1)
    bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).train()
    with pytest.raises(InputError, match="eval mode"):
        ibp_certify(bn, np.zeros((2, 4), np.float32), eps=0.1)
    with pytest.raises(InputError, match="Sequential"):
        ibp_certify(nn.Linear(4, 2), np.zeros((2, 4), np.float32), eps=0.1)


def test_margin_form_is_at_least_as_tight_as_separate_bounds(trained_cnn, digits):
    x, _ = digits
    xs = x[:50]
    eps = 0.01
    cert = ibp_certify(trained_cnn, xs, eps=eps)
    lo, hi = interval_bounds(trained_cnn, xs, eps)
    with torch.no_grad():
        y = trained_cnn(torch.as_tensor(xs)).argmax(1)
    separate = lo.gather(1, y[:, None]) - hi.scatter(1, y[:, None], -np.inf)
    separate_ok = (separate.min(dim=1).values > 0).numpy()
    assert (~cert.abstained >= separate_ok).all()
    assert (~cert.abstained).sum() >= separate_ok.sum()


def test_eps_search_brackets_the_certified_eps(trained_cnn, digits):
    x, _ = digits
    xs = x[:20]
    cert = ibp_certify(trained_cnn, xs)
    assert cert.extra["search_rtol"] == SEARCH_RTOL and np.isnan(cert.eps)
    ok = ~cert.abstained
    assert ok.sum() >= 10
    for i in np.flatnonzero(ok)[:5]:
        at = ibp_certify(trained_cnn, xs[i : i + 1], eps=float(cert.radius[i]))
        assert not at.abstained[0]
        beyond = ibp_certify(trained_cnn, xs[i : i + 1], eps=float(cert.radius[i]) * (1 + 2 * SEARCH_RTOL))
        assert beyond.abstained[0]
    assert (cert.n_forward > 1).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_finds_nothing_inside_ibp_radius(trained_cnn, digits, norm):
    x, _ = digits
    xs = x[:100]
    cert = ibp_certify(trained_cnn, xs, norm=norm)
    ok = np.flatnonzero(~cert.abstained)
    assert ok.size > 50
    for i in ok[:40]:
        _, hit = pgd_numpy(
            trained_cnn,
            xs[i : i + 1],
            cert.prediction[i : i + 1],
            eps=float(cert.radius[i]),
            norm=norm,
            steps=20,
            restarts=2,
            clip=None,
        )
        assert not hit.any(), (i, cert.radius[i])
