"""The reference's side of the context step: what the signals and the tier calibration read.

``ReferenceScoring`` holds, for one model, policy and reference (``ReferenceRoles``):

* the reference certificates of every certified method and the base model's outputs (prediction,
  confidence and, where the model exposes it, the penultimate representation) on the index,
  signal and tier roles, each computed once and kept in the artifact cache;
* the signals that do not trust the certificate (``signals``): reference-neighbour disagreement
  against the index role plus ``data.index``, in input space (the driving method's norm) and in
  feature space (l2), each on a tail scale calibrated on the signal role;
* the tier calibration (``tier_calibration``): the tier role scored exactly like a batch (its
  certificates, predictions, rules against the same suite, novelty and context against the same
  index, the same signals), then ``certrisk.risk.calibration.calibrate_tiers`` on its risks. The
  risks are cached per model, policy, reference, methods and device.

Exchangeability holds where the batch path computes the same factors: a DAG without the rules or
drift step scores batches without those factors while the calibration counts them, which makes
the thresholds conservative (higher), not invalid.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial

import numpy as np
import pandas as pd

from certrisk import __version__
from certrisk.operators.cache import ArtifactCache
from certrisk.operators.reference import ReferenceRoles, rule_suite
from certrisk.risk.calibration import TierCalibration, calibrate_tiers
from certrisk.risk.context import batch_context
from certrisk.risk.data import Batch, batch_sha256
from certrisk.risk.device import resolve_device
from certrisk.risk.disagreement import neighbour_scores, signal_frame
from certrisk.risk.drift import novelty
from certrisk.risk.features import feature_layer, penultimate_features
from certrisk.risk.models import LoadedModel, predict
from certrisk.risk.reference import (
    ReferenceProfile,
    certify_reference,
    reference_certificate_frame,
    reference_certificates_key,
)
from certrisk.risk.rules import check_rules
from certrisk.risk.score import rule_floors, score_samples
from certrisk.risk.score_inputs import signal_classes
from certrisk.schemas.columns import PREDICTION_COLUMNS, SAMPLE_ID, SIGNAL_COLUMNS, conform, empty_frame
from certrisk.schemas.policy import LoadedPolicy, MethodSpec

#: Versions of the cached computations; part of their keys (bump when the computation changes).
OUTPUTS_VERSION = 1
CALIBRATION_VERSION = 1


@dataclass
class ReferenceScoring:
    """The reference's certificates, outputs, signals and tier calibration for one context step.

    lp : the loaded policy; roles : its reference by role; specs : the certified methods;
    model_sha256 : the model that certified the batch; device : the requested torch device;
    model : loads that model on first call (only when the cache lacks something, or to read the
    batch's penultimate features); log : where warnings go.
    """

    lp: LoadedPolicy
    roles: ReferenceRoles
    specs: Sequence[MethodSpec]
    model_sha256: str
    device: str | None
    model: Callable[[], LoadedModel]
    log: logging.Logger
    cache: ArtifactCache = field(default_factory=ArtifactCache)

    @property
    def _shape(self) -> tuple[int, ...]:
        return self.lp.policy.model.input_shape

    def _key(self, **extra) -> dict:
        return {
            "model_sha256": self.model_sha256,
            "policy_sha256": self.lp.sha256,
            "reference_sha256": self.roles.sha256,
            "device": self.device,
            "certrisk": __version__,
            **extra,
        }

    # ---------------------------------------------------------------------------------- cached

    @cached_property
    def certificates(self) -> dict[str, dict[str, np.ndarray]]:
        """{method: {"radius", "abstained", "prediction"}} on ``roles.fitted``, from the cache."""
        fitted = self.roles.fitted
        inputs = fitted.inputs(self._shape)
        out = {}
        for spec in self.specs:
            key = reference_certificates_key(
                spec,
                model_sha256=self.model_sha256,
                policy_sha256=self.lp.sha256,
                reference_sha256=batch_sha256(fitted),
                device=self.device,
            )
            out[str(spec.method)] = self.cache.get_or_compute_arrays(
                "reference_certificates", key, partial(self._certify, inputs, fitted.ids, spec)
            )
        return out

    def _certify(self, inputs, ids, spec: MethodSpec) -> dict:
        loaded = self.model()
        return certify_reference(loaded.module, inputs, ids, spec, device=loaded.device)

    @cached_property
    def outputs(self) -> dict[str, np.ndarray]:
        """The base model on ``roles.fitted``: base_prediction, base_confidence (``predict``'s) and,
        where the model exposes it, features (the penultimate representation); ``feature_reason``
        says why not otherwise."""
        key = self._key(algorithm=OUTPUTS_VERSION, features=self._use_features)
        return self.cache.get_or_compute_arrays(
            "reference_outputs", key, partial(self._forward, self.roles.fitted)
        )

    @cached_property
    def extra_features(self) -> np.ndarray | None:
        """The penultimate representation of ``data.index`` (None without one or without features)."""
        if self.roles.extra is None or "features" not in self.outputs:
            return None
        key = self._key(algorithm=OUTPUTS_VERSION, extra_index=batch_sha256(self.roles.extra))
        return self.cache.get_or_compute("index_features", key, partial(self._features, self.roles.extra))

    @property
    def _use_features(self) -> bool:
        return bool(self.lp.policy.signals.features)

    def _features(self, batch: Batch) -> np.ndarray:
        loaded = self.model()
        return penultimate_features(loaded.module, batch.inputs(self._shape), device=loaded.device)

    def _forward(self, batch: Batch) -> dict[str, np.ndarray]:
        loaded = self.model()
        pred, conf = predict(loaded.module, batch.inputs(self._shape), device=loaded.device)
        out = {"base_prediction": pred, "base_confidence": conf}
        ok, reason = feature_layer(loaded.module)
        if self._use_features and ok:
            out["features"] = self._features(batch)
        else:
            out["feature_reason"] = np.asarray(reason or "switched off by the policy (signals.features)")
        return out

    # ---------------------------------------------------------------------------------- a role as a batch

    def _role(self, role: str) -> tuple[Batch, slice]:
        return getattr(self.roles, role), self.roles.slices()[role]

    def certificate_frame(self, role: str) -> pd.DataFrame:
        """CERTIFICATE_COLUMNS of a role's reference certificates, every certified method."""
        batch, rows = self._role(role)
        frames = [
            reference_certificate_frame(
                batch.ids, spec, {k: v[rows] for k, v in self.certificates[str(spec.method)].items()}
            )
            for spec in self.specs
        ]
        return pd.concat(frames, ignore_index=True)

    def prediction_frame(self, role: str) -> pd.DataFrame:
        """PREDICTION_COLUMNS of a role: the base model's prediction and confidence."""
        batch, rows = self._role(role)
        frame = pd.DataFrame(
            {
                SAMPLE_ID: batch.ids,
                "base_prediction": self.outputs["base_prediction"][rows],
                "base_confidence": self.outputs["base_confidence"][rows],
            }
        )
        return conform(frame, PREDICTION_COLUMNS, table="reference predictions")

    def profile(self) -> ReferenceProfile:
        """The index role, fitted with its labels and certificates: what context ranks radii against."""
        index, rows = self._role("index")
        certs = {m: {k: v[rows] for k, v in arrays.items()} for m, arrays in self.certificates.items()}
        return ReferenceProfile().fit(index.features, index.labels, certificates=certs)

    # ---------------------------------------------------------------------------------- signals

    def _neighbour_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(inputs (m, d), labels (m,), features (m, f) or None) of the index role plus data.index."""
        index, rows = self._role("index")
        feats = self.outputs.get("features")
        feats = None if feats is None else feats[rows]
        if self.roles.extra is None:
            return index.features, index.labels, feats
        x = np.concatenate([index.features, self.roles.extra.features])
        y = np.concatenate([index.labels, self.roles.extra.labels])
        return x, y, None if feats is None else np.concatenate([feats, self.extra_features])

    def _scores(
        self, x: np.ndarray, features: np.ndarray | None, classes: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Raw scores of each measurable signal for inputs x (n, d) and features (n, f) or None."""
        sg = self.lp.policy.signals
        device = resolve_device(self.device)
        index_x, labels, index_f = self._neighbour_index()
        norm = str(self.lp.policy.certification.driving.norm)
        out = {"neighbours": neighbour_scores(x, classes, index_x, labels, k=sg.k, norm=norm, device=device)}
        if features is not None and index_f is not None:
            out["feature_neighbours"] = neighbour_scores(
                features, classes, index_f, labels, k=sg.k, norm="l2", device=device
            )
        return out

    def _role_scores(self, role: str) -> dict[str, np.ndarray]:
        batch, rows = self._role(role)
        classes = signal_classes(self.certificate_frame(role), self.prediction_frame(role), self.lp.policy)
        feats = self.outputs.get("features")
        return self._scores(batch.features, None if feats is None else feats[rows], classes)

    @cached_property
    def calibration_scores(self) -> dict[str, np.ndarray]:
        """Each signal's raw scores on the signal role: the scale the factors are calibrated on."""
        return self._role_scores("signal")

    def signals(self, ids, x: np.ndarray, features: np.ndarray | None, classes: np.ndarray) -> pd.DataFrame:
        """SIGNAL_COLUMNS of a set (ids, inputs (n, d), features (n, f) or None, classes (n,));
        empty, with a warning, when the reference's signal role is empty."""
        if not len(self.roles.signal):
            self.log.warning(
                "signals not measured: the reference's signal role is empty (reference too small)"
            )
            return empty_frame(SIGNAL_COLUMNS)
        tail = self.lp.policy.signals.tail
        frames = [
            signal_frame(name, ids, scores, self.calibration_scores[name], tail=tail)
            for name, scores in self._scores(x, features, classes).items()
        ]
        return pd.concat(frames, ignore_index=True)

    def batch_features(self, batch: Batch) -> np.ndarray | None:
        """The batch's penultimate representation, or None (with a warning) when not measured."""
        if "features" not in self.outputs:
            self.log.warning("feature_neighbours not measured: %s", str(self.outputs["feature_reason"]))
            return None
        return self._features(batch)

    # ---------------------------------------------------------------------------------- tiers

    def tier_calibration(self, profile: ReferenceProfile) -> TierCalibration | None:
        """The tier thresholds calibrated on the tier role scored like a batch; None (with a
        warning) when the policy asks for none or the tier role is empty."""
        if self.lp.policy.scoring.calibration is None:
            return None
        if not len(self.roles.tier):
            self.log.warning("tiers not calibrated: the reference's tier role is empty (reference too small)")
            return None
        key = self._key(algorithm=CALIBRATION_VERSION, methods=[str(s.method) for s in self.specs])
        arrays = self.cache.get_or_compute_arrays("tier_calibration", key, partial(self._score_tier, profile))
        return calibrate_tiers(arrays["risk"], arrays["floor"], self.lp.policy.scoring)

    def _score_tier(self, profile: ReferenceProfile) -> dict[str, np.ndarray]:
        """The tier role's risks and rule floors, every factor computed as for a batch sample."""
        pol = self.lp.policy
        tier, rows = self._role("tier")
        certs, preds = self.certificate_frame("tier"), self.prediction_frame("tier")
        index = self.roles.index
        rules = check_rules(tier.to_frame(), rule_suite(self.lp, index)).samples
        feats = self.outputs.get("features")
        scored = score_samples(
            certificates=certs,
            predictions=preds,
            policy=pol,
            rules=rules,
            novelty=novelty(
                index.features, tier.features, k=pol.drift.novelty_k, ids=tier.ids, device=self.device
            ),
            context=batch_context(
                profile, tier.features, certs, ids=tier.ids, specs=self.specs, device=self.device
            ),
            signals=self.signals(
                tier.ids,
                tier.features,
                None if feats is None else feats[rows],
                signal_classes(certs, preds, pol),
            ),
        )
        return {"risk": scored["risk"].to_numpy(dtype=np.float64), "floor": rule_floors(rules, preds)}


__all__ = ["CALIBRATION_VERSION", "OUTPUTS_VERSION", "ReferenceScoring"]
