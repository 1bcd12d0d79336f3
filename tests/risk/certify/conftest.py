"""Fixtures for the certification tests: sklearn digits and a demo CNN trained once per session."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from certrisk.risk.models import digits_cnn, train_classifier

SIGMA = 0.25


@pytest.fixture(scope="session")
def digits():
    """(x float32 (N, 1, 8, 8) in [0, 1], y int64 (N,))."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    return x, data.target.astype(np.int64)


@pytest.fixture(scope="session")
def trained_cnn(digits):
    """The demo CNN trained briefly at noise SIGMA on CPU (a couple of seconds)."""
    x, y = digits
    torch.manual_seed(0)
    return train_classifier(digits_cnn(), x, y, noise_sigma=SIGMA, epochs=4, device="cpu")


def two_class_linear(w: np.ndarray, b: float) -> nn.Sequential:
    """Logits (0, w.x + b): class 1 wins iff w.x + b > 0; distance to the boundary |w.x + b| / ||w||."""
    d = w.shape[0]
    layer = nn.Linear(d, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(np.stack([np.zeros(d), w]), dtype=torch.float32))
        layer.bias.copy_(torch.as_tensor([0.0, b], dtype=torch.float32))
    return nn.Sequential(layer).eval()


def points_at_distance(w: np.ndarray, b: float, dist: np.ndarray, seed: int) -> np.ndarray:
    """Points whose signed distance to the boundary w.x + b = 0 is ``dist`` (float32 (len, d))."""
    rng = np.random.default_rng(seed)
    d = w.shape[0]
    unit = w / np.linalg.norm(w)
    base = rng.normal(size=(len(dist), d))
    base -= (base @ unit)[:, None] * unit  # move onto the plane through the origin parallel to the boundary
    base -= (b / np.linalg.norm(w)) * unit  # onto the boundary
    return (base + dist[:, None] * unit).astype(np.float32)


def exact_distance(w: np.ndarray, b: float, x: np.ndarray) -> np.ndarray:
    """Signed distance in float64 of the float32 points x (as the model sees them)."""
    w32 = w.astype(np.float32).astype(np.float64)
    return (x.astype(np.float64) @ w32 + float(np.float32(b))) / np.linalg.norm(w32)
