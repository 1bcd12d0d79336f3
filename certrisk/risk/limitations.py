"""What a policy's certificates cover and what they do not, in words (DESIGN.md, Principle 5).

``limitations(policy)`` renders markdown paragraphs that every report prints next to the risk
figures: each method's norm and parameters (sigma, alpha, n), the largest radius those
parameters can certify translated to l1, l2 and linf, the threats outside the certificates, and
how the risk score uses them. The radius translation is ``certrisk.risk.certify.translate_radius``
(imported when called: the certify package loads torch). The section on the risk score also
states the signals that do not trust the certificate and the tier thresholds' calibration with
its finite-sample guarantee, and where that guarantee cannot hold.
"""

from __future__ import annotations

import math

from certrisk.risk.calibration import TierCalibration
from certrisk.risk.score import abstention_alone, certified_ceiling
from certrisk.schemas.enums import Method, Norm, Tier
from certrisk.schemas.errors import InputError
from certrisk.schemas.policy import CROWNSpec, IBPSpec, LipschitzSpec, Policy, SmoothingSpec

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


_EXECUTION = (
    "It covers the dtype and device class each certificate records (any summation order; on "
    "accelerators float32 matmul and convolution inputs possibly rounded to TF32) and assumes "
    "convolutions run as dot products (direct or GEMM-based, not Winograd or FFT); it says nothing "
    "about the model run in another dtype or on another kind of device, nor about inputs rounded into "
    "the ball from outside it."
)


def _eps_words(eps: float | None) -> str:
    return (
        f"a fixed eps = {eps}"
        if eps is not None
        else "the largest eps found by search (each sample's radius is recorded)"
    )


def _eps_example(spec, dim: int) -> str:
    if spec.eps is None:
        return ""
    return f" For eps = {spec.eps} in d = {dim} dimensions: {_translated(spec.eps, spec.norm, dim)}."


def _ibp_paragraph(spec: IBPSpec, dim: int) -> str:
    return (
        f"**Interval bound propagation, norm {spec.norm.value}.** Certifies the model as executed at "
        f"{_eps_words(spec.eps)}: bounds propagated in float64 with outward rounding, minus a rigorous bound "
        "on the float error of the model's own forward pass, show that its predicted class (its argmax; a "
        f"tie counts as a change) cannot change for any input given in the model's dtype inside the "
        f"{spec.norm.value} ball. {_EXECUTION} Deterministic (no failure probability) but loose: many samples "
        f"that no perturbation of that size can flip are still left uncertified.{_eps_example(spec, dim)}"
    )


def _crown_paragraph(spec: CROWNSpec, dim: int) -> str:
    name = (
        "CROWN-IBP (interval pre-activation bounds: cheaper, looser)"
        if spec.method == Method.CROWN_IBP
        else "CROWN"
    )
    return (
        f"**{name} linear relaxation bounds, norm {spec.norm.value}.** Certifies the model as executed at "
        f"{_eps_words(spec.eps)}: each ReLU is bounded above and below by lines and the margins by one linear "
        "function of the input minimised over the ball, in float64 with outward rounding and with the "
        "model's own float error accounted for at every layer; the larger of this bound and the interval "
        f"bound is used, so it certifies at least what interval bound propagation does. {_EXECUTION} "
        "Deterministic; tighter than intervals but still incomplete, and it costs several bound evaluations "
        f"per input.{_eps_example(spec, dim)}"
    )


def _lipschitz_paragraph(spec: LipschitzSpec, dim: int) -> str:
    return (
        f"**Global Lipschitz bound, norm {spec.norm.value}.** The radius is a rigorous lower bound of the "
        "logit margin at the sample, less a bound on the float error of the model's own forward pass over "
        "the ball, divided by an upper bound on the network's l2 Lipschitz constant whose per-layer norms "
        "are proved, not estimated (spectral norms certified by a Cholesky factorisation, convolutions "
        f"bounded over every frequency), rounded down. {_EXECUTION} Deterministic, and usually far below "
        "the distance to the nearest class change because the global constant is loose. "
        f"In d = {dim} dimensions an l2 radius r covers r in l1 and r / sqrt(d) = "
        f"{_fmt(1 / math.sqrt(dim))} * r in linf."
    )


