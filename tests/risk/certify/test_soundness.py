"""Deterministic certificates hold for the model as executed (issue 13): the reproductions of
the float-error attacks, and a search over ~200 small random and crafted models.

For every certificate, points inside its radius along the worst directions (the gradient of
each margin, the boundary normals of linear models, the worst and random corners for linf,
random directions for l2), at the radius and at (1 - 2^-20) of it, moved into the ball in the
model's own dtype, are evaluated in that dtype: no prediction may change (a tie is a change).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from certrisk.risk.audit import ball_distance, pgd_attack, project_into_ball
from certrisk.risk.certify import ibp_certify, lipschitz_certify
from certrisk.risk.certify.crown import crown_certify


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: threads only add synchronisation (and, on a loaded machine, waiting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _linear(w, b, dtype) -> nn.Sequential:
    w = torch.as_tensor(np.asarray(w, dtype=np.float64))
    layer = nn.Linear(w.shape[1], w.shape[0]).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(torch.as_tensor(np.asarray(b, dtype=np.float64)))
    return nn.Sequential(layer).eval()


def _directions(model, x: torch.Tensor, y: torch.Tensor, norm: str, rng) -> torch.Tensor:
    """Unit directions (B, D, *shape) in float64 that decrease the margins: each margin's
    gradient (the boundary normal of a linear model) and random ones."""
    xg = x.clone().requires_grad_(True)
    z = model(xg)
    dirs = []
    for j in range(z.shape[1]):
        margin = (z.gather(1, y[:, None])[:, 0] - z[:, j]).sum()
        (g,) = torch.autograd.grad(margin, xg, retain_graph=True)
        dirs.append(-g.double())
    for _ in range(4):
        dirs.append(torch.as_tensor(rng.normal(size=x.shape)))
    d = torch.stack(dirs, dim=1)  # (B, D, *shape)
    flat = d.flatten(2)
    if norm == "linf":
        flat = torch.where(flat == 0, 1.0, flat.sign())
    else:
        flat = flat / flat.norm(dim=2, keepdim=True).clamp_min(1e-300)
    return flat.view_as(d)


def _assert_sound(model, x, cert, norm: str, rng) -> int:
    """Evaluate the worst points of every certified ball in the model's dtype; returns the
    number of points checked."""
    dtype = next(model.parameters()).dtype
    xt = torch.as_tensor(x).to(dtype)
    ok = ~cert.abstained
    if not ok.any():
        return 0
    idx = np.flatnonzero(ok)
    xs, y = xt[idx], torch.as_tensor(cert.prediction[idx])
    r = torch.as_tensor(cert.radius[idx], dtype=torch.float64)
    dirs = _directions(model, xs, y, norm, rng)
    checked = 0
    for scale in (1.0, 1.0 - 2.0**-20):
        for k in range(dirs.shape[1]):
            view = (-1,) + (1,) * (xs.ndim - 1)
            target = xs.double() + dirs[:, k] * (r * scale).view(view)
            pts = project_into_ball(xs, target, r, norm)
            assert (ball_distance(xs, pts, norm) <= r).all()
            with torch.no_grad():
                pred = model(pts).argmax(1)
            bad = pred != y
            assert not bad.any(), (cert.method, norm, idx[bad.numpy()], cert.radius[idx][bad.numpy()])
            checked += len(idx)
    return checked


# ---- reproductions (issue 13) ------------------------------------------------------------


def test_float32_rounding_of_a_large_bias_breaks_no_ibp_certificate():
    """Logits (4096, x + 4096): at x' = 2^-20 + 2^-30 float32 rounds both to 4096, a tie that
    argmax breaks toward class 0, although the exact margin x' is positive."""
    model = _linear([[0.0], [1.0]], [4096.0, 4096.0], torch.float32)
    x = np.array([[2.0**-4 + 2.0**-20]], np.float32)
    inside = torch.tensor([[2.0**-20 + 2.0**-30]], dtype=torch.float32)
    assert model(inside).argmax(1).item() == 0
    for cert in (
        ibp_certify(model, x, eps=2.0**-4),
        crown_certify(model, x, eps=2.0**-4),
        crown_certify(model, x, eps=2.0**-4, intermediate="ibp"),
    ):
        assert cert.abstained[0]
    for cert, norm in (
        (ibp_certify(model, x), "linf"),
        (crown_certify(model, x), "linf"),
        (lipschitz_certify(model, x), "l2"),
    ):
        assert cert.radius[0] < 2.0**-4 + 2.0**-20 - 2.0**-20
        _assert_sound(model, x, cert, norm, np.random.default_rng(0))


