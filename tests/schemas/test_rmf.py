"""The NIST AI RMF 1.0 Core catalog and certrisk's evidence mapping."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from certrisk.schemas.columns import FACTORS
from certrisk.schemas.errors import CertriskError
from certrisk.schemas.rmf import (
    EVIDENCE,
    EVIDENCE_DESCRIPTIONS,
    FACTOR_EVIDENCE,
    UNEVIDENCED_CATEGORY_NOTES,
    UNEVIDENCED_SUBCATEGORY_NOTES,
    catalog,
    catalog_source,
    check_ids,
    evidence_ids,
    unevidenced_note,
)
from tests.conftest import REPO


def test_catalog_has_the_core_structure():
    cat = catalog()
    assert len(cat) == 72
    assert Counter(s.function for s in cat.values()) == {"GOVERN": 19, "MAP": 18, "MEASURE": 22, "MANAGE": 13}
    assert len({s.category for s in cat.values()}) == 19
    assert cat["MEASURE 2.7"].text.startswith("AI system security and resilience")
    assert "AI RMF 1.0" in catalog_source()


def test_catalog_ships_the_shared_data():
    shared = REPO.parent / "shared" / "data" / "nist_ai_rmf_1.0_core.json"
    if not shared.exists():
        pytest.skip(f"{shared} is not present in this checkout")
    packaged = REPO / "certrisk" / "schemas" / "data" / "nist_ai_rmf_1.0_core.json"
    assert json.loads(packaged.read_text("utf-8")) == json.loads(shared.read_text("utf-8"))


def test_every_mapped_id_exists():
    for kind, ids in EVIDENCE.items():
        check_ids(ids)
        assert ids, kind
    assert set(FACTOR_EVIDENCE) == set(FACTORS)
    assert set(FACTOR_EVIDENCE.values()) <= set(EVIDENCE)
    assert set(EVIDENCE_DESCRIPTIONS) == set(EVIDENCE)
    check_ids(UNEVIDENCED_SUBCATEGORY_NOTES)
    assert set(UNEVIDENCED_CATEGORY_NOTES) == {s.category for s in catalog().values()}


def test_issue_mapping():
    assert set(evidence_ids("certificate")) >= {"MEASURE 2.7", "MEASURE 2.6"}
    assert "MEASURE 2.4" in evidence_ids("drift")
    assert set(evidence_ids("policy")) >= {"MAP 1.5", "GOVERN 1.3"}
    assert set(evidence_ids("run_record")) >= {"MANAGE 4.1", "GOVERN 1.5"}
    assert set(evidence_ids("limitations")) >= {"MEASURE 2.5", "MAP 2.2"}
    assert "MEASURE 2.1" in evidence_ids("test_sets")
    assert evidence_ids("unmeasured") == ("MEASURE 1.1",)


def test_evidence_ids_are_in_core_order_and_deduplicated():
    ids = evidence_ids("certificate", "abstention", "policy")
    order = list(catalog())
    assert list(ids) == sorted(set(ids), key=order.index)
    assert len(ids) == len(set(ids))


def test_unknown_kinds_and_ids_raise():
    with pytest.raises(CertriskError, match="bogus"):
        evidence_ids("bogus")
    with pytest.raises(CertriskError, match="MEASURE 9.9"):
        check_ids(["MEASURE 2.7", "MEASURE 9.9"])


def test_every_subcategory_has_a_note():
    for sid in catalog():
        note = unevidenced_note(sid)
        assert note.startswith("Not evidenced by certrisk: ") and len(note) > 40
        for word in ("safe", "secure", "clean", "not attacked"):
            assert word not in note.lower()
