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
    assert (
        sorted(bag.dag_ids)
        == files
        == ["certrisk_breast_cancer", "certrisk_digits", "certrisk_digits_reviewed", "certrisk_downstream"]
    )
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
    # `make demo` runs certrisk_digits unattended: no review step there
    assert not {"review", "record_review"} & set(dag.task_ids)
    check_reviewed_and_downstream(bag)


def check_reviewed_and_downstream(bag) -> None:
    """The reviewed variant waits for a person after the governance write; the governance write
    updates the model's risk Asset, the alert task its accepted Asset, which the downstream
    example DAG is scheduled on."""
    from airflow.sdk import TriggerRule

    from certrisk.operators import accepted_asset, risk_asset

    reviewed = bag.dags["certrisk_digits_reviewed"]
    review, record, alert = (reviewed.get_task(t) for t in ("review", "record_review", "alert"))
    assert "governance_write" in review.upstream_task_ids and review.downstream_task_ids == {"record_review"}
    assert record.downstream_task_ids == {"alert"}
    assert alert.trigger_rule == TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS  # also after a skipped review
    assert review.options == ["Approve", "Reject", "Escalate"] and review.defaults == ["Reject"]
    assert reviewed.get_task("governance_write").outlets == [risk_asset("digits-cnn")]
    assert alert.outlets == [accepted_asset("digits-cnn")]
    plain = bag.dags["certrisk_digits"]
    assert plain.get_task("alert").outlets == [accepted_asset("digits-cnn")]
    assert plain.get_task("alert").trigger_rule == TriggerRule.ALL_SUCCESS
    downstream = bag.dags["certrisk_downstream"]
    assert list(downstream.timetable.asset_condition.objects) == [accepted_asset("digits-cnn")]
    assert downstream.task_ids == ["use_accepted_batch"]
