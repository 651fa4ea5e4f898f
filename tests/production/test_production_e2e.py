"""The whole chain on the production profile, through the native stack (scripts/stack.sh).

One REST call (``/api/v2``, token from the configured password file) triggers ``ingest_events`` for
the last day of a small synthetic shop (300 users, 150 items, 35 days, personal taste stronger than popularity:
``helpers_shops.CHAIN_SHOP``, the chain tests' shop); the scheduler then runs
``build_features``, ``train_recommender``, ``publish_recommendations`` and ``privacy_audit`` through
asset-driven scheduling on the Celery workers.  The days before the last are put into the lake and the
feature snapshots directly (ingest and features have their own DAG tests; 34 more ingest runs would
cost minutes on two cores), with the stack's own pseudonymisation key.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers_settings import only_shoprec_env
from helpers_shops import CHAIN_SHOP
from stack_client import REPO_ROOT, Stack, require_services, start_stack, verify_ledger

from tasks.config import Settings, get_settings

pytestmark = [pytest.mark.production, pytest.mark.integration]

CHAIN = ("ingest_events", "build_features", "train_recommender", "publish_recommendations", "privacy_audit")
CHAIN_TIMEOUT_S = 900
DAYS = 35


def _stack_settings(stack: Stack, home: str | None = None) -> Settings:
    """The settings of the stack's services (``home``: another SHOPREC_HOME, e.g. the gpu worker's)."""
    env = {k: v for k, v in stack.env.items() if k.startswith("SHOPREC_")}
    with pytest.MonkeyPatch.context() as mp:
        only_shoprec_env(mp, {**env, "SHOPREC_HOME": home} if home else env)
        return get_settings()


def _gpu_worker_settings(stack: Stack) -> Settings:
    """The settings the ``gpu`` worker runs with: its own SHOPREC_HOME (SHOPREC_STACK_GPU_HOME)."""
    return _stack_settings(stack, stack.env["SHOPREC_STACK_GPU_HOME"])


def _prepare_history(settings: Settings) -> list[dt.date]:
    """Land the shop; put every day but the last into the lake and the feature snapshots."""
    from tasks.contracts import EVENTS_SCHEMA, ITEMS_SCHEMA, landing_files, list_partitions, partition_dir
    from tasks.features import compute_features
    from tasks.ingest import pseudonymise_ids
    from tasks.pseudonymize import load_key
    from tasks.sources.synthetic import generate

    settings.ensure_dirs()
    # The shop's last day is yesterday: the run the REST call triggers is the one the scheduler would
    # create for the latest daily interval once ingest_events is unpaused (it then skips creating it).
    start = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=DAYS)
    generate(dataclasses.replace(CHAIN_SHOP, days=DAYS, start=start), settings.landing_dir)
    days = list_partitions(settings.landing_dir)
    key = load_key(settings)
    items = []
    for day in days[:-1]:
        target = partition_dir(settings.events_dir, day)
        target.mkdir(parents=True, exist_ok=True)
        for path in landing_files(partition_dir(settings.landing_dir, day), "events"):
            frame = pq.read_table(path).to_pandas()
            pseudonymise_ids(frame, key)  # user, event and session ids, as ingest does
            table = pa.Table.from_pandas(frame, preserve_index=False).cast(EVENTS_SCHEMA)
            pq.write_table(table, target / "part-0.parquet")
        items += [pq.read_table(p) for p in landing_files(partition_dir(settings.landing_dir, day), "items")]
    catalog = pa.concat_tables(items).to_pandas().drop_duplicates("item_id")
    pq.write_table(
        pa.Table.from_pandas(catalog, schema=ITEMS_SCHEMA, preserve_index=False),
        settings.items_dir / "items.parquet",
    )
    compute_features(settings, days[:-1])
    return days


def _wait_for_chain(stack: Stack, last: dt.datetime, timeout: float) -> dict[str, list[dict[str, Any]]]:
    deadline = time.monotonic() + timeout
    while True:
        token = stack.token()
        runs = {dag_id: stack.dag_runs(dag_id, token, shop_end=last) for dag_id in CHAIN}
        audits = [r for r in runs["privacy_audit"] if r["run_type"] == "asset_triggered"]
        finished = bool(audits) and all(
            r and r[-1]["state"] in ("success", "failed") for r in [*runs.values(), audits]
        )
        failed = any(run["state"] == "failed" for r in runs.values() for run in r)
        upstream_failed = any(run["state"] == "failed" for dag_id in CHAIN[:2] for run in runs[dag_id])
        trained = runs["train_recommender"]
        train_done = bool(trained) and trained[-1]["state"] in ("success", "failed")
        # A failed publish does not end the wait before training has finished (its tests need it).
        if finished or upstream_failed or (train_done and (failed or _gate_rejected(stack, runs))):
            return runs
        if time.monotonic() > deadline:
            return runs
        time.sleep(5)


def _gate_rejected(stack: Stack, runs: dict[str, list[dict[str, Any]]]) -> bool:
    """Training finished without a new champion: no asset-driven publish or audit will follow."""
    trained = runs["train_recommender"]
    if not trained or trained[-1]["state"] != "success":
        return False
    tis = stack.task_instances("train_recommender", trained[-1]["dag_run_id"])
    return tis.get("announce_champion", {}).get("state") == "skipped"


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    require_services()
    started = time.monotonic()
    stack = start_stack(
        tmp_path_factory.mktemp("shoprec-e2e"),
        REPO_ROOT / "dags",
        {
            "SHOPREC_MIN_TRAINING_INTERVAL_HOURS": "0",
            "SHOPREC_TRAIN_STEPS": "20",
            # A small shop: a larger per-training epsilon (user level, RDP, ledger-calibrated, within
            # the 10.0 cap) keeps the DP noise low enough for the model to beat popularity at the gate.
            "SHOPREC_TRAINING_EPSILON": "8.0",
            "SHOPREC_PROMOTION_TOLERANCE": "0.0",
            "SHOPREC_TOP_K": "20",
        },
    )
    try:
        settings = _stack_settings(stack)
        days = _prepare_history(settings)
        last = dt.datetime.combine(days[-1], dt.time(), dt.UTC)
        body = {
            "logical_date": last.isoformat(),
            "data_interval_start": last.isoformat(),
            "data_interval_end": (last + dt.timedelta(days=1)).isoformat(),
        }
        stack.wait_parsed(list(CHAIN))
        status, run = stack.request("POST", "/api/v2/dags/ingest_events/dagRuns", body)
        assert status == 200, run
        stack.unpause(list(CHAIN))
        runs = _wait_for_chain(stack, last, CHAIN_TIMEOUT_S)
        print(f"e2e: stack + history + chain took {time.monotonic() - started:.0f} s")
        yield {"stack": stack, "settings": settings, "runs": runs, "days": days}
    finally:
        stack.run("purge", timeout=120)


def test_every_dag_run_of_the_chain_succeeded(chain: dict[str, Any]) -> None:
    states = {dag_id: [(r["run_type"], r["state"]) for r in runs] for dag_id, runs in chain["runs"].items()}
    assert states["ingest_events"] == [("manual", "success")]
    for dag_id in CHAIN[1:]:
        assert states[dag_id], states
        assert {state for _, state in states[dag_id]} == {"success"}, states
        # privacy_audit also runs monthly: unpausing it may add its latest scheduled run.
        allowed = {"asset_triggered", "scheduled"} if dag_id == "privacy_audit" else {"asset_triggered"}
        assert {run_type for run_type, _ in states[dag_id]} <= allowed, states
        assert "asset_triggered" in {run_type for run_type, _ in states[dag_id]}, states


def test_training_ran_on_the_gpu_worker(chain: dict[str, Any]) -> None:
    stack: Stack = chain["stack"]
    run = chain["runs"]["train_recommender"][-1]
    tis = stack.task_instances("train_recommender", run["dag_run_id"])
    train = tis["train_model"]
    assert (train["state"], train["queue"], train["pool"]) == ("success", "gpu", "gpu")
    assert train["hostname"].endswith("-gpu")
    others = {tid: ti["hostname"] for tid, ti in tis.items() if tid != "train_model" and ti["hostname"]}
    assert others, tis
    assert {hostname.rsplit("-", 1)[1] for hostname in others.values()} == {"default"}


def test_training_ran_in_the_gpu_workers_own_home_sharing_only_the_artifact_store(
    chain: dict[str, Any],
) -> None:
    """As on separate machines: the gpu worker's SHOPREC_HOME is another folder, without the lake or
    Feast's files; it trained there (its working copies) from the pin the default worker put in the
    shared artifact store, and the default home holds the pin's copy but no trained model."""
    from tasks.artifacts import run_key_path

    stack: Stack = chain["stack"]
    default_home, gpu_home = Path(stack.env["SHOPREC_HOME"]), Path(stack.env["SHOPREC_STACK_GPU_HOME"])
    assert gpu_home.resolve() != default_home.resolve()
    gpu = _gpu_worker_settings(stack)
    default: Settings = chain["settings"]
    assert gpu.resolved_artifact_store_url == default.resolved_artifact_store_url
    assert not gpu.resolved_artifact_store_url.startswith(gpu_home.as_uri())
    lake_and_feast = ("landing_dir", "lake_dir", "items_dir", "features_dir", "feast_dir")
    assert [name for name in lake_and_feast if getattr(gpu, name).exists()] == []
    assert default.events_dir.is_dir()

    run = chain["runs"]["train_recommender"][-1]
    tis = stack.task_instances("train_recommender", run["dag_run_id"])
    assert tis["pin_training_data"]["hostname"].endswith("-default")
    folder = run_key_path(run["dag_run_id"])
    assert (gpu.models_dir / folder / "recommender").is_dir()  # train_model's working copy
    assert not (default.models_dir / folder / "recommender").exists()
    assert (default.models_dir / folder / "data").is_dir()  # pin_training_data's


