"""Lipschitz bounds: exact for linear maps, above sampled gradient norms, sound against PGD."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from certrisk.risk.audit import pgd_numpy
from certrisk.risk.certify import certify_with_spec, lipschitz, lipschitz_certify, lipschitz_constant
from certrisk.risk.certify.lipschitz import ALGORITHM, CACHE_KIND, FREQ_GRID, conv_norm_bound, layer_constant
from certrisk.schemas.errors import InputError
from certrisk.schemas.policy import LipschitzSpec

from .conftest import exact_distance, points_at_distance, two_class_linear


def test_linear_constant_is_the_spectral_norm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 5))
    exact = np.linalg.norm(model[0].weight.detach().double().numpy(), 2)
    got = lipschitz_constant(model)
    assert exact <= got <= exact * (1 + 1e-8)


def test_lipschitz_radius_of_linear_model_is_the_distance():
    """The radius is the exact distance to the boundary less at most the float32 forward error
    of the logit over the ball, gamma_5 (|w|.|x'| + |b|) <= gamma_5 (|w|.|x| + r ||w|| + |b|) with
    gamma_5 = 5 u / (1 - 5 u), u = 2^-24, over ||w|| (twice that allowed for the outward rounding
    of the bound itself)."""
    w = np.array([0.3, -1.2, 0.8, 2.0])
    model = two_class_linear(w, -0.2)
    dist = np.linspace(-3, 3, 41)
    x = points_at_distance(w, -0.2, dist, seed=0)
    cert = lipschitz_certify(model, x)
    true = np.abs(exact_distance(w, -0.2, x))
    assert (cert.radius <= true).all()
    ok = ~cert.abstained
    assert ok.sum() == (true > 0.1).sum()
    w32 = w.astype(np.float32).astype(np.float64)
    gamma5 = 5 * 2.0**-24 / (1 - 5 * 2.0**-24)
    norm_w = np.linalg.norm(w32)
    forward_error = gamma5 * (np.abs(x.astype(np.float64)) @ np.abs(w32) + true * norm_w + 0.2) / norm_w
    assert (true[ok] - cert.radius[ok] <= 2 * forward_error[ok]).all()


def test_multiclass_linear_radius_never_exceeds_boundary_distance():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 4)).double()
    x = torch.randn(200, 5, dtype=torch.float64)
    cert = lipschitz_certify(model, x)
    w, b = model[0].weight.detach(), model[0].bias.detach()
    z = x @ w.T + b
    y = z.argmax(1)
    margins = z.gather(1, y[:, None]) - z
    norms = (w[y][:, None, :] - w[None, :, :]).norm(dim=2)
    dist = (margins / norms).scatter(1, y[:, None], np.inf).min(dim=1).values.numpy()
    assert (cert.radius <= dist).all()
    np.testing.assert_allclose(cert.radius, dist, rtol=1e-6)


def _conv_matrix_norm(conv: nn.Conv2d, size: int) -> float:
    """Exact operator norm of the convolution on (c_in, size, size) inputs (explicit matrix)."""
    conv = conv.double()
    n_in = conv.in_channels * size * size
    eye = torch.eye(n_in, dtype=torch.float64).view(n_in, conv.in_channels, size, size)
    with torch.no_grad():
        mat = (conv(eye) - conv(torch.zeros_like(eye[:1]))).reshape(n_in, -1)
    return float(torch.linalg.matrix_norm(mat, ord=2))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"padding": 1},
        {"padding": 0},
        {"padding": 1, "stride": 2},
        {"padding": 2, "dilation": 2},
        {"padding": 1, "groups": 2},
    ],
)
def test_conv_bound_is_above_the_exact_norm(kwargs):
    torch.manual_seed(2)
    conv = nn.Conv2d(4, 6, 3, **kwargs)
    bound = conv_norm_bound(conv.weight, conv.groups, conv.dilation)
    for size in (5, 8, 12):
        assert _conv_matrix_norm(conv, size) <= bound
    if conv.stride == (1, 1) and conv.dilation == (1, 1):  # strided/dilated: sound, looser on small inputs
        # and not loose: within 10% of the largest explicit norm
        assert bound <= 1.1 * _conv_matrix_norm(conv, 16) + 1e-9


def test_pool_constants():
    x = torch.randn(1000, 2, 8, 8, dtype=torch.float64)
    y = torch.randn(1000, 2, 8, 8, dtype=torch.float64)
    for pool in (
        nn.AvgPool2d(2),
        nn.AvgPool2d(3, stride=1),
        nn.MaxPool2d(2),
        nn.MaxPool2d(3, stride=2, padding=1),
    ):
        ratio = (pool(x) - pool(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
        assert float(ratio.max()) <= layer_constant(pool)
    assert layer_constant(nn.AvgPool2d(2)) == pytest.approx(0.5)


def test_constant_is_above_sampled_jacobian_norms(trained_cnn, digits):
    x, _ = digits
    const = lipschitz_constant(trained_cnn)
    rng = np.random.default_rng(0)
    pts = np.concatenate([x[:20], x[:20] + rng.normal(scale=0.3, size=x[:20].shape).astype(np.float32)])
    largest = 0.0
    for p in pts:
        jac = torch.autograd.functional.jacobian(trained_cnn, torch.as_tensor(p[None])).reshape(10, -1)
        largest = max(largest, float(torch.linalg.matrix_norm(jac.double(), ord=2)))
    assert largest <= const
    assert lipschitz_constant(trained_cnn) == const


def test_pgd_finds_nothing_inside_lipschitz_radius(trained_cnn, digits):
    x, _ = digits
    xs = x[:60]
    cert = lipschitz_certify(trained_cnn, xs)
    assert cert.n_forward.tolist() == [2] * 60
    ok = np.flatnonzero(~cert.abstained)
    assert ok.size > 30
    for i in ok[:30]:
        _, hit = pgd_numpy(
            trained_cnn,
            xs[i : i + 1],
            cert.prediction[i : i + 1],
            eps=float(cert.radius[i]),
            norm="l2",
            steps=20,
            restarts=2,
            clip=None,
        )
        assert not hit.any()
    frame = cert.to_frame()
    assert (frame["radius_linf"] <= frame["radius"] / 8 + 1e-15).all()


class RecordingCache:
    """An injected cache (the ArtifactCache's duck type) that records what it is asked."""

    def __init__(self, tamper=None):
        self.calls = []
        self.values = {}
        self.tamper = tamper

    def get_or_compute(self, kind, key, compute):
        self.calls.append((kind, dict(key)))
        name = (kind, tuple(sorted(key.items())))
        if name not in self.values:
            self.values[name] = np.asarray(compute())
        return self.values[name] if self.tamper is None else self.tamper(self.values[name])


def test_constants_go_through_the_injected_cache_keyed_by_everything(monkeypatch):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 16, 3))
    cache = RecordingCache()
    first = lipschitz_constant(model, cache)
    kind, key = cache.calls[-1]
    assert kind == CACHE_KIND
    assert (
        key["algorithm"] == ALGORITHM and key["freq_grid"] == FREQ_GRID and len(key["weights_sha256"]) == 64
    )
    assert lipschitz_constant(model, cache) == first and len(cache.values) == 1
    with torch.no_grad():
        model[3].weight.mul_(2.0)
    assert lipschitz_constant(model, cache) > first and len(cache.values) == 2
    monkeypatch.setattr(lipschitz, "FREQ_GRID", 32)
    lipschitz_constant(model, cache)
    assert cache.calls[-1][1]["freq_grid"] == 32 and len(cache.values) == 3
    x = np.random.default_rng(0).uniform(size=(4, 1, 4, 4)).astype(np.float32)
    via_spec = certify_with_spec(model, x, LipschitzSpec(), seeds=0, cache=cache)
    assert via_spec.extra["lipschitz_constant"] == lipschitz_constant(model, cache)


def test_a_malformed_cached_value_is_refused():
    model = nn.Sequential(nn.Linear(4, 3))
    for tamper in (lambda v: v[:0], lambda v: v * np.nan, lambda v: -v):
        with pytest.raises(InputError, match="lipschitz cache entry"):
            lipschitz_constant(model, RecordingCache(tamper))


def test_no_file_is_read_or_written(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"file access: {args}")

    monkeypatch.setattr("builtins.open", refuse)
    monkeypatch.setattr("pathlib.Path.read_text", refuse)
    monkeypatch.setattr("pathlib.Path.write_text", refuse)
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 2))
    cert = lipschitz_certify(model, torch.randn(3, 5))
    assert cert.extra["lipschitz_constant"] > 0
