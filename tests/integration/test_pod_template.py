"""The KubernetesExecutor pod template for GPU certify shards (deploy/kubernetes/gpu-pod-template.yaml),
checked without a cluster by the cncf.kubernetes provider's own code.

What the executor does with it, step by step: the DAG file reads the template with
``PodGenerator.deserialize_model_file`` and gives it to the certify task as
``executor_config={"pod_override": ...}`` (through ``certrisk_dag``'s ``certify_task_kwargs``); the
dag-processor serializes the DAG and the scheduler reads it back (``DagSerialization``); the
executor takes the override (``PodGenerator.from_obj``) and builds each shard's pod with
``PodGenerator.construct_pod``: worker pod template, then its own pod (container ``base`` running
the task), then the override, merged by ``reconcile_pods``. The tests run those same calls and
check the pod a certify shard would get, and that every other task gets no GPU.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator

from tests.conftest import REPO

TEMPLATE = REPO / "deploy" / "kubernetes" / "gpu-pod-template.yaml"
POLICY = REPO / "dags" / "policies" / "digits.yaml"
ARGS = ["python", "-m", "airflow.sdk.execution_time.execute_workload", "--json-string", "{}"]


def worker_template():
    """The provider's example worker pod template: a stand-in for ``[kubernetes_executor]
    pod_template_file`` (container ``base``, Airflow's env and volumes)."""
    import airflow.providers.cncf.kubernetes.kubernetes_executor_templates as templates

    return PodGenerator.deserialize_model_file(str(Path(templates.__file__).parent / "basic_template.yaml"))


def build_pod(override, task_id: str = "certify", map_index: int = 0):
    """The pod the KubernetesExecutor builds for one task instance."""
    return PodGenerator.construct_pod(
        dag_id="fraud_risk",
        task_id=task_id,
        pod_id=f"fraud-risk-{task_id}-{map_index}",
        try_number=1,
        kube_image="apache/airflow:3.3.2-python3.11",
        date=None,
        args=ARGS,
        pod_override_object=override,
        base_worker_pod=worker_template(),
        namespace="airflow",
        scheduler_job_id="1",
        run_id="manual__2026-12-01",
        map_index=map_index,
    )


def gpu_problems(pod) -> list[str]:
    """What keeps ``pod`` from being a GPU certify shard; empty when nothing does."""
    problems = []
    names = [c.name for c in pod.spec.containers]
    if names != ["base"]:
        problems.append(f"containers {names}: the task must run alone in 'base'")
    base = pod.spec.containers[0]
    limits = (base.resources.limits or {}) if base.resources else {}
    if limits.get("nvidia.com/gpu") != "1":
        problems.append(f"'base' limits {limits}: no nvidia.com/gpu: '1'")
    if base.args != ARGS:
        problems.append("'base' does not run the task's command")
    env = {e.name: e.value for e in (base.env or [])}
    if env.get("CERTRISK_HOME") != "/opt/certrisk":
        problems.append("CERTRISK_HOME is not set in 'base'")
    if (pod.spec.node_selector or {}).get("nvidia.com/gpu.present") != "true":
        problems.append(f"node selector {pod.spec.node_selector}: not GPU nodes")
    if not any(t.key == "nvidia.com/gpu" and t.effect == "NoSchedule" for t in pod.spec.tolerations or []):
        problems.append("no toleration of the nvidia.com/gpu taint")
    return problems


def test_the_template_reads_back_whole():
    """The Kubernetes client drops keys it does not know without a word: reading the template
    and writing it back must give the file's own content, so a misspelled key fails here."""
    pod = PodGenerator.deserialize_model_file(str(TEMPLATE))
    assert PodGenerator.serialize_pod(pod) == yaml.safe_load(TEMPLATE.read_text())
    assert [c.name for c in pod.spec.containers] == ["base"]


def test_a_certify_shard_pod_gets_a_gpu_and_other_tasks_do_not(tmp_path):
    from airflow.serialization.serialized_objects import DagSerialization

    from certrisk.operators import certrisk_dag

    gpu_pod = PodGenerator.deserialize_model_file(str(TEMPLATE))
    dag = certrisk_dag(
        str(POLICY),
        dag_id="fraud_risk",
        batch_uri=str(tmp_path / "batch.parquet"),
        certify_task_kwargs={"executor_config": {"pod_override": gpu_pod}},
    )
    scheduled = DagSerialization.from_dict(DagSerialization.to_dict(dag))  # as the scheduler reads it
    certify = scheduled.get_task("certify")
    override = PodGenerator.from_obj(certify.partial_kwargs["executor_config"])
    assert override == gpu_pod

    pods = [build_pod(override, map_index=i) for i in range(3)]
    for pod in pods:
        assert gpu_problems(pod) == []
    assert [p.metadata.labels["map_index"] for p in pods] == ["0", "1", "2"]
    base = pods[0].spec.containers[0]
    env = {e.name for e in base.env}
    # The worker template's Airflow settings survive the merge beside the override's.
    assert {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW_IS_K8S_EXECUTOR_POD", "CERTRISK_HOME"} <= env
    assert {v.name for v in pods[0].spec.volumes} >= {"airflow-logs", "certrisk-home"}
    assert PodGenerator.serialize_pod(pods[0])["spec"]["containers"][0]["resources"]["limits"] == {
        "nvidia.com/gpu": "1",
        "memory": "16Gi",
    }

    for task_id in ("validate", "merge_certificates", "score", "governance_write"):
        config = scheduled.get_task(task_id).executor_config
        pod = build_pod(PodGenerator.from_obj(config), task_id=task_id, map_index=-1)
        limits = pod.spec.containers[0].resources.limits or {}
        assert "nvidia.com/gpu" not in limits and not pod.spec.tolerations, task_id


def test_the_check_names_a_container_that_is_not_base():
    """Containers merge by position: under another name the override renames the task's container,
    and Airflow, which reads the task's logs and state from container ``base``, loses it. The check
    must say so."""
    raw = yaml.safe_load(TEMPLATE.read_text())
    raw["spec"]["containers"][0]["name"] = "gpu"
    pod = build_pod(PodGenerator.deserialize_model_dict(raw))
    assert [c.name for c in pod.spec.containers] == ["gpu"]
    assert gpu_problems(pod) == ["containers ['gpu']: the task must run alone in 'base'"]
