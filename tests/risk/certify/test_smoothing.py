"""Randomized smoothing against closed forms: a linear two-class model's smoothed classifier has
p_A = Phi(dist / sigma) exactly, so its certified radius is known up to sampling error.

Every statistical assertion runs with fixed seeds, so it is deterministic; the bound stated next
to it is the probability that a correct implementation would fail it under a fresh seed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import binom
from torch import nn

from certrisk.risk.certify import (
    CertificateBatch,
    certify_with_spec,
    derive_seeds,
    method_available,
    sequential_stages,
    smooth_certify,
    smooth_predict,
)
from certrisk.risk.certify import smoothing as smoothing_engine
from certrisk.schemas.columns import CERTIFICATE_COLUMNS
from certrisk.schemas.errors import InputError
from certrisk.schemas.policy import IBPSpec, LipschitzSpec, SmoothingSpec

from .conftest import SIGMA, exact_distance, points_at_distance, two_class_linear

D = 10
W = np.linspace(0.5, 1.5, D)
B_BIAS = 0.3


@pytest.fixture(scope="module")
def linear():
    return two_class_linear(W, B_BIAS)


def test_radius_never_exceeds_distance_beyond_alpha(linear):
    """300 inputs, n = 2,000, alpha = 0.01: each certificate is wrong (wrong class certified or
    radius above the true distance) with probability <= alpha, so more than 10 wrong ones has
    probability <= P(Bin(300, 0.01) > 10) < 4e-4 for a correct implementation."""
    alpha = 0.01
    dist = np.linspace(-2.5, 2.5, 300) * SIGMA
    x = points_at_distance(W, B_BIAS, dist, seed=1)
    true_dist = exact_distance(W, B_BIAS, x)
    cert = smooth_certify(linear, x, sigma=SIGMA, n0=100, n=2000, alpha=alpha, seed=11)
    truth = (true_dist > 0).astype(int)
    wrong = ~cert.abstained & ((cert.prediction != truth) | (cert.radius > np.abs(true_dist)))
    assert binom.sf(10, 300, alpha) < 4e-4
    assert wrong.sum() <= 10
    assert (cert.radius[cert.abstained] == 0).all()
    assert (cert.prediction[cert.abstained] == -1).all()


def test_radius_is_tight_at_n_100k(linear):
    """n = 100,000, alpha = 0.001: the radius lies within 0.05 sigma below the distance for
    distances up to 2 sigma. The Clopper-Pearson gap there is at most ~0.03 sigma; exceeding 0.05
    sigma needs a >5-standard-deviation draw (probability < 1e-6 per input). Selection uses
    n0 = 1,000: at 0.25 sigma, p_A = 0.599 and n0 = 100 picks the wrong class with probability
    P(Bin(100, 0.599) <= 50) = 0.029, which would then abstain; with n0 = 1,000 that is < 1e-9."""
    dist = np.array([0.25, 0.75, 1.4, 2.0]) * SIGMA
    x = points_at_distance(W, B_BIAS, dist, seed=2)
    true_dist = exact_distance(W, B_BIAS, x)
    assert binom.cdf(500, 1000, 0.5987) < 1e-9
    cert = smooth_certify(linear, x, sigma=SIGMA, n0=1000, n=100_000, alpha=0.001, seed=3)
    assert (cert.prediction == 1).all()
    assert (cert.radius <= true_dist).all()
    assert (cert.radius >= true_dist - 0.05 * SIGMA).all(), cert.radius - true_dist
    assert (cert.n_forward == 101_000).all()


def test_packing_does_not_change_certificates(trained_cnn, digits):
    """A sample's certificate is identical alone, in a shard of 3 and in a batch of 500."""
    x, _ = digits
    xb = x[:500]
    ids = [f"batch-1:{i}" for i in range(500)]
    seeds = derive_seeds("run-7", ids, "smoothing")
    kw = {"sigma": SIGMA, "n0": 20, "n": 200, "alpha": 0.01, "batch_size": 512}
    full = smooth_certify(trained_cnn, xb, seed=seeds, **kw)
    shard = smooth_certify(trained_cnn, xb[[7, 123, 499]], seed=seeds[[7, 123, 499]], **kw)
    alone = smooth_certify(trained_cnn, xb[123:124], seed=seeds[123:124], **kw)
    for got, rows in ((shard, [7, 123, 499]), (alone, [123])):
        np.testing.assert_array_equal(got.prediction, full.prediction[rows])
        np.testing.assert_array_equal(got.p_lower, full.p_lower[rows])
        np.testing.assert_array_equal(got.radius, full.radius[rows])
        np.testing.assert_array_equal(got.seed, full.seed[rows])
    again = smooth_certify(
        trained_cnn, xb[[7, 123, 499]], seed=seeds[[7, 123, 499]], **{**kw, "batch_size": 1024}
    )
    np.testing.assert_array_equal(again.p_lower, shard.p_lower)


