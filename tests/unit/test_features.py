"""Unit tests of tasks.features on a hand-made lake (tiny frames, no Feast)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.config import Settings
from tasks.contracts import EVENTS_SCHEMA, ITEMS_SCHEMA, partition_dir
from tasks.embeddings import tiny_random_encoder
from tasks.features import (
    compute_features,
    item_features_path,
    item_popularity_at,
    snapshot_time,
    user_features_at,
    user_features_dir,
)

DAY = dt.date(2024, 3, 10)
AT = snapshot_time(DAY)  # 2024-03-11 00:00 UTC


def ev(
    user: str, item: str, etype: str, ts: str, qty: int = 1, price: float = 10.0, session: str = "s"
) -> dict:
    return {
        "event_id": f"{user}-{item}-{etype}-{ts}",
        "user_id": user,
        "item_id": item,
        "event_type": etype,
        "event_timestamp": pd.Timestamp(ts, tz="UTC"),
        "quantity": qty,
        "unit_price": price,
        "session_id": session,
        "country": "FR",
    }


def items_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": ["i1", "i2", "i3"],
            "title": ["red mug", "wool scarf", "tea pot"],
            "category": ["kitchen", "clothing", "kitchen"],
            "price": [10.0, 20.0, 30.0],
            "first_seen": pd.to_datetime(["2024-01-01"] * 3, utc=True),
        }
    )


def features_of(events: list[dict], user: str = "u1", history_length: int = 20) -> pd.Series:
    frame = user_features_at(pd.DataFrame(events), items_frame(), AT, history_length)
    return frame.set_index("user_id").loc[user]


def test_snapshot_timestamp_is_end_of_day() -> None:
    assert snapshot_time(DAY) == pd.Timestamp("2024-03-11 00:00", tz="UTC")


def test_event_at_snapshot_time_is_not_counted() -> None:
    row = features_of(
        [ev("u1", "i1", "view", "2024-03-10 23:59"), ev("u1", "i1", "view", "2024-03-11 00:00")]
    )
    assert row["views_7d"] == 1


def test_counts_split_7_and_30_day_windows() -> None:
    row = features_of(
        [
            ev("u1", "i1", "view", "2024-03-09"),
            ev("u1", "i1", "click", "2024-03-09"),
            ev("u1", "i2", "view", "2024-02-20"),
            ev("u1", "i2", "add_to_cart", "2024-02-20"),
        ]
    )
    assert (row["views_7d"], row["clicks_7d"], row["carts_7d"]) == (1, 1, 0)
    assert (row["views_30d"], row["clicks_30d"], row["carts_30d"]) == (2, 1, 1)


def test_user_inactive_for_30_days_gets_no_snapshot_row() -> None:
    frame = user_features_at(
        pd.DataFrame([ev("u1", "i1", "view", "2024-03-10"), ev("u2", "i1", "view", "2024-02-01")]),
        items_frame(),
        AT,
        20,
    )
    assert frame["user_id"].tolist() == ["u1"]


def test_spend_and_average_basket_value() -> None:
    row = features_of(
        [
            ev("u1", "i1", "purchase", "2024-03-01", qty=2, price=10.0, session="a"),
            ev("u1", "i2", "purchase", "2024-03-01", qty=1, price=20.0, session="a"),
            ev("u1", "i3", "purchase", "2024-03-05", qty=1, price=30.0, session="b"),
        ]
    )
    assert row["spend_30d"] == pytest.approx(70.0)
    assert row["avg_basket_value_30d"] == pytest.approx(35.0)
    assert row["purchases_30d"] == 3


def test_days_since_last_purchase_is_minus_one_when_never() -> None:
    assert features_of([ev("u1", "i1", "view", "2024-03-10")])["days_since_last_purchase"] == pytest.approx(
        -1.0
    )


def test_days_since_last_purchase_counts_whole_days() -> None:
    row = features_of([ev("u1", "i1", "purchase", "2024-03-07 12:00")])
    assert row["days_since_last_purchase"] == pytest.approx(3.0)


def test_recent_items_are_distinct_newest_first_and_capped() -> None:
    row = features_of(
        [
            ev("u1", "i1", "view", "2024-03-01"),
            ev("u1", "i2", "view", "2024-03-02"),
            ev("u1", "i1", "view", "2024-03-03"),
            ev("u1", "i3", "view", "2024-03-04"),
        ],
        history_length=2,
    )
    assert row["recent_items"] == ["i3", "i1"]


def test_top_categories_by_event_count() -> None:
    row = features_of(
        [
            ev("u1", "i1", "view", "2024-03-01"),
            ev("u1", "i3", "view", "2024-03-02"),
            ev("u1", "i2", "view", "2024-03-03"),
        ]
    )
    assert row["top_categories"] == ["kitchen", "clothing"]


def test_purchased_items_carry_all_time_counts_most_bought_first() -> None:
    row = features_of(
        [
            ev("u1", "i1", "purchase", "2023-06-01"),
            ev("u1", "i2", "purchase", "2024-03-01"),
            ev("u1", "i2", "purchase", "2024-03-02"),
            ev("u1", "i1", "view", "2024-03-10"),
        ]
    )
    assert row["purchased_items"] == ["i2", "i1"]
    assert row["purchased_counts"] == [2, 1]


def test_item_popularity_counts_users_and_events() -> None:
    frame = item_popularity_at(
        pd.DataFrame(
            [
                ev("u1", "i1", "view", "2024-03-10"),
                ev("u2", "i1", "view", "2024-03-01"),
                ev("u2", "i1", "purchase", "2024-03-01"),
                ev("u3", "i2", "view", "2024-03-11 01:00"),
            ]
        ),
        AT,
    ).set_index("item_id")
    assert frame.index.tolist() == ["i1"]
    assert (frame.loc["i1", "views_7d"], frame.loc["i1", "views_30d"]) == (1, 2)
    assert (frame.loc["i1", "purchases_30d"], frame.loc["i1", "users_30d"]) == (1, 2)


def _write_lake(settings: Settings, events: list[dict]) -> None:
    frame = pd.DataFrame(events)
    for day, part in frame.groupby(frame["event_timestamp"].dt.date):
        folder = partition_dir(settings.events_dir, day)
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(
            pa.Table.from_pandas(part, schema=EVENTS_SCHEMA, preserve_index=False), folder / "part-0.parquet"
        )
    settings.items_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.Table.from_pandas(items_frame(), schema=ITEMS_SCHEMA, preserve_index=False),
        settings.items_dir / "items.parquet",
    )


def test_compute_features_writes_one_snapshot_per_day_and_is_idempotent(shoprec_home: Settings) -> None:
    _write_lake(
        shoprec_home,
        [ev("u1", "i1", "view", "2024-03-09 10:00"), ev("u2", "i2", "purchase", "2024-03-10 10:00")],
    )
    encoder = tiny_random_encoder(dim=16)
    days = [dt.date(2024, 3, 9), dt.date(2024, 3, 10)]
    first = compute_features(shoprec_home, days, encoder=encoder)
    snapshot = pd.read_parquet(user_features_dir(shoprec_home) / "2024-03-10.parquet")
    second = compute_features(shoprec_home, days, encoder=encoder)
    assert (first.user_rows, first.popularity_rows, first.item_rows) == (3, 3, 3)
    assert (first.items_embedded, second.items_embedded) == (3, 0)
    pd.testing.assert_frame_equal(
        snapshot, pd.read_parquet(user_features_dir(shoprec_home) / "2024-03-10.parquet")
    )
    assert sorted(p.name for p in user_features_dir(shoprec_home).iterdir()) == [
        "2024-03-09.parquet",
        "2024-03-10.parquet",
    ]
    assert len(pd.read_parquet(item_features_path(shoprec_home))["embedding"][0]) == 16


def test_compute_features_rejects_empty_days(shoprec_home: Settings, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no days"):
        compute_features(shoprec_home, [])
