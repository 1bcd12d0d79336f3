"""Benchmark the composite risk scorer against a per-row Python loop.

Scores N synthetic samples (default 1,000,000) with every input present (one smoothing
certificate per sample, rules, novelty, context, the neighbour signals) under calibrated tiers,
and prints the seconds of ``score_samples`` and ``score_batch``. The baseline is the same scoring
written as a per-row Python loop (dict look-ups, ``math``): it runs on a subsample (default
20,000 rows) and is extrapolated linearly to N, which the output states. The baseline's risks,
tiers (calibrated thresholds, rule-severity floors) and top factors are checked against the
vectorised ones on that subsample.

Usage: python bench/score.py [--n 1000000] [--baseline-n 20000] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import pandas as pd

from certrisk.risk.calibration import calibrate_tiers
from certrisk.risk.score import score_samples
from certrisk.risk.tiering import score_batch
from certrisk.schemas.columns import ABSTAIN
from certrisk.schemas.factors import FACTORS, SEVERITY_FACTOR, SEVERITY_TIER_FLOOR
from certrisk.schemas.policy import parse_policy

POLICY = parse_policy(
    {
        "model": {
            "name": "bench",
            "path": "bench.safetensors",
            "factory": "bench:build",
            "input_shape": [1, 8, 8],
            "classes": [str(i) for i in range(10)],
        },
        "data": {"reference": "reference.parquet"},
        "certification": {"methods": [{"method": "smoothing", "sigma": 0.25, "n": 2000, "alpha": 0.001}]},
        "risk_tolerance": "Benchmark policy.",
    },
    source="bench",
)


def synthetic(n: int, seed: int) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    ids = pd.array([f"bench:{i}" for i in range(n)], dtype="string")
    abst = rng.random(n) < 0.05
    pred = np.where(abst, ABSTAIN, rng.integers(0, 10, n))
    ratio = rng.random(n)
    pct = rng.random(n)
    ratio[abst] = np.nan
    pct[abst] = np.nan
    certificates = pd.DataFrame(
        {
            "sample_id": ids,
            "method": "smoothing",
            "norm": "l2",
            "prediction": pred,
            "abstained": abst,
            "radius": 0.3,
            "radius_l1": 0.3,
            "radius_l2": 0.3,
            "radius_linf": 0.0375,
            "p_lower": 0.9,
            "n_forward": 2064,
            "alpha": 0.001,
            "sigma": 0.25,
            "eps": np.nan,
            "seed": 1,
            "seconds": 0.01,
            "peak_bytes": 1,
            "device": "cpu",
            "dtype": "float32",
        }
    )
    base = np.where(rng.random(n) < 0.03, rng.integers(0, 10, n), np.maximum(pred, 0))
    predictions = pd.DataFrame({"sample_id": ids, "base_prediction": base, "base_confidence": 0.9})
    context = pd.DataFrame(
        {
            "sample_id": ids,
            "method": "smoothing",
            "dist_other_class": 1.0,
            "dist_same_class": 0.5,
            "share_ref_in_ball": 0.0,
            "radius_over_dist": ratio,
            "radius_percentile": pct,
        }
    )
    severity = rng.choice(list(SEVERITY_FACTOR), n, p=[0.9, 0.05, 0.04, 0.01])
    rules = pd.DataFrame(
        {
            "sample_id": ids,
            "n_failed": (severity != "none").astype(int),
            "max_severity": severity,
            "failed": [[] for _ in range(n)],
        }
    )
    novelty = pd.DataFrame(
        {
            "sample_id": ids,
            "knn_distance": 1.0,
            "novelty_percentile": rng.random(n),
            "domain_probability": np.nan,
        }
    )
    neighbours = np.where(rng.random(n) < 0.8, 0.0, rng.random(n))  # a tail factor: 0 for most
    signals = pd.DataFrame(  # two rows per sample, in sample order
        {
            "sample_id": np.repeat(np.asarray(ids, dtype=object), 2),
            "signal": np.tile(["neighbours", "feature_neighbours"], n),
            "score": np.repeat(neighbours, 2),
            "p_value": 1.0 - np.repeat(neighbours, 2),
            "factor": np.c_[neighbours, rng.random(n)].reshape(-1),
        }
    )
    return {
        "certificates": certificates,
        "predictions": predictions,
        "context": context,
        "rules": rules,
        "novelty": novelty,
        "signals": signals,
    }


#: Calibrated tiers as a tier role of 200 samples would give them.
CALIBRATION = calibrate_tiers(
    np.random.default_rng(1).beta(2.0, 8.0, size=200), np.zeros(200, dtype=int), POLICY.scoring
)


def per_row_loop(inputs: dict[str, pd.DataFrame]) -> list[tuple[float, str, list[str]]]:
    """The scoring of ``score_samples`` one sample at a time, as a plain Python loop."""
    weights = POLICY.scoring.weights
    cuts = {t.value: c for t, c in CALIBRATION.cuts.items()}
    certs = {r.sample_id: r for r in inputs["certificates"].itertuples(index=False)}
    ctx = {r.sample_id: r for r in inputs["context"].itertuples(index=False)}
    rules = {r.sample_id: r for r in inputs["rules"].itertuples(index=False)}
    nov = {r.sample_id: r for r in inputs["novelty"].itertuples(index=False)}
    sig = {(r.sample_id, r.signal): r.factor for r in inputs["signals"].itertuples(index=False)}
    rows = []
    for p in inputs["predictions"].itertuples(index=False):
        c = certs[p.sample_id]
        abst = bool(c.abstained) or c.prediction < 0
        pct = ctx[p.sample_id].radius_percentile
        ratio = ctx[p.sample_id].radius_over_dist
        f = {
            "abstention": 1.0 if abst else 0.0,
            "radius_rank": 1.0 if (abst and math.isnan(pct)) else 1.0 - pct,
            "context": 1.0 if (abst and math.isnan(ratio)) else min(max(1.0 - 2.0 * ratio, 0.0), 1.0),
            "rules": SEVERITY_FACTOR[rules[p.sample_id].max_severity],
            "novelty": nov[p.sample_id].novelty_percentile,
            "instability": 1.0 if (not abst and p.base_prediction != c.prediction) else 0.0,
            "method_disagreement": 0.0,
            "neighbours": sig[p.sample_id, "neighbours"],
            "feature_neighbours": sig[p.sample_id, "feature_neighbours"],
        }
        survive = 1.0
        for name in FACTORS:
            survive *= 1.0 - weights[name] * f[name]
        risk = 1.0 - survive
        logs = {name: -math.log1p(-min(weights[name] * f[name], 1 - 1e-15)) for name in FACTORS}
        total = sum(logs.values())
        contrib = {name: (risk * v / total if total > 0 else 0.0) for name, v in logs.items()}
        top = [name for name, v in sorted(contrib.items(), key=lambda kv: -kv[1]) if v > 0]
        tier = "low"
        for t in ("medium", "high", "critical"):
            cut = cuts[t]
            if (risk > cut.value) if cut.strict else (risk + 1e-12 >= cut.value):
                tier = t
        floor = SEVERITY_TIER_FLOOR[rules[p.sample_id].max_severity].value
        tier = max(tier, floor, key=["low", "medium", "high", "critical"].index)
        rows.append((risk, tier, top))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--baseline-n", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    inputs = synthetic(args.n, args.seed)
    t0 = time.perf_counter()
    sample_risk = score_samples(policy=POLICY, calibration=CALIBRATION, **inputs)
    t1 = time.perf_counter()
    summary = score_batch(
        sample_risk,
        policy=POLICY,
        drift_tests=None,
        rule_expectations=None,
        reference_abstention_rate=0.05,
        n_reference=10_000,
        calibration=CALIBRATION,
    )
    t2 = time.perf_counter()

    m = min(args.baseline_n, args.n)
    rows = {"signals": 2 * m}  # two signal rows per sample
    sub = {name: frame.iloc[: rows.get(name, m)].reset_index(drop=True) for name, frame in inputs.items()}
    t3 = time.perf_counter()
    loop_rows = per_row_loop(sub)
    t4 = time.perf_counter()
    head = sample_risk.iloc[:m]
    np.testing.assert_allclose([r[0] for r in loop_rows], head["risk"].to_numpy(), rtol=0, atol=1e-12)
    assert [r[1] for r in loop_rows] == list(head["tier"]), "tiers differ from the loop"
    assert [r[2] for r in loop_rows] == list(head["top_factors"]), "top factors differ from the loop"
    loop_extrapolated = (t4 - t3) * args.n / m
    vec = t1 - t0

    print(
        f"samples: {args.n:,} (one smoothing certificate each; rules, novelty, context and signals present; "
        "calibrated tiers)"
    )
    print(f"score_samples: {vec:.2f} s ({args.n / vec:,.0f} samples/s)")
    print(f"score_batch:   {t2 - t1:.2f} s (tier {summary['tier']}, tier counts {summary['tier_counts']})")
    print(
        f"per-row Python loop: {t4 - t3:.2f} s on {m:,} samples, extrapolated linearly to {args.n:,}: "
        f"{loop_extrapolated:.1f} s"
    )
    print(
        f"ratio (loop extrapolated / score_samples): {loop_extrapolated / vec:.1f}x; risks agree to 1e-12 "
        f"on the {m:,}-sample subsample"
    )


if __name__ == "__main__":
    main()