def test_packing_does_not_change_sequential_or_predict(linear):
    """Sequential mode's stages and smooth_predict draw each input's rows wherever they are packed."""
    x = points_at_distance(W, B_BIAS, np.linspace(-1.5, 1.5, 9) * SIGMA, seed=12)
    seeds = np.arange(100, 109)
    kw = {
        "sigma": SIGMA,
        "n0": 50,
        "n": 3000,
        "alpha": 0.01,
        "mode": "sequential",
        "target_radius": 0.5 * SIGMA,
    }
    full = smooth_certify(linear, x, seed=seeds, batch_size=256, **kw)
    part = smooth_certify(linear, x[[4, 0]], seed=seeds[[4, 0]], batch_size=768, **kw)
    np.testing.assert_array_equal(part.p_lower, full.p_lower[[4, 0]])
    np.testing.assert_array_equal(part.n_used, full.n_used[[4, 0]])
    pred = smooth_predict(linear, x, sigma=SIGMA, n=700, alpha=0.01, seed=seeds, batch_size=256)
    one = smooth_predict(linear, x[6:7], sigma=SIGMA, n=700, alpha=0.01, seed=seeds[6:7], batch_size=512)
    assert one[0] == pred[6]


def test_seeds_change_noise(linear):
    x = points_at_distance(W, B_BIAS, np.array([0.5 * SIGMA]), seed=4)
    a = smooth_certify(linear, x, sigma=SIGMA, n=500, seed=1)
    b = smooth_certify(linear, x, sigma=SIGMA, n=500, seed=2)
    c = smooth_certify(linear, x, sigma=SIGMA, n=500, seed=1)
    assert a.p_lower[0] == c.p_lower[0]
    assert a.seed[0] != b.seed[0]


def test_to_frame_contract(linear):
    x = points_at_distance(W, B_BIAS, np.array([0.3, -0.6, 0.0]) * SIGMA, seed=5)
    cert = smooth_certify(linear, x, sigma=SIGMA, n=1000, seed=[5, 6, 7])
    frame = cert.to_frame(["a", "b", "c"])
    assert list(frame.columns) == list(CERTIFICATE_COLUMNS)
    assert [str(t) for t in frame.dtypes] == list(CERTIFICATE_COLUMNS.values())
    assert list(frame["sample_id"]) == ["a", "b", "c"]
    assert frame["seconds"].sum() == pytest.approx(cert.seconds)
    assert (frame["method"] == "smoothing").all() and (frame["norm"] == "l2").all()
    assert (frame["sigma"] == SIGMA).all() and frame["eps"].isna().all()
    assert (frame["seed"].to_numpy() == [5, 6, 7]).all()
    assert (frame["radius_l2"] == frame["radius"]).all()
    assert (frame["radius_l1"] == frame["radius"]).all()
    assert (frame["radius_linf"] <= frame["radius"] / np.sqrt(D) + 1e-15).all()
    assert (frame["device"] == "cpu").all() and (frame["dtype"] == "float32").all()
    assert (frame["peak_bytes"] > 0).all()
    with pytest.raises(InputError):
        cert.to_frame(["only-one"])


def test_derive_seeds():
    a = derive_seeds("run", ["s1", "s2"], "smoothing")
    assert a.dtype == np.int64 and (a >= 0).all()
    np.testing.assert_array_equal(a, derive_seeds("run", ["s1", "s2"], "smoothing"))
    assert derive_seeds("run", ["s2"], "smoothing")[0] == a[1]
    assert derive_seeds("run2", ["s1"], "smoothing")[0] != a[0]
    assert derive_seeds("run", ["s1"], "ibp")[0] != a[0]


