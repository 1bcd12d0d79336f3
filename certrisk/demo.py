"""The demo: the example DAG of a demo dataset run for real, once per batch, on the assets
``certrisk.demo_assets`` prepares (scikit-learn's 8x8 handwritten digits and a trained CNN by
default; ``breast_cancer`` for the tabular example).

``run_demo`` migrates an Airflow metadata DB under ``$CERTRISK_HOME/airflow``, runs the dataset's
example DAG under ``dag.test()`` once per batch (clean, shifted, attacked, deep) and prints a table
from the governance DB; for the attacked batches it shows which share of the successful attacks
(ground truth the pipeline never reads) reached tier high or above.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd

from certrisk.demo_assets import BATCHES, DAGS_FOLDER, DATASETS, DemoAssets, DemoDataset, prepare_demo
from certrisk.schemas.settings import certrisk_home, default_db_url


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


def run_outcome(run) -> str:
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


def _demo_home() -> Path:
    """CERTRISK_HOME with the demo's Airflow settings in the environment (an existing value wins)."""
    home = certrisk_home()
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("CERTRISK_HOME", str(home))
    for key, val in airflow_env(home).items():
        os.environ.setdefault(key, val)
    (home / "airflow").mkdir(parents=True, exist_ok=True)
    return home


def _chosen(dataset: str, batches: list[str] | None) -> tuple[DemoDataset, list[str]]:
    """The dataset's spec and the batches to run; SystemExit naming the choices on an unknown name."""
    if dataset not in DATASETS:
        raise SystemExit(f"unknown demo dataset {dataset!r}; choose from {list(DATASETS)}")
    chosen = list(batches or BATCHES)
    unknown = [b for b in chosen if b not in BATCHES]
    if unknown:
        raise SystemExit(f"unknown demo batch(es) {unknown}; choose from {list(BATCHES)}")
    return DATASETS[dataset], chosen


def _migrate(console) -> None:
    """Migrate the Airflow metadata DB and the governance DB (the embedded defaults)."""
    from airflow.utils.db import upgradedb

    from certrisk.governance import GovernanceStore

    with console.status("migrating the Airflow metadata DB ..."):
        t0 = time.perf_counter()
        upgradedb()
        console.print(
            f"airflow metadata DB migrated in {time.perf_counter() - t0:.1f}s ({os.environ['AIRFLOW_HOME']})"
        )
    GovernanceStore(default_db_url()).upgrade()


def _example_dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER / f"{dag_id}.py"))
    if bag.import_errors:
        raise SystemExit(f"example DAG failed to import: {bag.import_errors}")
    return bag.get_dag(dag_id)


def _run_batches(dag, assets: DemoAssets, chosen: list[str], samples: int | None, console) -> list[dict]:
    """Run the DAG once per batch (its first ``samples`` rows when given); one result dict each."""
    results = []
    for name in chosen:
        batch_path = assets.batches[name]
        if samples:
            sub = pd.read_parquet(batch_path).head(samples)
            batch_path = assets.root / "batches" / f"{name}-{samples}.parquet"
            sub.to_parquet(batch_path, index=False)
        console.print(f"[bold]running {dag.dag_id} on batch {name!r}[/bold] ({batch_path})")
        t0 = time.perf_counter()
        run = dag.test(run_conf={"batch_uri": str(batch_path)})
        elapsed = time.perf_counter() - t0
        outcome = run_outcome(run)
        results.append({"batch": name, "run_id": run.run_id, "state": outcome, "seconds": elapsed})
        style = {"success": "green", "alert": "yellow"}.get(outcome, "red")
        note = (
            " (the batch tier reached the policy's alert tier; the record landed first)"
            if outcome == "alert"
            else ""
        )
        console.print(f"  {name}: [{style}]{outcome}[/{style}] in {elapsed:.1f}s{note}")
    return results


TABLE_COLUMNS = (
    "batch", "samples", "abstention", "mean risk", "low", "medium", "high", "critical", "attacks >= high",
    "batch tier", "seconds",
)  # fmt: skip


