"""Fault test: PostgreSQL restarts between tasks while the production stack runs the pipeline.

The test starts its own PostgreSQL cluster (``initdb`` in a temporary folder, run as the ``postgres``
OS user, trust auth, 127.0.0.1 on a free port, stopped in a finaliser by ``pg_ctl stop`` on its data
folder) and points the whole native stack at it: Airflow's metadata DB (scheduler, api-server,
dag-processor, triggerer, Celery result backend), the MLflow server's backend store, the Feast SQL
registry and the privacy ledger.

The chain of the production e2e runs through the scheduler and the Celery workers (``ingest_events``
for the shop's last day, then ``build_features`` and ``train_recommender`` through asset scheduling).
The training task runs in the Airflow pool ``gpu``; with the pool's slots at 0 (an operator holding
the GPU queue) each ``train_recommender`` run stops after ``check_training_due``, PostgreSQL is
restarted (``pg_ctl restart -m fast``: every pooled connection of every service goes stale), and the
slot is given back.  Two runs: the first restart comes after the features (Feast registry written, no
ledger yet), the second after the first training (ledger rows, one model version).

Asserted: every run succeeds, each task at its first try; the Feast registry's rows and the online
feature values read through a FeatureStore created before the restarts are unchanged; the ledger rows
written before the second restart are all still there, each run holds exactly one committed charge per
purpose, and the ledger verifies; exactly one model version is registered per run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from stack_client import REPO_ROOT, Stack, free_port, require_services, start_stack, verify_ledger
from test_production_e2e import _prepare_history, _stack_settings

from tasks.config import Settings

pytestmark = [pytest.mark.production, pytest.mark.integration]

RUN_TIMEOUT_S = 600
DAGS = ("ingest_events", "build_features", "train_recommender")
LEDGER_TABLES = ("privacy_budgets", "privacy_charges", "privacy_charge_events")


class PrivateCluster:
    """A PostgreSQL cluster of this test: its own data folder, port and postmaster."""

    def __init__(self) -> None:
        binaries = {name: shutil.which(name) for name in ("initdb", "pg_ctl", "runuser")}
        missing = [name for name, path in binaries.items() if path is None]
        if missing:
            reason = f"PostgreSQL server binaries not found: {missing}"
            if os.environ.get("SHOPREC_REQUIRE_SERVICES") == "1":
                pytest.fail(reason + " (SHOPREC_REQUIRE_SERVICES=1 makes them mandatory)")
            pytest.skip(reason)
        self.root = Path(tempfile.mkdtemp(prefix="shoprec-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.log = str(self.root / "server.log")
        shutil.chown(self.root, "postgres", "postgres")

    def _as_postgres(self, *command: str, timeout: float = 120) -> None:
        # Output goes to a file, not a pipe: a postmaster started by pg_ctl inherits it and keeps it open.
        with (self.root / "pg_ctl.out").open("w+") as output:
            result = subprocess.run(
                ["runuser", "-u", "postgres", "--", *command],
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
                check=False,
            )
            output.seek(0)
            assert result.returncode == 0, f"{command[0]} failed:\n{output.read()}"

    def start(self) -> None:
        self._as_postgres("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        # fsync off: a fast shutdown writes everything anyway; only an OS crash would lose data.
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c max_connections=200"
        self._as_postgres("pg_ctl", "-D", str(self.data), "-l", self.log, "-o", options, "-w", "start")

    def restart(self) -> float:
        """``pg_ctl restart -m fast`` (the postmaster of this data folder); seconds it took."""
        before, started = self.postmaster_pid(), time.monotonic()
        self._as_postgres("pg_ctl", "-D", str(self.data), "-l", self.log, "-m", "fast", "-w", "restart")
        assert self.postmaster_pid() != before, "the postmaster did not restart"
        return time.monotonic() - started

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().splitlines()[0])

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._as_postgres("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}"


def _rows(dsn: str, tables: tuple[str, ...] | None = None) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of ``tables`` (default: every table of the public schema), ordered."""
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        if tables is None:
            cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            tables = tuple(sorted(name for (name,) in cursor.fetchall()))
        rows = {}
        for table in tables:
            cursor.execute(f'SELECT * FROM "{table}" ORDER BY 1')  # table names come from the catalog
            rows[table] = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in cursor]
    connection.close()
    return rows


