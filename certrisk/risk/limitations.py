"""What a policy's certificates cover and what they do not, in words (DESIGN.md, Principle 5).

``limitations(policy)`` renders markdown paragraphs that every report prints next to the risk
figures: each method's norm and parameters (sigma, alpha, n), the largest radius those
parameters can certify translated to l1, l2 and linf, the threats outside the certificates, and
how the risk score uses them. The radius translation is ``certrisk.risk.certify.translate_radius``
(imported when called: the certify package loads torch).
"""

from __future__ import annotations

import math

from certrisk.risk.score import abstention_alone, certified_ceiling
from certrisk.schemas.enums import Norm
from certrisk.schemas.errors import InputError
from certrisk.schemas.policy import IBPSpec, LipschitzSpec, Policy, SmoothingSpec

_NORMS = (Norm.L1, Norm.L2, Norm.LINF)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _translated(radius: float, norm: Norm, dim: int) -> str:
    from certrisk.risk.certify.norms import translate_radius

    parts = [f"{_fmt(float(translate_radius(radius, norm, q, dim)))} ({q.value})" for q in _NORMS]
    return ", ".join(parts)


def _largest_radius(spec: SmoothingSpec) -> tuple[float, str]:
    """The largest radius the smoothing parameters can certify, and its formula in words: fixed
    mode bounds at level alpha; sequential mode's last stage at alpha / K over its K stages."""
    from certrisk.risk.certify.smoothing import sequential_stages
    from certrisk.risk.certify.stats import clopper_pearson_lower, smoothing_radius

    if spec.mode == "fixed":
        level, formula = spec.alpha, "sigma * Phi^-1(alpha^(1/n))"
    else:
        k = len(sequential_stages(spec.n))
        level, formula = spec.alpha / k, f"sigma * Phi^-1((alpha / K)^(1/n)) with K = {k} stages"
    p_max = float(clopper_pearson_lower(spec.n, spec.n, level))
    return float(smoothing_radius(p_max, spec.sigma)), formula


def _smoothing_paragraph(spec: SmoothingSpec, dim: int) -> str:
    r_max, formula = _largest_radius(spec)
    example = 10_000
    mode = (
        "a fixed number of estimation samples"
        if spec.mode == "fixed"
        else f"sequential estimation that stops early once the target radius {spec.target_radius} is certified, "
        "each stage's bound at level alpha / K so that all hold together"
    )
    return (
        f"**Randomized smoothing, norm {spec.norm.value}.** Gaussian noise sigma = {spec.sigma}, "
        f"n0 = {spec.n0} selection samples and n = {spec.n} estimation samples per input ({mode}), "
        f"alpha = {spec.alpha}. With probability at least 1 - alpha = {1 - spec.alpha:g} over the noise, "
        "the smoothed classifier returns the certified class for every input within the certified "
        f"{spec.norm.value} radius of the sample. The largest radius these parameters can certify is "
        f"{formula} = {_fmt(r_max)} ({spec.norm.value}), reached only when all n noisy "
        f"copies agree. In d = {dim} input dimensions an {spec.norm.value} radius r also covers the "
        "radii min(d^(1/q - 1/p), 1) * r in the other norms; for the largest radius: "
        f"{_translated(r_max, spec.norm, dim)}. Each certificate can be wrong with probability up to "
        f"alpha: in a batch of {example:,} certified samples up to about {spec.alpha * example:g} wrong "
        "certificates are expected. The certificate holds for the smoothed classifier, not for the base "
        "model, and only at this sigma; a model not trained with noise at this sigma abstains often."
    )


def _ibp_paragraph(spec: IBPSpec, dim: int) -> str:
    eps = (
        f"a fixed eps = {spec.eps}"
        if spec.eps is not None
        else "the largest eps found by search (each sample's radius is recorded)"
    )
    example = (
        f" For eps = {spec.eps} in d = {dim} dimensions: {_translated(spec.eps, spec.norm, dim)}."
        if spec.eps is not None
        else ""
    )
    return (
        f"**Interval bound propagation, norm {spec.norm.value}.** Certifies the base model itself at "
        f"{eps}: bounds propagated through the network show the predicted class cannot change within the "
        f"{spec.norm.value} ball. The bound is deterministic (no failure probability) but loose: many "
        f"samples that no perturbation of that size can flip are still left uncertified.{example}"
    )


