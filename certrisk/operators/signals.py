"""Risk-signal operators: Great Expectations rules, drift against the reference set, and the
context step: certificate context (the radius against the geometry of the reference data), the
signals that do not trust the certificate, and the tier calibration.

Every step compares the batch with the reference's ``index`` role (``ReferenceRoles``): the
rules' profile, the drift tests and novelty, context and the neighbours. The ``signal`` and
``tier`` roles calibrate the signals and the tier thresholds and never serve as neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property, partial
from typing import Any

import numpy as np
from airflow.sdk import Context

from certrisk.operators.artifacts import read_parquet, write_parquet
from certrisk.operators.base import CertriskOperator
from certrisk.operators.cache import ArtifactCache
from certrisk.operators.reference import read_staged_batch, reference_roles_of, rule_suite
from certrisk.operators.reference_scoring import ReferenceScoring
from certrisk.risk.context import batch_context
from certrisk.risk.data import Batch, batch_sha256
from certrisk.risk.drift import detect_drift
from certrisk.risk.health import health_from_logits, reference_logits, reference_logits_key
from certrisk.risk.models import LoadedModel, load_model
from certrisk.risk.rules import check_rules
from certrisk.risk.score_inputs import signal_classes
from certrisk.schemas.errors import ModelLoadError


class _BatchOperator(CertriskOperator):
    template_fields: Sequence[str] = (*CertriskOperator.template_fields, "batch")

    def __init__(self, *, batch: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batch = batch


class RuleCheckOperator(_BatchOperator):
    """Validate the staged batch with the policy's Great Expectations suite (profiled defaults
    from the reference's index role plus the policy's own expectations).

    Writes ``rule_samples.parquet`` (per sample) and ``rule_expectations.parquet``.
    """

    def run(self, context: Context) -> dict:
        lp = self.loaded_policy
        batch = read_staged_batch(lp, self.batch)
        expectations = rule_suite(lp, reference_roles_of(lp).index)
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
    """Test the staged batch for drift against the reference's index role (feature tests, MMD,
    classifier test as the policy names, corrected across families) and score per-sample novelty.

    Writes ``drift_tests.parquet`` and ``novelty.parquet``.
    """

    def run(self, context: Context) -> dict:
        lp = self.loaded_policy
        pol = lp.policy
        batch = read_staged_batch(lp, self.batch)
        reference = reference_roles_of(lp).index
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
    """The context step: each certificate against the reference's index role (distances to the
    nearest index samples of another and of the same class, the share inside the certified ball,
    the radius's percentile among the index's own radii), the signals that do not trust the
    certificate (``certrisk.operators.reference_scoring``: reference-neighbour disagreement in
    input and feature space, calibrated on the signal role) and the tier calibration (the tier
    role scored like a batch). Reference certificates, outputs and the tier role's risks are
    computed once per model, policy and reference and kept in the artifact cache under
    CERTRISK_HOME.

    Also checks the model's health on the labelled reference once per run (``certrisk.risk.
    health``: finite logits, accuracy above chance, class recall, no dominant class) before the
    score step trusts any certificate; the reference logits (one forward pass) are cached like
    the reference certificates.

    :param batch: the ValidateBatchOperator's dict; :param certified: the merge step's dict.
    Writes ``context.parquet`` and ``signals.parquet``; returns the index's abstention rate of the
    driving method (the batch abstention test's baseline), per-method reference figures under
    ``reference``, the health record under ``model_health`` (None when the reference has no
    labels) and the tier calibration under ``calibration`` (``TierCalibration.to_dict()``, None
    when not calibrated).
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
        roles = reference_roles_of(self.loaded_policy)
        certificates = read_parquet(self.certified["certificates"])
        specs = [s for s in pol.certification.methods if (certificates["method"] == str(s.method)).any()]
        ref = self.reference_scoring(roles, specs)
        profile = ref.profile()
        frame = batch_context(profile, batch.features, certificates, ids=batch.ids, specs=specs)
        signals = ref.signals(
            batch.ids,
            batch.features,
            ref.batch_features(batch),
            signal_classes(certificates, read_parquet(self.certified["predictions"]), pol),
        )
        calibration = ref.tier_calibration(profile)
        driving = str(pol.certification.driving.method)
        root = self.run_dir(context)
        out = {
            "context": write_parquet(root / "context.parquet", frame),
            "signals": write_parquet(root / "signals.parquet", signals),
            "reference": {str(s.method): profile.certificate_summary(s.method) for s in specs},
            "reference_abstention_rate": profile.abstention_rate(driving),
            "n_reference": profile.n_reference_,
            "model_health": self.model_health(roles.fitted),
            "calibration": None if calibration is None else calibration.to_dict(),
        }
        self.log.info(
            "context: %d rows; signals %s; reference abstention of %s %.1f%% over %d index samples; %s",
            len(frame),
            sorted(set(signals["signal"])),
            driving,
            100 * out["reference_abstention_rate"],
            out["n_reference"],
            "tiers not calibrated" if calibration is None else calibration.guarantee,
        )
        return out

    def reference_scoring(self, roles, specs) -> ReferenceScoring:
        """The reference's side of this step (certificates, outputs, signals, tier calibration)."""
        lp = self.loaded_policy
        return ReferenceScoring(
            lp=lp,
            roles=roles,
            specs=specs,
            model_sha256=self.certified["model_sha256"],
            device=self.device or lp.policy.certification.device,
            model=self.certifying_model,
            log=self.log,
        )

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