def _set_gpu_slots(stack: Stack, slots: int) -> None:
    status, body = stack.request(
        "PATCH",
        "/api/v2/pools/gpu?update_mask=slots",
        {"pool": "gpu", "slots": slots, "include_deferred": False},
    )
    assert status == 200, (status, body)
    assert body["slots"] == slots, body


def _held_at_the_pool(stack: Stack, run_id: str, deadline: float) -> None:
    """Wait until check_training_due succeeded and train_model waits for a ``gpu`` pool slot."""
    while True:
        tis = stack.task_instances("train_recommender", run_id)
        states = (tis["check_training_due"]["state"], tis["train_model"]["state"])
        if states == ("success", "scheduled"):
            return
        assert states[1] in (None, "scheduled"), states
        assert time.monotonic() < deadline, f"train_recommender not held at the pool: {states}"
        time.sleep(2)


def _wait_train_run(stack: Stack, deadline: float, known: int, shop_end: dt.datetime) -> str:
    token = stack.token()
    while len(runs := stack.dag_runs("train_recommender", token)) <= known:
        upstream = [r["state"] for dag_id in DAGS[:2] for r in stack.dag_runs(dag_id, token, shop_end)]
        assert "failed" not in upstream, f"an upstream run failed: {upstream}"
        assert time.monotonic() < deadline, "train_recommender was never triggered"
        time.sleep(2)
    return str(runs[-1]["dag_run_id"])


def _online(store: Any, users: list[str]) -> dict[str, list[Any]]:
    from tasks.feast_store import RECOMMENDER_SERVICE

    store.refresh_registry()  # reads the registry from PostgreSQL now (not the 60 s cache)
    service = store.get_feature_service(RECOMMENDER_SERVICE, allow_cache=False)
    return dict(
        store.get_online_features(features=service, entity_rows=[{"user_id": u} for u in users]).to_dict()
    )


@pytest.fixture(scope="module")
def restarted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    require_services()
    started = time.monotonic()
    cluster = PrivateCluster()
    stack: Stack | None = None
    try:
        cluster.start()
        stack = start_stack(
            tmp_path_factory.mktemp("shoprec-fault-pg"),
            REPO_ROOT / "dags",
            {
                "SHOPREC_STACK_PG": cluster.url,
                "SHOPREC_MIN_TRAINING_INTERVAL_HOURS": "0",
                "SHOPREC_TRAIN_STEPS": "8",
                "SHOPREC_TRAINING_EPSILON": "4.0",
                "SHOPREC_PROMOTION_TOLERANCE": "0.0",
            },
        )
        settings = _stack_settings(stack)
        # the services reach the ledger on the private cluster as its append-only app role
        name = stack.env["SHOPREC_STACK_NAME"]
        assert (
            settings.resolved_ledger_url
            == cluster.url.replace("postgres@", f"{name}_ledger_app@") + f"/{name}_ledger"
        )
        days = _prepare_history(settings)
        print(f"fault/pg: cluster + stack + history took {time.monotonic() - started:.0f} s")
        last = dt.datetime.combine(days[-1], dt.time(), dt.UTC)
        body = {
            "logical_date": last.isoformat(),
            "data_interval_start": last.isoformat(),
            "data_interval_end": (last + dt.timedelta(days=1)).isoformat(),
        }
        stack.wait_parsed(list(DAGS))
        _set_gpu_slots(stack, 0)
        status, run = stack.request("POST", "/api/v2/dags/ingest_events/dagRuns", body)
        assert status == 200, run
        stack.unpause(list(DAGS))
        deadline = time.monotonic() + RUN_TIMEOUT_S
        pg = cluster.url.replace("+psycopg2", "") + "/" + stack.env["SHOPREC_STACK_NAME"]

        # restart 1: after the features, between check_training_due and train_model of run 1
        first = _wait_train_run(stack, deadline, 0, last)
        _held_at_the_pool(stack, first, deadline)
        from tasks.feast_store import get_store

        store = get_store(settings)
        users = sorted(_prepared_users(settings))[:5]
        online_before = _online(store, users)
        registry_before = _rows(pg + "_feast")
        took = [cluster.restart()]
        _set_gpu_slots(stack, 1)
        first_run = stack.wait_for_run("train_recommender", first, deadline - time.monotonic())
        ledger_after_first = _rows(pg + "_ledger", LEDGER_TABLES)

        # restart 2: after the first training, between the tasks of a second (manual) run
        _set_gpu_slots(stack, 0)
        status, run = stack.request("POST", "/api/v2/dags/train_recommender/dagRuns", {"logical_date": None})
        assert status == 200, run
        second = str(run["dag_run_id"])
        _held_at_the_pool(stack, second, deadline)
        took.append(cluster.restart())
        _set_gpu_slots(stack, 1)
        second_run = stack.wait_for_run("train_recommender", second, deadline - time.monotonic())
        print(
            f"fault/pg: restarts took {', '.join(f'{t:.1f}' for t in took)} s; "
            f"total {time.monotonic() - started:.0f} s"
        )
        yield {
            "stack": stack,
            "settings": settings,
            "pg": pg,
            "runs": {first: first_run, second: second_run},
            "store": store,
            "users": users,
            "online_before": online_before,
            "registry_before": registry_before,
            "ledger_after_first": ledger_after_first,
            "last": last,
        }
    finally:
        if stack is not None:
            stack.run("purge", timeout=120)
        cluster.stop()


