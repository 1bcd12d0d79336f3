"""Certification precision, compile and serving parity: recorded, sound, and honest about fallbacks."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from certrisk.risk.certify import certify_with_spec, smooth_certify
from certrisk.risk.certify.packing import ESTIMATION, SELECTION, NoiseSampler
from certrisk.risk.certify.precision import ExecutedModel, check_precision, serving_parity
from certrisk.risk.certify.stats import clopper_pearson_lower, smoothing_radius
from certrisk.schemas.errors import PolicyError
from certrisk.schemas.policy import CertificationSpec, IBPSpec, SmoothingSpec
from tests.risk.certify.conftest import SIGMA


def _bf16_fragile_model(d: int = 4) -> nn.Sequential:
    """Logits (w.x, (1 + 2^-12) w.x): in float32 class 1 wins wherever w.x > 0; in bf16 (8-bit
    mantissa) both weights round to the same value, the logits tie and argmax picks class 0."""
    layer = nn.Linear(d, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0] * d, [1.0 + 2.0**-12] * d]))
    return nn.Sequential(layer).eval()


def test_precision_and_compile_are_recorded_in_every_certificate_row(trained_cnn, digits):
    x = digits[0][:4]
    cert = smooth_certify(trained_cnn, x, sigma=SIGMA, n0=50, n=500, precision="bf16", batch_size=256)
    assert (cert.precision, cert.compile) == ("bf16", "off")
    frame = cert.to_frame()
    assert set(frame["precision"]) == {"bf16"} and set(frame["compile"]) == {"off"}
    assert cert.extra["execution"]["precision"] == "bf16"


def test_deterministic_methods_keep_sound_arithmetic_and_record_fp32(trained_cnn, digits):
    x = digits[0][:2]
    cert = certify_with_spec(trained_cnn, x, IBPSpec(eps=0.01), seeds=0, precision="bf16", compile="default")
    assert (cert.precision, cert.compile) == ("fp32", "off")


def test_bf16_certificates_agree_with_fp32_and_use_the_same_bound(trained_cnn, digits):
    xs = digits[0][:12]
    kw = {"sigma": SIGMA, "n0": 100, "n": 1000, "alpha": 0.001, "batch_size": 512, "seed": 7}
    fp32 = smooth_certify(trained_cnn, xs, **kw)
    bf16 = smooth_certify(trained_cnn, xs, precision="bf16", **kw)
    both = ~fp32.abstained & ~bf16.abstained
    assert both.sum() >= 9
    assert (fp32.prediction[both] == bf16.prediction[both]).all()
    assert np.abs(fp32.radius[both] - bf16.radius[both]).max() < 0.05
    # the bf16 certificate is Clopper-Pearson on the bf16 model's own counts, with the same noise
    with torch.inference_mode():
        executed = ExecutedModel(trained_cnn, precision="bf16", device=torch.device("cpu"))
        sampler = NoiseSampler(executed, torch.as_tensor(xs), sigma=SIGMA, seeds=bf16.seed, forward_rows=512)
        sampler.sample([(SELECTION, 0, 100), (ESTIMATION, 0, 1000)])
        selection, estimation = sampler.counts(SELECTION, ESTIMATION)
    c_a = selection.argmax(1)
    p_lower = clopper_pearson_lower(estimation[np.arange(len(c_a)), c_a], 1000, 0.001)
    np.testing.assert_array_equal(bf16.p_lower, p_lower)
    certified = ~bf16.abstained
    np.testing.assert_array_equal(bf16.radius[certified], smoothing_radius(p_lower, SIGMA)[certified])
    assert (bf16.prediction[certified] == c_a[certified]).all()


def test_fp16_runs_on_cpu_and_unknown_precisions_name_the_key():
    check_precision("fp16", torch.device("cpu"))
    with pytest.raises(PolicyError, match=r"certification\.precision: must be one of fp32, bf16, fp16"):
        check_precision("fp8", torch.device("cpu"))
    with pytest.raises(PolicyError, match=r"certification\.compile"):
        ExecutedModel(nn.Linear(2, 2), compile="fastest", device=torch.device("cpu"))
    with pytest.raises(ValueError, match="precision"):
        CertificationSpec(methods=[SmoothingSpec(sigma=0.25)], precision="fp8")
    spec = CertificationSpec(methods=[SmoothingSpec(sigma=0.25)])
    assert (spec.precision, spec.compile, spec.serving_precision, spec.parity_threshold) == (
        "fp32",
        "off",
        "fp32",
        0.01,
    )


def test_compile_failure_falls_back_to_eager_with_a_warning(trained_cnn, digits, monkeypatch, caplog):
    def broken_compile(*_args, **_kwargs):
        raise RuntimeError("no C++ compiler for inductor (test)")

    monkeypatch.setattr(torch, "compile", broken_compile)
    x = digits[0][:3]
    kw = {"sigma": SIGMA, "n0": 50, "n": 500, "batch_size": 256, "seed": 3}
    with caplog.at_level(logging.WARNING, logger="certrisk.risk.certify.precision"):
        compiled = smooth_certify(trained_cnn, x, compile="default", **kw)
    assert "torch.compile(mode='default') failed, certifying with the eager model" in caplog.text
    assert compiled.compile == "off"
    assert "no C++ compiler" in compiled.extra["execution"]["compile_fallback"]
    eager = smooth_certify(trained_cnn, x, **kw)
    np.testing.assert_array_equal(compiled.p_lower, eager.p_lower)
    np.testing.assert_array_equal(compiled.prediction, eager.prediction)


def test_a_graph_that_fails_at_its_first_run_falls_back_for_the_whole_job(trained_cnn, digits, monkeypatch):
    calls = []

    def failing_graph(_model, **_kwargs):
        def run(x):
            calls.append(x.shape[0])
            raise RuntimeError("inductor codegen failed (test)")

        return run

    monkeypatch.setattr(torch, "compile", failing_graph)
    x = digits[0][:2]
    cert = smooth_certify(trained_cnn, x, sigma=SIGMA, n0=20, n=300, batch_size=256, compile="max-autotune")
    assert cert.compile == "off" and calls == [256]  # one failed warm-up, then eager throughout
    assert cert.extra["execution"]["compile_requested"] == "max-autotune"


def test_serving_parity_counts_inputs_whose_prediction_changes_with_precision():
    model = _bf16_fragile_model()
    x = torch.cat([torch.full((6, 4), 0.5), torch.full((4, 4), -0.5)])
    parity = serving_parity(model, x, precision="bf16", serving_precision="fp32", threshold=0.01)
    assert parity["measured"] and parity["differ"] == 6 and parity["n"] == 10
    assert parity["share"] == pytest.approx(0.6) and parity["above_threshold"]
    same = serving_parity(model, x, precision="fp32", serving_precision="fp32", threshold=0.01)
    assert (same["measured"], same["share"], same["above_threshold"]) == (False, 0.0, False)
    low = serving_parity(model, x[6:], precision="bf16", serving_precision="fp32", threshold=0.01)
    assert low["share"] == 0.0 and not low["above_threshold"]


def test_parity_above_threshold_is_stated_in_the_limitations(demo_policy_for_parity):
    from certrisk.risk.limitations import limitations

    parity = {
        "share": 0.6,
        "differ": 6,
        "n": 10,
        "threshold": 0.01,
        "above_threshold": True,
        "measured": True,
        "precision": "bf16",
        "serving_precision": "fp32",
    }
    text = limitations(demo_policy_for_parity, parity=parity)
    assert "runs the model at bf16 (autocast)" in text
    assert "6 (60.00%) are predicted differently" in text
    assert "above the policy's threshold" in text
    quiet = limitations(
        demo_policy_for_parity, parity={**parity, "share": 0.0, "differ": 0, "above_threshold": False}
    )
    assert "above the policy's threshold" not in quiet
    assert "was not measured" in limitations(demo_policy_for_parity)


@pytest.fixture
def demo_policy_for_parity():
    from certrisk.schemas.policy import Policy

    return Policy.model_validate(
        {
            "model": {
                "name": "toy",
                "path": "toy.safetensors",
                "factory": "certrisk.risk.models:digits_cnn",
                "input_shape": [1, 8, 8],
                "classes": [str(i) for i in range(10)],
            },
            "data": {"reference": "ref.parquet"},
            "certification": {"methods": [{"method": "smoothing", "sigma": 0.25}], "precision": "bf16"},
            "risk_tolerance": "Abstained samples go to human review.",
        }
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (channels_last, CUDA graphs)")
def test_cuda_compiled_bf16_uses_channels_last_and_cuda_graphs(trained_cnn, digits):
    model = trained_cnn.to("cuda")
    executed = ExecutedModel(model, precision="bf16", compile="default", device=torch.device("cuda"))
    x = torch.as_tensor(digits[0][:4], device="cuda")
    cert = smooth_certify(executed, x, sigma=SIGMA, n0=50, n=2000, batch_size=1024)
    info = cert.extra["execution"]
    assert info["channels_last"] and info["compile"] == "default" and info["cuda_graphs"]
    eager = smooth_certify(model, x, sigma=SIGMA, n0=50, n=2000, batch_size=1024, precision="bf16")
    assert (cert.prediction == eager.prediction).mean() >= 0.75