def test_lipschitz_radii_of_float32_linear_models_hold_at_the_boundary():
    """Old radii (exact distance less 1e-12) had a float32 prediction change at (1 - 3.2e-7) r
    along the nearest boundary normal for 56 of 60 inputs."""
    torch.manual_seed(0)
    broken = 0
    total = 0
    for _ in range(6):
        model = nn.Sequential(nn.Linear(32, 3)).eval()
        x = torch.randn(10, 32)
        cert = lipschitz_certify(model, x)
        w = model[0].weight.detach().double()
        for i in np.flatnonzero(~cert.abstained):
            y = int(cert.prediction[i])
            z = model[0](x[i : i + 1]).detach().double()[0]
            d = w[y] - w
            dist = (z[y] - z) / d.norm(dim=1)
            dist[y] = np.inf
            j = int(dist.argmin())
            normal = d[j] / d[j].norm()
            target = x[i : i + 1].double() - (1 - 3.2e-7) * float(cert.radius[i]) * normal
            pt = project_into_ball(x[i : i + 1], target, float(cert.radius[i]), "l2")
            broken += int(model(pt).argmax(1).item() != y)
            total += 1
    assert total >= 50 and broken == 0


def test_ibp_with_a_fixed_eps_just_below_the_boundary_is_not_broken():
    """eps a relative 1e-7 below the exact linf distance to the boundary: the old rule certified
    and the worst corner flipped in float32 for 8 of 60 random models. That close the float32
    forward error (about 16 u relative) exceeds the room: nothing certifies; a relative 1e-3
    below, almost all certify, and soundly."""
    rng = np.random.default_rng(1)
    certified = 0
    for _ in range(60):
        w = rng.normal(size=(3, 16))
        b = rng.normal(size=3)
        model = _linear(w, b, torch.float32)
        x = rng.normal(size=(1, 16)).astype(np.float32)
        w32 = model[0].weight.detach().double().numpy()
        z = (x.astype(np.float64) @ w32.T + model[0].bias.detach().double().numpy())[0]
        y = int(model(torch.as_tensor(x)).argmax(1))
        d = w32[y] - w32
        with np.errstate(divide="ignore", invalid="ignore"):
            dist = np.where(np.arange(3) == y, np.inf, (z[y] - z) / np.abs(d).sum(axis=1))
        close = ibp_certify(model, x, eps=float(dist.min()) * (1 - 1e-7))
        assert close.abstained[0]
        cert = ibp_certify(model, x, eps=float(dist.min()) * (1 - 1e-3))
        certified += int(not cert.abstained[0])
        _assert_sound(model, x, cert, "linf", rng)
    assert certified >= 55


def test_float64_model_with_a_hidden_bias_of_2_to_40():
    """z1 = relu(x + 2^40) - 2^40 = x exactly, but float64 rounds x + 2^40 to a multiple of
    2^-12: the old certificates trusted the rounded margin and certified balls reaching x < 0,
    where the exact margin is negative."""
    hidden = nn.Linear(1, 1).double()
    head = nn.Linear(1, 2).double()
    with torch.no_grad():
        hidden.weight.fill_(1.0)
        hidden.bias.fill_(2.0**40)
        head.weight.copy_(torch.tensor([[0.0], [1.0]], dtype=torch.float64))
        head.bias.copy_(torch.tensor([0.0, -(2.0**40)], dtype=torch.float64))
    model = nn.Sequential(hidden, nn.ReLU(), head).eval()
    x = np.array([[2.0**-13 + 2.0**-40]])
    assert model(torch.as_tensor(x)).argmax(1).item() == 1
    for cert, norm in (
        (ibp_certify(model, x), "linf"),
        (crown_certify(model, x), "linf"),
        (lipschitz_certify(model, x, cache=None), "l2"),
    ):
        if not cert.abstained[0]:
            assert x[0, 0] - cert.radius[0] > 0  # the exact margin x' stays positive
            _assert_sound(model, x, cert, norm, np.random.default_rng(2))


