"""Builders shared by the tests: certificate, prediction and rule rows that follow the column
specs of ``certrisk.schemas.columns``, RunRecords, demo batches cut to size, the digits pipeline
and the task instances of a finished DAG run.

Builders take values, never a random generator: a caller draws its own numbers in its own order,
so switching a test to a builder cannot change what the test sees. Scalars broadcast to every row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from certrisk.schemas.columns import (
    ABSTAIN,
    CERTIFICATE_COLUMNS,
    PREDICTION_COLUMNS,
    RULE_SAMPLE_COLUMNS,
    SAMPLE_ID,
    conform,
)


def _column(value, n: int) -> np.ndarray:
    """``value`` as an array of ``n`` rows (a scalar repeats)."""
    arr = np.asarray(value)
    return np.repeat(arr, n) if arr.ndim == 0 else arr


def certificate_frame(
    sample_ids: Sequence[str],
    *,
    method="smoothing",
    norm="l2",
    prediction=0,
    abstained=False,
    radius=0.5,
    radius_l1=None,
    radius_l2=None,
    radius_linf=None,
    p_lower=0.97,
    n_forward=2064,
    alpha=0.001,
    sigma=0.25,
    eps=np.nan,
    seed=1,
    seconds=0.01,
    peak_bytes=1,
    device="cpu",
    dtype="float32",
) -> pd.DataFrame:
    """Certificate rows (CERTIFICATE_COLUMNS, conformed): one per sample id, every column a scalar
    or one value per row. An abstained row predicts ``ABSTAIN`` whatever ``prediction`` says (the
    contract); radius_l1 / radius_l2 / radius_linf default to ``radius``."""
    n = len(sample_ids)
    abstained = _column(abstained, n).astype(bool)
    values = {
        SAMPLE_ID: list(sample_ids),
        "method": method,
        "norm": norm,
        "prediction": np.where(abstained, ABSTAIN, _column(prediction, n)),
        "abstained": abstained,
        "radius": radius,
        "radius_l1": radius if radius_l1 is None else radius_l1,
        "radius_l2": radius if radius_l2 is None else radius_l2,
        "radius_linf": radius if radius_linf is None else radius_linf,
        "p_lower": p_lower,
        "n_forward": n_forward,
        "alpha": alpha,
        "sigma": sigma,
        "eps": eps,
        "seed": seed,
        "seconds": seconds,
        "peak_bytes": peak_bytes,
        "device": device,
        "dtype": dtype,
        "precision": "fp32",
        "compile": "off",
        "worker": "test-host",
        "queue": "default",
    }
    frame = pd.DataFrame({name: _column(value, n) for name, value in values.items()})
    return conform(frame, CERTIFICATE_COLUMNS, table="certificates")


def prediction_frame(sample_ids: Sequence[str], *, base_prediction=0, base_confidence=0.9) -> pd.DataFrame:
    """Base-model predictions (PREDICTION_COLUMNS, conformed), one row per sample id."""
    n = len(sample_ids)
    frame = pd.DataFrame(
        {
            SAMPLE_ID: list(sample_ids),
            "base_prediction": _column(base_prediction, n),
            "base_confidence": _column(base_confidence, n),
        }
    )
    return conform(frame, PREDICTION_COLUMNS, table="predictions")


def rule_sample_frame(
    sample_ids: Sequence[str], failed: Sequence[Sequence[str]] | None = None, *, severity: str = "warning"
) -> pd.DataFrame:
    """Per-sample rule outcomes (RULE_SAMPLE_COLUMNS): ``failed`` lists, per sample, the names of
    the expectations it failed (default: none); a sample that failed any has ``severity``."""
    failed = [list(f) for f in failed] if failed is not None else [[] for _ in sample_ids]
    frame = pd.DataFrame(
        {
            SAMPLE_ID: list(sample_ids),
            "n_failed": [len(f) for f in failed],
            "max_severity": [severity if f else "none" for f in failed],
            "failed": failed,
        }
    )
    return conform(frame, RULE_SAMPLE_COLUMNS, table="rule_samples")


def run_record(
    run_id: str,
    *,
    sample_risk: pd.DataFrame,
    summary: dict,
    created_at: datetime,
    dag_id: str = "certrisk_digits",
    model_name: str = "digits",
    model_sha256: str = hashlib.sha256(b"model-digits-v1").hexdigest(),
    model_format: str = "safetensors",
    policy_text: str = "model:\n  path: digits.safetensors\n",
    package_version: str = "0.1.0",
    certificates: pd.DataFrame | None = None,
    rule_samples: pd.DataFrame | None = None,
    rule_expectations: pd.DataFrame | None = None,
    drift_tests: pd.DataFrame | None = None,
    rmf_evidence: Sequence[tuple[str, str, str]] = (),
):
    """A RunRecord of batch ``batch-<run_id>``; the policy's name is the model's and its sha256 is
    the policy text's."""
    from certrisk.governance import RunRecord

    return RunRecord(
        dag_id=dag_id,
        run_id=run_id,
        batch_id=f"batch-{run_id}",
        created_at=created_at,
        model_name=model_name,
        model_sha256=model_sha256,
        model_format=model_format,
        policy_name=model_name,
        policy_sha256=hashlib.sha256(policy_text.encode()).hexdigest(),
        policy_text=policy_text,
        package_version=package_version,
        summary=summary,
        sample_risk=sample_risk,
        certificates=certificates,
        rule_samples=rule_samples,
        rule_expectations=rule_expectations,
        drift_tests=drift_tests,
        rmf_evidence=list(rmf_evidence),
    )


def head_batch(source: Path | str, n: int, dest: Path) -> Path:
    """The first ``n`` rows of a batch file, written to ``dest`` (parquet); returns ``dest``."""
    pd.read_parquet(source).head(n).to_parquet(dest, index=False)
    return dest


def digits_pipeline(batch_uri: str, **kwargs):
    """The digits pipeline built with ``certrisk_dag`` under the example's dag_id (so its serialized
    version exists), unscheduled; ``kwargs`` go to the factory (shard_size, run_key, alert, ...)."""
    from certrisk.demo_assets import DATASETS
    from certrisk.operators import certrisk_dag

    spec = DATASETS["digits"]
    return certrisk_dag(str(spec.policy), dag_id=spec.dag_id, schedule=None, batch_uri=batch_uri, **kwargs)


def task_instances(run, task_id: str | None = None) -> list[dict]:
    """The task instances of a finished DAG run (of ``task_id`` only, when given), ordered by task
    and map index: dicts of task_id, map_index, state (a string) and try_number."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        query = session.query(TaskInstance).filter_by(dag_id=run.dag_id, run_id=run.run_id)
        if task_id is not None:
            query = query.filter_by(task_id=task_id)
        return [
            {
                "task_id": ti.task_id,
                "map_index": ti.map_index,
                "state": str(ti.state),
                "try_number": ti.try_number,
            }
            for ti in query.order_by(TaskInstance.task_id, TaskInstance.map_index)
        ]
