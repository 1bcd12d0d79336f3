"""A broken model never looks safe (DESIGN.md, Principle 7): NaN weights, a constant classifier and
a model at chance make the batch critical through the production scoring path, and every sample
whose base logits are not finite abstains with the reason named."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from certrisk.risk.certify import certify_with_spec
from certrisk.risk.health import check_model, reference_logits
from certrisk.risk.models import predict
from certrisk.risk.score import score_samples
from certrisk.risk.tiering import score_batch
from certrisk.schemas.columns import ABSTAIN, NONFINITE_LOGITS_ATTR
from certrisk.schemas.errors import ModelLoadError, PolicyError
from certrisk.schemas.policy import HealthSpec, parse_policy
from tests.factories import certificate_frame, prediction_frame

CLASSES = ("a", "b", "c")
POLICY = parse_policy(
    {
        "model": {
            "name": "toy",
            "path": "toy.safetensors",
            "factory": "toy:build",
            "input_shape": [4],
            "classes": list(CLASSES),
        },
        "data": {"reference": "ref.parquet"},
        "certification": {
            "methods": [{"method": "smoothing", "sigma": 0.25, "n0": 32, "n": 500, "alpha": 0.001}]
        },
        "risk_tolerance": "Abstained samples go to human review.",
    },
    source="test-policy.yaml",
)


def _reference(n=300, seed=0):
    """Three well separated Gaussian classes in 4 dimensions: (inputs, labels)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    centres = np.eye(3, 4) * 6.0
    return (centres[labels] + rng.normal(0, 0.5, (n, 4))).astype(np.float32), labels


def _linear(weight_fill=None):
    """A linear classifier that separates ``_reference`` (weights = the class centres)."""
    net = nn.Linear(4, 3)
    with torch.no_grad():
        net.weight.copy_(torch.eye(3, 4))
        net.bias.zero_()
        if weight_fill is not None:
            net.weight[0, 0] = weight_fill
    return net.eval()


class _Constant(nn.Module):
    """The research's example of a model that certifies every point: always class 0."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        out = torch.zeros(len(x), 3, dtype=x.dtype) + 0.0 * self.scale
        out[:, 0] = 5.0
        return out


class _Chance(nn.Module):
    """A model at chance: a fixed pseudo-random class for each input, unrelated to its label."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([12.9898, 78.233, 37.719, 4.581]))

    def forward(self, x):
        h = torch.frac(torch.sin(x @ self.w) * 43758.5453).abs()
        cls = (h * 3).long().clamp(max=2)
        return nn.functional.one_hot(cls, 3).to(x.dtype) * 5.0


def _score(module, x, ids):
    """The production path: base predictions, the policy's certificates, the health record on the
    reference, per-sample scores and the batch summary."""
    ref_x, ref_y = _reference()
    health = check_model(module, ref_x, ref_y, CLASSES, POLICY.health).to_dict()
    base_pred, base_conf = predict(module, x)
    spec = POLICY.certification.methods[0]
    cert = certify_with_spec(module, x, spec, seeds=np.arange(len(ids)), device="cpu")
    sample_risk = score_samples(
        certificates=cert.to_frame(ids),
        predictions=prediction_frame(ids, base_prediction=base_pred, base_confidence=base_conf),
        policy=POLICY,
    )
    summary = score_batch(sample_risk, policy=POLICY, reference_abstention_rate=0.0, model_health=health)
    json.dumps(summary, allow_nan=False)
    return sample_risk, summary


def test_a_healthy_model_is_healthy_and_its_batch_is_not_made_critical():
    x, _ = _reference(60, seed=1)
    ids = [f"s{i}" for i in range(len(x))]
    sample_risk, summary = _score(_linear(), torch.as_tensor(x), ids)
    assert summary["model_healthy"] is True and summary["model_health"]["problems"] == []
    assert summary["model_health"]["accuracy"] > 0.95
    assert summary["n_nonfinite_logits"] == 0 and sample_risk.attrs[NONFINITE_LOGITS_ATTR] == []
    assert not any("model health" in r for r in summary["reasons"])


