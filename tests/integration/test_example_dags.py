"""The example DAG files parse, each into its DAG, with the pipeline's tasks (no DAG run: quick)."""

from __future__ import annotations


def test_every_example_dag_file_yields_its_dag(airflow_db):
    """Every file in dags/ yields its DAG (Airflow's safe mode silently skips a file that never
    mentions "airflow" and "dag"; the breast cancer example once did), and the digits DAG holds
    the pipeline's tasks."""
    from airflow.dag_processing.dagbag import DagBag

    from certrisk.demo_assets import DAGS_FOLDER

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert bag.import_errors == {}
    files = sorted(p.stem for p in DAGS_FOLDER.glob("*.py"))
    assert sorted(bag.dag_ids) == files == ["certrisk_breast_cancer", "certrisk_digits"]
    dag = bag.get_dag("certrisk_digits")
    assert {
        "validate",
        "certify",
        "merge_certificates",
        "rules",
        "drift",
        "context",
        "score",
        "governance_write",
    } <= set(dag.task_ids)