def _lipschitz_paragraph(spec: LipschitzSpec, dim: int) -> str:
    return (
        f"**Global Lipschitz bound, norm {spec.norm.value}.** The radius is the logit margin divided by "
        "sqrt(2) times an upper bound on the network's l2 Lipschitz constant: deterministic, and usually "
        "far below the distance to the nearest class change because the global constant is loose. "
        f"In d = {dim} dimensions an l2 radius r covers r in l1 and r / sqrt(d) = "
        f"{_fmt(1 / math.sqrt(dim))} * r in linf."
    )


def _health_paragraph(policy: Policy) -> str:
    h = policy.health
    return (
        "Before any certificate is trusted, the base model is checked on the labelled reference set "
        "(NIST AI RMF MEASURE 2.3): every logit finite, accuracy above always predicting the majority "
        f"class (one-sided binomial test at level {h.chance_alpha}), every class's recall at least "
        f"{h.min_class_recall}, and no class predicted more than {h.max_top_class_excess} above its share "
        "of the labels. A broken model (NaN weights, a constant or chance-level classifier) would "
        "otherwise be certified at the largest radius everywhere; failing any check makes the batch "
        "critical, and a sample whose logits are not finite abstains. The check speaks for the reference "
        "distribution only: it is not a measure of accuracy on production data."
    )


def limitations(policy: Policy, *, dim: int | None = None) -> str:
    """Markdown paragraphs: what the policy's certificates cover and what they do not.

    Parameters
    ----------
    policy : the model's Policy.
    dim : input dimension d used to translate radii across norms; default prod(input_shape).

    Returns
    -------
    str, markdown. Names every method's norm and parameters (sigma, alpha, n for smoothing), the
    largest certifiable radius translated to l1, l2 and linf, the threats outside the
    certificates, and what the risk tiers do and do not mean under this policy.
    """
    d = int(dim) if dim is not None else policy.model.n_features
    if d < 1:
        raise InputError(f"dim must be >= 1, got {dim}")
    methods = []
    for spec in policy.certification.methods:
        if isinstance(spec, SmoothingSpec):
            methods.append(_smoothing_paragraph(spec, d))
        elif isinstance(spec, IBPSpec):
            methods.append(_ibp_paragraph(spec, d))
        else:
            methods.append(_lipschitz_paragraph(spec, d))
    norms = sorted({spec.norm.value for spec in policy.certification.methods})
    abst_risk, abst_tier = abstention_alone(policy)
    ceiling = certified_ceiling(policy)
    shape = "x".join(str(s) for s in policy.model.input_shape)

    sections = [
        f"## What the certificates of model {policy.model.name} cover",
        f"Inputs of shape {shape} (d = {d}). Certified norm(s): {', '.join(norms)}.",
        *methods,
        "## What they do not cover",
        (
            "- **A certificate says nothing about whether a sample was attacked.** It bounds the distance to "
            "the nearest input of another class, not to the nearest adversarial input: an attacked input can "
            "be certified, for example when the attack moved it into a wrong class far from the decision "
            "boundary. A certified sample has a radius, not a verdict."
        ),
        (
            "- **Other norms beyond the translated radii.** Perturbations larger than the radii above in l1, "
            "l2 or linf, and perturbations measured in any other way, are outside every certificate."
        ),
        (
            "- **Geometric and semantic transforms.** Rotations, translations, scaling, cropping, blur, "
            "changes of lighting or style move an input far in every lp norm while keeping its meaning; none "
            "is certified."
        ),
        (
            "- **Poisoning and backdoors.** Certificates describe the model as trained. A model trained on "
            "poisoned data can certify inputs that carry a trigger."
        ),
        (
            "- **Model theft, inversion and membership inference.** Certificates do not address the "
            "confidentiality of the model or its training data; raw certificates may even help an attacker "
            "and are readable by trusted roles only."
        ),
        (
            "- **The data distribution.** Radius percentiles, context and novelty compare samples with the "
            f"reference set named in the policy ({policy.data.reference}); they mean little for data unlike it."
        ),
        "## How the risk score uses them",
        (
            f"Abstention is the signal that weighs most: under this policy a sample whose only factor is "
            f"abstention has risk {abst_risk:.3f}, tier {abst_tier.value}. A radius only ranks samples; a "
            f"certified sample whose only factors come from its certificate (radius rank, context, "
            f"instability) reaches risk {ceiling:.3f} at most. Tier low means no factor of the score fired; it "
            "is not evidence that the sample is benign."
        ),
        _health_paragraph(policy),
    ]
    return "\n\n".join(sections) + "\n"


__all__ = ["limitations"]
