"""Risk-signal operators: Great Expectations rules, drift against the reference set, and
certificate context (the radius against the geometry of the reference data)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from airflow.sdk import Context

from certrisk.operators.artifacts import read_parquet, write_parquet
from certrisk.operators.base import CertriskOperator
from certrisk.operators.reference import load_reference, read_staged_batch, reference_sample
from certrisk.risk.certify import certify_with_spec, derive_seeds
from certrisk.risk.context import cached_reference_radii, certificate_context
from certrisk.risk.data import batch_sha256
from certrisk.risk.drift import detect_drift
from certrisk.risk.models import load_model
from certrisk.risk.rules import build_expectations, check_rules
from certrisk.schemas.columns import SAMPLE_ID


class _BatchOperator(CertriskOperator):
    template_fields: Sequence[str] = (*CertriskOperator.template_fields, "batch")

    def __init__(self, *, batch: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batch = batch


class RuleCheckOperator(_BatchOperator):
    """Validate the staged batch with the policy's Great Expectations suite (profiled defaults
    from the reference set plus the policy's own expectations).

    Writes ``rule_samples.parquet`` (per sample) and ``rule_expectations.parquet``.
    """

    def run(self, context: Context) -> dict:
        lp = self.loaded_policy
        batch = read_staged_batch(lp, self.batch)
        reference = load_reference(lp)
        expectations = build_expectations(
            lp.policy.rules,
            reference.to_frame().drop(columns=["label"], errors="ignore"),
            reference.feature_names,
        )
        results = check_rules(batch.to_frame(), expectations)
        root = self.run_dir(context)
        out = {
            "rule_samples": write_parquet(root / "rule_samples.parquet", results.samples),
            "rule_expectations": write_parquet(root / "rule_expectations.parquet", results.expectations),
            "n_expectations": len(expectations),
            "pass_rate": float(results.pass_rate),
            "failed_expectations": len(results.failed_expectations),
        }
        self.log.info(
            "rules: %d expectations, %d failed, %.1f%% of samples passed every row rule",
            out["n_expectations"],
            out["failed_expectations"],
            100 * out["pass_rate"],
        )
        return out


class DriftOperator(_BatchOperator):
    """Test the staged batch for drift against the reference set (feature tests, MMD, classifier
    test as the policy names, corrected across families) and score per-sample novelty.

    Writes ``drift_tests.parquet`` and ``novelty.parquet``.
    """

    def run(self, context: Context) -> dict:
        lp = self.loaded_policy
        pol = lp.policy
        batch = read_staged_batch(lp, self.batch)
        reference = reference_sample(load_reference(lp), pol.drift.max_reference)
        result = detect_drift(
            reference.features,
            batch.features,
            spec=pol.drift,
            features=list(reference.feature_names),
            batch_ids=batch.ids,
            seed=0,
            device=pol.certification.device,
        )
        root = self.run_dir(context)
        summary = result.summary()
        out = {
            "drift_tests": write_parquet(root / "drift_tests.parquet", result.tests),
            "novelty": write_parquet(root / "novelty.parquet", result.novelty),
            "drift": bool(result.drift),
            "n_tests": len(result.tests),
            "n_rejected": int(result.tests["drift"].sum()),
            "summary": summary,
        }
        self.log.info(
            "drift: %s (%d of %d tests rejected at corrected alpha %.3g)",
            "detected" if out["drift"] else "not detected",
            out["n_rejected"],
            out["n_tests"],
            pol.drift.alpha,
        )
        return out


class ContextOperator(CertriskOperator):
    """Put each certificate in context: distances to the nearest reference samples of another
    and of the same class, the share of reference samples inside the certified ball, and the
    radius's percentile among the reference set's own radii (certified once per model, policy
    and reference, cached under CERTRISK_HOME).

    :param batch: the ValidateBatchOperator's dict; :param certified: the merge step's dict.
    Writes ``context.parquet``; returns the reference abstention rate the batch test uses.
    """

    template_fields: Sequence[str] = (*CertriskOperator.template_fields, "batch", "certified")

    def __init__(self, *, batch: Any, certified: Any, device: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batch = batch
        self.certified = certified
        self.device = device

    def run(self, context: Context) -> dict:
        lp = self.loaded_policy
        pol = lp.policy
        batch = read_staged_batch(lp, self.batch)
        reference = reference_sample(load_reference(lp), pol.drift.max_reference)
        certs = read_parquet(self.certified["certificates"])
        loaded = None
        frames, ref_stats = [], {}
        ref_x = reference.features
        for spec in pol.certification.methods:
            method = str(spec.method)
            rows = certs[certs["method"] == method]
            if rows.empty:
                continue
            rows = rows.set_index(SAMPLE_ID).loc[batch.ids]

            computed: dict = {}

            def reference_certificates(spec=spec, method=method, computed=computed):
                nonlocal loaded
                if "cert" not in computed:
                    loaded = loaded or load_model(
                        pol.model, lp.model_path, device=self.device or pol.certification.device
                    )
                    x = torch.as_tensor(reference.inputs(pol.model.input_shape))
                    seeds = derive_seeds("reference", reference.ids, method)
                    computed["cert"] = certify_with_spec(
                        loaded.module, x, spec, seeds=seeds, device=loaded.device
                    )
                return computed["cert"]

            key = {
                "model": self.certified["model_sha256"],
                "policy": lp.sha256,
                "reference": batch_sha256(reference),
                "method": method,
            }
            ref_radius = cached_reference_radii(
                {**key, "field": "radius"}, lambda f=reference_certificates: f().radius
            )
            ref_abstained = cached_reference_radii(
                {**key, "field": "abstained"},
                lambda f=reference_certificates: f().abstained.astype(np.float64),
            ).astype(bool)
            ref_stats[method] = {
                "abstention_rate": float(ref_abstained.mean()),
                "n_reference": len(ref_radius),
                "median_radius": float(np.median(ref_radius[~ref_abstained]))
                if (~ref_abstained).any()
                else 0.0,
            }
            frames.append(
                certificate_context(
                    batch.features,
                    rows["radius"].to_numpy(dtype=np.float64),
                    rows["prediction"].to_numpy(dtype=np.int64),
                    ref_x,
                    reference.labels,
                    norm=str(spec.norm),
                    ids=batch.ids,
                    method=method,
                    reference_radii=ref_radius[~ref_abstained],
                )
            )
        frame = pd.concat(frames, ignore_index=True)
        smoothing = pol.certification.smoothing
        primary = str(smoothing.method) if smoothing is not None else next(iter(ref_stats))
        out = {
            "context": write_parquet(self.run_dir(context) / "context.parquet", frame),
            "reference": ref_stats,
            "reference_abstention_rate": ref_stats[primary]["abstention_rate"],
            "n_reference": ref_stats[primary]["n_reference"],
        }
        self.log.info(
            "context: %d rows; reference abstention %.1f%% over %d reference samples",
            len(frame),
            100 * out["reference_abstention_rate"],
            out["n_reference"],
        )
        return out
