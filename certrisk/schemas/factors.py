"""The per-sample risk factors: one entry each, the one place their facts live.

Each factor is a value in [0, 1] per sample (``certrisk.risk.score.score_samples`` computes
them). An entry gives its name, its default weight in the policy's scoring, the NIST AI RMF
evidence kind behind it (``certrisk.schemas.rmf.EVIDENCE`` maps kinds to subcategories), its
definition, and why it is 0 when its input is missing. Everything else derives from
``FACTOR_SPECS``: ``FACTORS`` (and through it the ``factor_<name>`` columns of
SAMPLE_RISK_COLUMNS), the default weights of ``ScoringSpec``, ``rmf.FACTOR_EVIDENCE`` and the
scorer's not-measured notes. Adding a factor is one entry here plus its computation in the scorer.

The default weights are chosen by construction, not by tuning: ScoringSpec's docstring argues
why abstention alone reaches tier high and why a certified sample with certificate factors only
stays below every abstained one.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from certrisk.schemas.enums import Severity


@dataclass(frozen=True)
class Factor:
    """One risk factor.

    name : the factor's name (column ``factor_<name>`` of SAMPLE_RISK_COLUMNS).
    weight : its default weight in [0, 1] (``ScoringSpec.weights``).
    evidence : the NIST AI RMF evidence kind its measurement gives (a key of ``rmf.EVIDENCE``).
    definition : what the factor measures and how, in words.
    not_measured : why the factor is 0 when its input is missing; None for a factor computed from
        the certificates and predictions, which every scoring has.
    """

    name: str
    weight: float
    evidence: str
    definition: str
    not_measured: str | None = None


#: The factors in column order.
FACTOR_SPECS: tuple[Factor, ...] = (
    Factor(
        "abstention",
        0.6,
        "abstention",
        "1 when the driving certificate abstained (CertificationSpec.driving: the policy's first "
        "smoothing method at its sigma and alpha, else its first method), or when the base model's "
        "logits for the sample are not all finite (a broken model gives no certificate to trust); "
        "else 0. The same definition as the reference abstention rate the batch test compares "
        "with. Abstention is the one reliable signal a certificate gives (DESIGN.md, Principle 2), "
        "so it weighs most.",
    ),
    Factor(
        "radius_rank",
        0.15,
        "certificate",
        "1 - the percentile (0..1) of the driving radius against the reference distribution of radii "
        "(CONTEXT_COLUMNS.radius_percentile). A radius only ranks. For an abstained sample without a "
        "percentile the radius is 0 and the factor is 1.",
        "no certificate context was given: radii were not ranked against the reference",
    ),
    Factor(
        "context",
        0.15,
        "certificate_context",
        "how small the radius is against the distance to the nearest reference sample of another "
        "class: clip(1 - 2 * radius / dist_other_class, 0, 1). A ball reaching half way to that "
        "sample (the farthest a decision boundary between the two can be expected) gives 0; a radius "
        "of 0 gives 1. Abstained samples without a ratio get 1.",
        "no certificate context was given: radii were not compared with the reference geometry",
    ),
    Factor(
        "rules",
        0.4,
        "rules",
        "the highest severity among the row-level rules the sample failed (SEVERITY_FACTOR): none 0, "
        "info 1/3, warning 2/3, critical 1.",
        "no per-sample rule results were given: rules contribute nothing",
    ),
    Factor(
        "novelty",
        0.2,
        "novelty",
        "the percentile (0..1) of the sample's k-NN distance to the reference among the reference's "
        "own leave-one-out distances.",
        "no novelty results were given: distance to the reference contributes nothing",
    ),
    Factor(
        "instability",
        0.3,
        "certificate",
        "1 when the base model's prediction differs from the driving (smoothed) prediction of a "
        "sample that was not abstained; else 0.",
    ),
    Factor(
        "method_disagreement",
        0.6,
        "certificate",
        "1 when two certification methods that each gave a class for the sample gave different "
        "classes (for example smoothing certifies one class and interval bounds another); else 0. "
        "At most one of the certificates can describe the model's behaviour around the sample, so "
        "it weighs like abstention: neither certificate can be relied on. Kept apart from "
        "abstention so the batch abstention test compares one definition with the reference.",
    ),
)

#: Factor names in column order.
FACTORS: tuple[str, ...] = tuple(f.name for f in FACTOR_SPECS)

#: Default weight of each factor.
DEFAULT_WEIGHTS = MappingProxyType({f.name: f.weight for f in FACTOR_SPECS})

#: The NIST AI RMF evidence kind behind each factor.
FACTOR_EVIDENCE = MappingProxyType({f.name: f.evidence for f in FACTOR_SPECS})

#: Why a factor is 0 when its input is missing, for the factors that have an optional input.
NOT_MEASURED_NOTES = MappingProxyType({f.name: f.not_measured for f in FACTOR_SPECS if f.not_measured})

#: Value of the ``rules`` factor for each rule severity.
SEVERITY_FACTOR = MappingProxyType(
    {
        Severity.NONE.value: 0.0,
        Severity.INFO.value: 1.0 / 3.0,
        Severity.WARNING.value: 2.0 / 3.0,
        Severity.CRITICAL.value: 1.0,
    }
)

__all__ = [
    "DEFAULT_WEIGHTS",
    "FACTORS",
    "FACTOR_EVIDENCE",
    "FACTOR_SPECS",
    "NOT_MEASURED_NOTES",
    "SEVERITY_FACTOR",
    "Factor",
]
