"""Run the example pipeline of ``certrisk_dag`` for one batch in-process, without Airflow's scheduler.

The same operator classes the DAG wires run here in the same order, each called through its
``run(context)`` with a minimal context (the DAG run's ids) and the upstream steps' return dicts
passed as XCom would pass them::

    validate -> plan_shards -> certify (each shard) -> merge_certificates -> rules, drift, context
             -> score -> governance write (optional)

Artifacts go under ``<artifacts_dir>/<dag_id>/<run_id>`` as in a DAG run. ``LocalRun`` keeps every
step's dict and reads the tables back (certificates, predictions, rules, drift, context,
sample risk, batch summary), so the evaluation harness can score attacked batches through the
production path and rescore them. ``certrisk evaluate`` uses it; a ``certrisk score`` command can.

No report and no alert task run here: an alert is the caller's to raise from ``LocalRun.tier``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from certrisk.operators.artifacts import read_json, read_parquet
from certrisk.operators.certify import CertifyOperator, MergeCertificatesOperator
from certrisk.operators.governance import GovernanceWriteOperator
from certrisk.operators.score import RiskScoreOperator
from certrisk.operators.signals import ContextOperator, DriftOperator, RuleCheckOperator
from certrisk.operators.validate import PlanShardsOperator, ValidateBatchOperator
from certrisk.schemas.clock import utc_now

#: The dag_id of local runs unless the caller names one (artifacts and records are keyed by it).
LOCAL_DAG_ID = "certrisk_local"


@dataclass(frozen=True)
class LocalDagRun:
    """What the operators read of a DAG run: its ids and when it ran (UTC)."""

    dag_id: str
    run_id: str
    run_after: datetime = field(default_factory=utc_now)

    @property
    def logical_date(self) -> datetime:
        return self.run_after


@dataclass(frozen=True)
class LocalRun:
    """One local pipeline run: each step's return dict (what XCom would carry) and its tables.

    ``recorded`` is the governance write's dict, or None when no database was given.
    """

    dag_run: LocalDagRun
    batch: dict
    shards: list[dict]
    certified: dict
    rules: dict
    drift: dict
    context: dict
    scored: dict
    recorded: dict | None = None

    @property
    def tier(self) -> str:
        """The batch tier."""
        return str(self.scored["tier"])

    def certificates(self) -> pd.DataFrame:
        """CERTIFICATE_COLUMNS, one row per sample and method."""
        return read_parquet(self.certified["certificates"])

    def predictions(self) -> pd.DataFrame:
        """PREDICTION_COLUMNS, one row per sample, in batch order."""
        return read_parquet(self.certified["predictions"])

    def rule_samples(self) -> pd.DataFrame:
        return read_parquet(self.rules["rule_samples"])

    def rule_expectations(self) -> pd.DataFrame:
        return read_parquet(self.rules["rule_expectations"])

    def drift_tests(self) -> pd.DataFrame:
        return read_parquet(self.drift["drift_tests"])

    def novelty(self) -> pd.DataFrame:
        return read_parquet(self.drift["novelty"])

    def context_frame(self) -> pd.DataFrame:
        """CONTEXT_COLUMNS, one row per sample and certified method."""
        return read_parquet(self.context["context"])

    def sample_risk(self) -> pd.DataFrame:
        """SAMPLE_RISK_COLUMNS, one row per sample, in batch order."""
        return read_parquet(self.scored["sample_risk"])

    def batch_summary(self) -> dict:
        """The batch summary (tier, reasons, tier counts, abstention test, ...)."""
        return read_json(self.scored["batch_risk"])


def _context(dag_run: LocalDagRun) -> dict[str, Any]:
    """The minimal task context the operators read: the DAG run (ids and date) and its run_id."""
    return {"dag_run": dag_run, "run_id": dag_run.run_id}


def run_local(
    policy_path: str | Path,
    batch_path: str | Path,
    *,
    artifacts_dir: str | Path,
    run_id: str | None = None,
    dag_id: str = LOCAL_DAG_ID,
    run_key: str | None = None,
    batch_id: str | None = None,
    shard_size: int | None = None,
    device: str | None = None,
    db_url: str | None = None,
) -> LocalRun:
    """Score one batch through the pipeline's operators, in this process.

    :param policy_path: the model's policy YAML.
    :param batch_path: the batch (parquet or npz; ``${CERTRISK_HOME}`` expands).
    :param artifacts_dir: local root of the artifacts; the run's go under ``<dag_id>/<run_id>``.
    :param run_id: default ``local__<UTC time>``; :param dag_id: default ``certrisk_local``.
    :param run_key: key the certification seeds derive from; default ``<dag_id>/<run_id>`` (the
        DAG's rule), so the same ids reproduce a DAG run's certificates.
    :param shard_size: samples per certification shard (default the policy's); each shard is
        certified by its own CertifyOperator call and merged, as the mapped task does.
    :param device: torch device of certification and the reference certificates (default the policy's).
    :param db_url: governance DB URL to record the run in (the GovernanceWriteOperator's record,
        written exactly once per (dag_id, run_id)), or None to write nothing.
    """
    dag_run = LocalDagRun(dag_id, run_id or f"local__{utc_now().strftime('%Y%m%dT%H%M%S.%fZ')}")
    context = _context(dag_run)
    common = {
        "policy_path": str(policy_path),
        "artifacts_uri": f"file://{Path(artifacts_dir).resolve()}",
    }
    batch = ValidateBatchOperator(
        task_id="validate", batch_uri=str(batch_path), batch_id=batch_id, **common
    ).run(context)
    shards = PlanShardsOperator(task_id="plan_shards", batch=batch, shard_size=shard_size, **common).run(
        context
    )
    shard_results = [
        CertifyOperator(
            task_id="certify", batch=batch, shard=shard, device=device, run_key=run_key, **common
        ).run(context)
        for shard in shards
    ]
    certified = MergeCertificatesOperator(
        task_id="merge_certificates", shard_results=shard_results, **common
    ).run(context)
    rules = RuleCheckOperator(task_id="rules", batch=batch, **common).run(context)
    drift = DriftOperator(task_id="drift", batch=batch, **common).run(context)
    ctx = ContextOperator(task_id="context", batch=batch, certified=certified, device=device, **common).run(
        context
    )
    scored = RiskScoreOperator(
        task_id="score",
        batch=batch,
        certified=certified,
        rules=rules,
        drift=drift,
        context_result=ctx,
        **common,
    ).run(context)
    recorded = None
    if db_url is not None:
        recorded = _record(
            db_url,
            context,
            batch=batch,
            certified=certified,
            scored=scored,
            rules=rules,
            drift=drift,
            **common,
        )
    return LocalRun(dag_run, batch, shards, certified, rules, drift, ctx, scored, recorded)


def _record(db_url: str, context: dict, **kwargs: Any) -> dict:
    """Write the run's record with the GovernanceWriteOperator's own record into ``db_url``."""
    from certrisk.governance import GovernanceStore

    writer = GovernanceWriteOperator(task_id="governance_write", **kwargs)
    record = writer.build_record(context)
    result = GovernanceStore(db_url).write_run(record)
    return {
        "status": result.status,
        "revision": int(result.revision),
        "manifest_digest": result.manifest_digest,
        "tier": record.summary["tier"],
    }
