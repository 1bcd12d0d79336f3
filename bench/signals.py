"""Benchmark the risk signals: the MMD permutation test and the Great Expectations rules.

MMD: reference and batch of 2,000 x 64 each (batch mean-shifted by 0.05), 1,000 permutations.
``mmd_test`` (blocked kernel, all permutations as one matrix product per row block, torch on the
run-time device) against a numpy loop baseline in the same run: the pooled kernel matrix
computed once in numpy, then one quadratic form ``a^T K a`` per permutation (a matrix-vector
product each; a stronger baseline than re-indexing sub-blocks). Both replay the same
permutations and bandwidth; their statistics and p-values are checked to agree. The ratio is
baseline seconds / ours.

Rules: 100,000 rows x 10 features with 20 expectations (not-null and range per feature, profiled
from a reference), about 0.1% of values out of range; seconds of ``check_rules`` after one
warm-up call (GX import and registry excluded).

Usage: python bench/signals.py [--n 2000] [--d 64] [--permutations 1000] [--rows 100000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import pandas as pd
import torch

from certrisk.risk.device import resolve_device
from certrisk.risk.drift import median_bandwidth, mmd_permutation_masks, mmd_test
from certrisk.risk.rules import check_rules, profile_expectations


def mmd_numpy_loop(x: np.ndarray, y: np.ndarray, masks: np.ndarray, bandwidth: float) -> tuple[float, float]:
    """Unbiased MMD^2 and its permutation p-value, one permutation at a time in numpy."""
    z = np.concatenate([x, y])
    sq = (z * z).sum(axis=1)
    k = np.exp(-np.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0) / (2.0 * bandwidth**2))
    m1, m2 = len(x), len(y)
    r = k.sum(axis=1)
    total = r.sum()

    def stat(a: np.ndarray) -> float:
        aka = a @ (k @ a)
        ra = r @ a
        bkb = total - 2.0 * ra + aka
        return (aka - m1) / (m1 * (m1 - 1)) + (bkb - m2) / (m2 * (m2 - 1)) - 2.0 * (ra - aka) / (m1 * m2)

    ident = np.r_[np.ones(m1), np.zeros(m2)]
    observed = stat(ident)
    b = sum(stat(m.astype(np.float64)) >= observed for m in masks)
    return observed, (b + 1) / (len(masks) + 1)


def bench_mmd(n: int, d: int, permutations: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(n, d)) + 0.05
    device = resolve_device(None)
    mmd_test(x[:100], y[:100], n_permutations=10, seed=seed)  # warm-up (torch kernels, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    ours = mmd_test(x, y, n_permutations=permutations, seed=seed, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t_ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    masks = mmd_permutation_masks(n, n, permutations, seed=seed)
    bandwidth = median_bandwidth(np.concatenate([x, y]), seed=seed)
    stat, p = mmd_numpy_loop(x, y, masks, bandwidth)
    t_base = time.perf_counter() - t0
    if not (np.isclose(stat, ours.statistic, rtol=1e-8, atol=1e-12) and p == ours.p_value):
        raise SystemExit(f"MMD mismatch: ours {ours.statistic}, p {ours.p_value}; baseline {stat}, p {p}")
    return {
        "shape": f"{n} x {n} x {d}",
        "permutations": permutations,
        "device": str(device),
        "statistic": ours.statistic,
        "p_value": ours.p_value,
        "ours_s": round(t_ours, 3),
        "numpy_loop_s": round(t_base, 3),
        "ratio": round(t_base / t_ours, 2),
    }


def bench_rules(rows: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    features = [f"f{i}" for i in range(10)]
    ref = pd.DataFrame(rng.normal(size=(5000, 10)), columns=features)
    ref.insert(0, "sample_id", [f"r:{i}" for i in range(5000)])
    batch = pd.DataFrame(rng.normal(size=(rows, 10)), columns=features)
    bad = rng.random(batch.shape) < 0.001
    batch = batch.mask(bad, 10.0)
    batch.insert(0, "sample_id", [f"b:{i}" for i in range(rows)])
    suite = [s for s in profile_expectations(ref, feature_columns=features) if s.kwargs.get("column")]
    check_rules(batch.iloc[:100], suite)  # warm-up: GX import, expectation registry
    t0 = time.perf_counter()
    res = check_rules(batch, suite)
    seconds = time.perf_counter() - t0
    return {
        "rows": rows,
        "expectations": len(suite),
        "failing_samples": int((res.samples["n_failed"] > 0).sum()),
        "seconds": round(seconds, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--permutations", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "mmd": bench_mmd(args.n, args.d, args.permutations, args.seed),
        "rules": bench_rules(args.rows, args.seed),
    }
    m, r = out["mmd"], out["rules"]
    print(
        f"MMD permutation test {m['shape']}, {m['permutations']} permutations on {m['device']}: "
        f"ours {m['ours_s']} s, numpy loop {m['numpy_loop_s']} s, ratio {m['ratio']}x "
        f"(same statistic {m['statistic']:.3e}, p {m['p_value']:.4f})"
    )
    print(
        f"Rules: {r['rows']} rows x {r['expectations']} expectations: {r['seconds']} s ({r['failing_samples']} failing)"
    )
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
