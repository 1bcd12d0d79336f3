"""The context and score steps on data of known geometry (no DAG run): two well separated classes,
a model that learned them, and a batch in which two samples of class 0 carry certificates of
class 1 (certified attacks, as far as the certificate can tell). The neighbour signal flags them,
the tier role calibrates the thresholds, and the batch summary and limitations record the
calibration."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from certrisk.operators.artifacts import read_json, read_parquet
from certrisk.operators.reference import reference_roles_of
from certrisk.operators.score import RiskScoreOperator
from certrisk.operators.signals import ContextOperator, DriftOperator, RuleCheckOperator
from certrisk.risk.models import save_safetensors, tabular_mlp, train_classifier
from certrisk.risk.reference import reference_roles
from certrisk.schemas.errors import InputError
from certrisk.schemas.policy import load_policy
from tests.factories import certificate_frame, prediction_frame

RUN = SimpleNamespace(dag_id="certrisk_test", run_id="manual__signals")
FEATURES = [f"f{i}" for i in range(4)]
N_REFERENCE = 400


def _clusters(rng, n, label):
    x = rng.normal(scale=0.5, size=(n, 4)).astype(np.float32)
    x[:, 0] += 3.0 if label == 1 else -3.0
    return x


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    """Policy, trained model, reference, staged batch and certificates; then context and score."""
    tmp = tmp_path_factory.mktemp("signals")
    rng = np.random.default_rng(0)
    x = np.r_[_clusters(rng, N_REFERENCE // 2, 0), _clusters(rng, N_REFERENCE // 2, 1)]
    y = np.r_[np.zeros(N_REFERENCE // 2, int), np.ones(N_REFERENCE // 2, int)]
    torch.manual_seed(0)
    model = train_classifier(tabular_mlp(4), x, y, noise_sigma=0.25, epochs=20, device="cpu")
    sha = save_safetensors(model, tmp / "m.safetensors")
    ref = pd.DataFrame(x, columns=FEATURES)
    ref.insert(0, "sample_id", [f"r{i}" for i in range(N_REFERENCE)])
    ref["label"] = y
    ref.to_parquet(tmp / "ref.parquet")
    ids = [f"b{i}" for i in range(8)]
    batch = pd.DataFrame(_clusters(rng, 8, 0), columns=FEATURES)  # all of them near class 0
    batch.insert(0, "sample_id", ids)
    batch.to_parquet(tmp / "batch.parquet")
    claimed = [0, 0, 0, 0, 0, 0, 1, 1]  # b6, b7: certified as class 1 among class-0 neighbours
    certificate_frame(ids, prediction=claimed, radius=0.4).to_parquet(tmp / "certificates.parquet")
    prediction_frame(ids, base_prediction=claimed).to_parquet(tmp / "predictions.parquet")
    policy = {
        "model": {
            "name": "toy",
            "path": "m.safetensors",
            "factory": "certrisk.risk.models:tabular_mlp",
            "factory_kwargs": {"n_features": 4},
            "input_shape": [4],
            "classes": ["a", "b"],
        },
        "data": {"reference": "ref.parquet"},
        "certification": {
            "methods": [{"method": "smoothing", "sigma": 0.25, "n0": 16, "n": 256, "batch_size": 512}],
            "device": "cpu",
        },
        "rules": {"range_tolerance": 0.5},
        "drift": {"tests": ["ks"]},
        "risk_tolerance": "Flagged samples go to human review.",
    }
    (tmp / "p.yaml").write_text(yaml.safe_dump(policy))
    common = {"policy_path": str(tmp / "p.yaml"), "artifacts_uri": f"file://{tmp / 'artifacts'}"}
    staged = {"batch_path": f"file://{tmp / 'batch.parquet'}", "batch_id": "b", "batch_sha256": "0" * 64}
    certified = {
        "certificates": f"file://{tmp / 'certificates.parquet'}",
        "predictions": f"file://{tmp / 'predictions.parquet'}",
        "model_sha256": sha,
    }
    ctx = ContextOperator(task_id="context", batch=staged, certified=certified, **common).execute(
        {"dag_run": RUN}
    )
    rules = RuleCheckOperator(task_id="rules", batch=staged, **common).execute({"dag_run": RUN})
    drift = DriftOperator(task_id="drift", batch=staged, **common).execute({"dag_run": RUN})
    scored = RiskScoreOperator(
        task_id="score",
        batch=staged,
        certified=certified,
        rules=rules,
        drift=drift,
        context_result=ctx,
        **common,
    ).execute({"dag_run": RUN})
    return tmp, ctx, scored


def test_the_neighbour_signal_flags_certified_samples_its_neighbours_contradict(steps):
    _, ctx, _ = steps
    signals = read_parquet(ctx["signals"])
    near = signals[signals["signal"] == "neighbours"].set_index("sample_id")
    flagged, agreeing = near.loc[["b6", "b7"]], near.drop(index=["b6", "b7"])
    assert (flagged["score"] > 0.5).all() and (agreeing["score"] < 0.5).all()
    # beyond every score of the signal role: the smallest p-value, a factor close to 1; the agreeing
    # samples are ranked among the clean ones (a tail share of them above 0, by design)
    assert (flagged["p_value"] == flagged["p_value"].min()).all() and flagged["p_value"].max() < 0.05
    assert flagged["factor"].min() > max(0.9, agreeing["factor"].max())
    assert set(signals["signal"]) == {"neighbours", "feature_neighbours"}


def test_the_tier_role_calibrates_the_thresholds(steps):
    tmp, ctx, _ = steps
    cal = ctx["calibration"]
    roles = reference_roles_of(load_policy(tmp / "p.yaml"))
    n_tier = int((reference_roles([f"r{i}" for i in range(N_REFERENCE)]) == "tier").sum())
    assert cal["n_calibration"] == len(roles.tier) == n_tier >= 19
    # the clean tier role abstains nowhere: the conformal threshold lies below the abstention floor
    assert cal["feasible"] and cal["high"]["source"] == "conformal" and cal["high"]["strict"]
    assert cal["conformal_high"] == cal["high"]["value"] < 0.6
    assert cal["medium"]["value"] <= cal["high"]["value"]
    json.dumps(ctx, allow_nan=False)


def test_the_summary_and_limitations_record_the_calibration(steps):
    _, ctx, scored = steps
    summary = read_json(scored["batch_risk"])
    assert summary["calibration"] == ctx["calibration"]
    assert summary["thresholds"]["high"] == ctx["calibration"]["high"]
    assert (
        "tier_calibration" in summary["evidence_kinds"] and "tier_calibration" not in summary["not_measured"]
    )
    assert "neighbours" not in summary["not_measured"] and "reference_agreement" in summary["evidence_kinds"]
    sr = read_parquet(scored["sample_risk"]).set_index("sample_id")
    assert set(sr.loc[["b6", "b7"], "tier"]) <= {"high", "critical"}
    assert sr.loc[["b6", "b7"], "risk"].min() > sr.drop(index=["b6", "b7"])["risk"].max()
    assert all(top[0] == "neighbours" for top in sr.loc[["b6", "b7"], "top_factors"])
    text = (steps[0] / "artifacts" / RUN.dag_id / RUN.run_id / "limitations.md").read_text()
    assert "Calibrated tiers" in text and "This run: Split-conformal calibration on the" in text


def test_a_neighbour_index_holding_held_out_reference_samples_is_refused(steps, tmp_path):
    tmp, _, _ = steps
    ref = pd.read_parquet(tmp / "ref.parquet")
    held_out = ref[reference_roles(ref["sample_id"]) == "tier"].head(2).copy()
    held_out["sample_id"] = ["copy0", "copy1"]  # other ids, the same samples
    held_out.to_parquet(tmp_path / "index.parquet")
    data = yaml.safe_load((tmp / "p.yaml").read_text())
    data["data"] = {"reference": str(tmp / "ref.parquet"), "index": str(tmp_path / "index.parquet")}
    data["model"]["path"] = str(tmp / "m.safetensors")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(InputError, match="2 sample\\(s\\) of data.index are held-out reference samples"):
        reference_roles_of(load_policy(tmp_path / "p.yaml"))