def test_nan_weights_every_sample_abstains_and_the_batch_is_critical():
    x, _ = _reference(100, seed=2)
    ids = [f"s{i}" for i in range(len(x))]
    sample_risk, summary = _score(_linear(float("nan")), torch.as_tensor(x), ids)
    assert sample_risk["abstained"].all()
    assert (sample_risk["prediction"] == ABSTAIN).all()
    assert (sample_risk["tier"].isin(["high", "critical"])).all()
    assert summary["abstention_rate"] == 1.0
    assert summary["tier"] == "critical"
    assert summary["model_healthy"] is False
    assert summary["n_nonfinite_logits"] == 100 and summary["nonfinite_logits"] == ids
    health_reason = [r for r in summary["reasons"] if "model health" in r]
    assert len(health_reason) == 1 and health_reason[0].startswith("critical: model health: ")
    assert "non-finite logits on 300 of 300 reference samples" in health_reason[0]
    assert "non-finite base logits on 100 batch sample(s), which abstain: 's0', 's1'" in health_reason[0]


def test_nonfinite_base_logits_alone_make_the_batch_critical_without_a_health_record():
    ids = ["a", "b", "c"]
    sample_risk = score_samples(
        certificates=certificate_frame(ids, prediction=1),
        predictions=prediction_frame(
            ids, base_prediction=[1, 1, ABSTAIN], base_confidence=[0.9, np.nan, 0.9]
        ),
        policy=POLICY,
    )
    assert list(sample_risk["abstained"]) == [False, True, True]
    assert list(sample_risk["prediction"]) == [1, ABSTAIN, ABSTAIN]
    assert sample_risk["factor_instability"].eq(0.0).all()  # no instability from a garbage base class
    summary = score_batch(sample_risk, policy=POLICY)
    assert summary["tier"] == "critical" and summary["model_healthy"] is None
    assert "model_health" in summary["not_measured"]
    assert summary["reasons"][0] == (
        "critical: model health: non-finite base logits on 2 batch sample(s), which abstain: 'b', 'c': "
        "no certificate of this model can be trusted"
    )


@pytest.mark.parametrize(
    "module, problem", [(_Constant(), "constant"), (_Chance(), "not better than always")]
)
def test_constant_and_chance_level_models_make_the_batch_critical(module, problem):
    x, _ = _reference(60, seed=3)
    ids = [f"s{i}" for i in range(len(x))]
    _, summary = _score(module, torch.as_tensor(x), ids)
    assert summary["tier"] == "critical"
    assert summary["model_healthy"] is False
    assert any(problem in p for p in summary["model_health"]["problems"])
    assert any(r.startswith("critical: model health: ") and problem in r for r in summary["reasons"])


def test_chance_model_is_at_chance_on_the_reference():
    ref_x, ref_y = _reference()
    pred = reference_logits(_Chance(), ref_x).argmax(axis=1)
    assert 0.2 < (pred == ref_y).mean() < 0.45
    assert set(np.unique(pred)) == {0, 1, 2}  # not constant: only the chance test catches it


def test_wrong_number_of_logits_is_a_load_error():
    ref_x, ref_y = _reference(30)
    with pytest.raises(ModelLoadError, match=r"model.classes has 4 classes"):
        check_model(_linear(), ref_x, ref_y, ("a", "b", "c", "d"), HealthSpec())


def test_health_policy_section_is_strict_and_has_documented_defaults():
    spec = HealthSpec()
    assert (spec.min_class_recall, spec.max_top_class_excess, spec.chance_alpha) == (0.05, 0.25, 0.01)
    assert POLICY.health == spec
    data = POLICY.model_dump(mode="json")
    data["health"] = {"min_class_recall": 0.1, "typo": 1}
    with pytest.raises(PolicyError, match=r"unknown key 'health.typo'"):
        parse_policy(data, source="p.yaml")
    data["health"] = {"chance_alpha": 0.0}
    with pytest.raises(PolicyError, match=r"health.chance_alpha"):
        parse_policy(data, source="p.yaml")


def test_limitations_state_the_health_floors():
    from certrisk.risk.limitations import limitations

    data = POLICY.model_dump(mode="json")
    data["health"] = {"min_class_recall": 0.1, "max_top_class_excess": 0.2, "chance_alpha": 0.005}
    text = limitations(parse_policy(data, source="p.yaml"))
    assert "(one-sided binomial test at level 0.005)" in text
    assert "recall at least 0.1" in text and "more than 0.2 above its share" in text
    assert "MEASURE 2.3" in text
