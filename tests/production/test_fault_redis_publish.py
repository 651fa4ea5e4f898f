"""Fault: the Redis online store dies while ``publish_recommendations`` writes a new set.

A private ``redis-server`` (127.0.0.1, free port, append-only file in a tmp folder, so a restart keeps
what a production Redis keeps) is the Feast online store of the production profile; the Feast registry
is a fresh PostgreSQL database; MLflow (SQLite here: the fault is Redis) holds the champion.

A first set is published for every user of a 5,200-user snapshot.  The real ``publish_recommendations``
DAG then publishes the next day's set through ``dag.test()`` with the DAG's own retries (retry delay cut
to 1 s in the test).  Two test-only hooks observe and inject, production code paths unchanged:
``publish_online`` gets an ``on_chunk`` callback that SIGKILLs Redis after the first 5,000-row chunk
(the rest of the write then meets a dead server), and the retry's ``run_publish`` first records what
consumers see while Redis is down, restarts Redis on the same port and data folder and records what
consumers see then, before the real retry runs.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from helpers_settings import only_shoprec_env
from stack_client import free_port, require_services

from tasks.config import Settings, get_settings

pytestmark = [pytest.mark.production, pytest.mark.integration]

DAGS = Path(__file__).resolve().parents[2] / "dags"
DAY_1, DAY_2 = dt.date(2026, 9, 10), dt.date(2026, 9, 11)
T_1, T_2 = (dt.datetime.combine(d + dt.timedelta(days=1), dt.time(), dt.UTC) for d in (DAY_1, DAY_2))
N_USERS, N_ITEMS, DIM = 5200, 30, 8
CHUNK = 5000  # run_publish's default chunk: the kill lands between the first and the second chunk


class RedisServer:
    """One ``redis-server`` process with AOF persistence in ``folder``; stopped by its pid."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        import redis

        self.folder.mkdir(parents=True, exist_ok=True)
        command = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.folder)]
        command += ["--appendonly", "yes", "--save", "", "--daemonize", "no"]
        with (self.folder / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                if redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping():
                    return
            except redis.exceptions.RedisError:
                pass
            if not self.running or time.monotonic() > deadline:
                raise RuntimeError(
                    f"redis-server on port {self.port} did not come up: {self.folder / 'redis.log'}"
                )
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL, as a crashed or OOM-killed server: no shutdown, no final AOF rewrite."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.running:
            assert self.process is not None
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


def _require_redis_server() -> None:
    require_services()
    if shutil.which("redis-server") is None:
        reason = "redis-server is not installed (the test starts and kills its own)"
        if os.environ.get("SHOPREC_REQUIRE_SERVICES") == "1":
            pytest.fail(reason + " (SHOPREC_REQUIRE_SERVICES=1 makes it mandatory)")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def registry_database() -> Iterator[str]:
    """A fresh PostgreSQL database for the Feast registry; dropped after."""
    import psycopg2

    name = f"shoprec_fault_redis_{secrets.token_hex(4)}"
    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


# --- the shop: catalog and two daily user snapshots -------------------------------------------------
def _items() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return pd.DataFrame(
        {
            "item_id": [f"I{i:03d}" for i in range(N_ITEMS)],
            "event_timestamp": pd.Timestamp("2026-09-01", tz="UTC"),
            "title": [f"item {i}" for i in range(N_ITEMS)],
            "category": [f"c{i % 3}" for i in range(N_ITEMS)],
            "price": 1.0 + np.arange(N_ITEMS, dtype=float),
            "first_seen": pd.Timestamp("2026-09-01", tz="UTC"),
            "embedding": list(vectors),
        }
    )


def _users(day: dt.date, shift: int) -> pd.DataFrame:
    from tasks.features import USER_FEATURES_SCHEMA

    counts = {c: 1 for c in USER_FEATURES_SCHEMA.names if c.endswith(("_7d", "_30d"))}
    counts.update(spend_30d=10.0, avg_basket_value_30d=5.0)
    rows = []
    for u in range(N_USERS):
        bought = [f"I{(u + shift + j) % N_ITEMS:03d}" for j in range(2)]
        rows.append(
            {
                "user_id": f"u_{u:032x}",
                "event_timestamp": pd.Timestamp(
                    dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC)
                ),
                **counts,
                "days_since_last_purchase": 3.0,
                "top_categories": ["c0"],
                "recent_items": [f"I{(u * 3 + shift + j) % N_ITEMS:03d}" for j in range(3)],
                "purchased_items": bought,
                "purchased_counts": [1, 2],
            }
        )
    return pd.DataFrame(rows)


