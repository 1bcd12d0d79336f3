"""Evaluation records (measured detection per attack family and budget): appended once, chained,
verified, read back through the compliance views, on both backends."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from records import MODEL_SHA, POLICY_TEXT, make_record

from certrisk.schemas.columns import EVALUATION_COLUMNS, OPTIONAL_EVALUATION_COLUMNS
from certrisk.schemas.errors import InputError, RecordConflictError

REFERENCE_SHA = hashlib.sha256(b"reference-v1").hexdigest()
CREATED = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)


def result_frame(*, optional: bool = True) -> pd.DataFrame:
    """Two families at two budgets, as the harness reports them (the brief's columns)."""
    rows = []
    for family, norm in (("pgd_l2_early", "l2"), ("pgd_linf_full", "linf")):
        for fraction, attacked, successful in ((0.25, 80, 20), (0.5, 80, 60)):
            rows.append(
                {
                    "family": family, "norm": norm, "budget_fraction": fraction, "eps": fraction * 1.7,
                    "n_attacked": attacked, "n_successful": successful, "success_rate": successful / attacked,
                    "abstention_rate": 0.4, "auroc": 0.81 if successful else np.nan, "share_high": 0.35,
                    "share_medium": 0.6, "clean_false_alarm": 0.05, "batch_tier": "high", "cert_auroc": 0.66,
                    "cert_share_high": 0.2, "cert_clean_false_alarm": 0.05,
                }
            )  # fmt: skip
    frame = pd.DataFrame(rows)
    if optional:
        frame = frame.assign(
            scored=True, adaptive=False, misclassified_rate=0.3, cert_share_medium=0.4, seconds=1.25
        )
    return frame


def meta(**changes) -> dict:
    return {
        "model_sha256": MODEL_SHA, "seeds": {"attack": 0, "shift": 1}, "n_clean": 100, "created_at": CREATED,
        "geometry": {"median_nearest_other_class": {"l2": 1.7, "linf": 0.4}}, **changes,
    }  # fmt: skip


def _count(store, table) -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one()


def test_write_read_verify_and_idempotent(store):
    store.write_run(make_record("run-1", 10))
    frame = result_frame()
    first = store.write_evaluation("digits", POLICY_TEXT, REFERENCE_SHA, frame, meta())
    assert first.status == "written"
    again = store.write_evaluation("digits", POLICY_TEXT, REFERENCE_SHA, result_frame(), meta())
    assert (again.status, again.run_pk) == ("already recorded", first.run_pk)
    assert (_count(store, "evaluation"), _count(store, "evaluation_result")) == (1, 4)
    got = store.latest_evaluation("digits")
    assert (got["reference_sha256"], got["model_sha256"], got["n_clean"]) == (REFERENCE_SHA, MODEL_SHA, 100)
    assert (
        got["seeds"] == {"attack": 0, "shift": 1}
        and got["meta"]["geometry"]["median_nearest_other_class"]["l2"] == 1.7
    )
    assert got["created_at"] == pd.Timestamp(CREATED)
    results = got["results"]
    assert list(results.columns) == list(EVALUATION_COLUMNS)
    pd.testing.assert_frame_equal(
        results[list(frame.columns)].astype(frame.dtypes.to_dict()), frame, check_dtype=False
    )
    assert store.latest_evaluation("tabular") is None
    report = store.verify()
    assert report.ok and report.rows_checked == 10 * 4 + 1 + 2 + 3 + 4, report.message


def test_not_measured_figures_in_the_metadata_are_stored_as_null(store):
    clean = {"abstention_rate": np.float64("nan"), "false_alarm": np.float64(0.05)}
    store.write_evaluation("digits", POLICY_TEXT, REFERENCE_SHA, result_frame(), meta(clean=clean))
    assert store.latest_evaluation("digits")["meta"]["clean"] == {
        "abstention_rate": None,
        "false_alarm": 0.05,
    }
    assert store.verify().ok


def test_optional_columns_may_be_left_out(store):
    store.write_evaluation("digits", POLICY_TEXT, REFERENCE_SHA, result_frame(optional=False), meta())
    results = store.latest_evaluation("digits")["results"]
    for col in OPTIONAL_EVALUATION_COLUMNS:
        assert results[col].isna().all(), col
    assert store.verify().ok


def test_other_results_under_the_same_key_conflict_and_the_latest_is_newest(store):
    store.write_evaluation("digits", POLICY_TEXT, REFERENCE_SHA, result_frame(), meta())
    changed = result_frame().assign(auroc=0.5)
    with pytest.raises(RecordConflictError, match="already recorded with other results"):
        store.write_evaluation("digits", POLICY_TEXT, REFERENCE_SHA, changed, meta())
    later = meta(evaluation_id="weekly-2026-11-27", created_at=datetime(2026, 11, 27, tzinfo=UTC))
    assert store.write_evaluation("digits", POLICY_TEXT, REFERENCE_SHA, changed, later).status == "written"
    latest = store.latest_evaluation("digits")
    assert (
        latest["meta"]["evaluation_id"] == "weekly-2026-11-27" and (latest["results"]["auroc"] == 0.5).all()
    )
    assert store.verify().ok


def _breaks(frame, **cols):
    out = frame.copy()
    for name, (row, value) in cols.items():
        out[name] = out[name].astype(object)
        out.loc[row, name] = value
    return out


@pytest.mark.parametrize(
    "frame, extra, message",
    [
        (result_frame().drop(columns=["auroc"]), {}, r"missing column\(s\) \['auroc'\]"),
        (_breaks(result_frame(), share_high=(1, 1.5)), {}, r"share_high=1\.5 in row 1 is out of range"),
        (_breaks(result_frame(), success_rate=(2, 0.1)), {}, r"success_rate=0\.1 in row 2 but n_successful / n_attacked"),
        (_breaks(result_frame(), n_successful=(0, 99)), {}, r"n_successful=99 of n_attacked=80"),
        (_breaks(result_frame(), batch_tier=(3, "severe")), {}, r"unknown batch_tier 'severe'"),
        (pd.concat([result_frame()] * 2, ignore_index=True), {}, r"repeats family 'pgd_l2_early'"),
        (result_frame(), {"n_clean": 0}, r"meta needs n_clean"),
        (result_frame(), {"model_sha256": "xyz"}, r"model_sha256 must be 64 lowercase hex digits"),
        (result_frame(), {"policy_sha256": "0" * 64}, r"is not the policy text's sha256"),
        (result_frame(), {"created_at": "yesterday"}, r"created_at is not an ISO datetime"),
        (result_frame(), {"seeds": None}, r"meta needs the seeds"),
        (result_frame(), {"geometry": float("inf")}, r"meta is not JSON without inf"),
    ],
    ids=[
        "missing-column", "share-range", "success-rate", "counts", "tier", "duplicate", "n-clean", "model-sha",
        "policy-sha", "created-at", "seeds", "inf-meta",
    ],
)  # fmt: skip
def test_bad_evaluation_is_refused_and_nothing_written(store, frame, extra, message):
    with pytest.raises(InputError, match=message):
        store.write_evaluation("digits", POLICY_TEXT, REFERENCE_SHA, frame, meta(**extra))
    for table in ("evaluation", "evaluation_result", "model", "policy", "audit_log"):
        assert _count(store, table) == 0, table


@pytest.mark.parametrize(
    "statement, bad_row",
    [
        ("UPDATE evaluation_result SET auroc = 0.99 WHERE row_no = 1", "evaluation_result row_no=1"),
        ("UPDATE evaluation SET n_clean = 1000", "evaluation"),
        ("DELETE FROM evaluation_result WHERE row_no = 3", "evaluation_result row_no=3"),
    ],
    ids=["result-value", "header", "deleted-row"],
)
def test_tampered_evaluation_is_found(store, statement, bad_row):
    store.write_evaluation("digits", POLICY_TEXT, REFERENCE_SHA, result_frame(), meta())
    with store.engine.begin() as conn:
        conn.execute(sa.text(statement))
    report = store.verify()
    assert (report.ok, report.first_bad_row) == (False, bad_row), report.message
    assert report.first_bad_run.startswith("evaluation digits ")
