"""Attack: a feature consumer reads raw, non-private popularity counts from the Feast online store.

``item_popularity`` counts many users' events without a DP mechanism; whoever reads the online store
(the Python SDK, ``feast serve``) could difference its daily counts to learn one user's purchases.
It must stay offline only: not in the online store after a full materialisation, and refused when asked.
"""

from __future__ import annotations

import datetime as dt
import sqlite3

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.config import Settings
from tasks.contracts import EVENTS_SCHEMA, ITEMS_SCHEMA, partition_dir
from tasks.embeddings import tiny_random_encoder
from tasks.feast_store import EMBEDDING_DIM, ITEM_POPULARITY, apply_definitions, get_store, materialize
from tasks.features import compute_features, item_popularity_dir, snapshot_time

pytestmark = pytest.mark.integration

DAYS = [dt.date(2024, 3, 1), dt.date(2024, 3, 2)]
ITEMS = ("i_mug", "i_pot")


def _write_lake(settings: Settings) -> None:
    rows = [
        {
            "event_id": f"e_{n:032x}",
            "user_id": f"u_{n % 3:032x}",
            "item_id": ITEMS[n % 2],
            "event_type": "purchase",
            "event_timestamp": pd.Timestamp(DAYS[n % 2]).tz_localize("UTC") + pd.Timedelta(hours=n),
            "quantity": 1,
            "unit_price": 5.0,
            "session_id": f"s_{n:032x}",
            "country": "DE",
        }
        for n in range(8)
    ]
    events = pd.DataFrame(rows)
    for day, part in events.groupby(events["event_timestamp"].dt.date):
        folder = partition_dir(settings.events_dir, day)
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(
            pa.Table.from_pandas(part, schema=EVENTS_SCHEMA, preserve_index=False), folder / "part-0.parquet"
        )
    items = pd.DataFrame(
        {
            "item_id": list(ITEMS),
            "title": ["white mug", "tea pot"],
            "category": "kitchen",
            "price": 5.0,
            "first_seen": pd.Timestamp("2024-01-01", tz="UTC"),
        }
    )
    settings.items_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.Table.from_pandas(items, schema=ITEMS_SCHEMA, preserve_index=False),
        settings.items_dir / "items.parquet",
    )


def test_item_popularity_is_not_readable_from_the_online_store(shoprec_home: Settings) -> None:
    _write_lake(shoprec_home)
    compute_features(shoprec_home, DAYS, encoder=tiny_random_encoder(dim=EMBEDDING_DIM))
    offline = pd.read_parquet(item_popularity_dir(shoprec_home) / f"{DAYS[-1]}.parquet")
    assert offline["purchases_30d"].sum() == 8  # the raw counts exist offline, for operators
    apply_definitions(shoprec_home)
    materialize(shoprec_home, snapshot_time(DAYS[0]), snapshot_time(DAYS[-1]))  # every view it loads

    with sqlite3.connect(shoprec_home.feast_online_path) as online:
        tables = [name for (name,) in online.execute("select name from sqlite_master where type = 'table'")]
    assert any(t.endswith("user_features") for t in tables)  # the store was filled
    assert [t for t in tables if ITEM_POPULARITY in t] == []

    store = get_store(shoprec_home)
    assert store.get_feature_view(ITEM_POPULARITY).online is False
    # the SDK read a consumer would make finds nothing to read (embedded SQLite online store)
    with pytest.raises(sqlite3.OperationalError, match=rf"no such table: \w*{ITEM_POPULARITY}"):
        store.get_online_features(
            features=[f"{ITEM_POPULARITY}:purchases_30d"], entity_rows=[{"item_id": i} for i in ITEMS]
        )


def test_materialising_item_popularity_is_refused(shoprec_home: Settings) -> None:
    start, end = snapshot_time(DAYS[0]), snapshot_time(DAYS[-1])
    with pytest.raises(ValueError, match="item_popularity is offline only"):
        materialize(shoprec_home, start, end, views=[ITEM_POPULARITY])
