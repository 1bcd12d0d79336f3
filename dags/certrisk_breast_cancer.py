"""Example DAG: certification-aware risk for a tabular model (Wisconsin breast cancer, an MLP).

Rule-heavy: profiled ranges plus plausibility limits and batch-level aggregate expectations; all
three certification methods (randomized smoothing, interval bounds, Lipschitz). Prepare its
assets with `certrisk demo --dataset breast_cancer`, then run it with
`airflow dags test certrisk_breast_cancer` (this line also keeps the file visible to Airflow's
safe-mode DAG discovery, which skips files that never mention "airflow" and "dag").
"""

from pathlib import Path

from certrisk.operators import certrisk_dag

dag = certrisk_dag(
    str(Path(__file__).parent / "policies" / "breast_cancer.yaml"),
    dag_id="certrisk_breast_cancer",
    schedule="@daily",
    catchup=False,
    batch_uri="${CERTRISK_HOME}/demo/breast_cancer/batches/clean.parquet",
    doc_md=__doc__,
)
