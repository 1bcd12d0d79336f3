"""Both report editions state the model's measured detection and its misses, or that it is unmeasured."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pandas as pd
import pytest

from certrisk.reports import build_run_report
from tests.reports.report_runs import MODEL_SHA, POLICY_TEXT, recorded_store


def _results() -> pd.DataFrame:
    rows = []
    for family, norm, share_high in (("pgd_l2_deep", "l2", 0.35), ("pgd_l2_early", "l2", 1.0)):
        rows.append(
            {
                "family": family, "norm": norm, "budget_fraction": 0.5, "eps": 1.04, "n_attacked": 100,
                "n_successful": 95, "success_rate": 0.95, "abstention_rate": 0.1, "auroc": 0.94,
                "share_high": share_high, "share_medium": 0.9, "clean_false_alarm": 0.05,
                "batch_tier": "high", "cert_auroc": 0.72, "cert_share_high": 0.16,
                "cert_clean_false_alarm": 0.05, "scored": True, "adaptive": False,
            }
        )  # fmt: skip
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def store_and_run(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('detection') / 'governance.db'}"
    store, record = recorded_store(url)
    yield store, record
    store.dispose()


def _text(report) -> str:
    return report.text()


def test_unmeasured_is_said_then_the_recorded_evaluation_is_shown(store_and_run):
    store, record = store_and_run
    before = build_run_report(store, record.run_id, edition="compliance", verify=False)
    assert "what a tier means against attacks is unmeasured for this model" in _text(before)
    meta = {
        "model_sha256": MODEL_SHA,
        "seeds": {"attack": 0},
        "n_clean": 104,
        "created_at": datetime(2026, 11, 30, tzinfo=UTC),
    }
    reference_sha = hashlib.sha256(b"reference").hexdigest()
    store.write_evaluation(record.model_name, POLICY_TEXT, reference_sha, _results(), meta)
    for edition in ("compliance", "engineer"):
        text = _text(build_run_report(store, record.run_id, edition=edition, verify=False))
        assert "Measured detection" in text
        assert "65.0% of the successful pgd_l2_deep attacks" in text  # 1 - 0.35 stayed below high
        assert "pgd_l2_early attacks" not in text.split("Misses:")[1].split(".")[0]
        assert "adaptive attacker who knows the detector may evade" in text
