"""``certrisk evaluate`` end to end, as a user runs it (a subprocess): on the digits demo (JSON)
and on the breast cancer demo (the table), each on a small evaluation subset (``--limit``) and a
few attack families. What it writes (evaluation.parquet, evaluation.json) must agree with what it
prints, and the budgets must follow the data's geometry."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from certrisk.risk.evaluate import DETECTION_COLUMNS

pytestmark = pytest.mark.slow


def _evaluate(*args: str) -> subprocess.CompletedProcess:
    # COLUMNS: a wide table, not one wrapped to a pipe's default 80 columns
    env = {**os.environ, "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING", "COLUMNS": "220"}
    return subprocess.run(
        [sys.executable, "-m", "certrisk.cli", "evaluate", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


@pytest.fixture(scope="module")
def digits_json(demo_assets, tmp_path_factory):
    from certrisk.demo_assets import DATASETS

    out = tmp_path_factory.mktemp("evaluate-digits")
    db = f"sqlite:///{out / 'governance.db'}"
    done = _evaluate(
        "--policy", str(DATASETS["digits"].policy), "--limit", "16", "--attacks", "pgd_l2_early,pgd_l2_deep,shift",
        "--fractions", "0.5,1.0", "--seed", "1", "--out", str(out), "--format", "json", "--db", db,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout), out


def test_the_evaluation_is_recorded_and_verified(digits_json):
    """--db records the result as a governed record: hash-chained, verified, read back as written."""
    from certrisk.governance import GovernanceStore

    printed, out = digits_json
    assert printed["recorded"]["status"] == "written"
    store = GovernanceStore(f"sqlite:///{out / 'governance.db'}")
    got = store.latest_evaluation(printed["metadata"]["model"])
    assert got["n_clean"] == 16 and got["model_sha256"] == printed["metadata"]["model_sha256"]
    assert got["results"]["family"].tolist() == [r["family"] for r in printed["rows"]]
    assert store.verify().ok
    store.dispose()


def test_digits_json_matches_the_artifacts(digits_json):
    printed, out = digits_json
    frame = pd.read_parquet(out / "evaluation.parquet")
    written = json.loads((out / "evaluation.json").read_text())
    assert list(frame.columns) == list(DETECTION_COLUMNS)
    assert written["rows"] == printed["rows"]
    assert [(r["family"], r["budget_fraction"]) for r in printed["rows"]] == [
        ("pgd_l2_early", 0.5), ("pgd_l2_early", 1.0), ("pgd_l2_deep", 0.5), ("pgd_l2_deep", 1.0), ("shift", None),
    ]  # fmt: skip
    meta = printed["metadata"]
    assert meta["n_clean"] == 16 and meta["n_calibration"] == 16 and meta["seed"] == 1
    assert meta["evaluation_source"] == "reference:evaluation" and meta["clip"].startswith("unit")
    assert len(meta["model_sha256"]) == 64 and len(meta["reference_sha256"]) == 64
    # the digits' geometry: about 2 in l2 (pixels in [0, 1]); budgets are its fractions
    l2 = meta["geometry"]["median_nearest_other_class"]["l2"]
    assert 3.5 > l2 > 1.0
    for row in printed["rows"]:
        if row["budget_fraction"] is not None:
            assert row["eps"] == pytest.approx(row["budget_fraction"] * l2)
            assert row["scored"] == (row["budget_fraction"] <= 0.5)
        assert 0.0 <= row["success_rate"] <= 1.0
        assert row["n_successful"] <= row["n_attacked"] <= 16
        assert row["batch_tier"] in ("low", "medium", "high", "critical")
    # an attack stopped at its first success sits near the boundary: it abstains more than a deep one
    by = {(r["family"], r["budget_fraction"]): r for r in printed["rows"]}
    assert by[("pgd_l2_early", 0.5)]["abstention_rate"] > by[("pgd_l2_deep", 0.5)]["abstention_rate"]
    assert (out / "work" / "runs" / "certrisk_evaluate" / "seed1-clean" / "sample_risk.parquet").is_file()


def test_breast_cancer_table_on_tabular_data(breast_cancer_assets, tmp_path):
    from certrisk.demo_assets import DATASETS

    done = _evaluate(
        "--policy", str(DATASETS["breast_cancer"].policy), "--limit", "12", "--attacks", "pgd_linf_deep",
        "--fractions", "0.5", "--out", str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "measured detection: breast-cancer-mlp" in done.stdout
    assert "pgd_linf_deep" in done.stdout and "0.5 (linf" in done.stdout
    # z-scored features: the attacks stay in the reference's per-feature box, not in [0, 1]
    assert "box reference: per-feature min and max" in done.stdout
    meta = json.loads((tmp_path / "evaluation.json").read_text())["metadata"]
    assert meta["clip"].startswith("reference")


def test_bad_arguments_exit_2_naming_them(tmp_path):
    from certrisk.demo_assets import DATASETS

    policy = str(DATASETS["digits"].policy)
    done = _evaluate("--policy", policy, "--format", "yaml", "--out", str(tmp_path))
    assert done.returncode == 2 and "--format" in done.stderr
    done = _evaluate("--policy", policy, "--fractions", "half", "--out", str(tmp_path))
    assert done.returncode == 2 and "--fractions" in done.stderr
