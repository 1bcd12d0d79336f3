"""The demo: real data (scikit-learn's 8x8 handwritten digits), a trained CNN, three batches, and
the example DAG run for real once per batch.

``prepare_demo`` builds (once, cached under ``$CERTRISK_HOME/demo/<dataset>``): a model trained
with Gaussian-noise augmentation at the policy's sigma and saved as safetensors; a reference set
of held-out samples with labels; and three production batches without labels:

- ``clean``: held-out samples;
- ``shifted``: a visible distribution shift (digits: lower contrast plus pixel noise; breast
  cancer: every size feature reads 0.8 standard deviations high, plus noise);
- ``attacked``: PGD l2 adversarial examples against the base model, each stopped at its first
  success (near-minimal perturbations, as an attacker who wants to stay unnoticed makes them).

Datasets: ``digits`` (scikit-learn's 8x8 handwritten digits, a small CNN; the main demo) and
``breast_cancer`` (scikit-learn's Wisconsin breast cancer data, z-scored, an MLP; rule-heavy).

``run_demo`` migrates an Airflow metadata DB under ``$CERTRISK_HOME/airflow``, runs the dataset's
example DAG under ``dag.test()`` once per batch and prints a table from the governance DB.
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

DEMO_VERSION = 3
BATCHES = ("clean", "shifted", "attacked")
REPO_ROOT = Path(__file__).resolve().parents[1]
DAGS_FOLDER = REPO_ROOT / "dags"


@dataclass(frozen=True)
class DemoDataset:
    """How one demo dataset is built: data, architecture, training and the batches' recipes."""

    name: str
    dag_id: str
    policy: Path
    model_file: str
    train_size: int
    reference_size: int
    epochs: int
    pgd_eps: float
    pgd_clip: tuple[float, float] | None


DATASETS = {
    "digits": DemoDataset(
        name="digits",
        dag_id="certrisk_digits",
        policy=DAGS_FOLDER / "policies" / "digits.yaml",
        model_file="digits_cnn.safetensors",
        train_size=1000,
        reference_size=400,
        epochs=60,
        pgd_eps=1.0,
        pgd_clip=(0.0, 1.0),
    ),
    "breast_cancer": DemoDataset(
        name="breast_cancer",
        dag_id="certrisk_breast_cancer",
        policy=DAGS_FOLDER / "policies" / "breast_cancer.yaml",
        model_file="breast_cancer_mlp.safetensors",
        train_size=300,
        reference_size=130,
        epochs=80,
        pgd_eps=3.0,
        pgd_clip=None,
    ),
}


@dataclass(frozen=True)
class DemoAssets:
    root: Path
    model_path: Path
    reference_path: Path
    batches: dict[str, Path]
    manifest: dict


