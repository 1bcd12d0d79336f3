"""The policy loader: the demo policy validates, unknown keys fail naming the key and the file,
defaults are as documented, the sha256 is the file's."""

from __future__ import annotations

import hashlib

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from certrisk.schemas.columns import FACTORS
from certrisk.schemas.enums import Tier
from certrisk.schemas.errors import PolicyError
from certrisk.schemas.policy import (
    DEFAULT_THRESHOLDS,
    DEFAULT_WEIGHTS,
    ScoringSpec,
    load_policy,
    parse_policy,
)
from tests.conftest import REPO

DEMO = REPO / "dags" / "policies" / "digits.yaml"


def demo_data() -> dict:
    return yaml.safe_load(DEMO.read_text("utf-8"))


def test_demo_policy_loads_with_its_sha256():
    loaded = load_policy(DEMO)
    assert loaded.sha256 == hashlib.sha256(DEMO.read_bytes()).hexdigest()
    assert loaded.policy.model.name == "digits-cnn"
    assert loaded.policy.model.n_features == 64
    smoothing = loaded.policy.certification.smoothing
    assert smoothing is not None and smoothing.sigma == 0.25 and smoothing.alpha == 0.001
    assert loaded.policy.alert_tier == Tier.CRITICAL
    assert loaded.policy.scoring == ScoringSpec()


def test_defaults_are_documented_values():
    s = ScoringSpec()
    assert s.weights == DEFAULT_WEIGHTS and list(s.weights) == list(FACTORS)
    assert s.thresholds == DEFAULT_THRESHOLDS
    assert s.abstention_p == 0.01 and s.high_share == 0.2 and s.reference_abstention_rate is None
    # the two guarantees ScoringSpec's docstring argues
    w = s.weights
    assert w["abstention"] >= s.thresholds[Tier.HIGH]
    ceiling = 1 - (1 - w["radius_rank"]) * (1 - w["context"]) * (1 - w["instability"])
    assert ceiling < w["abstention"] and ceiling < s.thresholds[Tier.HIGH]


def test_partial_weights_keep_the_other_defaults():
    s = ScoringSpec(weights={"abstention": 0.9, "novelty": 0.0})
    assert s.weights["abstention"] == 0.9 and s.weights["novelty"] == 0.0
    assert s.weights["rules"] == DEFAULT_WEIGHTS["rules"]


def _set(data: dict, path: tuple, value) -> dict:
    node = data
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return data


UNKNOWN_KEY_PLACES = [(), ("model",), ("data",), ("certification",), ("rules",), ("drift",), ("scoring",)]


@settings(deadline=None, max_examples=30)
@given(
    st.sampled_from(UNKNOWN_KEY_PLACES),
    st.from_regex(r"\A[a-z][a-z_]{2,12}\Z").filter(
        lambda k: (
            k
            not in {
                "name",
                "path",
                "alpha",
                "tests",
                "model",
                "data",
                "weights",
                "profile",
                "methods",
                "format",
                "factory",
                "classes",
                "version",
            }
        )
    ),
)
def test_unknown_keys_fail_naming_the_key_and_the_file(tmp_path_factory, where, key):
    data = demo_data()
    node = data
    for part in where:
        node = node.setdefault(part, {})
    if key in node:
        return
    node[key] = 1
    path = tmp_path_factory.mktemp("p") / "bad.yaml"
    path.write_text(yaml.safe_dump(data), "utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    message = str(info.value)
    dotted = ".".join([*where, key])
    assert f"unknown key {dotted!r}" in message
    assert str(path) in message


def test_unknown_key_in_a_method_is_named():
    data = demo_data()
    data["certification"]["methods"][0]["sigmaa"] = 0.5
    with pytest.raises(PolicyError, match=r"sigmaa") as info:
        parse_policy(data, source="demo.yaml")
    assert "demo.yaml" in str(info.value)


@pytest.mark.parametrize(
    "path, value, match",
    [
        (("scoring", "weights"), {"abstention": 1.5}, "weights must lie in"),
        (("scoring", "weights"), {"typo": 0.5}, "unknown factor"),
        (("scoring", "thresholds"), {"medium": 0.6, "high": 0.5, "critical": 0.9}, "thresholds must satisfy"),
        (("scoring", "thresholds"), {"medium": 0.2, "high": 0.5}, "exactly medium, high, critical"),
        (("alert_tier",), "severe", "alert_tier"),
        (("risk_tolerance",), "", "risk_tolerance"),
        (("model", "input_shape"), [0, 8], "input_shape"),
    ],
)
def test_bad_values_name_the_key(path, value, match):
    data = _set(demo_data(), path, value)
    with pytest.raises(PolicyError, match=match):
        parse_policy(data, source="x.yaml")


def test_missing_key_and_unreadable_file():
    data = demo_data()
    del data["risk_tolerance"]
    with pytest.raises(PolicyError, match="missing key 'risk_tolerance'"):
        parse_policy(data)
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(REPO / "no-such-policy.yaml")
    with pytest.raises(PolicyError, match="must be a mapping"):
        parse_policy([1, 2])


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: [unclosed", "utf-8")
    with pytest.raises(PolicyError, match="not valid YAML") as info:
        load_policy(path)
    assert str(path) in str(info.value)


def test_calibration_and_signals_sections():
    s = ScoringSpec()
    assert s.calibration.false_alarm_rate == 0.05 and s.calibration.medium_rate == 0.2
    assert ScoringSpec(calibration=None).calibration is None
    data = demo_data()
    data["scoring"] = {"calibration": {"false_alarm_rate": 0.2, "medium_rate": 0.1}}
    with pytest.raises(PolicyError, match=r"medium_rate \(0.1\) must exceed false_alarm_rate \(0.2\)"):
        parse_policy(data, source="p.yaml")
    data["scoring"] = {"calibration": {"false_alarm_rate": 0.05, "rate": 0.2}}
    with pytest.raises(PolicyError, match="unknown key 'scoring.calibration.rate'"):
        parse_policy(data, source="p.yaml")
    data = demo_data()
    data["signals"] = {"k": 0}
    with pytest.raises(PolicyError, match="signals.k"):
        parse_policy(data, source="p.yaml")
    loaded = load_policy(DEMO)
    assert loaded.policy.signals.k == 5 and loaded.policy.signals.features
    assert loaded.index_path is not None and loaded.index_path.name == "index.parquet"


def test_review_tier_above_the_alert_tier_is_refused():
    data = {**demo_data(), "review": {"at_tier": "critical"}, "alert_tier": "high"}
    with pytest.raises(PolicyError, match="review.at_tier 'critical' is above alert_tier 'high'"):
        parse_policy(data, source="x.yaml")
    data["review"]["at_tier"] = "high"
    assert parse_policy(data, source="x.yaml").review.at_tier is Tier.HIGH


@pytest.mark.parametrize(
    "factory, ok",
    [("digits_cnn", True), ("certrisk.risk.models:digits_cnn", True), ("os:", False), ("a b:c", False)],
)
def test_factory_is_an_entry_point_name_or_a_target(factory, ok):
    model = {**demo_data()["model"], "format": "safetensors", "factory": factory}
    data = {**demo_data(), "model": model}
    if ok:
        assert parse_policy(data, source="x.yaml").model.factory == factory
    else:
        with pytest.raises(PolicyError, match="registered entry-point name or 'module:function'"):
            parse_policy(data, source="x.yaml")