def test_smooth_predict(linear):
    dist = np.array([1.5, -1.5, 0.0]) * SIGMA
    x = points_at_distance(W, B_BIAS, dist, seed=6)
    pred = smooth_predict(linear, x, sigma=SIGMA, n=2000, alpha=0.001, seed=1)
    assert pred.dtype == np.int64
    assert list(pred[:2]) == [1, 0]
    assert pred[2] in (-1, 0, 1)
    # exactly on the boundary p_A = 1/2: PREDICT returns a class with probability <= alpha
    at_boundary = points_at_distance(W, B_BIAS, np.zeros(50), seed=7)
    assert (smooth_predict(linear, at_boundary, sigma=SIGMA, n=400, alpha=0.01, seed=2) == -1).sum() >= 45


def test_sequential_matches_fixed_on_clear_cut_inputs(linear):
    """Far inputs certify the target early; inputs on the boundary settle abstention early."""
    dist = np.array([3.0, -3.5, 4.0, 0.0, 0.0, 0.0]) * SIGMA
    x = points_at_distance(W, B_BIAS, dist, seed=8)
    target = 1.0 * SIGMA
    fixed = smooth_certify(linear, x, sigma=SIGMA, n=100_000, alpha=0.001, seed=9)
    seq = smooth_certify(
        linear, x, sigma=SIGMA, n=100_000, alpha=0.001, seed=9, mode="sequential", target_radius=target
    )
    np.testing.assert_array_equal(seq.abstained, fixed.abstained)
    np.testing.assert_array_equal(seq.prediction, fixed.prediction)
    np.testing.assert_array_equal(seq.radius >= target, fixed.radius >= target)
    assert (seq.n_used < fixed.n_used / 10).all(), seq.n_used
    assert seq.extra["stages"] == sequential_stages(100_000)
    assert sequential_stages(100_000)[:3] == [512, 1024, 2048] and sequential_stages(100_000)[-1] == 100_000


def test_sequential_needs_target(linear):
    with pytest.raises(InputError, match="target_radius"):
        smooth_certify(linear, np.zeros((1, D), np.float32), sigma=SIGMA, mode="sequential")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -1.0}, "sigma"),
        ({"sigma": float("nan")}, "sigma"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"n0": 0}, "n0"),
        ({"n": 0}, "n"),
        ({"batch_size": 0}, "batch_size"),
        ({"mode": "fast"}, "mode"),
    ],
)
def test_bad_parameters(linear, change, match):
    kw = {"sigma": SIGMA, "n0": 10, "n": 10, "alpha": 0.01, **change}
    with pytest.raises(InputError, match=match):
        smooth_certify(linear, np.zeros((2, D), np.float32), **kw)


def test_bad_inputs(linear):
    x = np.zeros((3, D), np.float32)
    x[1, 2] = np.nan
    with pytest.raises(InputError, match="row 1"):
        smooth_certify(linear, x, sigma=SIGMA, n=10)
    x[1, 2] = np.inf
    with pytest.raises(InputError, match="NaN or inf"):
        smooth_certify(linear, torch.as_tensor(x), sigma=SIGMA, n=10)
    with pytest.raises(InputError, match="shape"):
        smooth_certify(linear, np.zeros(D, np.float32), sigma=SIGMA, n=10)
    with pytest.raises(InputError, match="rejected"):
        smooth_certify(linear, np.zeros((2, D + 1), np.float32), sigma=SIGMA, n=10)
    with pytest.raises(InputError, match="empty"):
        smooth_certify(linear, np.zeros((0, D), np.float32), sigma=SIGMA, n=10)
    with pytest.raises(InputError, match="seed"):
        smooth_certify(linear, np.zeros((2, D), np.float32), sigma=SIGMA, n=10, seed=[1, 2, 3])


