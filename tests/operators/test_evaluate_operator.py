"""``certrisk_dag(..., evaluate=True)`` adds the evaluation task (off by default), routed like the
certify task; the EvaluateOperator, run without a scheduler on a few digits, writes the measured
detection under the run's artifacts and returns only paths and a summary."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest

from certrisk.operators.evaluate import EvaluateOperator
from certrisk.risk.evaluate import DETECTION_COLUMNS
from tests.conftest import demo_assets_cached
from tests.factories import digits_pipeline


def test_evaluation_task_is_off_by_default_and_routed_like_certify():
    assert "evaluate" not in digits_pipeline("batch.parquet").task_dict
    dag = digits_pipeline(
        "batch.parquet",
        evaluate=True,
        evaluate_task_kwargs={"attacks": ["pgd_l2_deep"], "fractions": [0.5], "seed": 3, "limit": 8},
    )
    task = dag.task_dict["evaluate"]
    assert isinstance(task, EvaluateOperator)
    assert task.upstream_task_ids == set() and task.downstream_task_ids == set()
    assert task.queue == dag.task_dict["certify"].queue
    assert (task.attacks, task.fractions, task.seed, task.limit) == (("pgd_l2_deep",), (0.5,), 3, 8)
    assert "labelled" in task.template_fields


@pytest.mark.slow
def test_operator_writes_the_evaluation_artifacts(tmp_path):
    from certrisk.demo_assets import DATASETS

    demo_assets_cached("digits")
    op = EvaluateOperator(
        task_id="evaluate",
        policy_path=str(DATASETS["digits"].policy),
        artifacts_uri=f"file://{tmp_path}",
        attacks=["pgd_l2_early"],
        fractions=[0.5],
        limit=8,
    )
    context = {"dag_run": SimpleNamespace(dag_id="certrisk_digits", run_id="manual__eval")}
    out = op.run(context)
    run_dir = tmp_path / "certrisk_digits" / "manual__eval" / "evaluation"
    frame = pd.read_parquet(run_dir / "evaluation.parquet")
    assert list(frame.columns) == list(DETECTION_COLUMNS) and frame["family"].tolist() == ["pgd_l2_early"]
    written = json.loads((run_dir / "evaluation.json").read_text())
    assert written["metadata"]["n_clean"] == 8 and len(written["rows"]) == 1
    assert out["n_rows"] == 1 and out["evaluation"].endswith("evaluation.parquet")
    json.dumps(out)  # XCom-sized and serializable
