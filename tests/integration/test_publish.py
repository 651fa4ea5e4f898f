"""Publishing against a real Feast store (SQLite online store, SQL registry) with a small real model.

The champion here is a freshly built :class:`tasks.model.Recommender` (random weights, real towers)
handed to :func:`run_publish`; MLflow loading is the registry's own tested path.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tasks.catalog import BlendWeights, build_item_catalog
from tasks.code_version import code_version
from tasks.config import Profile, Settings
from tasks.features import (
    ITEM_FEATURES_SCHEMA,
    USER_FEATURES_SCHEMA,
    item_features_path,
    user_features_dir,
    write_table,
)
from tasks.model import Recommender, build_model
from tasks.privacy.accounting import DiscreteGaussianCountMechanism
from tasks.publishing import SERVICE_NAME_DEFAULT, offline_path, offline_root, read_offline_copy, run_publish

pytestmark = pytest.mark.integration

DAY = dt.date(2026, 10, 10)
T = dt.datetime(2026, 10, 11, tzinfo=dt.UTC)
N_ITEMS, N_USERS, DIM = 30, 12, 8


def _items(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return pd.DataFrame(
        {
            "item_id": [f"I{i:03d}" for i in range(n)],
            "event_timestamp": pd.Timestamp("2026-09-01", tz="UTC"),
            "title": [f"item {i}" for i in range(n)],
            "category": [f"c{i % 3}" for i in range(n)],
            "price": 1.0 + np.arange(n, dtype=float),
            "first_seen": pd.Timestamp("2026-09-01", tz="UTC"),
            "embedding": list(vectors),
        }
    )


def _users() -> pd.DataFrame:
    rows = []
    for u in range(N_USERS):
        bought = [f"I{(u + j) % N_ITEMS:03d}" for j in range(2)] if u % 4 else []
        recent = [f"I{(u * 3 + j) % N_ITEMS:03d}" for j in range(3)] if u != 0 else []
        rows.append(
            {
                "user_id": f"u_{u:032x}",
                "event_timestamp": pd.Timestamp(T),
                **{
                    c: 1
                    for c in USER_FEATURES_SCHEMA.names
                    if c.endswith(("_7d", "_30d")) and "spend" not in c and "basket" not in c
                },
                "spend_30d": 10.0,
                "avg_basket_value_30d": 5.0,
                "days_since_last_purchase": 3.0 if bought else -1.0,
                "top_categories": ["c0"],
                "recent_items": recent,
                "purchased_items": bought,
                "purchased_counts": [1] * len(bought),
            }
        )
    return pd.DataFrame(rows)


def _world(settings: Settings, n_items_now: int = N_ITEMS) -> tuple[Recommender, str]:
    settings.ensure_dirs()
    items = _items(N_ITEMS)
    write_table(_items(n_items_now), ITEM_FEATURES_SCHEMA, item_features_path(settings))
    write_table(_users(), USER_FEATURES_SCHEMA, user_features_dir(settings) / f"{DAY.isoformat()}.parquet")
    catalog = build_item_catalog(items, items[["item_id", "embedding"]])
    import torch

    torch.manual_seed(0)
    model = build_model(catalog, dim=8, hidden=16)
    popularity = np.arange(N_ITEMS, dtype=float)[::-1].copy()
    return Recommender(
        model,
        catalog,
        weights=BlendWeights(repeat=1.0, popularity=0.5),
        popularity=popularity,
        history_length=20,
    ), "1"


def _served(settings: Settings, user_ids: list[str]) -> dict[str, list]:
    from tasks.feast_store import get_store

    store = get_store(settings)
    service = store.get_feature_service(SERVICE_NAME_DEFAULT, allow_cache=False)
    return dict(
        store.get_online_features(features=service, entity_rows=[{"user_id": u} for u in user_ids]).to_dict()
    )


def test_served_recommendations_equal_the_offline_copy(shoprec_home: Settings) -> None:
    manifest = run_publish(shoprec_home, T, recommender=_world(shoprec_home))
    offline = read_offline_copy(offline_path(offline_root(shoprec_home), manifest.publish_id))
    served = _served(shoprec_home, offline["user_id"].tolist())
    assert served["item_ids"] == [list(v) for v in offline["item_ids"]]
    assert served["scores"] == [list(v) for v in offline["scores"]]
    assert served["reasons"] == [list(v) for v in offline["reasons"]]
    assert set(served["publish_id"]) == {"1@20261011T000000Z"}


def test_rerun_of_the_same_publish_writes_nothing_and_keeps_the_same_bytes(shoprec_home: Settings) -> None:
    world = _world(shoprec_home)
    first = run_publish(shoprec_home, T, recommender=world)
    path = offline_path(offline_root(shoprec_home), first.publish_id)
    before = path.read_bytes()
    second = run_publish(shoprec_home, T, recommender=world)
    assert (second.already_live, second.rows_written, second.slot) == (True, 0, first.slot)
    assert path.read_bytes() == before


def test_a_publish_failing_midway_leaves_the_previous_set_served(shoprec_home: Settings) -> None:
    world = _world(shoprec_home)
    first = run_publish(shoprec_home, T, recommender=world)
    before = _served(shoprec_home, [f"u_{u:032x}" for u in range(N_USERS)])

    def die(written: int) -> None:
        raise RuntimeError(f"killed on purpose after {written} rows")

    later = T + dt.timedelta(days=1)
    (user_features_dir(shoprec_home) / f"{(DAY + dt.timedelta(days=1)).isoformat()}.parquet").write_bytes(
        (user_features_dir(shoprec_home) / f"{DAY.isoformat()}.parquet").read_bytes()
    )
    with pytest.raises(RuntimeError, match="killed on purpose after 5 rows"):
        run_publish(shoprec_home, later, recommender=(world[0], "2"), chunk_rows=5, on_chunk=die)
    after = _served(shoprec_home, [f"u_{u:032x}" for u in range(N_USERS)])
    assert after == before
    assert set(after["publish_id"]) == {first.publish_id}


def test_cold_start_user_gets_global_dp_popularity(shoprec_home: Settings) -> None:
    world = _world(shoprec_home)
    run_publish(shoprec_home, T, recommender=world)
    served = _served(shoprec_home, [f"u_{0:032x}", "popular:global"])
    assert served["item_ids"][0] == served["item_ids"][1]
    assert set(served["reasons"][0]) == {"popular:global"}
    assert served["item_ids"][0][0] == "I000"  # the highest DP popularity in this world


def test_items_that_left_the_catalog_are_not_recommended_and_new_items_are(shoprec_home: Settings) -> None:
    world = _world(shoprec_home, n_items_now=N_ITEMS + 10)  # 10 new items the champion never saw
    items = _items(N_ITEMS + 10).iloc[5:]  # I000..I004 left the catalog
    write_table(items, ITEM_FEATURES_SCHEMA, item_features_path(shoprec_home))
    manifest = run_publish(shoprec_home, T, recommender=world)
    offline = read_offline_copy(offline_path(offline_root(shoprec_home), manifest.publish_id))
    recommended = {i for v in offline["item_ids"] for i in v}
    assert manifest.n_new_items == 10
    assert recommended.isdisjoint({f"I{i:03d}" for i in range(5)})
    assert recommended & {f"I{i:03d}" for i in range(N_ITEMS, N_ITEMS + 10)}


def test_recommend_pseudonymises_a_raw_customer_id_before_the_lookup(shoprec_home: Settings) -> None:
    from tasks.consumers import get_recommendations
    from tasks.pseudonymize import load_key, pseudonymize

    world = _world(shoprec_home)
    path = user_features_dir(shoprec_home) / f"{DAY.isoformat()}.parquet"
    users = _users()
    users.loc[5, "user_id"] = pseudonymize("C-17", load_key(shoprec_home))
    write_table(users, USER_FEATURES_SCHEMA, path)
    manifest = run_publish(shoprec_home, T, recommender=world)
    offline = read_offline_copy(offline_path(offline_root(shoprec_home), manifest.publish_id)).set_index(
        "user_id"
    )
    recs = get_recommendations(shoprec_home, "C-17")
    assert recs.fallback is False
    assert recs.item_ids == list(offline.loc[recs.user_id, "item_ids"])
    assert recs.titles[0] == f"item {int(recs.item_ids[0][1:])}"


def test_recommend_for_an_unknown_user_falls_back_to_popular_items(shoprec_home: Settings) -> None:
    from tasks.consumers import get_recommendations

    run_publish(shoprec_home, T, recommender=_world(shoprec_home))
    recs = get_recommendations(shoprec_home, "never-seen-customer", k=3)
    assert (recs.fallback, len(recs.item_ids), set(recs.reasons)) == (True, 3, {"popular:global"})


def query_feature_server(settings: Settings, users: list[str]) -> dict[str, list[Any]]:
    """Start ``feast serve`` on 127.0.0.1 (own process group), read ``recommendations_v1`` for ``users``
    over HTTP, stop it; returns feature name -> one value per user."""
    import json
    import urllib.request

    from tasks.feast_store import write_repo_yaml
    from tasks.servers import feast_server, local_server

    body = json.dumps({"feature_service": "recommendations_v1", "entities": {"user_id": users}}).encode()
    with local_server(feast_server(write_repo_yaml(settings)), name="feast serve", timeout_s=90) as url:
        request = urllib.request.Request(
            f"{url}/get-online-features", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = json.loads(response.read())
    names = payload["metadata"]["feature_names"]
    return {name: result["values"] for name, result in zip(names, payload["results"], strict=True)}


def test_feast_feature_server_serves_the_offline_copy(shoprec_home: Settings) -> None:
    manifest = run_publish(shoprec_home, T, recommender=_world(shoprec_home))
    offline = read_offline_copy(offline_path(offline_root(shoprec_home), manifest.publish_id))
    values = query_feature_server(shoprec_home, offline["user_id"].iloc[3:5].tolist())
    assert values["item_ids"] == [list(v) for v in offline["item_ids"].iloc[3:5]]
    assert values["reasons"] == [list(v) for v in offline["reasons"].iloc[3:5]]
    assert values["publish_id"] == [manifest.publish_id] * 2


def _lake_events(settings: Settings) -> None:
    """200 FR buyers of I007 and 200 GB buyers of I003 on DAY; user 0 (no history) last seen in FR."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.contracts import EVENTS_SCHEMA, partition_dir

    rows = []
    for n in range(400):
        country, item = ("FR", "I007") if n < 200 else ("GB", "I003")
        rows.append((f"e{n}", f"u_buyer{n:05d}", item, "purchase", country))
    rows.append(("e-u0", f"u_{0:032x}", "GONE", "view", "FR"))
    stamp = pd.Timestamp(f"{DAY.isoformat()} 12:00", tz="UTC")
    frame = pd.DataFrame(rows, columns=["event_id", "user_id", "item_id", "event_type", "country"])
    frame = frame.assign(event_timestamp=stamp, quantity=1, unit_price=2.0, session_id="s")
    folder = partition_dir(settings.events_dir, DAY)
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame[list(EVENTS_SCHEMA.names)], schema=EVENTS_SCHEMA, preserve_index=False)
    pq.write_table(table, folder / "events.parquet")


