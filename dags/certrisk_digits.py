"""Example DAG: certification-aware risk for the digits CNN (images, 8x8).

Run it end to end with `make demo` (it prepares the model, reference set and batches under
$CERTRISK_HOME/demo/digits). Choose the batch with the `batch_uri` param, e.g.
`airflow dags test certrisk_digits -c '{"batch_uri": "${CERTRISK_HOME}/demo/digits/batches/attacked.parquet"}'`.
"""

from pathlib import Path

from certrisk.operators import certrisk_dag

dag = certrisk_dag(
    str(Path(__file__).parent / "policies" / "digits.yaml"),
    dag_id="certrisk_digits",
    schedule="@daily",
    catchup=False,
    batch_uri="${CERTRISK_HOME}/demo/digits/batches/clean.parquet",
    doc_md=__doc__,
)
