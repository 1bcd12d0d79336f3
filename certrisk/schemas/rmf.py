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
    raw = json.loads(resources.files("certrisk.schemas").joinpath("data/nist_ai_rmf_1.0_core.json").read_text("utf-8"))
    out: dict[str, Subcategory] = {}
    for fn in raw["functions"]:
        for cat in fn["categories"]:
            for sub in cat["subcategories"]:
                out[sub["id"]] = Subcategory(sub["id"], fn["function"], cat["id"], sub["text"], cat["text"])
    return MappingProxyType(out)


def catalog_source() -> str:
    raw = json.loads(resources.files("certrisk.schemas").joinpath("data/nist_ai_rmf_1.0_core.json").read_text("utf-8"))
    return f"{raw['framework']}; {raw['source']}"


#: Evidence kinds certrisk produces, mapped to the subcategories they evidence.
EVIDENCE = MappingProxyType(
    {
        # per-sample certificates: robustness evaluated and documented; system evaluated for
        # valid, reliable operation beyond its training conditions
        "certificate": ("MEASURE 2.7", "MEASURE 2.6"),
        "abstention": ("MEASURE 2.7", "MEASURE 2.6"),
        "certificate_context": ("MEASURE 2.7", "MEASURE 2.5"),
        "drift": ("MEASURE 2.4", "MEASURE 3.1"),
        "novelty": ("MEASURE 2.4",),
        "rules": ("MEASURE 2.1",),
        "policy": ("MAP 1.5", "GOVERN 1.3"),
        "run_record": ("MANAGE 4.1", "GOVERN 1.5"),
        "audit_chain": ("GOVERN 1.4", "MEASURE 2.8"),
        "limitations": ("MEASURE 2.5", "MAP 2.2"),
        "test_sets": ("MEASURE 2.1",),
        "risk_tiers": ("MANAGE 1.2", "MANAGE 1.3"),
        "alert": ("MANAGE 2.4", "MEASURE 3.1"),
        "model_inventory": ("GOVERN 1.6",),
        "unmeasured": ("MEASURE 1.1",),
    }
)

#: Risk factors mapped to the evidence kind behind them.
FACTOR_EVIDENCE = MappingProxyType(
    {
        "abstention": "abstention",
        "radius_rank": "certificate",
        "context": "certificate_context",
        "rules": "rules",
        "novelty": "novelty",
        "instability": "certificate",
    }
)


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