def attacks_caught(samples: pd.DataFrame, batch: str, truth: pd.DataFrame) -> str:
    """For an attacked demo batch, the share of its successful attacks (ground truth beside the
    batches, ``<batch>_success``) that the run put at tier high or above, e.g. "43% of 363";
    "-" for a batch that was not attacked. ``samples``: the run's sample_id and tier."""
    column = f"{batch}_success"
    if column not in truth.columns:
        return "-"
    attacked = {f"{batch}:{row}" for row in truth.loc[truth[column].astype(bool), "row"]}
    hit = samples[samples["sample_id"].astype(str).isin(attacked)]
    if not len(hit):
        return "none succeeded"
    share = hit["tier"].astype(str).isin(["high", "critical"]).mean()
    return f"{share:.0%} of {len(hit)}"


def _results_table(store, dag_id: str, results: list[dict], truth: pd.DataFrame):
    """A rich table: one row per batch run, read back from the governance DB."""
    from rich.table import Table

    runs = store.list_runs()
    table = Table(title=f"certrisk demo: {dag_id}")
    for col in TABLE_COLUMNS:
        table.add_column(col, justify="right" if col not in ("batch", "batch tier") else "left")
    by_run = {r["run_id"]: r for r in runs.to_dict("records")} if len(runs) else {}
    for res in results:
        rec = by_run.get(res["run_id"])
        if rec is None:
            table.add_row(
                res["batch"], "-", "-", "-", "-", "-", "-", "-", "-", res["state"], f"{res['seconds']:.1f}"
            )
            continue
        counts = store.get_run(dag_id, res["run_id"])["summary"].get("tier_counts") or {}
        samples = store.samples(res["run_id"], dag_id=dag_id, limit=None)
        table.add_row(
            res["batch"],
            str(rec["n_samples"]),
            f"{rec['abstention_rate']:.1%}",
            f"{rec['mean_risk']:.3f}",
            *(str(counts.get(t, 0)) for t in ("low", "medium", "high", "critical")),
            attacks_caught(samples, res["batch"], truth),
            str(rec["tier"]) + (" (alert)" if res["state"] == "alert" else ""),
            f"{res['seconds']:.1f}",
        )
    return table


def run_demo(
    batches: list[str] | None = None, samples: int | None = None, dataset: str = "digits"
) -> list[dict]:
    """Prepare a demo dataset and run its example DAG once per batch; print and return the results."""
    from rich.console import Console

    from certrisk.governance import GovernanceStore

    console = Console(width=None if os.isatty(1) else 130)
    home = _demo_home()
    spec, chosen = _chosen(dataset, batches)
    t_start = time.perf_counter()
    with console.status("preparing demo assets (cached after the first run) ..."):
        assets = prepare_demo(home, dataset=dataset, log=console.print)
    _migrate(console)
    results = _run_batches(_example_dag(spec.dag_id), assets, chosen, samples, console)
    store = GovernanceStore(default_db_url())
    truth = pd.read_parquet(assets.root / "batches" / "labels.parquet")
    console.print(_results_table(store, spec.dag_id, results, truth))
    console.print(f"governance DB: {store.masked_url}")
    console.print(f"artifacts:     {home / 'artifacts' / spec.dag_id}")
    console.print(f"demo assets:   {assets.root}")
    console.print(f"total:         {time.perf_counter() - t_start:.1f}s")
    console.print(
        "Next: `certrisk runs --format json`, `certrisk samples --run RUN_ID --tier high`, `certrisk verify`."
    )
    failed = [r for r in results if r["state"] not in ("success", "alert")]
    if failed:
        console.print("[red]Rerun with AIRFLOW__LOGGING__LOGGING_LEVEL=INFO to see the task logs.[/red]")
        raise SystemExit(f"{len(failed)} DAG run(s) did not succeed: {[r['batch'] for r in failed]}")
    return results
