"""The penultimate representation: read with forward hooks where the model exposes it, and a
stated reason where it does not (TorchScript, torch.export, no linear layer)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from certrisk.risk.features import feature_layer, penultimate_features
from certrisk.risk.models import digits_cnn
from certrisk.schemas.errors import InputError


class _Branchy(nn.Module):
    """A head declared before the body: the last linear layer to run is not the last declared."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 2)
        self.body = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def test_features_are_the_input_of_the_last_linear_layer():
    torch.manual_seed(0)
    model = digits_cnn().eval()
    x = np.random.default_rng(0).random((5, 1, 8, 8)).astype(np.float32)
    got = penultimate_features(model, x, rows=2)  # several forward passes
    with torch.no_grad():
        want = model[:-1](torch.as_tensor(x)).double().numpy()  # everything but the last Linear
    assert got.shape == (5, 64) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # float32, other batch sizes
    # the hooks are gone afterwards
    assert all(not m._forward_hooks for m in model.modules())

    branchy = _Branchy().eval()
    z = torch.randn(4, 4)
    np.testing.assert_allclose(
        penultimate_features(branchy, z.numpy()),
        torch.relu(branchy.body(z)).detach().double().numpy(),
        rtol=1e-6,
    )


def test_opaque_models_degrade_with_a_reason(tmp_path):
    model = digits_cnn().eval()
    assert feature_layer(model) == (True, "")
    ok, why = feature_layer(torch.jit.script(model))
    assert not ok and "TorchScript" in why
    exported = torch.export.export(model, (torch.zeros(2, 1, 8, 8),))
    torch.export.save(exported, tmp_path / "m.pt2")
    ok, why = feature_layer(torch.export.load(tmp_path / "m.pt2").module())
    assert not ok and "torch.export" in why
    ok, why = feature_layer(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()))
    assert not ok and "no nn.Linear" in why
    with pytest.raises(InputError, match="TorchScript"):
        penultimate_features(torch.jit.script(model), np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(InputError, match="non-empty"):
        penultimate_features(model, np.zeros((0, 1, 8, 8), np.float32))
