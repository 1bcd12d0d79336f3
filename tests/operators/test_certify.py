"""The certify step's operators without a DAG run: the merge of shard artifacts (order, costs,
and the refusals that fail the task at once) and the policy error when no method applies."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml
from airflow.sdk.exceptions import AirflowFailException

from certrisk.operators.artifacts import read_parquet, write_parquet
from certrisk.operators.certify import CertifyOperator, MergeCertificatesOperator
from certrisk.schemas.columns import ABSTAIN
from certrisk.schemas.errors import PolicyError
from tests.factories import certificate_frame, prediction_frame

RUN = SimpleNamespace(dag_id="certrisk_test", run_id="manual__merge")


def _context() -> dict:
    return {"dag_run": RUN}


def _shard(root, index: int, ids: list[str], *, model_sha256="m" * 64, run_key="k/1") -> dict:
    """One CertifyOperator result: smoothing then ibp rows of ``ids``, written like a shard."""
    certs = [
        certificate_frame(ids, method="smoothing", abstained=[i % 2 == 0 for i in range(len(ids))]),
        certificate_frame(ids, method="ibp", norm="linf", sigma=float("nan"), eps=0.1, radius=0.1),
    ]
    name = f"shard-{index:05d}.parquet"
    return {
        "index": index,
        "n_samples": len(ids),
        "certificates": write_parquet(root / "certificates" / name, pd.concat(certs)),
        "predictions": write_parquet(root / "predictions" / name, prediction_frame(ids)),
        "model_sha256": model_sha256,
        "run_key": run_key,
        "device": "cpu",
        "costs": {"smoothing": {"seconds": 1.5, "abstained": 1}, "ibp": {"seconds": 0.25, "abstained": 0}},
    }


def _merge(tmp_path, results) -> MergeCertificatesOperator:
    return MergeCertificatesOperator(
        task_id="merge_certificates",
        policy_path="unused.yaml",
        artifacts_uri=f"file://{tmp_path / 'artifacts'}",
        shard_results=results,
    )


@pytest.fixture
def shard_root(tmp_path):
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(f"file://{tmp_path / 'shards'}")


def test_merge_restores_sample_order_groups_methods_and_adds_costs(tmp_path, shard_root):
    later = _shard(shard_root, 1, ["s2", "s3"])
    first = _shard(shard_root, 0, ["s0", "s1"])
    out = _merge(tmp_path, [later, first]).execute(_context())
    certs = read_parquet(out["certificates"])
    assert certs["method"].tolist() == ["smoothing"] * 4 + ["ibp"] * 4
    assert certs["sample_id"].tolist() == ["s0", "s1", "s2", "s3"] * 2
    smoothing = certs[certs["method"] == "smoothing"]
    assert smoothing["prediction"].tolist() == [ABSTAIN, 0, ABSTAIN, 0]
    assert read_parquet(out["predictions"])["sample_id"].tolist() == ["s0", "s1", "s2", "s3"]
    assert out["n_samples"] == 4 and out["n_shards"] == 2
    assert out["costs"] == {
        "smoothing": {
            "seconds": 3.0,
            "abstained": 2,
            "compile_seconds": 0.0,
            "precision": "fp32",
            "compile": "off",
        },
        "ibp": {
            "seconds": 0.5,
            "abstained": 0,
            "compile_seconds": 0.0,
            "precision": "fp32",
            "compile": "off",
        },
    }
    assert (out["model_sha256"], out["run_key"], out["devices"]) == ("m" * 64, "k/1", ["cpu"])


@pytest.mark.parametrize(
    ("field", "first", "second"),
    [("model_sha256", "a" * 64, "b" * 64), ("run_key", "k/1", "k/2")],
)
def test_merge_of_disagreeing_shards_fails_without_retry_naming_each_shard(
    tmp_path, shard_root, field, first, second
):
    results = [
        _shard(shard_root, 0, ["s0"], **{field: first}),
        _shard(shard_root, 1, ["s1"], **{field: second}),
    ]
    with pytest.raises(
        AirflowFailException, match=f"InputError: .*{field}.*shard 0: {first}, shard 1: {second}"
    ):
        _merge(tmp_path, results).execute(_context())
    assert not (tmp_path / "artifacts" / RUN.dag_id / RUN.run_id / "certificates.parquet").exists()


def test_merge_of_no_shard_fails_without_retry(tmp_path):
    with pytest.raises(AirflowFailException, match="InputError: merge_certificates: no shard results"):
        _merge(tmp_path, []).execute(_context())


class _NotSequential(torch.nn.Module):
    """Callable, but not an nn.Sequential: interval bounds cannot walk it."""

    def forward(self, x):
        return x.flatten(1)[:, :2]


def _toy_operator(tmp_path, certification: dict, **kwargs) -> CertifyOperator:
    """A CertifyOperator on a toy policy (digits CNN factory, (1, 8, 8) inputs, classes a and b,
    reference ``tmp_path/ref.parquet``) with the given certification section."""
    policy = {
        "model": {
            "name": "toy",
            "path": "toy.safetensors",
            "factory": "certrisk.risk.models:digits_cnn",
            "input_shape": [1, 8, 8],
            "classes": ["a", "b"],
        },
        "data": {"reference": "ref.parquet"},
        "certification": certification,
        "risk_tolerance": "Abstained samples go to human review.",
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(policy))
    return CertifyOperator(task_id="certify", policy_path=str(path), **kwargs)


def test_no_applicable_method_is_a_policy_error_naming_the_policy_and_the_shard(tmp_path):
    op = _toy_operator(tmp_path, {"methods": [{"method": "ibp", "eps": 0.1}]}, batch={"n_samples": 2})
    loaded = SimpleNamespace(module=_NotSequential(), device="cpu")
    with pytest.raises(
        PolicyError, match=r"toy\.yaml: certification\.methods: .*toy\.safetensors \(shard 3\): ibp: "
    ):
        op.certify_methods(loaded, torch.zeros(2, 1, 8, 8), ["a", "b"], run_key="k/1", shard_index=3)


def _fragile_digits_model() -> torch.nn.Sequential:
    """(1, 8, 8) inputs, logits (s, (1 + 2^-12) s) with s the pixel sum: class 1 in float32 where
    s > 0, a tie (class 0) in bf16, whose 8-bit mantissa rounds both weights to 1."""
    layer = torch.nn.Linear(64, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.stack([torch.ones(64), torch.full((64,), 1.0 + 2.0**-12)]))
    return torch.nn.Sequential(torch.nn.Flatten(), layer).eval()


def test_certify_runs_at_the_policy_precision_and_measures_serving_parity(tmp_path, caplog, monkeypatch):
    import numpy as np

    ref = pd.DataFrame(np.full((10, 64), 0.5, dtype=np.float32), columns=[f"p{i}" for i in range(64)])
    ref.iloc[7:] *= -1  # 7 positive rows differ between bf16 and fp32, 3 negative rows agree
    ref.insert(0, "sample_id", [f"r{i}" for i in range(10)])
    ref["label"] = 0
    ref.to_parquet(tmp_path / "ref.parquet")
    certification = {
        "methods": [{"method": "smoothing", "sigma": 0.25, "n0": 20, "n": 200, "batch_size": 64}],
        "precision": "bf16",
        "parity_threshold": 0.05,
    }
    op = _toy_operator(tmp_path, certification, batch={"n_samples": 2}, queue="gpu")
    loaded = SimpleNamespace(module=_fragile_digits_model(), device=torch.device("cpu"))
    certs, costs = op.certify_methods(
        loaded, torch.rand(2, 1, 8, 8), ["a", "b"], run_key="k/1", shard_index=0
    )
    assert set(certs["precision"]) == {"bf16"} and set(certs["queue"]) == {"gpu"}
    assert set(certs["worker"]) == {socket.gethostname()}  # outside Airflow: the machine
    named, _ = op.certify_methods(
        loaded, torch.rand(2, 1, 8, 8), ["a", "b"], run_key="k/1", shard_index=0, worker="gpu-7"
    )
    assert set(named["worker"]) == {"gpu-7"}  # in a task: the host Airflow records for it
    assert named.dtypes.equals(certs.dtypes)  # the same columns and dtypes either way
    assert costs["smoothing"]["precision"] == "bf16" and costs["smoothing"]["compile"] == "off"
    import logging

    # the task logger does not reach caplog; the operator logs through self.log, so route that here
    monkeypatch.setattr(CertifyOperator, "log", property(lambda _self: logging.getLogger("test.certify")))
    with caplog.at_level("WARNING", logger="test.certify"):
        parity = op.measure_parity(loaded)
    assert (parity["differ"], parity["n"], parity["above_threshold"]) == (7, 10, True)
    assert "serving parity: 7 of 10 reference inputs (70.00%) predict differently at bf16" in caplog.text


def test_every_method_kind_certifies_through_the_operator(tmp_path):
    """Smoothing and the deterministic methods side by side in one shard: one row per sample and
    method, each method's cost recorded (their ``extra`` facts differ in kind; the operator reads
    them all)."""
    methods = [
        {"method": "smoothing", "sigma": 0.25, "n0": 20, "n": 100, "batch_size": 64},
        {"method": "ibp", "eps": 0.01},
        {"method": "crown", "eps": 0.01},
        {"method": "lipschitz"},
    ]
    op = _toy_operator(tmp_path, {"methods": methods}, batch={"n_samples": 3})
    loaded = SimpleNamespace(module=_fragile_digits_model(), device=torch.device("cpu"))
    certs, costs = op.certify_methods(
        loaded, torch.rand(3, 1, 8, 8), ["a", "b", "c"], run_key="k/1", shard_index=0
    )
    assert sorted(costs) == ["crown", "ibp", "lipschitz", "smoothing"]
    assert certs.groupby("method")["sample_id"].apply(sorted).to_dict() == {
        m: ["a", "b", "c"] for m in ("crown", "ibp", "lipschitz", "smoothing")
    }
