"""build_features through real Airflow (``dag.test()``), then reads through the Feast SDK and ``feast serve``.

One DAG run per module on a small contract lake (the one of test_feast_store.py); each test checks one
consequence of it.  The Feast feature server is started on 127.0.0.1 and stopped by its process group.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers_settings import only_shoprec_env
from test_feast_store import write_lake

from tasks.config import Settings, get_settings
from tasks.feast_store import USER_FIELDS, get_online_user_features, write_repo_yaml
from tasks.features import user_features_dir

pytestmark = pytest.mark.integration

DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "build_features.py"
DAYS = ["2024-01-20", "2024-03-01", "2024-03-02", "2024-03-03"]
USERS = ["u_alice", "u_bob"]


def _run(dag: Any) -> tuple[str, dict[str, str]]:
    run = dag.test(run_conf={"days": DAYS})
    return str(run.state), {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


@pytest.fixture(scope="module")
def built(
    airflow_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, Any, tuple]]:
    from airflow.dag_processing.dagbag import DagBag

    with pytest.MonkeyPatch.context() as mp:
        only_shoprec_env(mp, {"SHOPREC_HOME": str(tmp_path_factory.mktemp("build_features") / "shoprec")})
        mp.setenv("HF_HUB_OFFLINE", "1")
        settings = get_settings()
        write_lake(settings)
        bag = DagBag(dag_folder=str(DAG_FILE))
        assert bag.import_errors == {}
        dag = bag.get_dag("build_features")
        yield settings, dag, _run(dag)


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as plain Python values, for exact comparison."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _offline_latest(settings: Settings, user: str) -> dict[str, Any]:
    """The user's row of the last day's snapshot file (the offline store), feature by feature."""
    frame = pd.read_parquet(user_features_dir(settings) / f"{DAYS[-1]}.parquet").set_index("user_id")
    return {f: _plain(frame.loc[user, f]) for f in USER_FIELDS}


def test_dag_run_succeeds_with_every_task(built: tuple[Settings, Any, tuple]) -> None:
    _, _, (state, states) = built
    assert state == "success"
    assert states == {
        "resolve_days": "success",
        "compute_features": "success",
        "apply_feast_definitions": "success",
        "materialize_features": "success",
    }


def test_dag_emits_the_features_asset_with_its_partitions(built: tuple[Settings, Any, tuple]) -> None:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        event = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == "features")
            .order_by(AssetEvent.id.desc())
        ).first()
        extra = dict(event.extra)
    assert extra["partitions"] == DAYS
    assert extra["end"] == "2024-03-04T00:00:00+00:00"


def test_online_features_from_the_sdk_equal_the_offline_snapshot(built: tuple[Settings, Any, tuple]) -> None:
    settings = built[0]
    online = get_online_user_features(settings, USERS)
    for n, user in enumerate(USERS):
        expected = _offline_latest(settings, user)
        assert {f: _plain(online[f][n]) for f in USER_FIELDS} == expected


@pytest.fixture
def feature_server(built: tuple[Settings, Any, tuple]) -> Iterator[str]:
    from tasks.servers import feast_server, local_server

    with local_server(feast_server(write_repo_yaml(built[0])), name="feast serve", timeout_s=90) as url:
        yield url


def test_feast_serve_over_http_returns_the_offline_values(
    built: tuple[Settings, Any, tuple], feature_server: str
) -> None:
    body = json.dumps({"feature_service": "recommender_v1", "entities": {"user_id": USERS}}).encode()
    request = urllib.request.Request(
        f"{feature_server}/get-online-features", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        payload = json.loads(response.read())
    names = payload["metadata"]["feature_names"]
    columns = {name: result["values"] for name, result in zip(names, payload["results"], strict=True)}
    assert columns["user_id"] == USERS
    for n, user in enumerate(USERS):
        expected = _offline_latest(built[0], user)
        assert {f: columns[f][n] for f in USER_FIELDS} == expected


def test_rerun_writes_the_same_rows(built: tuple[Settings, Any, tuple]) -> None:
    settings, dag, _ = built
    files = sorted(user_features_dir(settings).glob("*.parquet"))
    before = {f.name: pd.read_parquet(f) for f in files}
    online_before = get_online_user_features(settings, USERS)
    state, _ = _run(dag)
    assert state == "success"
    assert sorted(f.name for f in user_features_dir(settings).glob("*.parquet")) == sorted(before)
    for name, frame in before.items():
        pd.testing.assert_frame_equal(pd.read_parquet(user_features_dir(settings) / name), frame)
    assert get_online_user_features(settings, USERS) == online_before