def test_champion_model_is_in_the_mlflow_server(chain: dict[str, Any]) -> None:
    settings: Settings = chain["settings"]
    url = (
        f"{chain['stack'].env['SHOPREC_MLFLOW_SERVER_URL']}/api/2.0/mlflow/registered-models/alias"
        f"?name={settings.registered_model_name}&alias=champion"
    )
    with urllib.request.urlopen(url, timeout=30) as response:
        version = json.loads(response.read())["model_version"]
    assert version["name"] == settings.registered_model_name
    assert int(version["version"]) >= 1


def test_recommendations_are_read_from_redis_through_the_feast_server(chain: dict[str, Any]) -> None:
    settings: Settings = chain["settings"]
    published = sorted((settings.home / "recommendations").glob("publish_id=*/recommendations.parquet"))
    assert published, "no offline copy of the publish"
    offline = pq.read_table(published[-1]).to_pandas()
    users = [u for u in offline["user_id"].head(3) if not str(u).startswith("popular:")] or list(
        offline["user_id"].head(1)
    )
    request = urllib.request.Request(
        chain["stack"].env["SHOPREC_STACK_FEAST_URL"] + "/get-online-features",
        data=json.dumps({"feature_service": "recommendations_v1", "entities": {"user_id": users}}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    # The feature server refreshes its cached registry every 60 s: the service switched by the publish
    # becomes visible within that (bounded wait; a 404 after it fails the test).
    deadline = time.monotonic() + 150
    while True:
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = json.loads(response.read())
            break
        except urllib.error.HTTPError as error:
            if error.code != 404 or time.monotonic() > deadline:
                raise
            time.sleep(5)
    names = answer["metadata"]["feature_names"]
    item_ids = answer["results"][names.index("item_ids")]["values"]
    expected = [list(offline.loc[offline["user_id"] == u, "item_ids"].iloc[0]) for u in users]
    assert item_ids == expected
    assert settings.redis_url.startswith("redis://")


def test_ledger_in_postgres_verifies(chain: dict[str, Any]) -> None:
    settings: Settings = chain["settings"]
    assert settings.resolved_ledger_url.startswith("postgresql")
    output = verify_ledger(chain["stack"])
    assert " 0 charges" not in output
