"""CertifyOperator (mapped over shards) and MergeCertificatesOperator (the reduce step).

Each shard loads the model (failing when it gives other than one logit per policy class),
predicts with the base model (a sample whose logits are not finite gets base prediction ABSTAIN
and confidence NaN, and abstains when scored) and runs every certification method the policy
names (skipping, with a warning, methods the model's layers do not allow). Seeds derive
from (run key, sample_id, method), so a retried or re-sharded task reproduces its certificates.
Smoothing runs at the policy's ``certification.precision`` and ``compile`` and logs its progress
within the shard at a bounded rate (``ProgressLog``); shard 0 also measures the serving parity
(base predictions at the certification precision against the serving precision, on the
reference set), which the merge step carries to scoring and the run record.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from airflow.sdk import Context

from certrisk.operators.artifacts import read_parquet, write_parquet
from certrisk.operators.base import CertriskOperator
from certrisk.operators.reference import load_reference, read_staged_batch
from certrisk.risk.certify import certify_with_spec, derive_seeds, method_available
from certrisk.risk.certify.precision import serving_parity
from certrisk.risk.certify.progress import ProgressLog
from certrisk.risk.health import check_output_shape
from certrisk.risk.models import load_model, predict
from certrisk.schemas.columns import ABSTAIN, CERTIFICATE_COLUMNS, PREDICTION_COLUMNS, SAMPLE_ID, conform
from certrisk.schemas.errors import InputError, PolicyError


class CertifyOperator(CertriskOperator):
    """Certify one shard of the staged batch with the policy's methods.

    :param batch: the dict a ValidateBatchOperator returned (templated, usually its XComArg).
    :param shard: ``{"index", "start", "stop"}``; None certifies the whole batch as shard 0.
    :param device: torch device; default the policy's, else CUDA when available, else CPU.
    :param run_key: key the seeds derive from (templated); default ``<dag_id>/<run_id>``. Give two
        runs the same key to reproduce one run's certificates in another (e.g. re-sharded).

    Writes ``certificates/shard-NNNNN.parquet`` (CERTIFICATE_COLUMNS, one row per sample and
    method) and ``predictions/shard-NNNNN.parquet``; returns their paths and a small summary.
    """

    template_fields: Sequence[str] = (*CertriskOperator.template_fields, "batch", "shard", "run_key_override")

    def __init__(
        self,
        *,
        batch: Any,
        shard: dict | None = None,
        device: str | None = None,
        run_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.batch = batch
        self.shard = shard
        self.device = device
        self.run_key_override = run_key

    def run(self, context: Context) -> dict:
        lp = self.loaded_policy
        pol = lp.policy
        if pol.certification.torch_threads:
            torch.set_num_threads(pol.certification.torch_threads)
        shard = self.shard or {"index": 0, "start": 0, "stop": int(self.batch["n_samples"])}
        batch = read_staged_batch(lp, self.batch, start=shard["start"], stop=shard["stop"])
        loaded = load_model(pol.model, lp.model_path, device=self.device or pol.certification.device)
        check_output_shape(loaded.module, pol.model.input_shape, pol.model.classes, loaded.device)
        # a parquet-backed array can be read-only (pandas copy-on-write): torch needs a writable one
        x = torch.from_numpy(np.require(batch.inputs(pol.model.input_shape), requirements=["C", "W"]))
        base_pred, base_conf = predict(loaded.module, x, device=loaded.device)
        nonfinite = ~np.isfinite(base_conf)
        if nonfinite.any():
            self.log.warning("base model: non-finite logits on %d of %d samples", nonfinite.sum(), len(x))
            base_pred = np.where(nonfinite, ABSTAIN, base_pred)
        run_key = self.run_key_override or self.run_key(context)
        certs, costs = self.certify_methods(
            loaded,
            x,
            batch.ids,
            run_key=run_key,
            shard_index=int(shard["index"]),
            worker=getattr(context.get("ti"), "hostname", None),
        )
        root = self.run_dir(context)
        name = f"shard-{int(shard['index']):05d}.parquet"
        preds = conform(
            pd.DataFrame({SAMPLE_ID: batch.ids, "base_prediction": base_pred, "base_confidence": base_conf}),
            PREDICTION_COLUMNS,
            table="predictions",
        )
        out = {
            "index": int(shard["index"]),
            "n_samples": len(batch),
            "certificates": write_parquet(root / "certificates" / name, certs),
            "predictions": write_parquet(root / "predictions" / name, preds),
            "model_sha256": loaded.sha256,
            "run_key": run_key,
            "device": str(loaded.device),
            "costs": costs,
        }
        if int(shard["index"]) == 0:
            out["serving_parity"] = self.measure_parity(loaded)
        self.log.info(
            "certified shard %d (%d samples) on %s: %s",
            out["index"],
            len(batch),
            loaded.device,
            ", ".join(
                f"{m} {c['seconds']:.2f}s at {c['precision']}"
                + (
                    f" (compile {c['compile']}, {c['compile_seconds']:.1f}s compiling apart)"
                    if c["compile"] != "off"
                    else ""
                )
                + f", {c['abstained']} abstained"
                for m, c in costs.items()
            ),
        )
        return out

    def measure_parity(self, loaded) -> dict:
        """Serving parity on the first ``parity_samples`` reference inputs (see ``serving_parity``);
        warns when it exceeds the policy's threshold."""
        lp = self.loaded_policy
        cert = lp.policy.certification
        reference = load_reference(lp)
        inputs = np.require(reference.inputs(lp.policy.model.input_shape), requirements=["C", "W"])
        x = torch.from_numpy(inputs[: cert.parity_samples]).to(loaded.device, torch.float32)
        parity = serving_parity(
            loaded.module,
            x,
            precision=cert.precision,
            serving_precision=cert.serving_precision,
            compile=cert.compile,
            threshold=cert.parity_threshold,
        )
        if parity["above_threshold"]:
            self.log.warning(
                "serving parity: %d of %d reference inputs (%.2f%%) predict differently at %s than at the "
                "serving precision %s, above certification.parity_threshold %.2f%%",
                parity["differ"],
                parity["n"],
                100 * parity["share"],
                cert.precision,
                cert.serving_precision,
                100 * cert.parity_threshold,
            )
        elif parity["measured"]:
            self.log.info(
                "serving parity: %d of %d reference inputs differ between %s and %s",
                parity["differ"],
                parity["n"],
                cert.precision,
                cert.serving_precision,
            )
        return parity

    def certify_methods(
        self, loaded, x, ids, *, run_key: str, shard_index: int, worker: str | None = None
    ) -> tuple[pd.DataFrame, dict]:
        """Run every policy method the model's layers allow on ``x``: (certificates conformed to
        CERTIFICATE_COLUMNS, cost per method). PolicyError when no method applies.

        Each row records this task's ``queue`` and its ``worker``: the host name Airflow records
        for the task instance (``[core] hostname_callable``, the name the REST API and UI show),
        else the machine's name."""
        lp = self.loaded_policy
        frames, costs, skipped = [], {}, []
        for spec in lp.policy.certification.methods:
            method = str(spec.method)
            ok, reason = method_available(loaded.module, method)
            if not ok:
                self.log.warning("skipping %s: %s", method, reason)
                skipped.append(f"{method}: {reason}")
                continue
            seeds = derive_seeds(run_key, ids, method)
            progress = ProgressLog(self.log, f"shard {shard_index} {method}", device=loaded.device)
            cert = certify_with_spec(
                loaded.module,
                x,
                spec,
                seeds=seeds,
                device=loaded.device,
                precision=lp.policy.certification.precision,
                compile=lp.policy.certification.compile,
                progress=progress,
            )
            execution = cert.extra.get("execution", {})
            if execution.get("compile_fallback"):
                self.log.warning(
                    "%s: certification.compile %r failed, certified eagerly: %s",
                    method,
                    execution["compile_requested"],
                    execution["compile_fallback"],
                )
            frames.append(cert.to_frame(ids))
            votes = np.asarray(cert.extra.get("nonfinite_votes", 0))
            if votes.any():
                self.log.warning(
                    "%s: %d sample(s) abstain because noisy copies gave non-finite logits",
                    method,
                    int((votes > 0).sum()),
                )
            costs[method] = {
                "seconds": float(cert.seconds),
                "abstained": int(cert.abstained.sum()),
                "compile_seconds": float(cert.extra.get("compile_seconds", 0.0)),
                "precision": cert.precision,
                "compile": cert.compile,
            }
        if not frames:
            raise PolicyError(
                f"{lp.path}: certification.methods: no method applies to the model "
                f"{lp.model_path.name} (shard {shard_index}): {'; '.join(skipped)}"
            )
        certs = pd.concat(frames, ignore_index=True)
        certs["queue"] = str(self.queue or "")
        if worker:
            certs["worker"] = str(worker)
        return conform(certs, CERTIFICATE_COLUMNS, table="certificates"), costs


