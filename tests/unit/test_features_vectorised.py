"""The vectorised user state (:func:`tasks.features.user_state_at`, issue 19) computes exactly the frame
the groupby-apply it replaced computed (tests/helpers_features_reference.py): same rows, order,
dtypes and values, floats bit for bit, lists element for element.

Shops: a hand-made one with every tie the orderings break (timestamps, event ids, purchase counts and
last purchase times, category counts), a buyer of more than ``MAX_PURCHASED_ITEMS`` distinct items,
events on both edges of the 7- and 30-day windows and at the snapshot time, users quiet for longer
than 30 days, missing prices, sessions and categories, unknown items; random shops with coarse
timestamps (many ties); and a small synthetic shop from the project's generator.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.contracts import EVENT_TYPES
from tasks.features import MAX_PURCHASED_ITEMS, user_features_at, user_state_at
from tests.helpers_features_reference import reference_user_features_at, reference_user_state_at

AT = pd.Timestamp("2024-03-11", tz="UTC")


def _row(eid: str, user: str, item: str, etype: str, ts: pd.Timestamp, **kw: object) -> dict[str, object]:
    return {
        "event_id": eid,
        "user_id": user,
        "item_id": item,
        "event_type": etype,
        "event_timestamp": ts,
        "quantity": kw.get("qty", 1),
        "unit_price": kw.get("price", 3.3),
        "session_id": kw.get("session", "s1"),
        "country": "FR",
    }


def _frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True).astype(
        "datetime64[us, UTC]"
    )
    return frame


def _items(n: int, missing_category_every: int = 7) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": [f"i{k:03d}" for k in range(n)],
            "title": [f"item {k}" for k in range(n)],
            "category": [None if k % missing_category_every == 0 else f"c{k % 5}" for k in range(n)],
            "price": [float(k) for k in range(n)],
            "first_seen": pd.to_datetime(["2023-01-01"] * n, utc=True),
        }
    )


def tricky_shop() -> pd.DataFrame:
    t = AT - pd.Timedelta(hours=5)
    rows = [
        # ties on timestamp; u1's e3 and e4 tie on timestamp AND event id (row order decides)
        _row("e1", "u1", "i001", "view", t),
        _row("e2", "u1", "i002", "view", t),
        _row("e3", "u1", "i003", "click", t),
        _row("e3", "u1", "i004", "click", t),
        _row("e0", "u1", "i001", "purchase", t - pd.Timedelta(days=1), qty=3, price=0.1, session="a"),
        _row("e9", "u1", "i002", "purchase", t - pd.Timedelta(days=1), qty=1, price=0.2, session="a"),
        _row("e8", "u1", "i003", "purchase", t - pd.Timedelta(days=2), qty=2, price=None, session=None),
        # window edges: exactly 7 and 30 days before, just inside, and at the snapshot time (excluded)
        _row("w1", "u2", "i005", "view", AT - pd.Timedelta(days=7)),
        _row("w2", "u2", "i005", "add_to_cart", AT - pd.Timedelta(days=7, microseconds=1)),
        _row("w3", "u2", "i006", "purchase", AT - pd.Timedelta(days=30), price=1.1),
        _row("w4", "u2", "i006", "purchase", AT - pd.Timedelta(days=30, microseconds=1), price=1.3),
        _row("w5", "u2", "i007", "view", AT),
        _row("w6", "u3", "i007", "view", AT),  # u3 only at the snapshot time: no row
        # quiet users: nothing in the last 30 days
        _row("q1", "u4", "i008", "purchase", AT - pd.Timedelta(days=45), session="x"),
        _row("q2", "u5", "i009", "view", AT - pd.Timedelta(days=400)),
        # an event type the counts ignore, an item not in the catalog
        _row("x1", "u2", "zz-unknown", "wishlist", t),
        _row("x2", "u6", "zz-unknown", "view", t),
    ]
    # the heavy buyer: 130 distinct items, counts and last times tied in groups, over 60 days
    rng = np.random.default_rng(11)
    for k in range(130):
        for j in range(int(rng.integers(1, 4))):
            day = int(rng.integers(0, 3)) * 20 + j
            rows.append(
                _row(
                    f"h{k:03d}-{j}",
                    "heavy",
                    f"i{k:03d}",
                    "purchase",
                    AT - pd.Timedelta(days=day + 1),
                    qty=int(rng.integers(1, 5)),
                    price=float(rng.choice([0.1, 0.7, 1.0 / 3.0])),
                    session=f"hs{day}",
                )
            )
    rows.append(_row("zz", "heavy", "i140", "view", t))
    return _frame(rows)


def random_shop(seed: int, n_users: int = 300, n_items: int = 150, n_events: int = 6_000) -> pd.DataFrame:
    """Random events on an hourly grid over 50 days (so timestamps tie often), some with a repeated id."""
    rng = np.random.default_rng(seed)
    hours = rng.integers(0, 50 * 24, n_events)
    ids = rng.integers(0, n_events // 2, n_events)  # about one event id in two repeats
    return _frame(
        [
            _row(
                f"e{ids[k]}",
                f"u{int(rng.integers(0, n_users))}",
                f"i{int(rng.integers(0, n_items)):03d}",
                str(rng.choice(EVENT_TYPES, p=[0.5, 0.2, 0.1, 0.2])),
                AT - pd.Timedelta(hours=int(hours[k])),
                qty=int(rng.integers(1, 6)),
                price=None if rng.random() < 0.05 else float(rng.random() * 10),
                session=None if rng.random() < 0.05 else f"s{int(rng.integers(0, 40))}",
            )
            for k in range(n_events)
        ]
    )


def _assert_same(new: pd.DataFrame, old: pd.DataFrame) -> None:
    assert len(new) > 0
    pd.testing.assert_frame_equal(new, old, check_exact=True)
    for column in ("recent_items", "purchased_items", "purchased_counts", "top_categories"):
        if column in old:
            assert [type(v) for v in new[column]] == [type(v) for v in old[column]]


@pytest.mark.parametrize("history_length", [1, 3, 20, 500])
def test_user_state_matches_the_reference_on_the_tricky_shop(history_length: int) -> None:
    events = tricky_shop()
    new = user_state_at(events, AT, history_length)
    _assert_same(new, reference_user_state_at(events, AT, history_length))
    assert {"u4", "u5"} <= set(new["user_id"])
    assert "u3" not in set(new["user_id"])
    heavy = new.set_index("user_id").loc["heavy"]
    assert len(heavy["purchased_items"]) == MAX_PURCHASED_ITEMS


def test_user_features_match_the_reference_on_the_tricky_shop() -> None:
    events = tricky_shop()
    new = user_features_at(events, _items(150), AT, 5)
    _assert_same(new, reference_user_features_at(events, _items(150), AT, 5))
    assert "u4" not in set(new["user_id"])  # quiet for more than 30 days


def test_user_state_of_named_users_and_at_an_event_time_matches_the_reference() -> None:
    events = tricky_shop()
    at = pd.Timestamp(events["event_timestamp"].iloc[0])  # an event's own time, as evaluation cuts
    only = ["heavy", "u2", "nobody"]
    _assert_same(user_state_at(events, at, 4, only=only), reference_user_state_at(events, at, 4, only=only))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_user_state_and_features_match_the_reference_on_random_shops(seed: int) -> None:
    events = random_shop(seed)
    at = AT - pd.Timedelta(days=seed * 5)
    _assert_same(user_state_at(events, at, 7), reference_user_state_at(events, at, 7))
    _assert_same(
        user_features_at(events, _items(150), at, 7), reference_user_features_at(events, _items(150), at, 7)
    )


def test_user_features_match_the_reference_on_a_synthetic_shop(tmp_path: Path) -> None:
    from benchmarks.quality import read_landing
    from tasks.sources import SyntheticConfig, generate

    generate(SyntheticConfig(n_users=1_500, n_items=300, days=45, start=dt.date(2024, 1, 1)), tmp_path)
    events, items = read_landing(tmp_path)
    at = events["event_timestamp"].max().normalize() + pd.Timedelta(days=1)
    _assert_same(user_features_at(events, items, at, 20), reference_user_features_at(events, items, at, 20))


def test_empty_inputs_give_the_reference_empty_frames() -> None:
    events = tricky_shop()
    early = events["event_timestamp"].min()
    pd.testing.assert_frame_equal(user_state_at(events, early, 5), reference_user_state_at(events, early, 5))
    pd.testing.assert_frame_equal(
        user_features_at(events, _items(10), early, 5),
        reference_user_features_at(events, _items(10), early, 5),
    )


def test_user_features_match_the_reference_when_the_catalog_lists_an_item_twice() -> None:
    """Each listing counts for the top categories, as the reference's merge counts it."""
    events = tricky_shop()
    items = pd.concat([_items(150), _items(150).iloc[:12].assign(category="twice")], ignore_index=True)
    _assert_same(user_features_at(events, items, AT, 5), reference_user_features_at(events, items, AT, 5))
