"""Example DAG: the digits pipeline with human review (Airflow human-in-the-loop).

The same model and batches as `certrisk_digits`, with the policy's `review` section: after the
governance write, a batch at tier high or above waits for a person to approve, reject or escalate
it (Airflow's Required Actions page, or `PATCH /api/v2/dags/certrisk_digits_reviewed/dagRuns/
{run_id}/taskInstances/review/-1/hitlDetails` with `{"chosen_options": ["Approve"],
"params_input": {"comment": "..."}}`). The decision lands on the governance record
(`record_review`); a rejected or escalated batch fails the run and leaves the model's
`certrisk://digits-cnn/accepted` Asset alone. Below tier high the review step skips and the run
goes on. `make demo` runs `certrisk_digits`, which has no review step.
"""

from pathlib import Path

from certrisk.operators import certrisk_dag

dag = certrisk_dag(
    str(Path(__file__).parent / "policies" / "digits_reviewed.yaml"),
    dag_id="certrisk_digits_reviewed",
    schedule=None,
    catchup=False,
    batch_uri="${CERTRISK_HOME}/demo/digits/batches/clean.parquet",
    doc_md=__doc__,
)