def test_cold_start_user_gets_dp_popularity_of_their_country_charged_once(shoprec_home: Settings) -> None:
    from tasks.privacy import Ledger

    settings = shoprec_home.model_copy(update={"publish_countries": ("FR", "GB")})
    world = _world(settings)
    _lake_events(settings)
    run_publish(settings, T, recommender=world)
    run_publish(settings, T + dt.timedelta(hours=1), recommender=world)  # same champion: no new release
    served = _served(settings, [f"u_{0:032x}", "popular:FR", "popular:GB"])
    assert served["item_ids"][0] == served["item_ids"][1]
    assert set(served["reasons"][0]) == {"popular:FR"}
    assert (served["item_ids"][1][0], served["item_ids"][2][0]) == ("I007", "I003")
    ledger = Ledger(settings.resolved_ledger_url)
    try:
        charges = [
            c for c in ledger.charges(settings.privacy_scope) if c.purpose == "publish_popularity_by_country"
        ]
    finally:
        ledger.close()
    assert [(str(c.status), c.accountant, c.model_version) for c in charges] == [
        ("committed", "opacus-rdp", "1")
    ]
    assert charges[0].code_version == code_version()
    assert charges[0].code_version.startswith("git:")  # the tests run from a checkout
    assert charges[0].run_id.startswith("publish:1:")  # publish:<version>:<attempt>
    assert isinstance(charges[0].mechanism, DiscreteGaussianCountMechanism)


