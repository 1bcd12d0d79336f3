"""Rules: per-sample Great Expectations results against a frame whose bad rows are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from certrisk.risk.rules import build_expectations, check_rules, profile_expectations
from certrisk.schemas.columns import RULE_EXPECTATION_COLUMNS, RULE_SAMPLE_COLUMNS
from certrisk.schemas.errors import InputError, PolicyError
from certrisk.schemas.policy import ExpectationSpec, RulesSpec


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 40
    frame = pd.DataFrame(
        {
            "sample_id": [f"b:{i}" for i in range(n)],
            "x": rng.uniform(0.0, 1.0, n),
            "y": rng.uniform(2.0, 3.0, n),
        }
    )
    frame.loc[[3, 17], "x"] = [1.5, -0.25]  # out of range
    frame.loc[[17, 25], "y"] = np.nan  # null (row 17 fails two rules)
    frame.loc[[8], "x"] = 2.9  # x > y: pair rule, also out of range
    return frame


SPECS = [
    ExpectationSpec(
        type="expect_column_values_to_be_between",
        kwargs={"column": "x", "min_value": 0.0, "max_value": 1.0},
        severity="warning",
    ),
    ExpectationSpec(type="expect_column_values_to_not_be_null", kwargs={"column": "y"}, severity="critical"),
    ExpectationSpec(
        type="expect_column_pair_values_a_to_be_greater_than_b",
        kwargs={"column_A": "y", "column_B": "x", "ignore_row_if": "either_value_is_missing"},
        severity="info",
        name="y_above_x",
    ),
    ExpectationSpec(
        type="expect_column_mean_to_be_between", kwargs={"column": "x", "min_value": 5.0, "max_value": 6.0}
    ),
    ExpectationSpec(
        type="expect_column_quantile_values_to_be_between",
        kwargs={
            "column": "y",
            "quantile_ranges": {"quantiles": [0.5], "value_ranges": [[2.0, 3.0]]},
        },
    ),
]


def _failing_ids(samples: pd.DataFrame, name: str) -> set[str]:
    return {sid for sid, failed in zip(samples["sample_id"], samples["failed"]) if name in failed}


def test_known_bad_rows_per_expectation():
    frame = _frame()
    res = check_rules(frame, SPECS)
    samples, table = res.samples, res.expectations
    assert list(samples.columns) == list(RULE_SAMPLE_COLUMNS)
    assert list(table.columns) == list(RULE_EXPECTATION_COLUMNS)
    assert samples["sample_id"].tolist() == frame["sample_id"].tolist()  # input order, one row each

    assert _failing_ids(samples, "expect_column_values_to_be_between:x") == {"b:3", "b:8", "b:17"}
    assert _failing_ids(samples, "expect_column_values_to_not_be_null:y") == {"b:17", "b:25"}
    assert _failing_ids(samples, "y_above_x") == {"b:8"}

    by_id = samples.set_index("sample_id")
    assert by_id.loc["b:17", "n_failed"] == 2
    assert by_id.loc["b:17", "max_severity"] == "critical"
    assert by_id.loc["b:8", "n_failed"] == 2 and by_id.loc["b:8", "max_severity"] == "warning"
    assert by_id.loc["b:3", "max_severity"] == "warning"
    assert by_id.loc["b:0", "n_failed"] == 0 and by_id.loc["b:0", "max_severity"] == "none"
    assert by_id.loc["b:0", "failed"] == []
    assert int((samples["n_failed"] > 0).sum()) == 4
    assert res.pass_rate == pytest.approx(36 / 40)

    t = table.set_index("expectation")
    assert t.loc["expect_column_values_to_be_between:x", "unexpected_count"] == 3
    assert t.loc["expect_column_values_to_not_be_null:y", "unexpected_count"] == 2
    assert t.loc["y_above_x", "level"] == "row" and not t.loc["y_above_x", "success"]
    assert t.loc["y_above_x", "column"] == "y,x"
    # aggregates: batch-level result only, never attributed to a sample
    mean = t.loc["expect_column_mean_to_be_between:x"]
    assert mean["level"] == "batch" and not mean["success"] and mean["unexpected_count"] == 0
    assert float(mean["observed_value"]) == pytest.approx(frame["x"].mean())
    quant = t.loc["expect_column_quantile_values_to_be_between:y"]
    assert quant["level"] == "batch" and quant["success"]
    assert all(name not in f for f in samples["failed"] for name in ("expect_column_mean_to_be_between:x",))
    assert res.batch_failures == ["expect_column_mean_to_be_between:x"]
    assert t.loc["y_above_x", "rmf_ids"] == ["MEASURE 2.1"]


def test_profiled_suite_and_policy_override():
    ref = pd.DataFrame({"sample_id": ["r0", "r1", "r2"], "x": [0.0, 0.5, 1.0], "y": [2.0, 2.5, 3.0]})
    profiled = profile_expectations(ref, feature_columns=["x", "y"], tolerance=0.1)
    assert len(profiled) == 5
    rng_x = next(s for s in profiled if s.display_name == "expect_column_values_to_be_between:x")
    assert rng_x.kwargs["min_value"] == pytest.approx(-0.1) and rng_x.kwargs["max_value"] == pytest.approx(
        1.1
    )
    assert profiled[-1].type == "expect_table_column_count_to_equal" and profiled[-1].kwargs["value"] == 3

    override = ExpectationSpec(
        type="expect_column_values_to_be_between",
        kwargs={"column": "x", "min_value": 0.0, "max_value": 0.4},
        severity="critical",
    )
    extra = ExpectationSpec(type="expect_column_values_to_be_unique", kwargs={"column": "y"})
    suite = build_expectations(
        RulesSpec(range_tolerance=0.1, expectations=(override, extra)), ref, ["x", "y"]
    )
    assert len(suite) == 6
    assert suite[1] == override  # replaced in place
    assert suite[-1] == extra

    batch = pd.DataFrame({"sample_id": ["a", "b"], "x": [0.2, 0.9], "y": [2.2, 2.2]})
    res = check_rules(batch, suite)
    by_id = res.samples.set_index("sample_id")
    assert by_id.loc["b", "failed"] == [
        "expect_column_values_to_be_between:x",
        "expect_column_values_to_be_unique:y",
    ]
    assert by_id.loc["b", "max_severity"] == "critical"
    assert by_id.loc["a", "failed"] == ["expect_column_values_to_be_unique:y"]

    assert build_expectations(RulesSpec(profile=False, expectations=(extra,)), None, ["x"]) == [extra]


def test_unknown_expectation_type_names_type_and_key():
    bad = ExpectationSpec(type="expect_column_values_to_be_lovely", kwargs={"column": "x"})
    with pytest.raises(
        PolicyError, match=r"rules\.expectations\[1\]\.type.*expect_column_values_to_be_lovely"
    ):
        build_expectations(RulesSpec(profile=False, expectations=(SPECS[0], bad)), None, ["x"])
    with pytest.raises(PolicyError, match=r"expectations\[1\]\.type.*expect_column_values_to_be_lovely"):
        check_rules(_frame(), [SPECS[0], bad])


def test_invalid_kwargs_name_the_key():
    bad = ExpectationSpec(type="expect_column_values_to_be_between", kwargs={"column": "x", "min_valu": 0})
    with pytest.raises(PolicyError, match=r"expectations\[0\]\.kwargs"):
        check_rules(_frame(), [bad])


def test_bad_input_errors_name_the_fault():
    frame = _frame()
    with pytest.raises(InputError, match="empty batch"):
        check_rules(frame.iloc[:0], SPECS)
    with pytest.raises(InputError, match="no id column 'sample_id'"):
        check_rules(frame.drop(columns="sample_id"), SPECS)
    dup = frame.copy()
    dup.loc[5, "sample_id"] = "b:4"
    with pytest.raises(InputError, match=r"duplicate sample_id 'b:4' \(row 5\)"):
        check_rules(dup, SPECS)
    with pytest.raises(InputError, match=r"no column\(s\) \['y'\].*expectations\[1\]"):
        check_rules(frame.drop(columns="y"), SPECS[:2])
    same = [SPECS[0], SPECS[0]]
    with pytest.raises(PolicyError, match="already used"):
        check_rules(frame, same)
    with pytest.raises(InputError, match="feature 'x' holds NaN or inf in row 3"):
        profile_expectations(frame.assign(x=frame["x"].where(frame.index != 3)), feature_columns=["x"])
