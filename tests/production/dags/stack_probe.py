"""Probe DAGs for the production stack test: one task per Celery queue, then an asset-driven consumer.

``stack_probe`` runs ``report_default_worker`` on queue ``default`` and ``report_gpu_worker`` on queue
``gpu``; the latter updates the asset ``stack_probe`` which schedules ``stack_probe_consumer``.
``report_gpu_worker`` carries the Kubernetes ``pod_override`` a GPU task needs under the
KubernetesExecutor (the CeleryExecutor ignores it), checked offline with
``airflow kubernetes generate-dag-yaml``.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, dag, task
from kubernetes.client import models as k8s

GPU_POD = k8s.V1Pod(
    spec=k8s.V1PodSpec(
        containers=[
            k8s.V1Container(
                name="base",
                image="shoprec-trainer:latest",
                resources=k8s.V1ResourceRequirements(limits={"nvidia.com/gpu": "1"}),
            )
        ]
    )
)
PROBE = Asset(name="stack_probe", uri="shoprec://tests/stack_probe")
DEFAULT_ARGS = {
    "retries": 2,
    "retry_delay": pendulum.duration(seconds=5),
    "retry_exponential_backoff": True,
}


@dag(
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["shoprec", "test"],
    default_args=DEFAULT_ARGS,
)
def stack_probe() -> None:
    """Reports which worker ran each queue's task."""

    @task(queue="default")
    def report_default_worker() -> str:
        import os

        return os.environ.get("SHOPREC_WORKER_NAME", "")

    @task(queue="gpu", outlets=[PROBE], executor_config={"pod_override": GPU_POD})
    def report_gpu_worker() -> str:
        import os

        return os.environ.get("SHOPREC_WORKER_NAME", "")

    report_default_worker() >> report_gpu_worker()


@dag(
    schedule=[PROBE],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["shoprec", "test"],
    default_args=DEFAULT_ARGS,
)
def stack_probe_consumer() -> None:
    """Runs when ``stack_probe`` updates its asset."""

    @task(queue="default")
    def acknowledge_probe() -> str:
        return "ok"

    acknowledge_probe()


stack_probe()
stack_probe_consumer()
