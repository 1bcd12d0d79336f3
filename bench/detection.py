"""Measured detection on both demo models, over seeds and budgets, against the issue's targets.

One run: for each demo dataset (digits CNN, breast cancer MLP) and seed, ``certrisk evaluate``'s
harness (``certrisk.operators.evaluate.evaluate_policy``: the attack suite pushed through the
production pipeline's operators) at each budget fraction of the data's geometry. Printed per
dataset, family and budget, as the mean over seeds with the spread (min-max) beside it: attack
success, the share of successful attacks at tier >= high, per-sample AUROC, the clean false-alarm
share (clean evaluation samples at >= high), and the certificate-only score's share at >= high
and AUROC (abstention and radius rank alone, thresholded at the split-conformal 95% quantile of
the clean calibration role). Then every gap to the targets, for every non-adaptive family within
half the geometry: >= 90% of successful attacks at tier >= high, AUROC >= 0.97, clean false alarm
<= 5%. The adaptive family is measured, never a target; budgets beyond one half are reported
apart (the input may genuinely belong to another class).

The seed changes the certification noise (the run key), the shift's noise and the attacks'
seed; the evaluation set is the reference's held-out ``evaluation`` role, or with ``--heldout``
the demo's labelled clean production batch (larger, never part of the reference).

Usage: python bench/detection.py [--datasets digits,breast_cancer] [--seeds 0,1]
       [--fractions 0.25,0.5] [--heldout] [--limit N] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

METRICS = ("success_rate", "share_high", "auroc", "clean_false_alarm", "cert_share_high", "cert_auroc")


def _environment() -> Path:
    """CERTRISK_HOME (default ./.certrisk) and the demo's Airflow settings, before airflow imports."""
    from certrisk.demo import airflow_env
    from certrisk.schemas.settings import certrisk_home

    home = certrisk_home()
    os.environ.setdefault("CERTRISK_HOME", str(home))
    for key, value in airflow_env(home).items():
        os.environ.setdefault(key, value)
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = os.environ.get("BENCH_LOG_LEVEL", "WARNING")
    (home / "airflow").mkdir(parents=True, exist_ok=True)
    return home


def run(datasets, seeds, fractions, *, heldout: bool, limit, device) -> tuple[pd.DataFrame, dict]:
    """One frame of every dataset, seed, family and budget (DETECTION_COLUMNS plus dataset, seed)."""
    from certrisk.demo_assets import DATASETS, prepare_demo
    from certrisk.operators.evaluate import evaluate_policy

    home = _environment()
    frames, meta = [], {}
    for name in datasets:
        assets = prepare_demo(home, dataset=name, log=print)
        for seed in seeds:
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix=f"bench-detection-{name}-") as work:
                result = evaluate_policy(
                    DATASETS[name].policy,
                    work_dir=work,
                    labelled=assets.labelled if heldout else None,
                    seed=seed,
                    fractions=fractions,
                    limit=limit,
                    device=device,
                )
            print(
                f"{name} seed {seed}: {len(result.frame)} rows in {time.perf_counter() - t0:.0f}s", flush=True
            )
            frames.append(result.frame.assign(dataset=name, seed=seed))
            meta[(name, seed)] = result.metadata
    return pd.concat(frames, ignore_index=True), meta


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds and spread (max - min) per dataset, family and budget."""
    keys = ["dataset", "family", "budget_fraction", "scored", "adaptive"]
    grouped = frame.fillna({"budget_fraction": -1.0}).groupby(keys, sort=False)[list(METRICS)]
    mean, spread = grouped.mean(), grouped.max() - grouped.min()
    out = mean.join(spread.add_suffix("_spread")).reset_index()
    out["budget_fraction"] = out["budget_fraction"].where(out["budget_fraction"] >= 0)
    return out


def _cell(value, spread, pct: bool) -> str:
    if pd.isna(value):
        return "-"
    text = f"{100 * value:.0f}%" if pct else f"{value:.3f}"
    return (
        text
        if pd.isna(spread) or spread == 0
        else f"{text} ±{(100 * spread / 2 if pct else spread / 2):.{0 if pct else 3}f}"
    )


def printed(table: pd.DataFrame) -> pd.DataFrame:
    """The summary as strings: each metric's mean over seeds, +- half its spread."""
    out = pd.DataFrame(
        {
            "dataset": table["dataset"],
            "family": table["family"],
            "budget": table["budget_fraction"].map(lambda f: "-" if pd.isna(f) else f"{f:g}"),
        }
    )
    for metric in METRICS:
        pct = "auroc" not in metric
        out[metric] = [
            _cell(v, s, pct) for v, s in zip(table[metric], table[f"{metric}_spread"], strict=True)
        ]
    out["note"] = [
        "adaptive" if a else ("beyond (class change?)" if not s else "")
        for a, s in zip(table["adaptive"], table["scored"], strict=True)
    ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="digits,breast_cancer")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--fractions", default="0.25,0.5")
    parser.add_argument("--heldout", action="store_true", help="Evaluate on the demo's labelled clean batch.")
    parser.add_argument("--limit", type=int, default=None, help="At most this many evaluation samples.")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    _environment()
    from certrisk.risk.evaluate import target_gaps

    t0 = time.perf_counter()
    frame, meta = run(
        [d.strip() for d in args.datasets.split(",") if d.strip()],
        [int(s) for s in args.seeds.split(",")],
        [float(f) for f in args.fractions.split(",")],
        heldout=args.heldout,
        limit=args.limit,
        device=args.device,
    )
    table = summary(frame)
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_rows", 500):
        print(printed(table).to_string(index=False))
    for (name, seed), m in meta.items():
        geo = m["geometry"]["median_nearest_other_class"]
        print(
            f"{name} seed {seed}: geometry l2 {geo['l2']:.3g} linf {geo['linf']:.3g}; {m['n_clean']} clean "
            f"({m['evaluation_source']}), clean batch tier {m['clean']['batch_tier']}, box {m['clip']}; "
            f"signals not measured: {m['clean']['not_measured'] or 'none'}"
        )
    for name in table["dataset"].unique():
        means = table[table["dataset"] == name]
        gaps = target_gaps(means)
        print(f"\n{name}: gaps to the targets (means over seeds): {'none' if not gaps else ''}")
        for line in gaps:
            print(f"  {line}")
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
