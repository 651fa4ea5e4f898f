"""What the DAG files share: the Assets that link them, their default_args and the GPU task's executor_config.

Imported by ``dags/`` only (it is part of the package, so Airflow never parses it as a DAG file). It
imports nothing beyond ``airflow.sdk``, pendulum and :mod:`tasks.config` (pydantic), and builds
nothing heavy: the Kubernetes pod of the training task exists only where a KubernetesExecutor runs
it (:func:`gpu_executor_config`). What it reads while a DAG file is parsed, it reads field by field
(:func:`tasks.config.one_setting`), never a whole :class:`~tasks.config.Settings`: a bad task-time
setting then fails the tasks that read it, not the parsing of every DAG file.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import Asset, conf

from tasks.config import Settings, one_setting

EVENTS_CLEAN = Asset(name="events_clean", uri="shoprec://lake/events")
ITEM_CATALOG = Asset(name="item_catalog", uri="shoprec://lake/items")
FEATURES = Asset(name="features", uri="shoprec://feast/features")
MODEL_CHAMPION = Asset(name="model_champion", uri="shoprec://mlflow/champion")
RECOMMENDATIONS = Asset(name="recommendations", uri="shoprec://feast/user_recommendations")
EXPOSURES = Asset(name="exposures", uri="shoprec://lake/campaigns/exposures")


def default_args(retry_delay: pendulum.Duration | None = None) -> dict[str, Any]:
    """Every task: 2 retries, exponential backoff (with jitter) from ``retry_delay`` (1 minute) to 10 minutes."""
    return {
        "retries": 2,
        "retry_delay": retry_delay if retry_delay is not None else pendulum.duration(minutes=1),
        "retry_exponential_backoff": True,
        "max_retry_delay": pendulum.duration(minutes=10),
    }


def training_retry_delay(settings: Settings | None = None) -> pendulum.Duration:
    """The training DAG's first retry delay: ``Settings.train_retry_delay_s`` (``SHOPREC_TRAIN_RETRY_DELAY_S``,
    default 60 seconds); the fault tests shorten it."""
    seconds = settings.train_retry_delay_s if settings else one_setting("train_retry_delay_s")
    return pendulum.duration(seconds=seconds)


def kubernetes_executor_configured(executors: str) -> bool:
    """Whether Airflow's ``[core] executor`` (one name or a comma-separated list) includes Kubernetes."""
    # entries are a class name, a module path or "alias:module.path.Class"
    return any(
        name.strip().split(":")[-1].split(".")[-1] == "KubernetesExecutor" for name in executors.split(",")
    )


def gpu_executor_config(settings: Settings | None = None) -> dict[str, Any]:
    """``executor_config`` of a GPU task: under the KubernetesExecutor a ``pod_override`` that runs it in
    the CUDA trainer image (``SHOPREC_TRAINER_IMAGE``) with one ``nvidia.com/gpu``; otherwise empty (the
    CeleryExecutor routes the task to the ``gpu`` queue instead), so no Kubernetes object is built."""
    if not kubernetes_executor_configured(conf.get("core", "executor", fallback="")):
        return {}
    from kubernetes.client import models as k8s

    pod = k8s.V1Pod(
        spec=k8s.V1PodSpec(
            containers=[
                k8s.V1Container(
                    name="base",
                    image=settings.trainer_image if settings else one_setting("trainer_image"),
                    resources=k8s.V1ResourceRequirements(limits={"nvidia.com/gpu": "1"}),
                )
            ]
        )
    )
    return {"pod_override": pod}
