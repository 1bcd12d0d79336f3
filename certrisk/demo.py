"""The demo: real data (scikit-learn's 8x8 handwritten digits), a trained CNN, three batches, and
the example DAG run for real once per batch.

``prepare_demo`` builds (once, cached under ``$CERTRISK_HOME/demo``): a small CNN trained with
Gaussian-noise augmentation at the policy's sigma and saved as safetensors; a reference set of
held-out digits with labels; and three production batches without labels:

- ``clean``: held-out digits;
- ``shifted``: the same digits with lowered contrast plus Gaussian pixel noise (a visible shift);
- ``attacked``: PGD l2 adversarial examples against the base model.

``run_demo`` migrates an Airflow metadata DB under ``$CERTRISK_HOME/airflow``, runs
``certrisk_digits`` under ``dag.test()`` once per batch and prints a table from the governance DB.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from certrisk.schemas.settings import certrisk_home, default_db_url

DEMO_VERSION = 1
DAG_ID = "certrisk_digits"
BATCHES = ("clean", "shifted", "attacked")
REPO_ROOT = Path(__file__).resolve().parents[1]
DAGS_FOLDER = REPO_ROOT / "dags"
POLICY_PATH = DAGS_FOLDER / "policies" / "digits.yaml"


@dataclass(frozen=True)
class DemoAssets:
    root: Path
    model_path: Path
    reference_path: Path
    batches: dict[str, Path]
    manifest: dict


def _pixel_names() -> list[str]:
    return [f"px_{r}_{c}" for r in range(8) for c in range(8)]


def _frame(ids: list[str], x: np.ndarray, labels: np.ndarray | None) -> pd.DataFrame:
    frame = pd.DataFrame(x.reshape(len(x), -1).astype(np.float32), columns=_pixel_names())
    frame.insert(0, "sample_id", ids)
    if labels is not None:
        frame["label"] = labels.astype(np.int64)
    return frame


def prepare_demo(home: Path | None = None, *, force: bool = False, log=print) -> DemoAssets:
    """Build (or reuse) the demo's model, reference set and batches under ``<home>/demo``."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from certrisk.risk.audit import pgd_numpy
    from certrisk.risk.models import digits_cnn, predict, save_safetensors, train_classifier
    from certrisk.schemas.policy import load_policy

    root = (home or certrisk_home()) / "demo"
    manifest_path = root / "manifest.json"
    paths = {
        "model": root / "digits_cnn.safetensors",
        "reference": root / "reference.parquet",
        **{b: root / "batches" / f"{b}.parquet" for b in BATCHES},
    }
    if not force and manifest_path.is_file() and all(p.is_file() for p in paths.values()):
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("version") == DEMO_VERSION:
            log(f"demo assets: cached in {root}")
            return DemoAssets(root, paths["model"], paths["reference"], {b: paths[b] for b in BATCHES}, manifest)

    policy = load_policy(POLICY_PATH).policy
    sigma = policy.certification.smoothing.sigma
    seed = 20261124
    torch.manual_seed(seed)
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    idx = np.arange(len(x))
    train_idx, rest_idx = train_test_split(idx, train_size=1000, stratify=y, random_state=seed)
    ref_idx, prod_idx = train_test_split(rest_idx, train_size=400, stratify=y[rest_idx], random_state=seed)

    t0 = time.perf_counter()
    log(f"demo assets: training the digits CNN with Gaussian noise sigma={sigma} on {len(train_idx)} images ...")
    model = train_classifier(digits_cnn(), x[train_idx], y[train_idx], noise_sigma=sigma, epochs=60, seed=seed, device="cpu")
    pred, _ = predict(model, x[prod_idx], device="cpu")
    accuracy = float((pred == y[prod_idx]).mean())
    model_sha = save_safetensors(model, paths["model"])
    log(f"demo assets: model trained in {time.perf_counter() - t0:.1f}s, held-out accuracy {accuracy:.3f}")

    rng = np.random.default_rng(seed)
    clean = x[prod_idx]
    shifted = np.clip(0.55 * clean + 0.2 + rng.normal(0.0, 0.12, size=clean.shape), 0.0, 1.0).astype(np.float32)
    t1 = time.perf_counter()
    attacked, success = pgd_numpy(model, clean, y[prod_idx], eps=1.0, norm="l2", steps=40, restarts=1, seed=seed)
    log(f"demo assets: PGD l2 eps=1.0 against the base model: {success.mean():.1%} of inputs misclassified "
        f"({time.perf_counter() - t1:.1f}s)")

    paths["reference"].parent.mkdir(parents=True, exist_ok=True)
    (root / "batches").mkdir(parents=True, exist_ok=True)
    _frame([f"ref:{i}" for i in ref_idx], x[ref_idx], y[ref_idx]).to_parquet(paths["reference"], index=False)
    for name, arr in (("clean", clean), ("shifted", shifted), ("attacked", attacked)):
        _frame([f"{name}:{i}" for i in prod_idx], arr, None).to_parquet(paths[name], index=False)
    # Ground truth stays beside the batches for evaluation; the pipeline never reads it.
    pd.DataFrame({"sample_id_suffix": prod_idx, "label": y[prod_idx]}).to_parquet(root / "batches" / "labels.parquet")
    manifest = {
        "version": DEMO_VERSION,
        "seed": seed,
        "sigma": sigma,
        "model_sha256": model_sha,
        "heldout_accuracy": accuracy,
        "pgd": {"norm": "l2", "eps": 1.0, "steps": 40, "success_rate": float(success.mean())},
        "sizes": {"train": len(train_idx), "reference": len(ref_idx), **{b: len(prod_idx) for b in BATCHES}},
    }
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return DemoAssets(root, paths["model"], paths["reference"], {b: paths[b] for b in BATCHES}, manifest)


