"""The shared builders follow the contracts they stand in for: column specs, ABSTAIN for an
abstained certificate, the policy hash of a RunRecord."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from certrisk.schemas.columns import (
    ABSTAIN,
    CERTIFICATE_COLUMNS,
    PREDICTION_COLUMNS,
    RULE_SAMPLE_COLUMNS,
    SAMPLE_RISK_COLUMNS,
    empty_frame,
)
from tests.factories import certificate_frame, prediction_frame, rule_sample_frame, run_record


def _dtypes(frame: pd.DataFrame) -> dict[str, str]:
    return {name: str(dtype) for name, dtype in frame.dtypes.items()}


def test_certificate_rows_follow_the_spec_and_abstain_with_ABSTAIN():
    certs = certificate_frame(
        ["a", "b", "c"], prediction=[4, 5, 6], abstained=[False, True, False], radius=[0.5, 0.0, 0.25]
    )
    assert list(certs.columns) == list(CERTIFICATE_COLUMNS)
    assert _dtypes(certs) == _dtypes(empty_frame(CERTIFICATE_COLUMNS))
    assert certs["prediction"].tolist() == [4, ABSTAIN, 6]
    assert certs["radius_l2"].tolist() == certs["radius"].tolist() == [0.5, 0.0, 0.25]
    ibp = certificate_frame(["a"], method="ibp", norm="linf", sigma=np.nan, eps=0.1, radius_linf=0.1)
    assert (ibp.loc[0, "method"], ibp.loc[0, "norm"], ibp.loc[0, "eps"]) == ("ibp", "linf", 0.1)
    assert np.isnan(ibp.loc[0, "sigma"])


def test_prediction_and_rule_rows_follow_the_spec():
    preds = prediction_frame(["a", "b"], base_prediction=[1, 2])
    assert list(preds.columns) == list(PREDICTION_COLUMNS)
    assert preds["base_prediction"].tolist() == [1, 2] and preds["base_confidence"].tolist() == [0.9, 0.9]
    rules = rule_sample_frame(["a", "b"], [[], ["pixel_range", "column_count"]], severity="critical")
    assert list(rules.columns) == list(RULE_SAMPLE_COLUMNS)
    assert rules["n_failed"].tolist() == [0, 2]
    assert rules["max_severity"].tolist() == ["none", "critical"]
    assert rule_sample_frame(["a"])["failed"].tolist() == [[]]


def test_run_record_hashes_its_policy_text():
    created = datetime(2026, 11, 30, tzinfo=UTC)
    record = run_record(
        "run-7",
        sample_risk=empty_frame(SAMPLE_RISK_COLUMNS),
        summary={"tier": "low"},
        created_at=created,
        model_name="toy",
        policy_text="model: toy\n",
    )
    assert (record.batch_id, record.policy_name, record.created_at) == ("batch-run-7", "toy", created)
    assert record.policy_sha256 == hashlib.sha256(b"model: toy\n").hexdigest()
    assert record.rmf_evidence == []