def test_certify_with_spec_dispatch(trained_cnn, digits):
    x, _ = digits
    seeds = derive_seeds("run", [str(i) for i in range(4)], "smoothing")
    smooth = certify_with_spec(trained_cnn, x[:4], SmoothingSpec(sigma=SIGMA, n=200), seeds=seeds)
    assert isinstance(smooth, CertificateBatch) and str(smooth.method) == "smoothing"
    np.testing.assert_array_equal(smooth.seed, seeds)
    ibp = certify_with_spec(trained_cnn, x[:4], IBPSpec(eps=0.001), seeds=seeds)
    assert str(ibp.method) == "ibp" and ibp.eps == 0.001 and np.isnan(ibp.p_lower).all()
    lip = certify_with_spec(trained_cnn, x[:4], LipschitzSpec(), seeds=seeds)
    assert str(lip.method) == "lipschitz" and lip.alpha == 0.0
    assert method_available(trained_cnn, "ibp") == (True, "")
    ok, reason = method_available(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), "lipschitz")
    assert not ok and "Tanh" in reason
    assert method_available(lambda t: t, "smoothing") == (True, "")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_certify_reproducible_and_measured(trained_cnn, digits):
    x, _ = digits
    seeds = derive_seeds("run", [str(i) for i in range(64)], "smoothing")
    # an explicit forward size: CUDA kernels may differ between sizes (see packing.fastest_forward_rows)
    kw = {"sigma": SIGMA, "n0": 100, "n": 4000, "alpha": 0.001, "device": "cuda", "batch_size": 8192}
    full = smooth_certify(trained_cnn, x[:64], seed=seeds, **kw)
    alone = smooth_certify(trained_cnn, x[5:6], seed=seeds[5:6], **kw)
    assert full.device.startswith("cuda:") and full.peak_bytes > 0
    assert alone.p_lower[0] == full.p_lower[5]
    cpu = smooth_certify(trained_cnn, x[:64], seed=seeds, **{**kw, "device": "cpu"})
    agree = (cpu.prediction == full.prediction).mean()
    assert agree > 0.9
    assert next(trained_cnn.parameters()).device.type == "cpu"  # the caller's model is not moved
    seq = smooth_certify(
        trained_cnn, x[:64], seed=seeds, **{**kw, "mode": "sequential", "target_radius": 0.2}
    )
    assert seq.device.startswith("cuda:")


# ---------------------------------------------------------------------------- broken models


class _NaNWhereFirstFeatureIsLarge(nn.Module):
    """The linear model, but its logits are NaN (row 0) or +inf (row 1 onwards) where x[0] > 50."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        out = self.inner(x)
        bad = x[:, 0] > 50
        return torch.where(bad[:, None], torch.tensor([float("nan"), float("inf")], dtype=out.dtype), out)


@pytest.mark.parametrize("mode", ["fixed", "sequential"])
def test_nan_weights_abstain_on_every_input(linear, mode):
    """Safetensors weights holding a NaN load; the smoothed classifier must abstain everywhere
    (argmax of NaN logits would otherwise vote for class 0 every time and certify the largest
    radius on every input)."""
    broken = two_class_linear(W, B_BIAS)
    with torch.no_grad():
        broken[0].weight[0, 0] = float("nan")
    x = points_at_distance(W, B_BIAS, np.linspace(-2, 2, 100) * SIGMA, seed=4)
    kwargs = {"target_radius": 0.5 * SIGMA} if mode == "sequential" else {}
    cert = smooth_certify(broken, x, sigma=SIGMA, n0=32, n=1000, alpha=0.001, seed=5, mode=mode, **kwargs)
    assert cert.abstained.all()
    assert (cert.prediction == -1).all() and (cert.radius == 0).all()
    assert (cert.extra["nonfinite_votes"] > 0).all()
    assert (smooth_predict(broken, x, sigma=SIGMA, n=200, seed=5) == -1).all()


def test_nonfinite_votes_abstain_only_the_inputs_they_hit(linear):
    """Inputs far from the NaN region certify as before; inputs inside it abstain."""
    model = _NaNWhereFirstFeatureIsLarge(linear)
    x = points_at_distance(W, B_BIAS, np.array([2.0, 2.0, -2.0, -2.0]) * SIGMA, seed=6)
    x[[1, 3], 0] = 100.0
    cert = smooth_certify(model, x, sigma=SIGMA, n0=64, n=2000, alpha=0.001, seed=7)
    plain = smooth_certify(linear, x[[0, 2]], sigma=SIGMA, n0=64, n=2000, alpha=0.001, seed=cert.seed[[0, 2]])
    assert list(cert.abstained) == [False, True, False, True]
    np.testing.assert_array_equal(cert.radius[[0, 2]], plain.radius)
    assert list(cert.extra["nonfinite_votes"]) == [0, 2064, 0, 2064]


def test_p_lower_of_one_half_abstains(linear, monkeypatch):
    """Cohen et al. abstain when p_lower <= 1/2: at exactly 1/2 no ball is certified."""
    monkeypatch.setattr(
        smoothing_engine, "clopper_pearson_lower", lambda k, n, alpha: np.full(np.shape(k), 0.5)
    )
    x = points_at_distance(W, B_BIAS, np.array([2.0, -2.0]) * SIGMA, seed=8)
    cert = smooth_certify(linear, x, sigma=SIGMA, n0=32, n=200, alpha=0.001, seed=9)
    assert cert.abstained.all() and (cert.prediction == -1).all() and (cert.radius == 0).all()