def _release_country_popularity(settings: Settings) -> dict[str, np.ndarray]:
    from tasks.features import read_events
    from tasks.publishing import country_popularity

    return country_popularity(
        settings,
        read_events(settings),
        [f"I{i:03d}" for i in range(N_ITEMS)],
        scoring_time=T,
        model_version="1",
    )


def _country_charges(settings: Settings) -> list[Any]:
    from tasks.privacy import Ledger

    ledger = Ledger(settings.resolved_ledger_url)
    try:
        return [
            c for c in ledger.charges(settings.privacy_scope) if c.purpose == "publish_popularity_by_country"
        ]
    finally:
        ledger.close()


def test_country_popularity_released_again_after_its_cache_is_lost_gets_a_new_charge(
    shoprec_home: Settings,
) -> None:
    """Finding of issue 14: a missing cache file was released again under the old committed charge."""
    from tasks.privacy import Ledger

    settings = shoprec_home.model_copy(update={"publish_countries": ("FR", "GB")})
    settings.ensure_dirs()
    _lake_events(settings)
    first = _release_country_popularity(settings)
    assert _release_country_popularity(settings)["FR"].tolist() == first["FR"].tolist()  # cached: no charge
    (cache,) = (offline_root(settings) / "popularity").glob("*.parquet")
    ledger = Ledger(settings.resolved_ledger_url)
    try:
        spent_once = ledger.spent(settings.privacy_scope, T).epsilon
    finally:
        ledger.close()
    assert len(_country_charges(settings)) == 1

    cache.unlink()
    second = _release_country_popularity(settings)
    charges = _country_charges(settings)
    assert len(charges) == 2
    assert charges[0].id != charges[1].id
    assert charges[0].run_id != charges[1].run_id
    assert [str(c.status) for c in charges] == ["committed", "committed"]
    assert all(c.artifact_uri == cache.as_uri() for c in charges)
    assert not all(np.array_equal(first[c], second[c]) for c in ("FR", "GB"))  # a new release: new noise
    ledger = Ledger(settings.resolved_ledger_url)
    try:
        report = ledger.spent(settings.privacy_scope, T)
    finally:
        ledger.close()
    assert set(report.charge_ids) == {c.id for c in charges}
    assert report.epsilon > spent_once  # the second release is paid for


