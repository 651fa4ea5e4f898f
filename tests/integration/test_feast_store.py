"""Feast on the embedded profile: point-in-time training sets, online reads and item search.

Real components: the lake written in the contract, tasks.features with the packaged MiniLM encoder,
Feast 0.67 (SQL registry on SQLite, DuckDB offline store, SQLite online store). One Feast repository is
built per module (apply + materialize take ~20 s on this machine); each test reads it.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.config import Settings, get_settings
from tasks.contracts import EVENTS_SCHEMA, ITEMS_SCHEMA, partition_dir
from tasks.embeddings import load_pretrained_encoder
from tasks.feast_store import (
    apply_definitions,
    get_online_user_features,
    get_training_frame,
    item_vectors,
    materialize,
    search_items,
)
from tasks.features import compute_features, snapshot_time

pytestmark = pytest.mark.integration

ITEMS = {
    "i_mug": ("white ceramic coffee mug", "kitchen", 8.0),
    "i_pot": ("enamel tea pot", "kitchen", 25.0),
    "i_scarf": ("red wool knitted scarf", "clothing", 15.0),
    "i_lamp": ("brass desk lamp", "home", 40.0),
}
OLD = dt.date(2024, 1, 20)  # the only day of the user who then goes quiet for > 30 days
DAYS = [dt.date(2024, 3, 1), dt.date(2024, 3, 2), dt.date(2024, 3, 3)]


def _event(n: int, user: str, item: str, etype: str, ts: str, price: float = 10.0) -> dict:
    return {
        "event_id": f"e{n}",
        "user_id": user,
        "item_id": item,
        "event_type": etype,
        "event_timestamp": pd.Timestamp(ts, tz="UTC"),
        "quantity": 1,
        "unit_price": price,
        "session_id": f"s-{user}-{ts[:10]}",
        "country": "DE",
    }


def write_lake(settings: Settings) -> None:
    events = pd.DataFrame(
        [
            _event(1, "u_alice", "i_mug", "view", "2024-03-01 09:00"),
            _event(2, "u_alice", "i_mug", "purchase", "2024-03-02 10:00", price=8.0),
            _event(3, "u_alice", "i_scarf", "view", "2024-03-03 11:00"),
            _event(4, "u_bob", "i_lamp", "view", "2024-03-03 12:00"),
            _event(5, "u_quiet", "i_pot", "purchase", "2024-01-20 08:00", price=25.0),
        ]
    )
    for day, part in events.groupby(events["event_timestamp"].dt.date):
        folder = partition_dir(settings.events_dir, day)
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(part, schema=EVENTS_SCHEMA, preserve_index=False)
        pq.write_table(table, folder / "part-0.parquet")
    items = pd.DataFrame(
        {
            "item_id": list(ITEMS),
            "title": [v[0] for v in ITEMS.values()],
            "category": [v[1] for v in ITEMS.values()],
            "price": [v[2] for v in ITEMS.values()],
            "first_seen": pd.Timestamp("2024-01-01", tz="UTC"),
        }
    )
    settings.items_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.Table.from_pandas(items, schema=ITEMS_SCHEMA, preserve_index=False),
        settings.items_dir / "items.parquet",
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A lake, its features for OLD and DAYS, applied and materialised into a fresh Feast repo."""
    settings = get_settings(home=tmp_path_factory.mktemp("feast") / "shoprec")
    write_lake(settings)
    days = [OLD, *DAYS]
    compute_features(settings, days, encoder=load_pretrained_encoder(device="cpu"))
    apply_definitions(settings)
    materialize(settings, snapshot_time(days[0]), snapshot_time(days[-1]))
    return settings


def _entity_rows() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "row": [0, 1, 2, 3],
            "user_id": ["u_alice", "u_alice", "u_quiet", "u_nobody"],
            "event_timestamp": pd.to_datetime(
                ["2024-03-02 12:00", "2024-03-03 00:00", "2024-03-05 00:00", "2024-03-05 00:00"], utc=True
            ),
        }
    )


def test_training_frame_keeps_every_entity_row(store: Settings) -> None:
    frame = get_training_frame(store, _entity_rows())
    assert sorted(frame["row"]) == [0, 1, 2, 3]


def test_training_frame_ignores_a_snapshot_written_after_the_entity_timestamp(store: Settings) -> None:
    """Alice bought the mug on 2024-03-02 10:00; its snapshot is stamped 2024-03-03 00:00, so a row at
    2024-03-02 12:00 must see the snapshot of 03-01 (no purchase), and a row at 03-03 00:00 the new one."""
    frame = get_training_frame(store, _entity_rows()).set_index("row")
    assert frame.loc[0, "purchases_30d"] == 0
    assert frame.loc[0, "days_since_last_purchase"] == pytest.approx(-1.0)
    assert list(frame.loc[0, "purchased_items"]) == []
    assert frame.loc[1, "purchases_30d"] == 1
    assert list(frame.loc[1, "purchased_items"]) == ["i_mug"]
    assert list(frame.loc[1, "recent_items"]) == ["i_mug"]


def test_training_frame_returns_the_last_row_of_a_user_inactive_for_30_days(store: Settings) -> None:
    frame = get_training_frame(store, _entity_rows()).set_index("row")
    assert list(frame.loc[2, "purchased_items"]) == ["i_pot"]
    assert list(frame.loc[2, "purchased_counts"]) == [1]
    assert frame.loc[2, "spend_30d"] == pytest.approx(25.0)


def test_training_frame_gives_nulls_for_an_unknown_user(store: Settings) -> None:
    frame = get_training_frame(store, _entity_rows()).set_index("row")
    assert pd.isna(frame.loc[3, "views_30d"])


def test_online_features_hold_the_latest_snapshot(store: Settings) -> None:
    online = get_online_user_features(store, ["u_alice", "u_bob", "u_nobody"])
    assert online["user_id"] == ["u_alice", "u_bob", "u_nobody"]
    assert online["views_7d"] == [2, 1, None]
    assert online["recent_items"][0] == ["i_scarf", "i_mug"]
    assert online["purchased_items"][0] == ["i_mug"]
    assert online["spend_30d"][0] == pytest.approx(8.0)


def test_item_vectors_are_the_384_d_unit_title_embeddings(store: Settings) -> None:
    ids, matrix = item_vectors(store)
    assert sorted(ids) == sorted(ITEMS)
    assert matrix.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)


def test_search_ranks_the_semantically_closest_item_first(store: Settings) -> None:
    query = load_pretrained_encoder(device="cpu").encode(["porcelain cup for coffee"])[0]
    hits = search_items(store, query, k=2)
    assert hits[0][0] == "i_mug"
    assert len(hits) == 2
    assert hits[0][1] >= hits[1][1]


def test_apply_and_materialize_again_change_nothing(store: Settings) -> None:
    before = get_online_user_features(store, ["u_alice"])
    apply_definitions(store)
    materialize(store, snapshot_time(DAYS[0]), snapshot_time(DAYS[-1]))
    assert get_online_user_features(store, ["u_alice"]) == before
