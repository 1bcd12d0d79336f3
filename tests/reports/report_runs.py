"""Recorded runs for the report tests: synthetic frames that follow the column specs, scored by
the real scorer under a real policy, and written with GovernanceStore.write_run (no Airflow)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from certrisk.governance import GovernanceStore, RunRecord
from certrisk.risk.evidence import run_rmf_evidence
from certrisk.risk.limitations import limitations
from certrisk.risk.score import score_samples
from certrisk.risk.tiering import score_batch
from certrisk.schemas.columns import CERTIFICATE_COLUMNS, conform
from certrisk.schemas.policy import parse_policy

SIGMA, ALPHA, N = 0.25, 0.001, 2000
POLICY = {
    "version": 1,
    "model": {
        "name": "digits-cnn",
        "path": "digits_cnn.safetensors",
        "format": "safetensors",
        "factory": "certrisk.risk.models:digits_cnn",
        "input_shape": [1, 8, 8],
        "classes": [str(i) for i in range(10)],
    },
    "data": {"reference": "reference.parquet", "label_column": "label"},
    "certification": {
        "methods": [
            {"method": "smoothing", "sigma": SIGMA, "n0": 64, "n": N, "alpha": ALPHA},
            {"method": "ibp", "norm": "linf"},
        ]
    },
    "drift": {"alpha": 0.01, "tests": ["ks", "mmd"]},
    "alert_tier": "critical",
    "risk_tolerance": "Abstained samples go to human review.",
}
POLICY_TEXT = yaml.safe_dump(POLICY, sort_keys=False)
POLICY_SHA = hashlib.sha256(POLICY_TEXT.encode()).hexdigest()
MODEL_SHA = hashlib.sha256(b"digits-cnn-weights").hexdigest()
DAG_ID = "certrisk_digits"


def policy():
    return parse_policy(yaml.safe_load(POLICY_TEXT))


def make_run(
    run_id: str,
    *,
    n: int = 60,
    seed: int = 0,
    shift: float = 0.0,
    created_at: datetime | None = None,
    perturb: bool = False,
):
    """A RunRecord of ``n`` samples; ``shift`` raises abstention, rule failures and drift. ``perturb``
    changes every radius and p_lower after scoring (nothing a compliance reader sees changes)."""
    pol = policy()
    rng = np.random.default_rng(seed)
    ids = [f"{run_id}:{i}" for i in range(n)]
    abst = rng.random(n) < 0.08 + shift
    pred = rng.integers(0, 10, n)
    p_lower = np.where(abst, rng.uniform(0.3, 0.5, n), rng.uniform(0.6, 0.995, n))
    radius = np.where(abst, 0.0, np.floor(SIGMA * stats.norm.ppf(p_lower) * 1e6) / 1e6 + 1e-7 * rng.random(n))
    ibp_abst = abst | (rng.random(n) < 0.3)
    eps = np.where(ibp_abst, 0.0, rng.uniform(0.011, 0.049, n))
    common = {
        "sample_id": ids,
        "seed": rng.integers(0, 2**62, n),
        "device": "cpu",
        "dtype": "float32",
        "precision": "fp32",
        "compile": "off",
        "worker": "test-host",
        "queue": "default",
    }
    smooth = pd.DataFrame(
        {
            **common,
            "method": "smoothing",
            "norm": "l2",
            "prediction": np.where(abst, -1, pred),
            "abstained": abst,
            "radius": radius,
            "radius_l1": radius,
            "radius_l2": radius,
            "radius_linf": radius / 8.0,
            "p_lower": p_lower,
            "n_forward": 64 + N,
            "alpha": ALPHA,
            "sigma": SIGMA,
            "eps": np.nan,
            "seconds": rng.uniform(0.02, 0.03, n),
            "peak_bytes": 48 << 20,
        }
    )
    ibp = pd.DataFrame(
        {
            **common,
            "method": "ibp",
            "norm": "linf",
            "prediction": np.where(ibp_abst, -1, pred),
            "abstained": ibp_abst,
            "radius": eps,
            "radius_l1": eps,
            "radius_l2": eps,
            "radius_linf": eps,
            "p_lower": np.nan,
            "n_forward": 12,
            "alpha": np.nan,
            "sigma": np.nan,
            "eps": eps,
            "seconds": rng.uniform(0.0005, 0.001, n),
            "peak_bytes": 6 << 20,
        }
    )
    certificates = conform(
        pd.concat([smooth, ibp], ignore_index=True), CERTIFICATE_COLUMNS, table="certificates"
    )
    predictions = pd.DataFrame(
        {
            "sample_id": ids,
            "base_prediction": np.where(rng.random(n) < 0.05, (pred + 1) % 10, pred),
            "base_confidence": rng.uniform(0.5, 1.0, n),
        }
    )
    failing = rng.random(n) < 0.05 + shift
    rules = pd.DataFrame(
        {
            "sample_id": ids,
            "n_failed": failing.astype(int),
            "max_severity": np.where(failing, "warning", "none"),
            "failed": [["pixel_range"] if f else [] for f in failing],
        }
    )
    novelty = pd.DataFrame(
        {
            "sample_id": ids,
            "knn_distance": rng.uniform(0.5, 3.0, n),
            "novelty_percentile": np.clip(rng.beta(2, 5, n) + shift, 0, 1),
            "domain_probability": np.nan,
        }
    )
    context = pd.DataFrame(
        {
            "sample_id": ids,
            "method": "smoothing",
            "dist_other_class": rng.uniform(1.0, 2.0, n),
            "dist_same_class": rng.uniform(0.2, 1.0, n),
            "share_ref_in_ball": 0.0,
            "radius_over_dist": np.where(abst, np.nan, rng.uniform(0.05, 0.6, n)),
            "radius_percentile": np.where(abst, np.nan, rng.uniform(0, 1, n)),
        }
    )
    rejected = shift > 0
    drift_tests = pd.DataFrame(
        {
            "test": ["ks", "ks", "mmd"],
            "family": ["feature", "feature", "multivariate"],
            "feature": ["px_3_4", "px_4_4", "*"],
            "statistic": [0.41 if rejected else 0.08, 0.05, 0.012],
            "p_value": [1e-6 if rejected else 0.4, 0.7, 0.2],
            "q_value": [3e-6 if rejected else 0.6, 0.7, 0.3],
            "effect_size": [0.41 if rejected else 0.08, 0.05, 0.012],
            "effect_name": ["ks_d", "ks_d", "mmd2"],
            "drift": [rejected, False, False],
        }
    )
    rule_expectations = pd.DataFrame(
        {
            "expectation": ["pixel_range", "column_count"],
            "expectation_type": ["expect_column_values_to_be_between", "expect_table_column_count_to_equal"],
            "column": ["px_3_4", ""],
            "severity": ["warning", "critical"],
            "level": ["row", "batch"],
            "success": [not failing.any(), True],
            "observed_value": ['{"unexpected_percent": 5.0}', "64"],
            "unexpected_count": [int(failing.sum()), 0],
            "rmf_ids": [["MEASURE 2.1"], ["MEASURE 2.1"]],
        }
    )
    sample_risk = score_samples(
        certificates=certificates,
        predictions=predictions,
        policy=pol,
        rules=rules,
        novelty=novelty,
        context=context,
    )
    summary = score_batch(
        sample_risk,
        policy=pol,
        drift_tests=drift_tests,
        rule_expectations=rule_expectations,
        reference_abstention_rate=0.06,
        n_reference=400,
    )
    evidence = run_rmf_evidence(
        policy=pol,
        sample_risk=sample_risk,
        batch_summary=summary,
        evidence_kinds=["run_record", "audit_chain", "limitations", "test_sets"],
    )
    if perturb:
        certificates = certificates.copy()
        for col in ("radius", "radius_l1", "radius_l2", "radius_linf"):
            certificates[col] = np.where(certificates[col] > 0, certificates[col] * 1.37 + 0.0123, 0.0)
        certificates["p_lower"] = 1.0 - (1.0 - certificates["p_lower"]) * 0.61
    summary = {
        **summary,
        "run_key": f"{DAG_ID}/{run_id}",
        "batch_sha256": hashlib.sha256(run_id.encode()).hexdigest(),
        "devices": ["cpu"],
        "limitations": limitations(pol),
    }
    return RunRecord(
        dag_id=DAG_ID,
        run_id=run_id,
        batch_id=f"batch-{run_id}",
        created_at=created_at or datetime.now(UTC) - timedelta(hours=1),
        model_name=pol.model.name,
        model_sha256=MODEL_SHA,
        model_format="safetensors",
        policy_name=pol.model.name,
        policy_sha256=POLICY_SHA,
        policy_text=POLICY_TEXT,
        package_version="0.1.0",
        summary=summary,
        sample_risk=sample_risk,
        certificates=certificates,
        rule_samples=rules,
        rule_expectations=rule_expectations,
        drift_tests=drift_tests,
        rmf_evidence=list(evidence),
    )


def recorded_store(
    url: str, *, perturb: bool = False, now: datetime | None = None
) -> tuple[GovernanceStore, RunRecord]:
    """A store with a shifted run (the one the run tests report) and ten days of daily runs before it."""
    store = GovernanceStore(url)
    store.upgrade()
    now = now or datetime.now(UTC)
    for day in range(10, 0, -1):
        shift = 0.25 if day in (3, 7) else 0.0
        store.write_run(
            make_run(
                f"scheduled__day{day}",
                n=40,
                seed=100 + day,
                shift=shift,
                created_at=now - timedelta(days=day, hours=2),
                perturb=perturb,
            )
        )
    record = make_run(
        "manual__shifted", n=60, seed=7, shift=0.2, created_at=now - timedelta(hours=1), perturb=perturb
    )
    store.write_run(record)
    return store, record