def test_country_popularity_that_fails_before_its_commit_gives_its_charge_back(
    shoprec_home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tasks.privacy.popularity

    settings = shoprec_home.model_copy(update={"publish_countries": ("FR", "GB")})
    settings.ensure_dirs()
    _lake_events(settings)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("disk gone")

    monkeypatch.setattr(tasks.privacy.popularity, "release_dp_popularity", broken)
    with pytest.raises(OSError, match="disk gone"):
        _release_country_popularity(settings)
    (charge,) = _country_charges(settings)
    assert str(charge.status) == "released"
    assert not (offline_root(settings) / "popularity").exists()
    monkeypatch.undo()
    _release_country_popularity(settings)
    assert [str(c.status) for c in _country_charges(settings)] == ["released", "committed"]


@pytest.fixture
def redis_settings(shoprec_home: Settings) -> Any:
    """Production profile on its own empty Redis DB index (flushed at the end), SQLite registry."""
    import redis

    for db in range(15, 0, -1):
        client = redis.Redis(host="127.0.0.1", port=6379, db=db)
        if client.dbsize() == 0 and client.set("shoprec-test-publish-lock", "1", nx=True):
            break
    else:
        pytest.fail("no empty Redis DB index on 127.0.0.1:6379")
    try:
        yield shoprec_home.model_copy(
            update={
                "profile": Profile.PRODUCTION,
                "redis_url": f"redis://127.0.0.1:6379/{db}",
                "feast_registry_url": f"sqlite:///{shoprec_home.home / 'feast' / 'registry.db'}",
            }
        )
    finally:
        client.flushdb()
        client.close()


def test_on_redis_a_retry_after_a_failed_publish_serves_only_the_new_rows(redis_settings: Settings) -> None:
    """Redis skips writes not newer than the stored timestamp: the emptied slot makes a retry land."""
    from tasks.feast_store import get_store

    assert get_store(redis_settings).config.online_store.type == "redis"
    world = _world(redis_settings)
    first = run_publish(redis_settings, T, recommender=world)
    later = T + dt.timedelta(days=1)
    day_file = user_features_dir(redis_settings) / f"{DAY.isoformat()}.parquet"
    (day_file.parent / f"{(DAY + dt.timedelta(days=1)).isoformat()}.parquet").write_bytes(
        day_file.read_bytes()
    )

    def die(written: int) -> None:
        raise RuntimeError("killed on purpose")

    with pytest.raises(RuntimeError, match="killed on purpose"):
        run_publish(redis_settings, later, recommender=(world[0], "2"), chunk_rows=5, on_chunk=die)
    users = [f"u_{u:032x}" for u in range(N_USERS)]
    assert set(_served(redis_settings, users)["publish_id"]) == {first.publish_id}
    import torch

    torch.manual_seed(1)
    other = Recommender(
        build_model(world[0].catalog, dim=8, hidden=16),
        world[0].catalog,
        weights=world[0].weights,
        popularity=world[0].popularity,
        history_length=20,
    )
    retry = run_publish(redis_settings, later, recommender=(other, "3"))
    offline = read_offline_copy(offline_path(offline_root(redis_settings), retry.publish_id))
    served = _served(redis_settings, offline["user_id"].tolist())
    assert set(served["publish_id"]) == {"3@20261012T000000Z"}
    assert served["item_ids"] == [list(v) for v in offline["item_ids"]]


def test_a_backfill_of_an_older_interval_does_not_replace_a_newer_live_set(shoprec_home: Settings) -> None:
    world = _world(shoprec_home)
    day_file = user_features_dir(shoprec_home) / f"{DAY.isoformat()}.parquet"
    (day_file.parent / f"{(DAY + dt.timedelta(days=1)).isoformat()}.parquet").write_bytes(
        day_file.read_bytes()
    )
    newer = run_publish(shoprec_home, T + dt.timedelta(days=1), recommender=world)
    older = run_publish(shoprec_home, T, recommender=(world[0], "2"))
    served = _served(shoprec_home, [f"u_{u:032x}" for u in range(N_USERS)])
    assert (older.superseded, older.rows_written) == (True, 0)
    assert set(served["publish_id"]) == {newer.publish_id}
    assert offline_path(offline_root(shoprec_home), older.publish_id).exists()


def test_published_lists_follow_the_models_blend_including_the_text_neighbour_term(
    shoprec_home: Settings,
) -> None:
    from dataclasses import replace

    from tasks.publishing import PublishRules

    plain, version = _world(shoprec_home)
    rec = Recommender(
        plain.model,
        plain.catalog,
        weights=replace(plain.weights, content=2.0),
        popularity=plain.popularity,
        history_length=plain.history_length,
    )
    rules = PublishRules(k=5, max_per_category=None)
    manifest = run_publish(shoprec_home, T, recommender=(rec, version), rules=rules)
    offline = read_offline_copy(offline_path(offline_root(shoprec_home), manifest.publish_id))
    users = _users().set_index("user_id")
    warm = users[users["recent_items"].map(len) > 0]
    expected = dict(zip(warm.index, (ids for ids, _ in rec.recommend(warm, k=5)), strict=True))
    published = dict(zip(offline["user_id"], offline["item_ids"], strict=True))
    assert {u: list(published[u]) for u in expected} == expected
    without = Recommender(
        plain.model, plain.catalog, weights=plain.weights, popularity=plain.popularity, history_length=20
    )
    assert [ids for ids, _ in without.recommend(warm, k=5)] != list(expected.values())