# ---- the search ------------------------------------------------------------------------------


def _mlp(rng, dtype, big: float):
    d, h, k = int(rng.integers(2, 6)), int(rng.integers(3, 9)), int(rng.integers(2, 4))
    model = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, k)).to(dtype).eval()
    if big:
        with torch.no_grad():  # a hidden offset that the next layer cancels: the exact function
            model[0].bias.add_(big)  # is unchanged, the float one rounds its low bits away
            model[2].bias.sub_(model[2].weight.sum(dim=1) * big)
    return model, rng.normal(size=(3, d))


def _cnn(rng, dtype, big: float):
    c = int(rng.integers(1, 3))
    model = nn.Sequential(
        nn.Conv2d(1, c, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(c * 4, 3)
    ).to(dtype)
    if big:
        with torch.no_grad():
            model[4].bias.add_(big)
    return model.eval(), rng.uniform(size=(3, 1, 4, 4))


def _linear_model(rng, dtype, big: float):
    d, k = int(rng.integers(1, 9)), int(rng.integers(2, 4))
    w = rng.normal(size=(k, d))
    b = rng.normal(size=k) * 0.01 + big
    return _linear(w, b, dtype), rng.normal(size=(3, d)) * (0.01 if big else 1.0)


_FAMILIES = [
    (_linear_model, torch.float32, 0.0),
    (_linear_model, torch.float64, 0.0),
    (_linear_model, torch.float32, 2.0**12),
    (_linear_model, torch.float64, 2.0**40),
    (_mlp, torch.float32, 0.0),
    (_mlp, torch.float64, 0.0),
    (_mlp, torch.float32, 2.0**12),
    (_mlp, torch.float64, 2.0**40),
    (_cnn, torch.float32, 0.0),
    (_cnn, torch.float64, 2.0**40),
]


def _certificates(model, x, rng, with_lipschitz: bool):
    fixed = float(rng.choice([0.003, 0.03, 0.3]))
    out = [
        (ibp_certify(model, x, eps=fixed, norm="linf"), "linf"),
        (ibp_certify(model, x, norm="linf"), "linf"),
        (ibp_certify(model, x, norm="l2"), "l2"),
        (crown_certify(model, x, norm="linf"), "linf"),
        (crown_certify(model, x, norm="l2", intermediate="ibp"), "l2"),
        (crown_certify(model, x, eps=fixed, norm="l2"), "l2"),
    ]
    if with_lipschitz:
        out.append((lipschitz_certify(model, x), "l2"))
    return out


@pytest.mark.parametrize("family", range(len(_FAMILIES)))
def test_no_prediction_changes_inside_any_certificate(family):
    """20 models per family, 10 families: 200 models, 3 inputs each, 6-7 certificates each."""
    build, dtype, big = _FAMILIES[family]
    rng = np.random.default_rng(100 + family)
    torch.manual_seed(100 + family)
    checked = certified = 0
    for m in range(20):
        model, x = build(rng, dtype, big)
        x = x.astype(np.float32 if dtype == torch.float32 else np.float64)
        lipschitz = build is not _cnn or m < 3  # the conv bound's Fourier grid is the slow part
        for cert, norm in _certificates(model, x, rng, lipschitz):
            certified += int((~cert.abstained).sum())
            checked += _assert_sound(model, x, cert, norm, rng)
    assert certified > 0 and checked > 0


# ---- the PGD audit (issue 13, item 6) ---------------------------------------------------------


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_returns_points_inside_its_ball_for_their_exact_values(norm):
    """Projection in float32 used to return points up to 1.3e-7 (relative) outside the ball."""
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    x = torch.rand(500, 64) + 1.0
    y = model(x).argmax(1)
    for eps in (0.3, 1.0, 3.0):
        adv, hit = pgd_attack(model, x, y, eps=eps, norm=norm, steps=10, clip=None)
        assert adv.dtype == torch.float32 and hit.sum() > 50
        assert (ball_distance(x, adv, norm) <= eps).all()
        with torch.no_grad():
            assert torch.equal(model(adv).argmax(1) != y, hit)
    x64 = x.double()
    far = x64 + torch.randn_like(x64)
    inside = project_into_ball(x64, far, 0.5, norm)
    assert inside.dtype == torch.float64 and (ball_distance(x64, inside, norm) <= 0.5).all()
