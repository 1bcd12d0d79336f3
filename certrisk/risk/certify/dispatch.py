"""Run the method a policy names: the entry point of the certify operator."""

from __future__ import annotations

from certrisk.risk.certify.batch import CertificateBatch
from certrisk.risk.certify.bounds import ibp_certify
from certrisk.risk.certify.crown import crown_certify
from certrisk.risk.certify.lipschitz import lipschitz_certify
from certrisk.risk.certify.network import sequential_layers
from certrisk.risk.certify.smoothing import smooth_certify
from certrisk.schemas.enums import Method
from certrisk.schemas.errors import InputError
from certrisk.schemas.policy import IBPSpec, LipschitzSpec, SmoothingSpec

#: Method names of CROWN (CROWN intermediate bounds) and CROWN-IBP (interval intermediate bounds).
CROWN_METHODS = {"crown": "crown", "crown-ibp": "ibp"}


def method_available(model, method: Method | str) -> tuple[bool, str]:
    """Whether ``method`` can certify ``model``, and why not ("" when it can).

    Smoothing needs only a callable; IBP, Lipschitz and CROWN need an nn.Sequential of supported
    layers (CROWN: no MaxPool2d).
    """
    name = str(method)
    if name in CROWN_METHODS:
        try:
            layers = sequential_layers(model, name)
        except InputError as exc:
            return False, str(exc)
        pools = [type(layer).__name__ for layer in layers if type(layer).__name__ == "MaxPool2d"]
        return (False, f"{name}: MaxPool2d is not supported") if pools else (True, "")
    try:
        m = Method(name)
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
    model, x, spec, *, seeds, device=None, cache=None, precision="fp32", compile="off", progress=None
) -> CertificateBatch:
    """Certify x (shape (B, *input_shape)) with the method and parameters of a policy spec.

    spec : SmoothingSpec, IBPSpec, LipschitzSpec, or a CROWN spec (``method`` "crown" or
        "crown-ibp", ``eps``, ``norm``, optional ``intermediate`` "crown"/"ibp").
    seeds : int array of shape (B,) (``derive_seeds(run_key, sample_ids, method)``) or an int.
    cache : the Lipschitz constants' cache (``get_or_compute(kind, key, compute)``); None keeps
        them in memory.
    precision, compile : the policy's ``certification.precision`` and ``certification.compile``.
        They apply to randomized smoothing only: its guarantee holds for the model as executed at
        any precision, as long as the noise is exact. IBP, CROWN and Lipschitz bound the model's own
        float arithmetic in float32/float64 with outward rounding, which autocast or a compiled graph
        would invalidate; they keep that arithmetic and record precision "fp32", compile "off"
        (the serving parity measures how far reduced-precision serving is from it).
    progress : ``progress(done_rows, total_rows)`` for smoothing's forward passes, or None.
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
            precision=precision,
            compile=compile,
            progress=progress,
        )
    if isinstance(spec, IBPSpec):
        return ibp_certify(model, x, eps=spec.eps, norm=spec.norm, seed=seeds, device=device)
    if isinstance(spec, LipschitzSpec):
        return lipschitz_certify(model, x, seed=seeds, device=device, cache=cache)
    name = str(getattr(spec, "method", ""))
    if name in CROWN_METHODS:
        intermediate = getattr(spec, "intermediate", None) or CROWN_METHODS[name]
        return crown_certify(
            model, x, eps=spec.eps, norm=spec.norm, intermediate=intermediate, seed=seeds, device=device
        )
    raise InputError(f"certify_with_spec: unknown spec {type(spec).__name__}")
