"""Issue 14: policy numbers have bounds (sigma finite and > 0, n and n0 at most
``MAX_NOISE_SAMPLES``, eps and target_radius finite), and an error inside a method is reported
alone, without a false "methods should have at least 1 item"."""

from __future__ import annotations

import math

import pytest
import yaml

from certrisk.schemas.errors import PolicyError
from certrisk.schemas.policy import MAX_NOISE_SAMPLES, parse_policy
from tests.conftest import REPO

DEMO = REPO / "dags" / "policies" / "digits.yaml"


def _with_smoothing(**changes) -> dict:
    data = yaml.safe_load(DEMO.read_text("utf-8"))
    method = next(m for m in data["certification"]["methods"] if m["method"] == "smoothing")
    method.update(changes)
    return data


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"sigma": math.inf}, r"smoothing\.sigma': Input should be a finite number"),
        ({"sigma": math.nan}, r"smoothing\.sigma': Input should be a finite number"),
        ({"sigma": 0.0}, r"smoothing\.sigma': Input should be greater than 0"),
        ({"n": 10**12}, rf"smoothing\.n': Input should be less than or equal to {MAX_NOISE_SAMPLES}"),
        ({"n0": MAX_NOISE_SAMPLES + 1}, r"smoothing\.n0': Input should be less than or equal to"),
        ({"target_radius": math.inf}, r"smoothing\.target_radius': Input should be a finite number"),
    ],
    ids=["sigma-inf", "sigma-nan", "sigma-zero", "n-huge", "n0-huge", "target-radius-inf"],
)
def test_out_of_bounds_numbers_are_refused(changes, message):
    with pytest.raises(PolicyError, match=message):
        parse_policy(_with_smoothing(**changes))


def test_yaml_inf_is_refused():
    text = DEMO.read_text("utf-8")
    data = yaml.safe_load(text)
    data["certification"]["methods"] = yaml.safe_load("- {method: smoothing, sigma: .inf}")
    with pytest.raises(PolicyError, match="finite number"):
        parse_policy(data)


def test_limits_are_accepted():
    policy = parse_policy(_with_smoothing(n=MAX_NOISE_SAMPLES, n0=MAX_NOISE_SAMPLES))
    assert policy.certification.smoothing.n == MAX_NOISE_SAMPLES


def test_a_nested_error_is_reported_without_a_false_too_short():
    with pytest.raises(PolicyError) as info:
        parse_policy(_with_smoothing(sigma="wide"))
    message = str(info.value)
    assert "smoothing.sigma': Input should be a valid number" in message
    assert "at least 1 item" not in message
    data = yaml.safe_load(DEMO.read_text("utf-8"))
    data["certification"]["methods"] = []
    with pytest.raises(PolicyError, match="certification.methods': Tuple should have at least 1 item"):
        parse_policy(data)
