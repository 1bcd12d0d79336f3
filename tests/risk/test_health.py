"""Model health: a broken model must never look safe (NaN weights, constant, chance-level)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from certrisk.risk.health import assess_model, check_output_shape, nonfinite_rows
from certrisk.schemas.errors import InputError, ModelLoadError

CLASSES = tuple(f"c{i}" for i in range(10))


def _labels(n=400, k=10, seed=0):
    return np.random.default_rng(seed).integers(0, k, n)


def _logits_for(pred, k=10):
    out = np.zeros((len(pred), k))
    out[np.arange(len(pred)), pred] = 5.0
    return out


def test_a_good_model_is_healthy():
    y = _labels()
    pred = y.copy()
    pred[:40] = (pred[:40] + 1) % 10  # 90% accurate
    health = assess_model(_logits_for(pred), y, CLASSES)
    assert health.healthy, health.problems
    assert health.accuracy == pytest.approx(0.9)
    assert set(health.class_recall) == set(CLASSES)


def test_nan_weights_every_row_nonfinite_and_flagged():
    net = nn.Linear(4, 10)
    with torch.no_grad():
        net.weight[0, 0] = float("nan")
    logits = net(torch.randn(50, 4)).detach().numpy()
    assert nonfinite_rows(logits).all()
    assert nonfinite_rows(torch.as_tensor(logits)).all()
    health = assess_model(logits, _labels(50), CLASSES)
    assert not health.healthy
    assert health.n_nonfinite == 50
    assert any("non-finite logits on 50 of 50" in p for p in health.problems)


def test_constant_classifier_is_flagged():
    y = _labels()
    health = assess_model(_logits_for(np.full(len(y), 3)), y, CLASSES)
    assert not health.healthy
    assert health.top_class == "c3" and health.top_class_share == 1.0
    assert any("constant" in p for p in health.problems)
    assert any("class recall below" in p for p in health.problems)


def test_constant_classifier_on_imbalanced_binary_data():
    y = np.array([0] * 360 + [1] * 40)
    health = assess_model(_logits_for(np.zeros(400, dtype=int), k=2), y, ("neg", "pos"))
    assert not health.healthy
    assert any("pos 0.000" in p for p in health.problems)


def test_chance_level_model_is_flagged():
    y = _labels(seed=1)
    pred = np.random.default_rng(2).integers(0, 10, len(y))
    health = assess_model(_logits_for(pred), y, CLASSES)
    assert not health.healthy
    assert any("not better than always predicting the majority class" in p for p in health.problems)


def test_output_shape_must_match_classes():
    check_output_shape(nn.Flatten(), (10,), CLASSES, "cpu")
    with pytest.raises(ModelLoadError, match=r"\(1, 3\) was expected"):
        check_output_shape(nn.Flatten(), (10,), ("a", "b", "c"), "cpu")


def test_shapes_are_checked():
    with pytest.raises(InputError, match="do not fit 10 classes"):
        assess_model(np.zeros((5, 3)), np.zeros(5, dtype=int), CLASSES)


def test_to_dict_is_json_ready():
    import json

    y = np.array([0] * 10 + [1] * 10)
    health = assess_model(_logits_for(y, k=3), y, ("a", "b", "c"))
    data = health.to_dict()
    assert data["class_recall"]["c"] is None
    json.dumps(data, allow_nan=False)


def test_predict_never_turns_a_broken_output_into_a_class():
    """-inf in one logit leaves softmax finite, yet the output is broken: ABSTAIN, NaN confidence."""
    from certrisk.risk.models import predict
    from certrisk.schemas.columns import ABSTAIN

    class Broken(nn.Module):
        def forward(self, x):
            out = torch.zeros(len(x), 3)
            out[0, 1] = float("-inf")
            out[1, 2] = float("nan")
            out[2, 0] = 1.0
            return out

    module = Broken()
    module.register_parameter("p", nn.Parameter(torch.zeros(1)))  # predict finds the device here
    pred, conf = predict(module, np.zeros((3, 2), dtype=np.float32))
    assert pred.tolist() == [ABSTAIN, ABSTAIN, 0]
    assert np.isnan(conf[:2]).all() and np.isfinite(conf[2])