def _prepared_users(settings: Settings) -> set[str]:
    import pyarrow.parquet as pq

    latest = sorted((settings.features_dir / "user_features").glob("*.parquet"))[-1]
    return {str(u) for u in pq.read_table(latest, columns=["user_id"]).column("user_id").to_pylist()}


def test_every_run_succeeded_at_the_first_try(restarted: dict[str, Any]) -> None:
    stack: Stack = restarted["stack"]
    token = stack.token()
    for dag_id in DAGS[:2]:
        assert [r["state"] for r in stack.dag_runs(dag_id, token, restarted["last"])] == ["success"], dag_id
    assert [run["state"] for run in restarted["runs"].values()] == ["success", "success"]
    for run_id in restarted["runs"]:
        tis = stack.task_instances("train_recommender", run_id)
        tries = {task_id: (ti["state"], ti["try_number"]) for task_id, ti in tis.items()}
        assert tries["train_model"] == ("success", 1), tries
        assert tries["register_and_gate"] == ("success", 1), tries
        assert {state for state, _ in tries.values()} <= {"success", "skipped"}, tries


def test_feast_registry_and_online_features_unchanged(restarted: dict[str, Any]) -> None:
    assert _rows(restarted["pg"] + "_feast") == restarted["registry_before"]
    after = _online(restarted["store"], restarted["users"])
    assert after == restarted["online_before"]
    assert any(v is not None for v in after["recent_items"])


def test_ledger_kept_every_row_and_charged_each_run_once(restarted: dict[str, Any]) -> None:
    from tasks.privacy import Ledger

    settings: Settings = restarted["settings"]
    now = _rows(restarted["pg"] + "_ledger", LEDGER_TABLES)
    for table, rows in restarted["ledger_after_first"].items():
        assert rows, table
        assert now[table][: len(rows)] == rows, table
    ledger = Ledger(settings.resolved_ledger_url)
    try:
        charges = ledger.charges(settings.privacy_scope)
    finally:
        ledger.close()
    per_run = {
        run_id: sorted(c.purpose for c in charges if c.run_id == run_id) for run_id in restarted["runs"]
    }
    assert len({tuple(p) for p in per_run.values()}) == 1, per_run
    for purposes in per_run.values():
        assert len(purposes) == len(set(purposes)) == 2, per_run
    assert len(charges) == 4
    assert {str(c.status) for c in charges} == {"committed"}


def test_ledger_verifies(restarted: dict[str, Any]) -> None:
    output = verify_ledger(restarted["stack"])
    assert " 4 charges recomputed" in output, output


def test_one_model_version_per_run(restarted: dict[str, Any]) -> None:
    settings: Settings = restarted["settings"]
    server = restarted["stack"].env["SHOPREC_MLFLOW_SERVER_URL"]
    found = {}
    for run_id in restarted["runs"]:
        query = urllib.parse.urlencode(
            {"filter": f"name = '{settings.registered_model_name}' and tag.shoprec.run_key = '{run_id}'"}
        )
        with urllib.request.urlopen(
            f"{server}/api/2.0/mlflow/model-versions/search?{query}", timeout=30
        ) as reply:
            found[run_id] = [v["version"] for v in json.loads(reply.read()).get("model_versions", [])]
    assert sorted(v for versions in found.values() for v in versions) == ["1", "2"], found
