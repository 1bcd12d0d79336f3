"""The NIST AI RMF 1.0 Core (shipped as data) and certrisk's evidence mapping.

The catalog has 4 functions, 19 categories and 72 subcategories with their Core text. The
mapping below is the one place that says which certrisk evidence supports which subcategory;
everything that tags records with RMF ids reads it from here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from types import MappingProxyType

from certrisk.schemas import factors
from certrisk.schemas.errors import CertriskError


@dataclass(frozen=True)
class Subcategory:
    id: str
    function: str
    category: str
    text: str
    category_text: str


@lru_cache(maxsize=1)
def catalog() -> MappingProxyType:
    """All 72 subcategories, keyed by id (e.g. 'MEASURE 2.7'), in Core order."""
    raw = json.loads(
        resources.files("certrisk.schemas").joinpath("data/nist_ai_rmf_1.0_core.json").read_text("utf-8")
    )
    out: dict[str, Subcategory] = {}
    for fn in raw["functions"]:
        for cat in fn["categories"]:
            for sub in cat["subcategories"]:
                out[sub["id"]] = Subcategory(sub["id"], fn["function"], cat["id"], sub["text"], cat["text"])
    return MappingProxyType(out)


def catalog_source() -> str:
    raw = json.loads(
        resources.files("certrisk.schemas").joinpath("data/nist_ai_rmf_1.0_core.json").read_text("utf-8")
    )
    return f"{raw['framework']}; {raw['source']}"


#: Evidence kinds certrisk produces, mapped to the subcategories they evidence.
EVIDENCE = MappingProxyType(
    {
        # per-sample certificates: robustness evaluated and documented; system evaluated for
        # valid, reliable operation beyond its training conditions
        "certificate": ("MEASURE 2.7", "MEASURE 2.6"),
        "abstention": ("MEASURE 2.7", "MEASURE 2.6"),
        "certificate_context": ("MEASURE 2.7", "MEASURE 2.5"),
        # signals that do not trust the certificate: resilience evaluated beyond what a certificate
        # bounds, and reliability when the model operates outside its knowledge
        "reference_agreement": ("MEASURE 2.7", "MEASURE 2.6"),
        # tier thresholds calibrated to a stated false-alarm rate on held-out clean samples: the
        # tiers are demonstrated valid for the reference distribution (and limited to it) and
        # prioritise treatment by a measured likelihood
        "tier_calibration": ("MEASURE 2.5", "MANAGE 1.2"),
        "drift": ("MEASURE 2.4", "MEASURE 3.1"),
        "novelty": ("MEASURE 2.4",),
        "rules": ("MEASURE 2.1",),
        "policy": ("MAP 1.5", "GOVERN 1.3"),
        "run_record": ("MANAGE 4.1", "GOVERN 1.5"),
        "audit_chain": ("GOVERN 1.4", "MEASURE 2.8"),
        "limitations": ("MEASURE 2.5", "MAP 2.2"),
        "test_sets": ("MEASURE 2.1",),
        # model health on the labelled reference: performance against assurance criteria and
        # the conditions under which the model is valid
        "model_health": ("MEASURE 2.3", "MEASURE 2.5"),
        "risk_tiers": ("MANAGE 1.2", "MANAGE 1.3"),
        "alert": ("MANAGE 2.4", "MEASURE 3.1"),
        "model_inventory": ("GOVERN 1.6",),
        "unmeasured": ("MEASURE 1.1",),
        # a person's decision on a batch, on the record (certrisk.schemas.review): risks prioritised
        # and treated by a decision (MANAGE 1.3), the means to stop a batch (MANAGE 2.4), human-AI
        # oversight defined (GOVERN 3.2), escalation tracked (MEASURE 3.3)
        "human_review": ("MANAGE 1.3", "MANAGE 2.4", "GOVERN 3.2", "MEASURE 3.3"),
    }
)

#: Risk factors mapped to the evidence kind behind them (stated per factor in certrisk.schemas.factors).
FACTOR_EVIDENCE = factors.FACTOR_EVIDENCE


def evidence_ids(*kinds: str) -> tuple[str, ...]:
    """Subcategory ids for evidence kinds, deduplicated, in Core order."""
    cat = catalog()
    ids = set()
    for kind in kinds:
        if kind not in EVIDENCE:
            raise CertriskError(f"unknown RMF evidence kind {kind!r}; known: {sorted(EVIDENCE)}")
        ids.update(EVIDENCE[kind])
    order = list(cat)
    return tuple(sorted(ids, key=order.index))


def check_ids(ids) -> None:
    """Raise if any id is not a subcategory of the catalog."""
    unknown = sorted(set(ids) - set(catalog()))
    if unknown:
        raise CertriskError(f"unknown NIST AI RMF subcategory id(s): {unknown}")


#: What each evidence kind is, in words a compliance officer reads next to the subcategory.
EVIDENCE_DESCRIPTIONS = MappingProxyType(
    {
        "certificate": "per-sample robustness certificates (method, norm, radius, confidence) and the "
        "agreement of the base model with the certified prediction",
        "abstention": "per-sample abstention of the certificate at the policy's noise and confidence, "
        "and the batch abstention rate tested against the reference",
        "certificate_context": "radii ranked against the reference distribution and compared with the "
        "distance to the nearest reference sample of another class",
        "reference_agreement": "per-sample agreement of the prediction with the labels of its nearest "
        "reference samples, in input space and in the model's feature space, calibrated on held-out "
        "reference samples (signals that do not trust the certificate)",
        "tier_calibration": "tier thresholds set by split-conformal calibration on held-out reference samples "
        "to a stated false-alarm rate, with the calibration's size and feasibility",
        "drift": "batch drift tests against the reference set, corrected across test families",
        "novelty": "per-sample distance to the reference set as a percentile",
        "rules": "data rules (expectations) per sample and per batch, with severities",
        "policy": "the versioned policy (sha256) with weights, thresholds and the risk tolerance statement",
        "run_record": "the run's record in the governance database: inputs, outputs, tiers, timings",
        "audit_chain": "the hash-chained audit log over every row a run wrote",
        "limitations": "the statement of what the certificates cover and what they do not",
        "test_sets": "the reference set, the test tools and their versions",
        "model_health": "the model's accuracy, class recall, dominant-class share and finite outputs on the "
        "labelled reference, against the policy's health floors",
        "risk_tiers": "per-sample and per-batch risk tiers with their factors and reasons",
        "alert": "an alert raised when the batch tier reaches the policy's alert tier",
        "model_inventory": "the model registry entry: name, file sha256, policy",
        "unmeasured": "the documented list of factors, tests and subcategories this run did not measure",
        "human_review": "a reviewer's recorded decision on the batch (approve, reject or escalate), with "
        "comment, reviewer and time, append-only and covered by the audit chain",
    }
)

#: Why certrisk leaves a subcategory to people, per category (MEASURE 1.1: what is not or cannot
#: be measured is documented). Subcategory entries in UNEVIDENCED_SUBCATEGORY_NOTES override these.
UNEVIDENCED_CATEGORY_NOTES = MappingProxyType(
    {
        "GOVERN 1": "an organisational policy or process; certrisk records the policy file it is given, "
        "not the organisation's legal review, inventory process or decommissioning plan",
        "GOVERN 2": "roles, training and accountability of people; document them outside certrisk",
        "GOVERN 3": "team diversity and human-AI oversight roles; document them outside certrisk",
        "GOVERN 4": "organisational culture and communication of risks; certrisk's reports can feed it",
        "GOVERN 5": "engagement with external AI actors and feedback; not observable in a pipeline run",
        "GOVERN 6": "third-party data, software and model risks; document suppliers and contingencies",
        "MAP 1": "the intended purpose, context and requirements of the system; stated by people",
        "MAP 2": "the task definition and scientific integrity of the system's design; stated by people",
        "MAP 3": "benefits, costs, application scope and human oversight processes; stated by people",
        "MAP 4": "legal and third-party component risks; documented by people",
        "MAP 5": "impacts on individuals and communities and engagement with them; assessed by people",
        "MEASURE 1": "the selection and review of metrics and the involvement of independent assessors; "
        "certrisk supplies the metrics, people review them",
        "MEASURE 2": "a trustworthiness characteristic certrisk does not measure (certificates and drift "
        "speak to robustness and distribution, not to this one)",
        "MEASURE 3": "processes to track emergent risks and to take feedback from end users",
        "MEASURE 4": "consultation with domain experts and affected communities about measurement",
        "MANAGE 1": "decisions on whether to deploy and how to respond to risks; taken by people",
        "MANAGE 2": "resources, fallbacks and the means to disengage the system; set up by people",
        "MANAGE 3": "monitoring of third-party resources and pre-trained models",
        "MANAGE 4": "post-deployment plans, continual improvement and incident communication",
    }
)

#: Subcategory-specific notes where the category note is not precise enough.
UNEVIDENCED_SUBCATEGORY_NOTES = MappingProxyType(
    {
        "MEASURE 2.2": "evaluations with human subjects: certrisk runs none",
        "MEASURE 2.9": "model explanation: certrisk explains its risk scores (factors, reasons), not the "
        "model's decisions",
        "MEASURE 2.10": "privacy risk: not measured (certificates say nothing about membership inference "
        "or data leakage)",
        "MEASURE 2.11": "fairness and bias: not measured; per-group abstention rates would need group labels",
        "MEASURE 2.12": "environmental impact: certrisk records compute time and memory per certificate "
        "but not energy or emissions",
        "MEASURE 2.13": "the effectiveness of the TEVV metrics themselves: assessed by people, for example "
        "with the soundness audits under certrisk.risk.audit",
        "MANAGE 3.2": "pre-trained models: certrisk pins the model file by sha256 but does not monitor "
        "upstream pre-trained components",
    }
)


def unevidenced_note(subcategory_id: str) -> str:
    """Why certrisk does not evidence a subcategory and what a person must document instead."""
    sub = catalog()[subcategory_id]
    note = UNEVIDENCED_SUBCATEGORY_NOTES.get(subcategory_id) or UNEVIDENCED_CATEGORY_NOTES[sub.category]
    return f"Not evidenced by certrisk: {note}."


@dataclass(frozen=True)
class Coverage:
    """One subcategory's coverage by a set of evidence: ``evidence`` holds "kind: detail" texts
    (empty when not evidenced); ``note`` says, for a subcategory not evidenced, whether certrisk
    could evidence it (and with which kinds) or why it cannot."""

    subcategory: Subcategory
    kinds: tuple[str, ...]
    evidence: tuple[str, ...]
    note: str

    @property
    def evidenced(self) -> bool:
        return bool(self.kinds)


def coverage(evidence) -> list[Coverage]:
    """NIST AI RMF coverage of a body of evidence, one entry per subcategory in Core order.

    ``evidence`` is an iterable of (subcategory_id, evidence_kind, detail) rows, as recorded in
    the governance store's rmf_evidence table. The one place that turns evidence into coverage:
    the scorer's coverage table, the reports' crosswalk and the store's queries all read it.
    """
    have: dict[str, list[tuple[str, str]]] = {}
    for sid, kind, detail in evidence:
        have.setdefault(str(sid), []).append((str(kind), str(detail)))
    possible: dict[str, list[str]] = {}
    for kind, ids in EVIDENCE.items():
        for sid in ids:
            possible.setdefault(sid, []).append(kind)
    out = []
    for sid, sub in catalog().items():
        rows = have.get(sid, [])
        kinds = tuple(dict.fromkeys(k for k, _ in rows))
        if rows:
            note = ""
        elif sid in possible:
            note = (
                f"certrisk evidences this with {', '.join(possible[sid])} evidence, which this run did not "
                "produce or record"
            )
        else:
            note = unevidenced_note(sid)
        out.append(Coverage(sub, kinds, tuple(f"{k}: {d}" for k, d in rows), note))
    return out
