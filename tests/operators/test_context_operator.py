"""ContextOperator without a DAG run: the reference is certified once per key (through the
artifact cache), the driving method gives the index role's abstention rate, and the result keeps
the keys the scorer reads: context, signals and the tier calibration."""

from __future__ import annotations

import inspect
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from airflow.sdk.exceptions import AirflowFailException

from certrisk.operators.artifacts import read_parquet
from certrisk.operators.cache import ArtifactCache
from certrisk.operators.reference import reference_roles_of
from certrisk.operators.signals import ContextOperator
from certrisk.risk.data import batch_sha256
from certrisk.risk.models import save_safetensors, tabular_mlp
from certrisk.risk.reference import reference_certificates_key, reference_roles
from certrisk.schemas.columns import CONTEXT_COLUMNS, SIGNAL_COLUMNS
from certrisk.schemas.policy import load_policy
from tests.factories import certificate_frame, prediction_frame

RUN = SimpleNamespace(dag_id="certrisk_test", run_id="manual__context")
FEATURES = [f"f{i}" for i in range(4)]


@pytest.fixture
def setup(tmp_path):
    """A policy (IBP listed first, smoothing second: smoothing drives), model, reference, batch."""
    torch.manual_seed(0)
    sha = save_safetensors(tabular_mlp(4), tmp_path / "m.safetensors")
    rng = np.random.default_rng(0)
    ref = pd.DataFrame(rng.normal(size=(30, 4)).astype(np.float32), columns=FEATURES)
    ref.insert(0, "sample_id", [f"r{i}" for i in range(30)])
    ref["label"] = rng.integers(0, 2, 30)
    ref.to_parquet(tmp_path / "ref.parquet")
    ids = ["b0", "b1", "b2"]
    batch = pd.DataFrame(rng.normal(size=(3, 4)).astype(np.float32), columns=FEATURES)
    batch.insert(0, "sample_id", ids)
    batch.to_parquet(tmp_path / "batch.parquet")
    certs = pd.concat(
        [
            certificate_frame(ids, method="ibp", norm="linf", sigma=np.nan, eps=0.01, radius=0.01),
            certificate_frame(
                ids, method="smoothing", abstained=[False, True, False], radius=[0.2, 0.0, 0.1]
            ),
        ]
    )
    certs.to_parquet(tmp_path / "certificates.parquet")
    prediction_frame(ids, base_prediction=[0, 1, 1]).to_parquet(tmp_path / "predictions.parquet")
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
            "methods": [
                {"method": "ibp", "eps": 0.01},
                {"method": "smoothing", "sigma": 0.25, "n0": 16, "n": 128, "batch_size": 256},
            ],
            "device": "cpu",
        },
        "risk_tolerance": "Abstained samples go to human review.",
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(policy))
    op = ContextOperator(
        task_id="context",
        policy_path=str(tmp_path / "p.yaml"),
        artifacts_uri=f"file://{tmp_path / 'artifacts'}",
        batch={"batch_path": f"file://{tmp_path / 'batch.parquet'}", "batch_id": "b"},
        certified={
            "certificates": f"file://{tmp_path / 'certificates.parquet'}",
            "predictions": f"file://{tmp_path / 'predictions.parquet'}",
            "model_sha256": sha,
        },
    )
    return op, tmp_path


def _no_certify(op: ContextOperator):
    """A certifying_model that serves forward passes but fails any reference certification."""
    real = op.certifying_model

    def model():
        loaded = real()
        if any(f.function == "_certify" for f in inspect.stack()):
            raise AssertionError("the reference was certified again instead of read from the cache")
        return loaded

    return model


def _fresh(op: ContextOperator) -> ContextOperator:
    """The same task again, as a new process would run it (nothing loaded yet)."""
    return ContextOperator(
        task_id=op.task_id,
        policy_path=op.policy_path,
        artifacts_uri=op.artifacts_uri,
        batch=op.batch,
        certified=op.certified,
    )