def _register_champion(settings: Settings) -> str:
    import torch

    from tasks.catalog import BlendWeights, build_item_catalog
    from tasks.model import Recommender, build_model
    from tasks.registry import CHAMPION, client, log_training

    items = _items()
    catalog = build_item_catalog(items, items[["item_id", "embedding"]])
    torch.manual_seed(0)
    recommender = Recommender(
        build_model(catalog, dim=8, hidden=16),
        catalog,
        weights=BlendWeights(repeat=1.0, popularity=0.5),
        popularity=np.arange(N_ITEMS, dtype=float)[::-1].copy(),
        history_length=20,
    )
    model = log_training(settings, recommender, run_key="fault-redis", params={}, metrics={}, report={})
    client(settings).set_registered_model_alias(settings.registered_model_name, CHAMPION, model.version)
    return model.version


# --- reading what consumers read ----------------------------------------------------------------------
COLUMNS = ("item_ids", "scores", "reasons", "publish_id")


def _served(settings: Settings, user_ids: list[str]) -> dict[str, list[Any]]:
    """``recommendations_v1`` for ``user_ids`` through the Feast SDK, as consumers read it."""
    from tasks.feast_store import get_store
    from tasks.publishing import SERVICE_NAME_DEFAULT

    store = get_store(settings)
    service = store.get_feature_service(SERVICE_NAME_DEFAULT, allow_cache=False)
    response = store.get_online_features(features=service, entity_rows=[{"user_id": u} for u in user_ids])
    data = response.to_dict()
    return {c: [list(v) if isinstance(v, list) else v for v in data[c]] for c in COLUMNS}


def _offline(settings: Settings, publish_id: str) -> pd.DataFrame:
    from tasks.publishing import offline_path, offline_root, read_offline_copy

    return read_offline_copy(offline_path(offline_root(settings), publish_id))


def _as_served(offline: pd.DataFrame) -> dict[str, list[Any]]:
    return {c: [list(v) if not isinstance(v, str) else v for v in offline[c]] for c in COLUMNS}


