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
stays below every abstained one. The signals that do not trust the certificate (``SIGNAL_FACTORS``:
reference-neighbour disagreement in input and feature space) come from the context step's
``signals`` table (SIGNAL_COLUMNS), one row per sample and signal.

Rule severities are also tier floors (``SEVERITY_TIER_FLOOR``): a sample that failed a row-level
rule of severity critical is critical whatever its risk, one of severity warning is at least
medium; info sets no floor (its factor still counts).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from certrisk.schemas.enums import Severity, Tier


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
    Factor(
        "neighbours",
        0.6,
        "reference_agreement",
        "reference-neighbour disagreement in input space, a signal that does not trust the "
        "certificate: s = d_same / (d_same + d_other), with d_same the mean distance (in the driving "
        "method's norm) to the k nearest index samples (reference role 'index' plus the policy's "
        "data.index) of the predicted class (the driving certificate's, the base model's when it "
        "abstained) and d_other to the k nearest of the other classes (policy signals.k). The factor "
        "is s on a scale calibrated on the reference's held-out 'signal' role: with q the signal "
        "role's (1 - tail) quantile (policy signals.tail), f = clip((s - q) / (1/2 - q), 0, 1): 0 for "
        "the share 1 - tail of clean samples whose neighbours agree most, rising to 1 at s = 1/2, "
        "where the predicted class's reference neighbours are no nearer than another class's. An "
        "attack that moves an input into another class within half the distance to it keeps the "
        "neighbours of its source class, so it disagrees; a clean sample the model misclassifies "
        "disagrees too and counts as a false alarm. It weighs like abstention: a prediction its "
        "reference neighbours contradict is no more to be relied on than none. The conformal p-value "
        "of s is recorded beside it (SIGNAL_COLUMNS).",
        "no reference-neighbour signals were given (no context step, or a reference without labels): "
        "disagreement with the reference neighbours contributes nothing",
    ),
    Factor(
        "feature_neighbours",
        0.0,
        "reference_agreement",
        "the same disagreement and calibrated scale as 'neighbours', on the model's penultimate "
        "representation (the input of its last executed nn.Linear layer, read with a forward hook), "
        "in l2. Weight 0 by default: on both demo models it ranked certified attacks below the "
        "input-space score and, combined with it, lowered the share of attacks above the clean "
        "false-alarm threshold (deep in the feature space of a model is where an attack aims), so it "
        "is measured and recorded but counts only where a policy weights it.",
        "no feature-space signal was given: the model exposes no layer to hook (TorchScript and "
        "torch.export programs run no Python forward hooks, a model without an nn.Linear layer has no "
        "penultimate representation to read) or no context step ran",
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

#: The factors computed from the context step's ``signals`` table, in column order.
SIGNAL_FACTORS: tuple[str, ...] = ("neighbours", "feature_neighbours")

#: Value of the ``rules`` factor for each rule severity.
SEVERITY_FACTOR = MappingProxyType(
    {
        Severity.NONE.value: 0.0,
        Severity.INFO.value: 1.0 / 3.0,
        Severity.WARNING.value: 2.0 / 3.0,
        Severity.CRITICAL.value: 1.0,
    }
)

#: The tier floor each failed row-level rule severity sets on its sample: a critical failure makes
#: the sample critical, a warning at least medium; info and none set no floor.
SEVERITY_TIER_FLOOR = MappingProxyType(
    {
        Severity.NONE.value: Tier.LOW,
        Severity.INFO.value: Tier.LOW,
        Severity.WARNING.value: Tier.MEDIUM,
        Severity.CRITICAL.value: Tier.CRITICAL,
    }
)

__all__ = [
    "DEFAULT_WEIGHTS",
    "FACTORS",
    "FACTOR_EVIDENCE",
    "FACTOR_SPECS",
    "NOT_MEASURED_NOTES",
    "SEVERITY_FACTOR",
    "SEVERITY_TIER_FLOOR",
    "SIGNAL_FACTORS",
    "Factor",
]
