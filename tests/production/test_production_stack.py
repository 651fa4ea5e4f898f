"""The native production stack (scripts/stack.sh) on the real PostgreSQL and Redis of this machine.

One stack per module (start-up dominates the runtime); each test checks one behaviour through the
stack's public surfaces: Airflow's REST API (/api/v2, token from the simple auth manager), the MLflow
server's REST API, the Feast feature server, PostgreSQL and the process table.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
import urllib.request
from pathlib import Path

import psutil
import psycopg2
import pytest
from stack_client import Stack

pytestmark = [pytest.mark.production, pytest.mark.integration]

RUN_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def probe_run(stack: Stack) -> dict[str, object]:
    """One run of ``stack_probe`` triggered through the REST API, waited for until it finishes."""
    stack.unpause(["stack_probe", "stack_probe_consumer"])
    token = stack.token()
    status, run = stack.request("POST", "/api/v2/dags/stack_probe/dagRuns", {"logical_date": None}, token)
    assert status == 200, run
    return stack.wait_for_run("stack_probe", run["dag_run_id"], RUN_TIMEOUT_S)


def test_api_refuses_a_token_for_the_default_password(stack: Stack) -> None:
    with pytest.raises(PermissionError, match="HTTP 401"):
        stack.token(password="admin")


def test_api_refuses_requests_without_a_token(stack: Stack) -> None:
    status, _ = stack.request("GET", "/api/v2/dags", token=None)
    assert status == 401


def test_generated_secrets_are_private_and_jwt_secret_has_64_bytes(stack: Stack) -> None:
    secrets_dir = stack.state / "secrets"
    assert len(stack.env["AIRFLOW__API_AUTH__JWT_SECRET"].encode()) >= 64
    assert (secrets_dir / "jwt_secret").read_text() == stack.env["AIRFLOW__API_AUTH__JWT_SECRET"]
    modes = {path.name: path.stat().st_mode & 0o777 for path in secrets_dir.iterdir()}
    assert set(modes.values()) == {0o600}, modes
    assert (secrets_dir.stat().st_mode & 0o777) == 0o700


def test_triggered_run_succeeds_through_scheduler_and_celery(probe_run: dict[str, object]) -> None:
    assert (probe_run["state"], probe_run["run_type"], probe_run["triggered_by"]) == (
        "success",
        "manual",
        "rest_api",
    )


def test_each_task_ran_on_the_worker_of_its_queue(stack: Stack, probe_run: dict[str, object]) -> None:
    run_id = urllib.parse.quote(str(probe_run["dag_run_id"]), safe="")
    status, body = stack.request("GET", f"/api/v2/dags/stack_probe/dagRuns/{run_id}/taskInstances")
    assert status == 200, body
    ran = {ti["task_id"]: (ti["state"], ti["queue"], ti["hostname"]) for ti in body["task_instances"]}
    host = ran["report_gpu_worker"][2].rsplit("-", 1)[0]
    assert ran == {
        "report_default_worker": ("success", "default", f"{host}-default"),
        "report_gpu_worker": ("success", "gpu", f"{host}-gpu"),
    }


def test_asset_update_schedules_the_consumer_dag(stack: Stack, probe_run: dict[str, object]) -> None:
    token = stack.token()
    runs: list[dict[str, object]] = []
    for _ in range(30):
        status, body = stack.request("GET", "/api/v2/dags/stack_probe_consumer/dagRuns", token=token)
        assert status == 200, body
        runs = body["dag_runs"]
        if runs and runs[0]["state"] in ("success", "failed"):
            break
        time.sleep(2)
    assert [(run["run_type"], run["state"]) for run in runs] == [("asset_triggered", "success")]


def test_mlflow_server_keeps_experiments_in_postgres(stack: Stack) -> None:
    request = urllib.request.Request(
        stack.env["SHOPREC_MLFLOW_SERVER_URL"] + "/api/2.0/mlflow/experiments/create",
        data=b'{"name": "stack-test"}',
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        experiment_id = json.loads(response.read())["experiment_id"]
    dsn = stack.env["SHOPREC_POSTGRES_URL"].replace("+psycopg2", "") + "_mlflow"
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT name FROM experiments WHERE experiment_id = %s", (int(experiment_id),))
        assert cursor.fetchone() == ("stack-test",)
    connection.close()


def test_feast_feature_server_answers_on_loopback(stack: Stack) -> None:
    with urllib.request.urlopen(stack.env["SHOPREC_STACK_FEAST_URL"] + "/health", timeout=30) as response:
        assert response.status == 200


def test_every_server_of_the_stack_listens_on_loopback_only(stack: Stack) -> None:
    group = int((stack.state / "pgid").read_text())
    listening = {
        (conn.laddr.ip, conn.laddr.port)
        for conn in psutil.net_connections("tcp")
        if conn.status == psutil.CONN_LISTEN and conn.pid and _in_group(conn.pid, group)
    }
    ports = {int(stack.env[f"SHOPREC_STACK_{name}_PORT"]) for name in ("API", "MLFLOW", "FEAST")}
    assert {port for _, port in listening} >= ports
    assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening


def test_stack_state_lives_under_shoprec_home(stack: Stack) -> None:
    assert Path(stack.env["SHOPREC_HOME"]) / "stack" == stack.state
    assert Path(stack.env["AIRFLOW_HOME"]).is_relative_to(stack.state)


def test_stop_ends_every_process_of_the_group(stack: Stack) -> None:
    group = int((stack.state / "pgid").read_text())
    pids = [int(path.read_text()) for path in (stack.state / "pids").iterdir()]
    assert len(pids) == 8
    stopped = stack.run("stop", timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert [pid for pid in pids if psutil.pid_exists(pid) and _in_group(pid, group)] == []
    assert not any(_in_group(proc.pid, group) for proc in psutil.process_iter())


def _in_group(pid: int, group: int) -> bool:
    try:
        return os.getpgid(pid) == group
    except ProcessLookupError:
        return False