class MergeCertificatesOperator(CertriskOperator):
    """Merge shard artifacts in sample order into ``certificates.parquet`` and ``predictions.parquet``.

    :param shard_results: the mapped CertifyOperator's outputs (templated XComArg).
    """

    template_fields: Sequence[str] = (*CertriskOperator.template_fields, "shard_results")

    def __init__(self, *, shard_results: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shard_results = shard_results

    def run(self, context: Context) -> dict:
        # one slice request: iterating a mapped task's lazy XCom sequence asks for item after item
        # until one is missing, which Airflow logs as "[error] XCom not found ... offset=N"
        results = sorted(self.shard_results[:], key=lambda r: r["index"])
        if not results:
            raise InputError(f"{self.task_id}: no shard results to merge (shard_results is empty)")
        certs = pd.concat([read_parquet(r["certificates"]) for r in results], ignore_index=True)
        preds = pd.concat([read_parquet(r["predictions"]) for r in results], ignore_index=True)
        # Shard order is sample order; within it, group rows by method in policy order.
        methods = list(dict.fromkeys(certs["method"]))
        order = {sid: i for i, sid in enumerate(preds[SAMPLE_ID])}
        certs = certs.assign(_m=certs["method"].map(methods.index), _s=certs[SAMPLE_ID].map(order))
        certs = (
            certs.sort_values(["_m", "_s"], kind="stable").drop(columns=["_m", "_s"]).reset_index(drop=True)
        )
        model_sha256 = shared_value(results, "model_sha256", "certified different model files")
        run_key = shared_value(results, "run_key", "derived their seeds from different run keys")
        root = self.run_dir(context)
        out = {
            "certificates": write_parquet(root / "certificates.parquet", certs),
            "predictions": write_parquet(root / "predictions.parquet", preds),
            "n_samples": len(preds),
            "n_shards": len(results),
            "model_sha256": model_sha256,
            "run_key": run_key,
            "devices": sorted({r["device"] for r in results}),
            "costs": summed_costs(results),
            "serving_parity": next((r["serving_parity"] for r in results if r.get("serving_parity")), None),
        }
        self.log.info(
            "merged %d shard(s): %d samples, %d certificate rows", len(results), len(preds), len(certs)
        )
        return out


def shared_value(results: Sequence[dict], key: str, what: str):
    """The one value of ``key`` every shard result carries; InputError naming each shard's value
    when they differ (a merge of shards from different model files or run keys is refused)."""
    values = {r.get(key) for r in results}
    if len(values) != 1:
        by_shard = ", ".join(f"shard {r['index']}: {r.get(key)}" for r in results)
        raise InputError(f"shards {what} ({key}): {by_shard}")
    return values.pop()


def summed_costs(results: Sequence[dict]) -> dict[str, dict]:
    """Certification cost per method over all shards: seconds, compile seconds and abstentions add
    up; precision and compile mode are the values the shards ran with, comma-separated when they
    differ (a shard that fell back to eager shows compile "off")."""
    costs: dict[str, dict] = {}
    for r in results:
        for method, c in r["costs"].items():
            total = costs.setdefault(method, {"seconds": 0.0, "abstained": 0, "compile_seconds": 0.0})
            total["seconds"] += c["seconds"]
            total["abstained"] += c["abstained"]
            total["compile_seconds"] += c.get("compile_seconds", 0.0)
            for key, default in (("precision", "fp32"), ("compile", "off")):
                seen = [v for v in total.get(key, "").split(",") if v]
                if c.get(key, default) not in seen:
                    total[key] = ",".join([*seen, c.get(key, default)])
    return costs
