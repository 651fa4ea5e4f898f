"""Fault test: the Celery ``gpu`` worker is killed mid-training on the native production stack.

The production e2e's shop goes into the lake, the feature snapshots and Feast's registry, and one
``train_recommender`` run is triggered through the REST API; it runs on the Celery workers.  As soon
as ``train_model`` has written its first per-epoch checkpoint, the test SIGKILLs the ``gpu`` worker's
whole process tree (Celery parent, pool child, task supervisor and task process; every service of the
stack shares one process group, so the tree is killed, not the group) and starts a fresh ``gpu``
worker.  Airflow's own
machinery does the rest: the scheduler's task-instance heartbeat timeout (20 s here, through
``AIRFLOW__SCHEDULER__*``) fails the orphaned try, the task's retry policy schedules try 2 (retry delay
shortened through ``SHOPREC_TRAIN_RETRY_DELAY_S``), and the new worker runs it.

Asserted: the run succeeds with ``train_model`` at try 2 on the ``gpu`` worker; try 2 resumed from the
checkpoint's epoch (its log says so and trains no epoch before it); the PostgreSQL ledger holds exactly
one committed charge per purpose for the run, and the DP-SGD one has the epsilon an uninterrupted run has
(same noise multiplier, sample rate and steps; the resumed accountant reports the same); the ledger
verifies; exactly one model version is registered for the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from stack_client import REPO_ROOT, Stack, require_services, start_stack, verify_ledger
from test_production_e2e import _gpu_worker_settings, _prepare_history, _stack_settings

from tasks.config import Settings

pytestmark = [pytest.mark.production, pytest.mark.integration]

EPOCHS = 12
HEARTBEAT_TIMEOUT_S = 20
RUN_TIMEOUT_S = 600


def _gpu_worker_tree(stack: Stack) -> list[psutil.Process]:
    worker = psutil.Process(int((stack.state / "pids" / "worker-gpu").read_text()))
    return [worker, *worker.children(recursive=True)]


def _start_gpu_worker(stack: Stack) -> subprocess.Popen[bytes]:
    """A new ``gpu`` worker (the stack's command line) in its own process group."""
    airflow = str(Path(sys.executable).parent / "airflow")
    command = [airflow, "celery", "worker", "--queues", "gpu", "--celery-hostname", "gpu@%h"]
    with (stack.state / "logs" / "worker-gpu-restarted.log").open("ab") as log:
        return subprocess.Popen(
            [*command, "--concurrency", "1", "--skip-serve-logs"],
            env={
                **stack.env,
                "SHOPREC_WORKER_NAME": "gpu",
                "SHOPREC_HOME": stack.env["SHOPREC_STACK_GPU_HOME"],
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _stop_group(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if process.poll() is not None:
        return
    group = os.getpgid(process.pid)
    os.killpg(group, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(group, signal.SIGKILL)
        process.wait(timeout=10)


def _task_log(stack: Stack, run_id: str, task_id: str, try_number: int) -> str:
    quoted = urllib.parse.quote(run_id, safe="")
    path = (
        f"/api/v2/dags/train_recommender/dagRuns/{quoted}/taskInstances/{task_id}/logs/{try_number}"
        "?full_content=true"
    )
    status, body = stack.request("GET", path)
    assert status == 200, body
    content = body["content"] if isinstance(body, dict) else body
    return "\n".join(item.get("event", "") if isinstance(item, dict) else str(item) for item in content)


def _xcom(stack: Stack, run_id: str, task_id: str) -> dict[str, Any]:
    quoted = urllib.parse.quote(run_id, safe="")
    path = f"/api/v2/dags/train_recommender/dagRuns/{quoted}/taskInstances/{task_id}/xcomEntries/return_value"
    status, body = stack.request("GET", path)
    assert status == 200, body
    value = body["value"]
    return dict(json.loads(value) if isinstance(value, str) else value)


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    require_services()
    started = time.monotonic()
    stack = start_stack(
        tmp_path_factory.mktemp("shoprec-fault-worker"),
        REPO_ROOT / "dags",
        {
            "SHOPREC_MIN_TRAINING_INTERVAL_HOURS": "0",
            "SHOPREC_TRAIN_STEPS": str(4 * EPOCHS),
            # one DP-SGD training and its twin: the epochs a retry trains are counted below
            "SHOPREC_TRAIN_REFIT": "false",
            "SHOPREC_TRAINING_EPSILON": "8.0",
            "SHOPREC_PROMOTION_TOLERANCE": "0.0",
            "SHOPREC_TRAIN_RETRY_DELAY_S": "3",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_S),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
        },
    )
    replacement: subprocess.Popen[bytes] | None = None
    try:
        settings = _stack_settings(stack)
        _prepare_history(settings)  # the lake and feature snapshots of every day but the last
        from tasks.feast_store import apply_definitions

        apply_definitions(settings)  # training reads the snapshots through Feast's registry
        print(f"fault/worker: stack + history took {time.monotonic() - started:.0f} s")
        stack.unpause(["train_recommender"])
        status, run = stack.request("POST", "/api/v2/dags/train_recommender/dagRuns", {"logical_date": None})
        assert status == 200, run
        run_id = str(run["dag_run_id"])
        deadline = time.monotonic() + RUN_TIMEOUT_S
        # written by train_model in the gpu worker's own home
        checkpoint = _gpu_worker_settings(stack).models_dir / _safe(run_id) / "checkpoint.pt"
        polls = 0
        while not checkpoint.exists():
            assert time.monotonic() < deadline, f"no checkpoint at {checkpoint}"
            if polls % 25 == 0:  # every ~5 s: the run has not ended without a checkpoint
                state = stack.wait_for_run("train_recommender", run_id, 0)["state"]
                assert state not in ("success", "failed"), f"run {state} before its first checkpoint"
            polls += 1
            time.sleep(0.2)
        tree = _gpu_worker_tree(stack)
        for process in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
        psutil.wait_procs(tree, timeout=10)
        killed_at = time.monotonic()
        import torch

        killed_epoch = int(torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"])
        print(f"fault/worker: killed {len(tree)} processes of the gpu worker after epoch {killed_epoch}")
        replacement = _start_gpu_worker(stack)
        finished = stack.wait_for_run("train_recommender", run_id, deadline - time.monotonic())
        for task_id, ti in stack.task_instances("train_recommender", run_id).items():
            print(f"fault/worker: {task_id} {ti['state']} try {ti['try_number']} {ti['duration']} s")
        print(
            f"fault/worker: run {finished['state']} {time.monotonic() - killed_at:.0f} s after the kill; "
            f"total {time.monotonic() - started:.0f} s"
        )
        yield {
            "stack": stack,
            "settings": settings,
            "run": finished,
            "run_id": run_id,
            "checkpoint": checkpoint,
            "killed_epoch": killed_epoch,
            "killed_processes": len(tree),
        }
    finally:
        if replacement is not None:
            _stop_group(replacement)
        stack.run("purge", timeout=120)


def _safe(run_key: str) -> str:
    from tasks.artifacts import run_key_path as safe

    return safe(run_key)


def test_training_was_killed_mid_training(killed_run: dict[str, Any]) -> None:
    # the Celery parent, its pool child, the task supervisor and the task process at least
    assert killed_run["killed_processes"] >= 3
    assert 1 <= killed_run["killed_epoch"] < EPOCHS


def test_run_succeeds_with_train_model_retried_on_the_gpu_worker(killed_run: dict[str, Any]) -> None:
    stack: Stack = killed_run["stack"]
    assert killed_run["run"]["state"] == "success"
    tis = stack.task_instances("train_recommender", killed_run["run_id"])
    train = tis["train_model"]
    assert (train["state"], train["try_number"], train["queue"]) == ("success", 2, "gpu")
    assert train["hostname"].endswith("-gpu")
    assert tis["register_and_gate"]["state"] == "success"
    assert tis["register_and_gate"]["try_number"] == 1


def test_retry_resumed_from_the_checkpoint(killed_run: dict[str, Any]) -> None:
    stack: Stack = killed_run["stack"]
    epoch = killed_run["killed_epoch"]
    first = _task_log(stack, killed_run["run_id"], "train_model", 1)
    second = _task_log(stack, killed_run["run_id"], "train_model", 2)
    assert f"epoch {epoch - 1} loss" in first
    assert f"resuming training from {killed_run['checkpoint']} at epoch {epoch}" in second
    trained = [int(n) for n in re.findall(r"\bepoch (\d+) loss", second)]
    # try 2 trained the private model from the checkpoint's epoch on, then its non-private twin
    # (which keeps no checkpoint) every epoch
    assert trained == [*range(epoch, EPOCHS), *range(EPOCHS)]


def test_ledger_charged_once_with_the_uninterrupted_epsilon(killed_run: dict[str, Any]) -> None:
    from tasks.privacy import Ledger
    from tasks.privacy.accounting import rdp_epsilon
    from tasks.training import TRAIN_PURPOSE

    settings: Settings = killed_run["settings"]
    stack: Stack = killed_run["stack"]
    run_id = killed_run["run_id"]
    manifest = _xcom(stack, run_id, "train_model")
    assert settings.resolved_ledger_url.startswith("postgresql")
    ledger = Ledger(settings.resolved_ledger_url)
    try:
        charges = [c for c in ledger.charges(settings.privacy_scope) if c.run_id == run_id]
    finally:
        ledger.close()
    purposes = sorted(c.purpose for c in charges)
    assert len(purposes) == len(set(purposes)) == 2, purposes
    assert {str(c.status) for c in charges} == {"committed"}
    (dp_sgd,) = [c for c in charges if c.purpose == TRAIN_PURPOSE]
    assert dp_sgd.id == manifest["charge_id"]
    mechanism = dp_sgd.mechanism
    assert (mechanism.sample_rate, mechanism.steps) == (manifest["sample_rate"], manifest["steps"])
    assert mechanism.noise_multiplier == manifest["noise_multiplier"]
    uninterrupted = rdp_epsilon(
        [(mechanism.noise_multiplier, mechanism.sample_rate, mechanism.steps)], dp_sgd.delta
    )
    second = _task_log(stack, run_id, "train_model", 2)
    reported = re.findall(r"user-level epsilon (\d+\.\d+) at delta", second)
    assert reported == [f"{uninterrupted:.3f}"]
    assert dp_sgd.epsilon == pytest.approx(manifest["epsilon"])


def test_ledger_verifies(killed_run: dict[str, Any]) -> None:
    verify_ledger(killed_run["stack"])


def test_exactly_one_model_version_for_the_run(killed_run: dict[str, Any]) -> None:
    settings: Settings = killed_run["settings"]
    query = urllib.parse.urlencode(
        {
            "filter": f"name = '{settings.registered_model_name}' and tag.shoprec.run_key = '{killed_run['run_id']}'"
        }
    )
    url = (
        f"{killed_run['stack'].env['SHOPREC_MLFLOW_SERVER_URL']}/api/2.0/mlflow/model-versions/search?{query}"
    )
    with urllib.request.urlopen(url, timeout=30) as response:
        versions = json.loads(response.read()).get("model_versions", [])
    assert len(versions) == 1, versions
    everything = urllib.parse.urlencode({"filter": f"name = '{settings.registered_model_name}'"})
    url = f"{killed_run['stack'].env['SHOPREC_MLFLOW_SERVER_URL']}/api/2.0/mlflow/model-versions/search?{everything}"
    with urllib.request.urlopen(url, timeout=30) as response:
        assert len(json.loads(response.read()).get("model_versions", [])) == 1
