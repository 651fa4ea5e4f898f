"""Helpers of the production-profile tests: the services check and a client for scripts/stack.sh.

The tests need PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379).  Where one is not reachable the
tests are skipped with the reason shown, except when ``SHOPREC_REQUIRE_SERVICES=1`` (``.ci/run`` sets
it): then an unreachable service is a test failure.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
STACK = REPO_ROOT / "scripts" / "stack.sh"
SERVICES = {"PostgreSQL": ("127.0.0.1", 5432), "Redis": ("127.0.0.1", 6379)}
START_TIMEOUT_S = 420


@cache
def unreachable_services() -> tuple[str, ...]:
    """Names (with address and error) of the services that do not accept a TCP connection."""
    down = []
    for name, (host, port) in SERVICES.items():
        try:
            socket.create_connection((host, port), timeout=3).close()
        except OSError as error:
            down.append(f"{name} at {host}:{port} ({error})")
    return tuple(down)


def require_services() -> None:
    """Skip (reason shown) when a service is unreachable; fail instead under SHOPREC_REQUIRE_SERVICES=1."""
    down = unreachable_services()
    if not down:
        return
    reason = "production services unreachable: " + ", ".join(down)
    if os.environ.get("SHOPREC_REQUIRE_SERVICES") == "1":
        pytest.fail(reason + " (SHOPREC_REQUIRE_SERVICES=1 makes them mandatory)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_redis_index() -> int:
    """An empty pair of Redis indexes (online store, broker) among 2..14, chosen at random."""
    import redis

    candidates = list(range(2, 15, 2))
    secrets.SystemRandom().shuffle(candidates)
    for index in candidates:
        if all(redis.Redis(host="127.0.0.1", db=i).dbsize() == 0 for i in (index, index + 1)):
            return index
    raise RuntimeError("no empty pair of Redis database indexes between 2 and 15")


@dataclass(frozen=True)
class Stack:
    """A running native stack: its environment (from ``stack.sh env``) and REST helpers."""

    env: dict[str, str]
    state: Path

    @property
    def api_url(self) -> str:
        return self.env["SHOPREC_STACK_API_URL"]

    def run(self, command: str, timeout: float = START_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(STACK), command], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def token(self, password: str | None = None) -> str:
        if password is None:
            password = Path(self.env["SHOPREC_STACK_ADMIN_PASSWORD_FILE"]).read_text()
        body = {"username": self.env["SHOPREC_STACK_ADMIN_USER"], "password": password}
        status, reply = self.request("POST", "/auth/token", body, token=None)
        if status != 201:
            raise PermissionError(f"token refused: HTTP {status} {reply}")
        return str(reply["access_token"])

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, token: str | None = ""
    ) -> tuple[int, Any]:
        """HTTP to the api-server; ``token=""`` fetches a fresh one, ``None`` sends none."""
        headers = {"Content-Type": "application/json"}
        if token == "":
            token = self.token()
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.api_url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def wait_parsed(self, dag_ids: list[str], timeout: float = 180) -> None:
        """Wait until the dag-processor has parsed each DAG (the API knows it)."""
        token = self.token()
        deadline = time.monotonic() + timeout
        for dag_id in dag_ids:
            while (status := self.request("GET", f"/api/v2/dags/{dag_id}", token=token)[0]) == 404:
                assert time.monotonic() < deadline, f"{dag_id} not parsed after {timeout} s"
                time.sleep(2)
            assert status == 200

    def unpause(self, dag_ids: list[str]) -> None:
        """Unpause each DAG through the REST API, once it is parsed."""
        self.wait_parsed(dag_ids)
        token = self.token()
        for dag_id in dag_ids:
            status, body = self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False}, token)
            assert (status, body["is_paused"]) == (200, False), body

    def dag_runs(self, dag_id: str, token: str, shop_end: dt.datetime | None = None) -> list[dict[str, Any]]:
        """The DAG's runs, oldest first. With ``shop_end`` (the logical date of the test shop's last day),
        scheduled runs for later days are left out: when the clock passes midnight UTC during a test,
        the scheduler creates the new day's run of a daily DAG, which has no landing data (the shops
        end yesterday) and is not part of the test."""
        status, body = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns?order_by=run_after", token=token)
        assert status == 200, body
        runs = list(body["dag_runs"])
        if shop_end is not None:
            runs = [
                r
                for r in runs
                if r["run_type"] != "scheduled" or dt.datetime.fromisoformat(r["logical_date"]) <= shop_end
            ]
        return runs

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        quoted = urllib.parse.quote(run_id, safe="")
        status, body = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances")
        assert status == 200, body
        return {ti["task_id"]: ti for ti in body["task_instances"]}

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float) -> dict[str, Any]:
        """Poll the DAG run until it reaches a final state (or fail after ``timeout`` seconds)."""
        token = self.token()
        deadline = time.monotonic() + timeout
        quoted = urllib.parse.quote(run_id, safe="")
        while True:
            status, run = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}", token=token)
            assert status == 200, run
            if run["state"] in ("success", "failed") or time.monotonic() > deadline:
                return dict(run)
            time.sleep(2)


def start_stack(home: Path, dags: Path, extra_env: dict[str, str] | None = None) -> Stack:
    """Start scripts/stack.sh with its own databases, Redis indexes and ports; fail the test if it can't."""
    name = f"shoprec_t{os.getpid()}_{secrets.token_hex(3)}"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "SHOPREC_"))}
    env.update(
        SHOPREC_HOME=str(home),
        SHOPREC_STACK_NAME=name,
        SHOPREC_STACK_REDIS_DB=str(free_redis_index()),
        SHOPREC_STACK_DAGS=str(dags),
        SHOPREC_STACK_TIMEOUT=str(START_TIMEOUT_S - 60),
        SHOPREC_STACK_STOP_TIMEOUT="30",
        **{
            f"SHOPREC_STACK_{port}_PORT": str(free_port())
            for port in ("API", "MLFLOW", "FEAST", "WORKER_LOG", "TRIGGER_LOG")
        },
    )
    env.update(extra_env or {})
    stack = Stack(env=env, state=home / "stack")
    started = stack.run("start")
    if started.returncode != 0:
        stack.run("purge", timeout=120)
        pytest.fail(f"scripts/stack.sh start failed:\n{started.stderr[-4000:]}")
    generated = stack.run("env", timeout=30).stdout
    for line in generated.splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value.strip("'")
    return stack


def verify_ledger(stack: Stack) -> str:
    """``shoprec privacy verify`` against the stack's ledger; asserts it passed, returns its output."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "shoprec"), "privacy", "verify"],
        env=dict(stack.env),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ledger verified:")
    return result.stdout
