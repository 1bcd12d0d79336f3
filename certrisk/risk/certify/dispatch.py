"""Run the method a policy names: the entry point of the certify operator."""

from __future__ import annotations

from certrisk.risk.certify.batch import CertificateBatch
from certrisk.risk.certify.bounds import ibp_certify
from certrisk.risk.certify.lipschitz import lipschitz_certify
from certrisk.risk.certify.network import sequential_layers
from certrisk.risk.certify.smoothing import smooth_certify
from certrisk.schemas.enums import Method
from certrisk.schemas.errors import InputError
from certrisk.schemas.policy import IBPSpec, LipschitzSpec, SmoothingSpec


def method_available(model, method: Method | str) -> tuple[bool, str]:
    """Whether ``method`` can certify ``model``, and why not ("" when it can).

    Smoothing needs only a callable; IBP and Lipschitz need an nn.Sequential of supported layers.
    """
    try:
        m = Method(str(method))
    except ValueError:
        return False, f"unknown method {method!r}"
    if m == Method.SMOOTHING:
        return (True, "") if callable(model) else (False, "the model is not callable")
    try:
        sequential_layers(model, str(m))
    except InputError as exc:
        return False, str(exc)
    return True, ""


def certify_with_spec(
    model, x, spec: SmoothingSpec | IBPSpec | LipschitzSpec, *, seeds, device=None
) -> CertificateBatch:
    """Certify x (shape (B, *input_shape)) with the method and parameters of a policy spec.

    seeds : int array of shape (B,) (``derive_seeds(run_key, sample_ids, method)``) or an int.
    """
    if isinstance(spec, SmoothingSpec):
        return smooth_certify(
            model,
            x,
            sigma=spec.sigma,
            n0=spec.n0,
            n=spec.n,
            alpha=spec.alpha,
            batch_size=spec.batch_size,
            seed=seeds,
            device=device,
            mode=spec.mode,
            target_radius=spec.target_radius,
        )
    if isinstance(spec, IBPSpec):
        return ibp_certify(model, x, eps=spec.eps, norm=spec.norm, seed=seeds, device=device)
    if isinstance(spec, LipschitzSpec):
        return lipschitz_certify(model, x, seed=seeds, device=device)
    raise InputError(f"certify_with_spec: unknown spec {type(spec).__name__}")
