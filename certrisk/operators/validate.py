"""ValidateBatchOperator: check the model, read a batch, validate it against the policy and the
reference set's features and write the canonical ``batch.parquet``; PlanShardsOperator: split it
for mapping.

The model check comes first (``certrisk.operators.model_check.load_checked_model``, the same code
as ``certrisk policy check``): a factory the deployment did not register, weights that do not fit
it or a wrong number of logits fail the run here, before certify, rules and drift run. It loads
the model on the CPU: the check is about the file and its output shape, not the certify device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context

from certrisk.operators.artifacts import write_parquet
from certrisk.operators.base import CertriskOperator
from certrisk.operators.model_check import load_checked_model
from certrisk.operators.reference import load_reference
from certrisk.risk.data import batch_sha256, load_batch, plan_shards
from certrisk.schemas.settings import expand_path


class ValidateBatchOperator(CertriskOperator):
    """Check the policy's model, then validate a production batch (parquet or npz) and stage it.

    A label column in the batch (the policy's ``data.label_column``) is allowed and never scored:
    it is left out of the staged ``batch.parquet``, and the log says so.

    :param batch_uri: the batch file (templated; env vars such as ${CERTRISK_HOME} expand).
    :param batch_id: name of the batch; default the file stem (templated).

    Returns ``{"batch_path", "batch_id", "n_samples", "batch_sha256"}``.
    """

    template_fields: Sequence[str] = (*CertriskOperator.template_fields, "batch_uri", "batch_id")

    def __init__(self, *, batch_uri: str, batch_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batch_uri = batch_uri
        self.batch_id = batch_id

    def run(self, context: Context) -> dict:
        lp = self.loaded_policy
        pol = lp.policy
        model = load_checked_model(lp, device="cpu")
        self.log.info(
            "model %s (sha256 %s) loads and gives %d logits",
            pol.model.name,
            model.sha256[:12],
            len(pol.model.classes),
        )
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
        self.log.info(
            "validated batch %s: %d samples x %d features",
            batch.batch_id,
            len(batch),
            len(batch.feature_names),
        )
        if batch.labels is not None:
            self.log.info(
                "the batch's label column %r is ignored for scoring (not staged, not a feature)",
                pol.data.label_column,
            )
        return {
            "batch_path": path,
            "batch_id": batch.batch_id,
            "n_samples": len(batch),
            "batch_sha256": batch_sha256(batch),
        }


class PlanShardsOperator(CertriskOperator):
    """Plan the certification shards of the staged batch: returns a list of
    ``{"index", "start", "stop"}`` (its return value is what ``CertifyOperator`` maps over).

    :param batch: the ValidateBatchOperator's dict. :param shard_size: overrides the policy's.
    """

    template_fields: Sequence[str] = (*CertriskOperator.template_fields, "batch", "shard_size")

    def __init__(self, *, batch: Any, shard_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batch = batch
        self.shard_size = shard_size

    def run(self, context: Context) -> list[dict]:
        size = int(self.shard_size or self.loaded_policy.policy.certification.shard_size)
        shards = plan_shards(int(self.batch["n_samples"]), size)
        self.log.info("planned %d certification shard(s) of <= %d samples", len(shards), size)
        return shards