def _precision_paragraph(policy: Policy, parity: dict | None) -> str:
    """What the certification precision and compile mode mean for the smoothing certificates, and
    the serving parity measured this run (None: not measured)."""
    cert = policy.certification
    if policy.certification.smoothing is None:
        return ""
    text = (
        f"**Precision.** Randomized smoothing runs the model at {cert.precision}"
        + ("" if cert.precision == "fp32" else " (autocast)")
        + (f", compiled (torch.compile mode {cert.compile})" if cert.compile != "off" else "")
        + "; the noise is drawn and added in float32. Its certificates hold for the smoothed classifier of "
        "the model as executed that way, which each certificate records (precision, compile). IBP, CROWN "
        "and Lipschitz certificates keep their own sound float32/float64 arithmetic and record fp32. The "
        f"model is served at {cert.serving_precision}; "
    )
    if parity is None:
        return (
            text
            + "the share of reference inputs predicted differently at the two precisions was not measured."
        )
    share, threshold = 100 * float(parity["share"]), 100 * float(parity["threshold"])
    if not parity.get("measured", True):
        return text + "certification and serving run the same arithmetic, so their predictions agree."
    text += (
        f"on {parity['n']} reference inputs, {parity['differ']} ({share:.2f}%) are predicted differently at "
        f"the certification precision than at the serving precision (threshold {threshold:.2f}%)."
    )
    if parity.get("above_threshold"):
        text += (
            " **This is above the policy's threshold: the certificates describe a model that disagrees with "
            "the served one on that share of inputs; certify at the serving precision or serve at the "
            "certification precision.**"
        )
    return text


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


def _signals_paragraph(policy: Policy) -> str:
    sg = policy.signals
    w = policy.scoring.weights
    return (
        "**Signals that do not trust the certificate.** Because attacked inputs can be certified, each "
        f"prediction is also compared with the labels of its {sg.k} nearest reference samples per class "
        f"(weight {w['neighbours']:g} in input space, in the driving method's norm; weight "
        f"{w['feature_neighbours']:g} on the model's penultimate representation"
        + ("" if sg.features else ", switched off by the policy")
        + "), on a scale calibrated on held-out reference samples. A sample whose prediction its reference "
        "neighbours contradict carries risk even when certified; an unmodified sample the model "
        "misclassifies looks the same and counts as a false alarm. An attacker who knows these signals can aim an "
        "input at the reference samples of the target class and evade them: they raise the cost of an "
        "attack, they do not bound it."
    )


def _calibration_paragraph(policy: Policy, calibration: TierCalibration | None) -> str:
    spec = policy.scoring.calibration
    if spec is None:
        t = policy.scoring.thresholds
        return (
            f"**Tier thresholds.** This policy uses fixed thresholds (medium {t[Tier.MEDIUM]:g}, high "
            f"{t[Tier.HIGH]:g}): no false-alarm rate is stated for them, and thresholds fixed for one model do "
            "not transfer to another."
        )
    text = (
        "**Calibrated tiers.** The medium and high thresholds are set by split-conformal calibration on "
        "reference samples held out from everything else (the tier role), scored exactly like a batch. "
        "Finite-sample guarantee: for batch samples exchangeable with the tier role (unmodified samples "
        f"drawn like the reference), P(such a sample reaches tier high or above) <= {spec.false_alarm_rate:g} and P(medium or above) "
        f"<= {spec.medium_rate:g}. The guarantee is marginal (over the draw of the calibration samples, not "
        "for every batch), holds only for data like the reference set, and says nothing about attacked "
        "inputs: how many attacks reach high is measured (certrisk evaluate), not guaranteed. The high "
        "threshold never exceeds the risk of abstention alone, so where more reference samples abstain than "
        "the target allows, the target cannot be met and the run records it."
    )
    if calibration is not None:
        text += " This run: " + calibration.guarantee
    return text


def limitations(
    policy: Policy,
    *,
    dim: int | None = None,
    calibration: TierCalibration | None = None,
    parity: dict | None = None,
) -> str:
    """Markdown paragraphs: what the policy's certificates cover and what they do not.

    Parameters
    ----------
    policy : the model's Policy.
    dim : input dimension d used to translate radii across norms; default prod(input_shape).
    calibration : the run's tier calibration, whose guarantee and limits are quoted; None states
        the policy's calibration in general.
    parity : the run's serving parity (``certrisk.risk.certify.precision.serving_parity``), quoted
        with the certification precision; None says it was not measured.

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
        elif isinstance(spec, CROWNSpec):
            methods.append(_crown_paragraph(spec, d))
        else:
            methods.append(_lipschitz_paragraph(spec, d))
    norms = sorted({spec.norm.value for spec in policy.certification.methods})
    abst_risk, abst_tier = abstention_alone(policy, calibration)
    ceiling = certified_ceiling(policy)
    shape = "x".join(str(s) for s in policy.model.input_shape)

    sections = [
        f"## What the certificates of model {policy.model.name} cover",
        f"Inputs of shape {shape} (d = {d}). Certified norm(s): {', '.join(norms)}.",
        *methods,
        *([p] if (p := _precision_paragraph(policy, parity)) else []),
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
            f"instability) reaches risk {ceiling:.3f} at most. A failed rule of severity critical makes its "
            "sample critical, one of severity warning at least medium. Tier low means the risk stayed at or "
            "below the medium threshold; it is not evidence that the sample is benign."
        ),
        _signals_paragraph(policy),
        _calibration_paragraph(policy, calibration),
        _health_paragraph(policy),
    ]
    return "\n\n".join(sections) + "\n"


__all__ = ["limitations"]
