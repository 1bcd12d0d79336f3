"""The reference set, fitted once per model, policy and reference file (scikit-learn's way).

``ReferenceProfile().fit(...)`` checks the reference samples and stores what the signals that
compare a batch with the reference need (``fit`` then attributes ending in ``_``): the flattened
features, each sample's class and the per-class counts, and, per certification method, the
reference's own certificates (radius and abstention). Certificate context reads it now; novelty
and calibration can share it instead of each re-reading and re-checking the reference.

The profile does no I/O and certifies nothing: the caller passes the reference certificates in,
typically from ``certify_reference`` through a cache keyed by ``reference_certificates_key``.
``reference_certificate_frame`` turns those arrays back into certificate rows, so that reference
samples can be scored exactly like a batch (the tier calibration does).

Roles (``reference_roles``): the batch path compares batches with the ``index`` role only
(neighbours, novelty, context, drift, rules' profile), so that the ``signal`` and ``tier``
calibration samples never find themselves as their own neighbour and the ``evaluation`` role stays
held out from everything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from certrisk import __version__
from certrisk.risk.certify.batch import derive_seeds
from certrisk.risk.certify.dispatch import certify_with_spec
from certrisk.risk.inputs import sample_matrix
from certrisk.schemas.columns import CERTIFICATE_COLUMNS, SAMPLE_ID, conform, finite_or_raise
from certrisk.schemas.errors import InputError
from certrisk.schemas.policy import MethodSpec, SmoothingSpec

#: The run key the reference certificates' seeds derive from (``derive_seeds``), so that the
#: reference is certified with the same noise in every DAG run.
REFERENCE_RUN_KEY = "reference"
#: Version of how the reference certificates are computed (seeds, arrays kept); part of their
#: cache key, so that changing the computation never reads certificates made the old way.
REFERENCE_CERTIFICATES_VERSION = 3


def certify_reference(
    model, inputs: np.ndarray, ids: Sequence[str], spec: MethodSpec, *, device=None
) -> dict:
    """Certify the reference set with one method of the policy.

    Parameters
    ----------
    model : the loaded model (callable on tensors of shape (rows, *input_shape))
    inputs : array of shape (n_reference, *input_shape), as the model sees them
    ids : the n_reference sample ids; seeds derive from (``REFERENCE_RUN_KEY``, id, method)
    spec : the policy's method spec (its parameters are used as for production samples)
    device : torch device, or None for the model's

    Returns
    -------
    dict with ``radius`` (float64 (n_reference,), in the spec's norm, 0 when abstained),
    ``abstained`` (bool (n_reference,)) and ``prediction`` (int64 (n_reference,), the certified
    class, ABSTAIN where abstained).
    """
    seeds = derive_seeds(REFERENCE_RUN_KEY, [str(i) for i in ids], str(spec.method))
    cert = certify_with_spec(model, inputs, spec, seeds=seeds, device=device)
    return {
        "radius": cert.radius.astype(np.float64),
        "abstained": cert.abstained.astype(bool),
        "prediction": cert.prediction.astype(np.int64),
    }


def reference_certificate_frame(
    ids: Sequence[str], spec: MethodSpec, arrays: Mapping[str, np.ndarray]
) -> pd.DataFrame:
    """CERTIFICATE_COLUMNS rows of one method's reference certificates (``certify_reference``'s
    arrays, each of shape (n,)), one per id: what the scorer reads (method, prediction,
    abstained, radius, the spec's sigma, alpha and eps) filled in, the rest NaN or 0."""
    n = len(ids)
    missing = [k for k in ("radius", "abstained", "prediction") if k not in arrays]
    if missing:
        raise InputError(f"reference certificates of {str(spec.method)!r}: missing {missing}")
    smoothing = isinstance(spec, SmoothingSpec)
    frame = pd.DataFrame(
        {
            SAMPLE_ID: [str(i) for i in ids],
            "method": str(spec.method),
            "norm": str(spec.norm),
            "prediction": np.asarray(arrays["prediction"], dtype=np.int64).reshape(n),
            "abstained": np.asarray(arrays["abstained"], dtype=bool).reshape(n),
            "radius": np.asarray(arrays["radius"], dtype=np.float64).reshape(n),
            **{c: np.nan for c in ("radius_l1", "radius_l2", "radius_linf", "p_lower")},
            "n_forward": 0,
            "alpha": spec.alpha if smoothing else np.nan,
            "sigma": spec.sigma if smoothing else np.nan,
            "eps": getattr(spec, "eps", None) if getattr(spec, "eps", None) is not None else np.nan,
            "seed": 0,
            "seconds": np.nan,
            "peak_bytes": 0,
            "device": "",
            "dtype": "",
            "precision": "",
            "compile": "",
            "worker": "",
            "queue": "",
        }
    )
    return conform(frame, CERTIFICATE_COLUMNS, table="reference certificates")


def reference_certificates_key(
    spec: MethodSpec, *, model_sha256: str, policy_sha256: str, reference_sha256: str, device: str | None
) -> dict[str, Any]:
    """Everything the reference certificates of ``certify_reference`` depend on, as a JSON-able dict:
    the model, policy and reference hashes, the method and all its parameters, the seed rule,
    the requested device (CPU and CUDA may differ on boundary cases), and the computation's and
    certrisk's versions."""
    return {
        "model_sha256": model_sha256,
        "policy_sha256": policy_sha256,
        "reference_sha256": reference_sha256,
        "method": str(spec.method),
        "parameters": spec.model_dump(mode="json"),
        "run_key": REFERENCE_RUN_KEY,
        "device": device,
        "algorithm": REFERENCE_CERTIFICATES_VERSION,
        "certrisk": __version__,
    }


#: Roles of the reference samples, and the share of each. ``index``: what batches are compared
#: with (neighbours, novelty, context, drift); ``calibration``: clean samples that set the signal
#: scales (``signal``) and the tier thresholds (``tier``), split conformal; ``evaluation``: held out
#: from everything else, for the measured detection of ``certrisk evaluate``.
REFERENCE_ROLES = {"index": 0.5, "signal": 0.125, "tier": 0.125, "evaluation": 0.25}


def reference_roles(ids: Sequence[str], shares: Mapping[str, float] = REFERENCE_ROLES) -> np.ndarray:
    """The role of each reference sample, an object array of shape (n_reference,).

    A sample's role is a function of its id alone (sha256 of the id, as a number in [0, 1),
    against the cumulative ``shares``), so it never changes with the order or size of the file,
    and calibration and evaluation never share a sample.
    """
    total = float(sum(shares.values()))
    if not shares or any(v < 0 for v in shares.values()) or abs(total - 1.0) > 1e-9:
        raise InputError(f"reference roles: shares must be >= 0 and sum to 1, got {dict(shares)}")
    names = list(shares)
    edges = np.cumsum([shares[r] for r in names])
    u = np.array([int.from_bytes(hashlib.sha256(str(i).encode()).digest()[:8], "big") / 2.0**64 for i in ids])
    pos = np.minimum(np.searchsorted(edges, u, side="right"), len(names) - 1)
    return np.asarray(names, dtype=object)[pos]


def _classes(values, n: int, what: str) -> np.ndarray:
    arr = np.asarray(values).ravel()
    if arr.shape != (n,):
        raise InputError(f"{what}: shape {arr.shape}, expected ({n},)")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{what}: integer classes expected, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _certificate_arrays(
    method: str, arrays: Mapping[str, np.ndarray], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """(radius float64 (n,), abstained bool (n,)) of one method's reference certificates, checked."""
    missing = [k for k in ("radius", "abstained") if k not in arrays]
    if missing:
        raise InputError(f"reference certificates of {method!r}: missing {missing}")
    radius = np.asarray(arrays["radius"], dtype=np.float64).ravel()
    abstained = np.asarray(arrays["abstained"]).ravel()
    if radius.shape != (n,) or abstained.shape != (n,):
        raise InputError(
            f"reference certificates of {method!r}: radius {radius.shape} and abstained "
            f"{abstained.shape} must have shape ({n},), one per reference sample"
        )
    if abstained.dtype != np.bool_:
        raise InputError(
            f"reference certificates of {method!r}: abstained must be bool, got {abstained.dtype}"
        )
    finite_or_raise(radius, what=f"reference radii of {method!r}")
    if (radius < 0).any():
        row = int(np.flatnonzero(radius < 0)[0])
        raise InputError(f"reference radii of {method!r}: negative value in row {row}")
    return radius, abstained


class ReferenceProfile:
    """What the batch signals compare against, fitted once from the reference set.

    Fitted attributes
    -----------------
    features_ : array of shape (n_reference, n_features), float64, finite
        The reference samples, flattened.
    labels_ : array of shape (n_reference,), int64, or None
        Each reference sample's class (its label, or the model's prediction when the reference
        has no labels; see ``label_source_``); None when neither was given.
    label_source_ : "labels", "predictions" or None
    classes_ : array of shape (n_classes,), int64, sorted; class_counts_ : int64 (n_classes,)
        The classes present in ``labels_`` and how many reference samples each has.
    radii_ : dict method -> array of shape (n_reference,), float64
        The method's certified radius of each reference sample (in its norm; 0 when abstained).
    abstained_ : dict method -> array of shape (n_reference,), bool
    n_reference_ : int; n_features_in_ : int
    """

    def fit(
        self,
        X,
        labels=None,
        *,
        predictions=None,
        certificates: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    ) -> ReferenceProfile:
        """Check and store the reference.

        Parameters
        ----------
        X : array of shape (n_reference, ...) or of shape (n_reference, n_features)
        labels : int array of shape (n_reference,) or None
        predictions : int array of shape (n_reference,) or None; stands in for missing labels
        certificates : {method: {"radius": float64 (n_reference,), "abstained": bool (n_reference,)}}
            The reference's own certificates per method (``certify_reference``), or None.

        Returns self.
        """
        self.features_ = sample_matrix(X, what="reference")
        n = len(self.features_)
        self.n_reference_, self.n_features_in_ = n, self.features_.shape[1]
        classes = labels if labels is not None else predictions
        self.label_source_ = (
            "labels" if labels is not None else "predictions" if classes is not None else None
        )
        self.labels_ = None if classes is None else _classes(classes, n, "reference labels")
        self.classes_, self.class_counts_ = (
            np.unique(self.labels_, return_counts=True)
            if self.labels_ is not None
            else (np.empty(0, np.int64), np.empty(0, np.int64))
        )
        self.radii_, self.abstained_ = {}, {}
        for method, arrays in (certificates or {}).items():
            self.radii_[str(method)], self.abstained_[str(method)] = _certificate_arrays(
                str(method), arrays, n
            )
        return self

    def check_fitted(self) -> None:
        """InputError unless ``fit`` has run."""
        if not hasattr(self, "features_"):
            raise InputError("ReferenceProfile: not fitted; call fit(...) first")

    def _method(self, method: str) -> str:
        self.check_fitted()
        method = str(method)
        if method not in self.radii_:
            raise InputError(
                f"reference certificates: none for method {method!r}; fitted with {sorted(self.radii_)}"
            )
        return method

    def certified_radii(self, method: str) -> np.ndarray:
        """The method's radii on the reference samples it certified: float64 (n_certified,)."""
        method = self._method(method)
        return self.radii_[method][~self.abstained_[method]]

    def abstention_rate(self, method: str) -> float:
        """Share of reference samples on which the method abstained, in [0, 1]."""
        method = self._method(method)
        return float(self.abstained_[method].mean())

    def certificate_summary(self, method: str) -> dict:
        """``{"abstention_rate", "n_reference"}`` of the method on the reference (JSON-able)."""
        return {"abstention_rate": self.abstention_rate(method), "n_reference": int(self.n_reference_)}