def airflow_env(home: Path) -> dict[str, str]:
    """Environment for an Airflow home under CERTRISK_HOME with the repo's dags folder."""
    af = home / "airflow"
    return {
        "AIRFLOW_HOME": str(af),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{af / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING"),
        "GX_ANALYTICS_ENABLED": "False",
    }


def run_demo(batches: list[str] | None = None, samples: int | None = None) -> list[dict]:
    """Prepare the demo and run the example DAG once per batch; print and return the results."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    home = certrisk_home()
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("CERTRISK_HOME", str(home))
    for key, val in airflow_env(home).items():
        os.environ.setdefault(key, val)
    (home / "airflow").mkdir(parents=True, exist_ok=True)
    chosen = list(batches or BATCHES)
    unknown = [b for b in chosen if b not in BATCHES]
    if unknown:
        raise SystemExit(f"unknown demo batch(es) {unknown}; choose from {list(BATCHES)}")

    t_start = time.perf_counter()
    with console.status("preparing demo assets (cached after the first run) ..."):
        assets = prepare_demo(home, log=console.print)
    with console.status("migrating the Airflow metadata DB ..."):
        t0 = time.perf_counter()
        from airflow.utils.db import upgradedb

        upgradedb()
        console.print(f"airflow metadata DB migrated in {time.perf_counter() - t0:.1f}s ({os.environ['AIRFLOW_HOME']})")
    from certrisk.governance import GovernanceStore

    db_url = default_db_url()
    GovernanceStore(db_url).upgrade()

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER / "certrisk_digits.py"))
    if bag.import_errors:
        raise SystemExit(f"example DAG failed to import: {bag.import_errors}")
    dag = bag.get_dag(DAG_ID)
    results = []
    for name in chosen:
        batch_path = assets.batches[name]
        if samples:
            sub = pd.read_parquet(batch_path).head(samples)
            batch_path = assets.root / "batches" / f"{name}-{samples}.parquet"
            sub.to_parquet(batch_path, index=False)
        console.print(f"[bold]running {DAG_ID} on batch {name!r}[/bold] ({batch_path})")
        t0 = time.perf_counter()
        run = dag.test(run_conf={"batch_uri": str(batch_path)})
        elapsed = time.perf_counter() - t0
        if run.state != "success":
            console.print(f"[red]DAG run {run.run_id} ended {run.state}[/red]")
        results.append({"batch": name, "run_id": run.run_id, "state": str(run.state), "seconds": elapsed})
        console.print(f"  {name}: {run.state} in {elapsed:.1f}s")

    store = GovernanceStore(db_url)
    runs = store.list_runs()
    table = Table(title=f"certrisk demo: {DAG_ID}")
    for col in ("batch", "samples", "abstention", "mean risk", "low", "medium", "high", "critical", "batch tier", "seconds"):
        table.add_column(col, justify="right" if col not in ("batch", "batch tier") else "left")
    by_run = {r["run_id"]: r for r in runs.to_dict("records")} if len(runs) else {}
    for res in results:
        rec = by_run.get(res["run_id"])
        if rec is None:
            table.add_row(res["batch"], "-", "-", "-", "-", "-", "-", "-", res["state"], f"{res['seconds']:.1f}")
            continue
        counts = rec.get("tier_counts") or {}
        table.add_row(
            res["batch"],
            str(rec["n_samples"]),
            f"{rec['abstention_rate']:.1%}",
            f"{rec['mean_risk']:.3f}",
            *(str(counts.get(t, 0)) for t in ("low", "medium", "high", "critical")),
            str(rec["tier"]),
            f"{res['seconds']:.1f}",
        )
    console.print(table)
    console.print(f"governance DB: {store.safe_url}")
    console.print(f"artifacts:     {home / 'artifacts' / DAG_ID}")
    console.print(f"demo assets:   {assets.root}")
    console.print(f"total:         {time.perf_counter() - t_start:.1f}s")
    console.print("Next: `certrisk runs --format json`, `certrisk samples --run RUN_ID --tier high`, `certrisk verify`.")
    failed = [r for r in results if r["state"] != "success"]
    if failed:
        raise SystemExit(f"{len(failed)} DAG run(s) did not succeed: {[r['batch'] for r in failed]}")
    return results
