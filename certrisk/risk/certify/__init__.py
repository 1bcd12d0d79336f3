"""Certification engine: randomized smoothing, interval bounds, CROWN, Lipschitz bounds.

Every number that claims a guarantee is computed conservatively: confidence bounds in float64,
radii rounded down, selection samples kept apart from estimation samples, seeds recorded;
deterministic certificates hold for the model as executed in its dtype (``rounding``);
smoothing certificates hold for the model as executed at the recorded precision (``precision``).
"""

from certrisk.risk.certify.batch import CertificateBatch, derive_seeds
from certrisk.risk.certify.bounds import ibp_certify, interval_bounds
from certrisk.risk.certify.crown import crown_certify
from certrisk.risk.certify.dispatch import certify_with_spec, method_available
from certrisk.risk.certify.lipschitz import lipschitz_certify, lipschitz_constant
from certrisk.risk.certify.norms import translate_radius
from certrisk.risk.certify.precision import ExecutedModel, serving_parity
from certrisk.risk.certify.smoothing import sequential_stages, smooth_certify, smooth_predict

__all__ = [
    "CertificateBatch",
    "ExecutedModel",
    "certify_with_spec",
    "crown_certify",
    "derive_seeds",
    "ibp_certify",
    "interval_bounds",
    "lipschitz_certify",
    "lipschitz_constant",
    "method_available",
    "sequential_stages",
    "serving_parity",
    "smooth_certify",
    "smooth_predict",
    "translate_radius",
]
