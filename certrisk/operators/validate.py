"""ValidateBatchOperator: read a batch, validate it against the policy and the reference set's
features, write the canonical ``batch.parquet`` and plan the certification shards."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context

from certrisk.operators.artifacts import write_parquet
from certrisk.operators.base import CertriskOperator
from certrisk.operators.reference import load_reference
from certrisk.risk.data import batch_sha256, load_batch, plan_shards
from certrisk.schemas.settings import expand_path


class ValidateBatchOperator(CertriskOperator):
    """Validate a production batch (parquet or npz) and stage it for the run.

    :param batch_uri: the batch file (templated; env vars such as ${CERTRISK_HOME} expand).
    :param batch_id: name of the batch; default the file stem (templated).

    Returns ``{"batch_path", "batch_id", "n_samples", "batch_sha256", "shards"}``; ``shards`` is
    the list of ``{"index", "start", "stop"}`` that certification maps over (also pushed as the
    XCom key ``shards``, so ``CertifyOperator.partial(...).expand(shard=validate.output["shards"])``).
    """

    template_fields: Sequence[str] = (*CertriskOperator.template_fields, "batch_uri", "batch_id")

    def __init__(self, *, batch_uri: str, batch_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batch_uri = batch_uri
        self.batch_id = batch_id

    def run(self, context: Context) -> dict:
        lp = self.loaded_policy
        pol = lp.policy
        reference = load_reference(lp)
        batch = load_batch(
            expand_path(self.batch_uri),
            spec=pol.data,
            n_features=pol.model.n_features,
            batch_id=self.batch_id or None,
            feature_names=reference.feature_names,
        )
        frame = batch.to_frame()
        path = write_parquet(self.run_dir(context) / "batch.parquet", frame)
        shards = plan_shards(len(batch), pol.certification.shard_size)
        context["ti"].xcom_push(key="shards", value=shards)
        self.log.info(
            "validated batch %s: %d samples x %d features, %d shard(s) of <= %d",
            batch.batch_id, len(batch), len(batch.feature_names), len(shards), pol.certification.shard_size,
        )
        return {
            "batch_path": path,
            "batch_id": batch.batch_id,
            "n_samples": len(batch),
            "batch_sha256": batch_sha256(batch),
            "shards": shards,
        }
