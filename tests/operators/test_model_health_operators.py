"""A broken model through the certify, context and score operators (no DAG run): safetensors
weights holding a NaN load, every sample abstains with the reason named and the batch is
critical; a model whose logits do not match the policy's classes fails the certify task at load."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from airflow.sdk import ObjectStoragePath
from airflow.sdk.exceptions import AirflowFailException

from certrisk.operators.artifacts import read_json, read_parquet, write_parquet
from certrisk.operators.certify import CertifyOperator
from certrisk.operators.reference import load_reference
from certrisk.operators.score import RiskScoreOperator
from certrisk.operators.signals import ContextOperator
from certrisk.risk.models import save_safetensors, tabular_mlp
from certrisk.schemas.columns import ABSTAIN, CONTEXT_COLUMNS

RUN = SimpleNamespace(dag_id="certrisk_test", run_id="manual__health")
FEATURES = [f"f{i}" for i in range(4)]


def _write(tmp_path, *, nan_weights: bool, classes=("a", "b")):
    """A policy, model, labelled reference and staged batch; returns (policy path, batch dict)."""
    torch.manual_seed(0)
    model = tabular_mlp(4)
    if nan_weights:
        with torch.no_grad():
            model[0].weight[0, 0] = float("nan")
    save_safetensors(model, tmp_path / "m.safetensors")
    rng = np.random.default_rng(0)
    ref = pd.DataFrame(rng.normal(size=(40, 4)).astype(np.float32), columns=FEATURES)
    ref.insert(0, "sample_id", [f"r{i}" for i in range(40)])
    ref["label"] = np.arange(40) % 2
    ref.to_parquet(tmp_path / "ref.parquet")
    batch = pd.DataFrame(rng.normal(size=(6, 4)).astype(np.float32), columns=FEATURES)
    batch.insert(0, "sample_id", [f"b{i}" for i in range(6)])
    batch.to_parquet(tmp_path / "batch.parquet")
    policy = {
        "model": {
            "name": "toy",
            "path": "m.safetensors",
            "factory": "certrisk.risk.models:tabular_mlp",
            "factory_kwargs": {"n_features": 4},
            "input_shape": [4],
            "classes": list(classes),
        },
        "data": {"reference": "ref.parquet"},
        "certification": {
            "methods": [{"method": "smoothing", "sigma": 0.25, "n0": 16, "n": 128, "batch_size": 256}],
            "device": "cpu",
        },
        "risk_tolerance": "Abstained samples go to human review.",
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(policy))
    staged = {
        "batch_path": f"file://{tmp_path / 'batch.parquet'}",
        "batch_id": "b",
        "batch_sha256": "0" * 64,
        "n_samples": 6,
    }
    return str(tmp_path / "p.yaml"), staged


def _common(tmp_path, policy_path):
    return {"policy_path": policy_path, "artifacts_uri": f"file://{tmp_path / 'artifacts'}"}


def test_nan_weights_abstain_everywhere_and_make_the_batch_critical(tmp_path):
    policy_path, staged = _write(tmp_path, nan_weights=True)
    common = _common(tmp_path, policy_path)
    certified = CertifyOperator(task_id="certify", batch=staged, **common).execute({"dag_run": RUN})
    preds = read_parquet(certified["predictions"])
    assert (preds["base_prediction"] == ABSTAIN).all() and preds["base_confidence"].isna().all()
    certs = read_parquet(certified["certificates"])
    assert certs["abstained"].all() and (certs["prediction"] == ABSTAIN).all()

    op = ContextOperator(task_id="context", batch=staged, certified=certified, **common)
    health = op.model_health(load_reference(op.loaded_policy))
    assert health["n_nonfinite"] == 40 and health["problems"]
    json.dumps(health, allow_nan=False)  # an XCom value
    # The context step's result as the score step reads it. (ContextOperator.run itself cannot rank
    # radii when the reference certified no sample: risk.context raises "reference_radii: empty".)
    ids = [f"b{i}" for i in range(6)]
    frame = pd.DataFrame({"sample_id": ids, "method": "smoothing"})
    for column in CONTEXT_COLUMNS:
        if column not in frame:
            frame[column] = np.nan
    context = {
        "context": write_parquet(ObjectStoragePath(f"file://{tmp_path / 'context.parquet'}"), frame),
        "reference_abstention_rate": 1.0,
        "n_reference": 40,
        "model_health": health,
    }

    scored = RiskScoreOperator(
        task_id="score", batch=staged, certified=certified, context_result=context, **common
    ).execute({"dag_run": RUN})
    assert scored["tier"] == "critical" and scored["abstention_rate"] == 1.0
    assert scored["reasons"][0].startswith("critical: model health: non-finite logits on 40 of 40")
    summary = read_json(scored["batch_risk"])
    assert summary["model_health"] == health and summary["model_healthy"] is False
    assert summary["nonfinite_logits"] == [f"b{i}" for i in range(6)]


def test_logits_that_do_not_match_the_classes_fail_the_certify_task(tmp_path):
    policy_path, staged = _write(tmp_path, nan_weights=False, classes=("a", "b", "c"))
    op = CertifyOperator(task_id="certify", batch=staged, **_common(tmp_path, policy_path))
    with pytest.raises(AirflowFailException, match=r"ModelLoadError: .*\(1, 3\) was expected"):
        op.execute({"dag_run": RUN})