def _load(dataset: DemoDataset):
    """Features in model space, labels, feature names and the model factory call."""
    from sklearn.datasets import load_breast_cancer, load_digits

    from certrisk.risk.models import digits_cnn, tabular_mlp

    if dataset.name == "digits":
        d = load_digits()
        x = (d.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
        names = [f"px_{r}_{c}" for r in range(8) for c in range(8)]
        return x, d.target.astype(np.int64), names, digits_cnn, None
    d = load_breast_cancer()
    names = [n.replace(" ", "_") for n in d.feature_names]
    return d.data.astype(np.float64), d.target.astype(np.int64), names, lambda: tabular_mlp(30, 2), d


def _frame(ids: list[str], x: np.ndarray, names: list[str], labels: np.ndarray | None) -> pd.DataFrame:
    frame = pd.DataFrame(x.reshape(len(x), -1).astype(np.float32), columns=names)
    frame.insert(0, "sample_id", ids)
    if labels is not None:
        frame["label"] = labels.astype(np.int64)
    return frame


def _shift(dataset: DemoDataset, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if dataset.name == "digits":
        # lower contrast, brighter background, pixel noise
        return np.clip(0.55 * clean + 0.2 + rng.normal(0.0, 0.12, size=clean.shape), 0.0, 1.0).astype(
            np.float32
        )
    # a recalibrated instrument: every size feature (radius, perimeter, area) reads 0.8 sd high
    shifted = clean.copy()
    size_cols = [i for i in range(clean.shape[1]) if i % 10 in (0, 2, 3)]
    shifted[:, size_cols] += 0.8
    return (shifted + rng.normal(0.0, 0.2, size=clean.shape)).astype(np.float32)


def prepare_demo(
    home: Path | None = None, *, dataset: str = "digits", force: bool = False, log=print
) -> DemoAssets:
    """Build (or reuse) a demo dataset's model, reference set and batches under ``<home>/demo/<dataset>``."""
    import torch
    from sklearn.model_selection import train_test_split

    from certrisk.risk.audit import pgd_numpy
    from certrisk.risk.models import predict, save_safetensors, train_classifier
    from certrisk.schemas.policy import load_policy

    spec = DATASETS[dataset]
    root = (home or certrisk_home()) / "demo" / spec.name
    manifest_path = root / "manifest.json"
    paths = {
        "model": root / spec.model_file,
        "reference": root / "reference.parquet",
        **{b: root / "batches" / f"{b}.parquet" for b in BATCHES},
    }
    if not force and manifest_path.is_file() and all(p.is_file() for p in paths.values()):
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("version") == DEMO_VERSION:
            log(f"demo assets ({spec.name}): cached in {root}")
            return DemoAssets(
                root, paths["model"], paths["reference"], {b: paths[b] for b in BATCHES}, manifest
            )

    policy = load_policy(spec.policy).policy
    sigma = policy.certification.smoothing.sigma
    seed = 20261124
    torch.manual_seed(seed)
    x, y, names, factory, raw = _load(spec)
    idx = np.arange(len(x))
    train_idx, rest_idx = train_test_split(idx, train_size=spec.train_size, stratify=y, random_state=seed)
    ref_idx, prod_idx = train_test_split(
        rest_idx, train_size=spec.reference_size, stratify=y[rest_idx], random_state=seed
    )
    scaling = None
    if raw is not None:
        # Tabular features reach the model as z-scores with the training split's statistics.
        mean, std = x[train_idx].mean(axis=0), x[train_idx].std(axis=0)
        x = ((x - mean) / std).astype(np.float32)
        scaling = {"mean": mean.tolist(), "std": std.tolist()}

    t0 = time.perf_counter()
    log(
        f"demo assets ({spec.name}): training with Gaussian noise sigma={sigma} on {len(train_idx)} samples ..."
    )
    model = train_classifier(
        factory(), x[train_idx], y[train_idx], noise_sigma=sigma, epochs=spec.epochs, seed=seed, device="cpu"
    )
    pred, _ = predict(model, x[prod_idx], device="cpu")
    accuracy = float((pred == y[prod_idx]).mean())
    model_sha = save_safetensors(model, paths["model"])
    log(
        f"demo assets ({spec.name}): model trained in {time.perf_counter() - t0:.1f}s, "
        f"held-out accuracy {accuracy:.3f}"
    )

    rng = np.random.default_rng(seed)
    clean = x[prod_idx]
    shifted = _shift(spec, clean, rng)
    # An attacker wants the smallest change that flips the label: stop each input at its first
    # success, so the examples sit just past the decision boundary (the budget eps caps them).
    attacked, success = pgd_numpy(
        model,
        clean,
        y[prod_idx],
        eps=spec.pgd_eps,
        norm="l2",
        steps=40,
        restarts=1,
        seed=seed,
        clip=spec.pgd_clip,
        early_stop=True,
    )
    log(
        f"demo assets ({spec.name}): PGD l2 eps={spec.pgd_eps} against the base model: "
        f"{success.mean():.1%} of inputs misclassified"
    )

    (root / "batches").mkdir(parents=True, exist_ok=True)
    _frame([f"ref:{i}" for i in ref_idx], x[ref_idx], names, y[ref_idx]).to_parquet(
        paths["reference"], index=False
    )
    for name, arr in (("clean", clean), ("shifted", shifted), ("attacked", attacked)):
        _frame([f"{name}:{i}" for i in prod_idx], arr, names, None).to_parquet(paths[name], index=False)
    # Ground truth stays beside the batches for evaluation; the pipeline never reads it.
    pd.DataFrame({"row": prod_idx, "label": y[prod_idx]}).to_parquet(root / "batches" / "labels.parquet")
    manifest = {
        "version": DEMO_VERSION,
        "dataset": spec.name,
        "seed": seed,
        "sigma": sigma,
        "model_sha256": model_sha,
        "heldout_accuracy": accuracy,
        "scaling": scaling,
        "pgd": {
            "norm": "l2",
            "eps": spec.pgd_eps,
            "steps": 40,
            "early_stop": True,
            "success_rate": float(success.mean()),
            "mean_l2": float(np.linalg.norm((attacked - clean).reshape(len(clean), -1), axis=1).mean()),
        },
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
        # The demo prints its own table; a designed alert would otherwise print Airflow's traceback.
        # Set AIRFLOW__LOGGING__LOGGING_LEVEL=INFO to see every task's log and summary line.
        "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "CRITICAL"),
        "GX_ANALYTICS_ENABLED": "False",
    }


def _outcome(run) -> str:
    """'success'; 'alert' when every task but the alert succeeded and the alert fired; else the run state."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    if str(run.state) == "success":
        return "success"
    with create_session() as session:
        dag_run = session.query(DagRun).filter_by(dag_id=run.dag_id, run_id=run.run_id).one()
        states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances(session=session)}
    others = {task: state for task, state in states.items() if task != "alert"}
    if states.get("alert") == "failed" and all(state == "success" for state in others.values()):
        return "alert"
    return str(run.state)


def run_demo(
    batches: list[str] | None = None, samples: int | None = None, dataset: str = "digits"
) -> list[dict]:
    """Prepare a demo dataset and run its example DAG once per batch; print and return the results."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if os.isatty(1) else 130)
    home = certrisk_home()
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("CERTRISK_HOME", str(home))
    for key, val in airflow_env(home).items():
        os.environ.setdefault(key, val)
    (home / "airflow").mkdir(parents=True, exist_ok=True)
    if dataset not in DATASETS:
        raise SystemExit(f"unknown demo dataset {dataset!r}; choose from {list(DATASETS)}")
    spec = DATASETS[dataset]
    dag_id = spec.dag_id
    chosen = list(batches or BATCHES)
    unknown = [b for b in chosen if b not in BATCHES]
    if unknown:
        raise SystemExit(f"unknown demo batch(es) {unknown}; choose from {list(BATCHES)}")

    t_start = time.perf_counter()
    with console.status("preparing demo assets (cached after the first run) ..."):
        assets = prepare_demo(home, dataset=dataset, log=console.print)
    with console.status("migrating the Airflow metadata DB ..."):
        t0 = time.perf_counter()
        from airflow.utils.db import upgradedb

        upgradedb()
        console.print(
            f"airflow metadata DB migrated in {time.perf_counter() - t0:.1f}s ({os.environ['AIRFLOW_HOME']})"
        )
    from certrisk.governance import GovernanceStore

    db_url = default_db_url()
    GovernanceStore(db_url).upgrade()

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER / f"{dag_id}.py"))
    if bag.import_errors:
        raise SystemExit(f"example DAG failed to import: {bag.import_errors}")
    dag = bag.get_dag(dag_id)
    results = []
    for name in chosen:
        batch_path = assets.batches[name]
        if samples:
            sub = pd.read_parquet(batch_path).head(samples)
            batch_path = assets.root / "batches" / f"{name}-{samples}.parquet"
            sub.to_parquet(batch_path, index=False)
        console.print(f"[bold]running {dag_id} on batch {name!r}[/bold] ({batch_path})")
        t0 = time.perf_counter()
        run = dag.test(run_conf={"batch_uri": str(batch_path)})
        elapsed = time.perf_counter() - t0
        outcome = _outcome(run)
        results.append({"batch": name, "run_id": run.run_id, "state": outcome, "seconds": elapsed})
        style = {"success": "green", "alert": "yellow"}.get(outcome, "red")
        note = (
            " (the batch tier reached the policy's alert tier; the record landed first)"
            if outcome == "alert"
            else ""
        )
        console.print(f"  {name}: [{style}]{outcome}[/{style}] in {elapsed:.1f}s{note}")

    store = GovernanceStore(db_url)
    runs = store.list_runs()
    table = Table(title=f"certrisk demo: {dag_id}")
    for col in (
        "batch",
        "samples",
        "abstention",
        "mean risk",
        "low",
        "medium",
        "high",
        "critical",
        "batch tier",
        "seconds",
    ):
        table.add_column(col, justify="right" if col not in ("batch", "batch tier") else "left")
    by_run = {r["run_id"]: r for r in runs.to_dict("records")} if len(runs) else {}
    summaries = {
        r["run_id"]: store.get_run(dag_id, r["run_id"])["summary"] for r in results if r["run_id"] in by_run
    }
    for res in results:
        rec = by_run.get(res["run_id"])
        if rec is None:
            table.add_row(
                res["batch"], "-", "-", "-", "-", "-", "-", "-", res["state"], f"{res['seconds']:.1f}"
            )
            continue
        counts = summaries[res["run_id"]].get("tier_counts") or {}
        table.add_row(
            res["batch"],
            str(rec["n_samples"]),
            f"{rec['abstention_rate']:.1%}",
            f"{rec['mean_risk']:.3f}",
            *(str(counts.get(t, 0)) for t in ("low", "medium", "high", "critical")),
            str(rec["tier"]) + (" (alert)" if res["state"] == "alert" else ""),
            f"{res['seconds']:.1f}",
        )
    console.print(table)
    console.print(f"governance DB: {store.masked_url}")
    console.print(f"artifacts:     {home / 'artifacts' / dag_id}")
    console.print(f"demo assets:   {assets.root}")
    console.print(f"total:         {time.perf_counter() - t_start:.1f}s")
    console.print(
        "Next: `certrisk runs --format json`, `certrisk samples --run RUN_ID --tier high`, `certrisk verify`."
    )
    failed = [r for r in results if r["state"] not in ("success", "alert")]
    if failed:
        console.print("[red]Rerun with AIRFLOW__LOGGING__LOGGING_LEVEL=INFO to see the task logs.[/red]")
    if failed:
        raise SystemExit(f"{len(failed)} DAG run(s) did not succeed: {[r['batch'] for r in failed]}")
    return results
