"""Synthetic but well-formed run records for the governance tests and the benchmark."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from certrisk.governance import RunRecord
from certrisk.schemas.columns import FACTORS

MODEL_SHA = hashlib.sha256(b"model-digits-v1").hexdigest()
POLICY_TEXT = "model:\n  path: digits.pt\n"
POLICY_SHA = hashlib.sha256(POLICY_TEXT.encode()).hexdigest()
TIERS = np.array(["low", "medium", "high", "critical"])


def make_record(
    run_id: str = "run-1",
    n: int = 50,
    *,
    dag_id: str = "certrisk_example",
    seed: int = 0,
    model: str = "digits",
    model_sha256: str = MODEL_SHA,
    methods=("smoothing", "ibp"),
    created_at: datetime | None = None,
) -> RunRecord:
    rng = np.random.default_rng(seed)
    ids = [f"{run_id}:{i}" for i in range(n)]
    abstained = rng.random(n) < 0.2
    factors = {f"factor_{f}": rng.random(n) * (rng.random(n) < 0.6) for f in FACTORS}
    factors["factor_abstention"] = abstained.astype(float) * 0.5
    risk = np.clip(sum(factors.values()) / 3.0, 0.0, 1.0)
    tier = TIERS[np.minimum((risk * 4).astype(int), 3)]
    top = [
        [
            f
            for f in sorted(FACTORS, key=lambda f: -factors[f"factor_{f}"][i])
            if factors[f"factor_{f}"][i] > 0
        ]
        for i in range(n)
    ]
    sample_risk = pd.DataFrame(
        {
            "sample_id": ids,
            "risk": risk,
            "tier": tier,
            "abstained": abstained,
            "prediction": np.where(abstained, -1, rng.integers(0, 10, n)),
            "base_prediction": rng.integers(0, 10, n),
            **factors,
            "top_factors": top,
            "rmf_ids": [["MEASURE 2.7", "MEASURE 2.6"]] * n,
        }
    )
    cert_parts = []
    for j, method in enumerate(methods):
        radius = np.where(abstained, 0.0, rng.random(n) * 0.5)
        cert_parts.append(
            pd.DataFrame(
                {
                    "sample_id": ids,
                    "method": method,
                    "norm": "l2" if method == "smoothing" else "linf",
                    "prediction": np.where(abstained, -1, 3),
                    "abstained": abstained,
                    "radius": radius,
                    "radius_l1": radius,
                    "radius_l2": radius,
                    "radius_linf": radius / 8.0,
                    "p_lower": rng.random(n),
                    "n_forward": 1000 + j,
                    "alpha": 0.001,
                    "sigma": 0.25 if method == "smoothing" else np.nan,
                    "eps": np.nan if method == "smoothing" else 0.1,
                    "seed": rng.integers(0, 2**62, n),
                    "seconds": rng.random(n) / 100,
                    "peak_bytes": 1 << 20,
                    "device": "cpu",
                    "dtype": "float32",
                    "precision": "fp32",
                    "compile": "off",
                    "worker": "test-host",
                    "queue": "default",
                }
            )
        )
    certificates = pd.concat(cert_parts, ignore_index=True)
    rule_samples = pd.DataFrame(
        {"sample_id": ids, "n_failed": 0, "max_severity": "none", "failed": [[] for _ in range(n)]}
    )
    rule_expectations = pd.DataFrame(
        {
            "expectation": ["pixels_in_range"],
            "expectation_type": ["expect_column_values_to_be_between"],
            "column": ["x0"],
            "severity": ["critical"],
            "level": ["row"],
            "success": [True],
            "observed_value": ['{"unexpected_percent": 0.0}'],
            "unexpected_count": [0],
            "rmf_ids": [["MEASURE 2.1"]],
        }
    )
    drift_tests = pd.DataFrame(
        {
            "test": ["ks", "mmd"],
            "family": ["feature", "multivariate"],
            "feature": ["x0", "*"],
            "statistic": [0.1, 0.02],
            "p_value": [0.3, 0.5],
            "q_value": [0.6, 0.6],
            "effect_size": [0.1, np.nan],
            "effect_name": ["ks_d", "mmd2"],
            "drift": [False, False],
        }
    )
    tier_counts = {t: int((tier == t).sum()) for t in TIERS}
    summary = {
        "n_samples": n,
        "abstention_rate": float(abstained.mean()),
        "mean_risk": float(risk.mean()),
        "tier": str(TIERS[min(int(risk.mean() * 4) + 1, 3)]),
        "reasons": ["abstention rate above threshold"],
        "drift": False,
        "tier_counts": tier_counts,
        "risk_quantiles": {"0.5": float(np.quantile(risk, 0.5)), "0.95": float(np.quantile(risk, 0.95))},
        "seeds": {"run_key": f"{dag_id}/{run_id}"},
        "limitations": "Certificates bound l2 perturbations at sigma 0.25 only.",
    }
    return RunRecord(
        dag_id=dag_id,
        run_id=run_id,
        batch_id=f"batch-{run_id}",
        created_at=created_at
        or datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(minutes=seed),
        model_name=model,
        model_sha256=model_sha256,
        model_format="torchscript",
        policy_name=model,
        policy_sha256=POLICY_SHA,
        policy_text=POLICY_TEXT,
        package_version="0.1.0",
        summary=summary,
        sample_risk=sample_risk,
        certificates=certificates,
        rule_samples=rule_samples,
        rule_expectations=rule_expectations,
        drift_tests=drift_tests,
        rmf_evidence=[
            ("MEASURE 2.7", "certificate", "2 methods"),
            ("MEASURE 2.4", "drift", "2 tests"),
            ("MAP 1.5", "policy", POLICY_SHA[:12]),
        ],
    )