def _outcome(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:  # the outcome under test is the exception itself
        return exc


@dataclass
class Drill:
    settings: Settings
    redis_port: int
    first: str  # publish id of the first set
    second: str  # publish id of the second set
    user_ids: list[str]
    run_state: str = ""
    try_number: int = 0
    attempts: int = 0
    written_before_kill: int | None = None
    publish_error: BaseException | None = None
    consumer_while_down: Any = None
    served_after_restart: dict[str, list[Any]] = field(default_factory=dict)
    live_after_restart: tuple[str | None, str | None] = (None, None)
    target_slot_after_restart: dict[str, list[Any]] = field(default_factory=dict)
    served_after_retry: dict[str, list[Any]] = field(default_factory=dict)
    service_tags: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def drill(
    airflow_home: Path, registry_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Drill]:
    _require_redis_server()
    root = tmp_path_factory.mktemp("fault-redis")
    server = RedisServer(root / "redis")
    server.start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            yield _run_drill(mp, root, server, registry_database)
    finally:
        server.stop()


def _run_drill(mp: pytest.MonkeyPatch, root: Path, server: RedisServer, registry_url: str) -> Drill:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from tasks import publishing
    from tasks.consumers import get_recommendations
    from tasks.feast_store import get_store
    from tasks.features import (
        ITEM_FEATURES_SCHEMA,
        USER_FEATURES_SCHEMA,
        item_features_path,
        user_features_dir,
        write_table,
    )
    from tasks.orchestration import run_dag

    home = root / "shoprec"
    env = {
        "SHOPREC_HOME": str(home),
        "SHOPREC_PROFILE": "production",
        "SHOPREC_REDIS_URL": f"redis://127.0.0.1:{server.port}/0",
        "SHOPREC_POSTGRES_URL": registry_url,
        "SHOPREC_LEDGER_URL": f"sqlite:///{home / 'privacy' / 'ledger.db'}",
        "SHOPREC_MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
        "SHOPREC_TOP_K": "10",
    }
    only_shoprec_env(mp, env)
    settings = get_settings()
    assert get_store(settings).config.online_store.type == "redis"
    settings.ensure_dirs()
    write_table(_items(), ITEM_FEATURES_SCHEMA, item_features_path(settings))
    for day, shift in ((DAY_1, 0), (DAY_2, 7)):
        write_table(_users(day, shift), USER_FEATURES_SCHEMA, user_features_dir(settings) / f"{day}.parquet")
    version = _register_champion(settings)

    first = publishing.run_publish(settings, T_1)
    assert (first.rows_written, first.superseded) == (N_USERS + 1, False)
    result = Drill(
        settings=settings,
        redis_port=server.port,
        first=first.publish_id,
        second=publishing.publish_id_for(version, T_2),
        user_ids=_offline(settings, first.publish_id)["user_id"].tolist(),
    )
    target = next(s for s in publishing.SLOTS if s != first.slot)

    real_publish_online, real_run_publish = publishing.publish_online, publishing.run_publish

    def publish_online(store: Any, rows: pd.DataFrame, **kwargs: Any) -> Any:
        if result.attempts > 1:
            return real_publish_online(store, rows, **kwargs)

        def kill_after_first_chunk(written: int) -> None:
            if server.running:
                result.written_before_kill = written
                server.kill()

        try:
            return real_publish_online(store, rows, **{**kwargs, "on_chunk": kill_after_first_chunk})
        except Exception as exc:
            result.publish_error = exc
            raise

    def run_publish(*args: Any, **kwargs: Any) -> Any:
        result.attempts += 1
        if result.attempts > 1 and not server.running:  # Airflow's retry; Redis is still down
            result.consumer_while_down = _outcome(lambda: get_recommendations(settings, result.user_ids[0]))
            server.start()  # same port, same data folder
            result.served_after_restart = _served(settings, result.user_ids)
            store = get_store(settings)
            result.live_after_restart = publishing.live_slot(store)
            result.target_slot_after_restart = publishing.read_slot(store, target, result.user_ids)
        return real_run_publish(*args, **kwargs)

    mp.setattr(publishing, "publish_online", publish_online)
    mp.setattr(publishing, "run_publish", run_publish)
    dag = DagBag(dag_folder=str(DAGS / "publish_recommendations.py")).get_dag("publish_recommendations")
    task = dag.get_task("score_and_publish")
    assert task.retries == 2
    task.retry_delay = dt.timedelta(seconds=1)  # the DAG's 1 min would only make the test wait
    run = run_dag(dag, run_conf={"days": [DAY_2.isoformat()]})
    result.run_state = run.state
    mp.setattr(publishing, "publish_online", real_publish_online)
    mp.setattr(publishing, "run_publish", real_run_publish)

    with create_session() as session:
        ti = session.scalars(
            select(TaskInstance).where(
                TaskInstance.dag_id == "publish_recommendations", TaskInstance.run_id == run.run_id
            )
        ).one()
        result.try_number = int(ti.try_number)
    result.served_after_retry = _served(settings, result.user_ids)
    store = get_store(settings)
    result.service_tags = dict(
        store.get_feature_service(publishing.SERVICE_NAME_DEFAULT, allow_cache=False).tags
    )
    return result


def test_the_interrupted_publish_fails_with_a_clear_redis_error(drill: Drill) -> None:
    import redis

    assert drill.written_before_kill == CHUNK  # Redis died with the new slot part-written
    assert isinstance(drill.publish_error, redis.exceptions.ConnectionError)
    assert f"127.0.0.1:{drill.redis_port}" in str(drill.publish_error)
    assert "Connection refused" in str(drill.publish_error)


def test_airflow_retries_the_task_and_the_run_succeeds(drill: Drill) -> None:
    assert (drill.run_state, drill.attempts, drill.try_number) == ("success", 2, 2)


def test_consumers_get_an_error_not_partial_data_while_redis_is_down(drill: Drill) -> None:
    import redis

    assert isinstance(drill.consumer_while_down, redis.exceptions.ConnectionError)
    assert f"127.0.0.1:{drill.redis_port}" in str(drill.consumer_while_down)


def test_after_the_restart_consumers_read_the_first_set_complete(drill: Drill) -> None:
    assert drill.live_after_restart[1] == drill.first
    assert drill.served_after_restart == _as_served(_offline(drill.settings, drill.first))


def test_the_half_written_set_survived_the_restart_unseen(drill: Drill) -> None:
    """The part-written slot is in Redis after the restart (AOF), yet consumers read only the first set."""
    ids = drill.target_slot_after_restart["publish_id"]
    assert ids.count(drill.second) == CHUNK
    assert ids.count(None) == len(ids) - CHUNK
    assert set(drill.served_after_restart["publish_id"]) == {drill.first}


def test_after_the_retry_consumers_read_the_second_set_complete(drill: Drill) -> None:
    offline = _offline(drill.settings, drill.second)
    assert drill.served_after_retry == _as_served(offline)
    assert (
        drill.served_after_retry["item_ids"] != drill.served_after_restart["item_ids"]
    )  # two different sets
    assert (drill.service_tags["publish_id"], drill.service_tags["rows"]) == (drill.second, str(len(offline)))
