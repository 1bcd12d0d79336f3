"""Risk-signal operators: Great Expectations rules, drift against the reference set, and
certificate context (the radius against the geometry of the reference data)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property, partial
from typing import Any

import numpy as np
from airflow.sdk import Context

from certrisk.operators.artifacts import read_parquet, write_parquet
from certrisk.operators.base import CertriskOperator
from certrisk.operators.cache import ArtifactCache
from certrisk.operators.reference import load_reference, read_staged_batch, reference_sample
from certrisk.risk.context import batch_context
from certrisk.risk.data import Batch, batch_sha256
from certrisk.risk.drift import detect_drift
from certrisk.risk.health import health_from_logits, reference_logits, reference_logits_key
from certrisk.risk.models import LoadedModel, load_model
from certrisk.risk.reference import ReferenceProfile, certify_reference, reference_certificates_key
from certrisk.risk.rules import build_expectations, check_rules
from certrisk.schemas.errors import ModelLoadError
from certrisk.schemas.policy import MethodSpec


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
    and reference, kept in the artifact cache under CERTRISK_HOME).

    Also checks the model's health on the labelled reference once per run (``certrisk.risk.
    health``: finite logits, accuracy above chance, class recall, no dominant class) before the
    score step trusts any certificate; the reference logits (one forward pass) are cached like
    the reference certificates.

    :param batch: the ValidateBatchOperator's dict; :param certified: the merge step's dict.
    Writes ``context.parquet``; returns the reference abstention rate of the driving method (the
    batch abstention test's baseline), per-method reference figures under ``reference`` and the
    health record under ``model_health`` (None when the reference has no labels).
    """

    template_fields: Sequence[str] = (*CertriskOperator.template_fields, "batch", "certified")

    def __init__(self, *, batch: Any, certified: Any, device: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batch = batch
        self.certified = certified
        self.device = device

    def run(self, context: Context) -> dict:
        pol = self.loaded_policy.policy
        batch = read_staged_batch(self.loaded_policy, self.batch)
        reference = reference_sample(load_reference(self.loaded_policy), pol.drift.max_reference)
        certificates = read_parquet(self.certified["certificates"])
        specs = [s for s in pol.certification.methods if (certificates["method"] == str(s.method)).any()]
        profile = ReferenceProfile().fit(
            reference.features, reference.labels, certificates=self.reference_certificates(reference, specs)
        )
        frame = batch_context(profile, batch.features, certificates, ids=batch.ids, specs=specs)
        driving = str(pol.certification.driving.method)
        out = {
            "context": write_parquet(self.run_dir(context) / "context.parquet", frame),
            "reference": {str(s.method): profile.certificate_summary(s.method) for s in specs},
            "reference_abstention_rate": profile.abstention_rate(driving),
            "n_reference": profile.n_reference_,
            "model_health": self.model_health(reference),
        }
        self.log.info(
            "context: %d rows; reference abstention of %s %.1f%% over %d reference samples",
            len(frame),
            driving,
            100 * out["reference_abstention_rate"],
            out["n_reference"],
        )
        return out

    def reference_certificates(self, reference: Batch, specs: Sequence[MethodSpec]) -> dict[str, dict]:
        """{method: {"radius", "abstained"}} of the reference set, from the artifact cache; the
        reference is certified (and the model loaded) only for methods the cache lacks."""
        lp = self.loaded_policy
        device = self.device or lp.policy.certification.device
        cache, reference_sha256 = ArtifactCache(), batch_sha256(reference)
        inputs = reference.inputs(lp.policy.model.input_shape)
        out = {}
        for spec in specs:
            key = reference_certificates_key(
                spec,
                model_sha256=self.certified["model_sha256"],
                policy_sha256=lp.sha256,
                reference_sha256=reference_sha256,
                device=device,
            )
            out[str(spec.method)] = cache.get_or_compute_arrays(
                "reference_certificates", key, partial(self._certify_reference, inputs, reference.ids, spec)
            )
        return out

    def model_health(self, reference: Batch) -> dict | None:
        """The health record (``ModelHealth.to_dict()``) of the model that certified the batch on
        the labelled reference; None, with a warning, when the reference has no labels."""
        pol = self.loaded_policy.policy
        if reference.labels is None:
            self.log.warning("model health not checked: the reference set has no labels")
            return None
        lp = self.loaded_policy
        key = reference_logits_key(
            model_sha256=self.certified["model_sha256"],
            policy_sha256=lp.sha256,
            reference_sha256=batch_sha256(reference),
            device=self.device or pol.certification.device,
        )
        logits = ArtifactCache().get_or_compute("reference_logits", key, partial(self._logits, reference))
        health = health_from_logits(logits, reference.labels, pol.model.classes, pol.health)
        for problem in health.problems:
            self.log.warning("model health: %s", problem)
        return health.to_dict()

    def _logits(self, reference: Batch) -> np.ndarray:
        loaded = self.certifying_model()
        inputs = reference.inputs(self.loaded_policy.policy.model.input_shape)
        return reference_logits(loaded.module, inputs, device=loaded.device)

    def _certify_reference(self, inputs, ids, spec: MethodSpec) -> dict:
        loaded = self.certifying_model()
        return certify_reference(loaded.module, inputs, ids, spec, device=loaded.device)

    def certifying_model(self) -> LoadedModel:
        """The policy's model; ModelLoadError when its file is not the one that certified the batch."""
        loaded = self.model
        if loaded.sha256 != self.certified["model_sha256"]:
            raise ModelLoadError(
                f"{loaded.path}: sha256 {loaded.sha256} differs from the model that certified the batch "
                f"({self.certified['model_sha256']}); the model file changed during the run"
            )
        return loaded

    @cached_property
    def model(self) -> LoadedModel:
        """The policy's model, loaded on first use (only when reference logits or certificates are
        missing from the cache)."""
        pol = self.loaded_policy.policy
        return load_model(
            pol.model, self.loaded_policy.model_path, device=self.device or pol.certification.device
        )