def test_context_certifies_the_reference_once_and_reports_the_driving_method(setup):
    op, _ = setup
    out = op.execute({"dag_run": RUN})
    assert set(out) == {
        "context",
        "signals",
        "reference",
        "reference_abstention_rate",
        "n_reference",
        "model_health",
        "calibration",
    }
    assert set(out["reference"]) == {"ibp", "smoothing"}
    # batches are compared with the reference's index role only (not its calibration samples)
    roles = reference_roles_of(load_policy(op.policy_path))
    n_index = len(roles.index)
    assert 0 < n_index < 30 and n_index == int(
        (reference_roles([f"r{i}" for i in range(30)]) == "index").sum()
    )
    assert out["n_reference"] == n_index and out["reference"]["smoothing"]["n_reference"] == n_index
    assert out["reference_abstention_rate"] == out["reference"]["smoothing"]["abstention_rate"]
    frame = read_parquet(out["context"])
    assert list(frame.columns) == list(CONTEXT_COLUMNS)
    assert frame["method"].tolist() == ["ibp"] * 3 + ["smoothing"] * 3
    assert frame["radius_percentile"].iloc[4] == 0.0  # b1 abstained under smoothing
    assert "model" in op.__dict__  # the model was loaded to certify the reference

    # what the cache holds: bool abstention, under a key naming every parameter; the certified
    # reference is its index, signal and tier roles (the evaluation role stays held out)
    lp = load_policy(op.policy_path)
    reference = roles.fitted
    assert len(reference) == 30 - int((reference_roles([f"r{i}" for i in range(30)]) == "evaluation").sum())
    key = reference_certificates_key(
        lp.policy.certification.methods[1],
        model_sha256=op.certified["model_sha256"],
        policy_sha256=lp.sha256,
        reference_sha256=batch_sha256(reference),
        device="cpu",
    )
    assert ArtifactCache().path("reference_certificates", key).exists()
    stored = ArtifactCache().get_or_compute_arrays("reference_certificates", key, dict)
    assert stored["abstained"].dtype == np.bool_ and stored["radius"].dtype == np.float64
    assert stored["prediction"].dtype == np.int64
    index_rows = roles.slices()["index"]
    assert out["reference_abstention_rate"] == pytest.approx(stored["abstained"][index_rows].mean())

    # signals: one row per batch sample and signal (the MLP exposes its penultimate layer)
    signals = read_parquet(out["signals"])
    assert list(signals.columns) == list(SIGNAL_COLUMNS)
    assert sorted(set(signals["signal"])) == ["feature_neighbours", "neighbours"]
    assert (signals.groupby("signal")["sample_id"].apply(list) == [["b0", "b1", "b2"]] * 2).all()
    assert signals["factor"].between(0, 1).all() and signals["p_value"].between(0, 1).all()
    # a tier role of a few samples: too few for a 5% threshold (the fixed one applies), enough at 20%
    cal = out["calibration"]
    assert cal["n_calibration"] == len(roles.tier) < 19
    assert cal["feasible"] is False and cal["high"]["source"] == "policy"
    json.dumps(out, allow_nan=False)  # an XCom value

    again = _fresh(op)
    again.certifying_model = _no_certify(again)  # the model may load for batch features, never certify
    assert again.execute({"dag_run": RUN}) == out


def test_a_changed_model_file_fails_without_retry(setup):
    op, tmp_path = setup
    torch.manual_seed(1)
    save_safetensors(tabular_mlp(4), tmp_path / "m.safetensors")  # another model, new cache key
    op.certified = {**op.certified, "model_sha256": "0" * 64}
    with pytest.raises(AirflowFailException, match="ModelLoadError: .*differs from the model that certified"):
        op.execute({"dag_run": RUN})


def test_without_feature_signals_a_second_run_never_loads_the_model(setup):
    """With the feature signal switched off, everything the context step reads of the model
    (reference certificates, outputs, the tier calibration) comes from the cache on a second run."""
    op, tmp_path = setup
    data = yaml.safe_load((tmp_path / "p.yaml").read_text())
    data["signals"] = {"features": False}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    first = _fresh(op)
    out = first.execute({"dag_run": RUN})
    assert "model" in first.__dict__  # the first run certified the reference
    assert sorted(set(read_parquet(out["signals"])["signal"])) == ["neighbours"]
    again = _fresh(op)
    assert again.execute({"dag_run": RUN}) == out
    assert "model" not in again.__dict__  # every reference certificate came from the cache
