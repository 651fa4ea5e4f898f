"""One user state: what Feast serves, what training reads and what evaluation computes are the same.

A small synthetic shop (tied timestamps, a heavy buyer of more than 100 distinct items, a user who goes
quiet for more than 30 days) is written to the lake; its daily user-feature snapshots are computed and
applied to a fresh Feast repository (DuckDB offline store). For the same users at the same times:

* Feast's point-in-time join, as training and the membership audit read it
  (:func:`tasks.dataset.feature_state`, one shared cut and one cut per user);
* the lake computation that evaluation and the benchmarks use (:func:`tasks.features.user_state_at`,
  through :func:`tasks.evaluation.temporal_split`)

must give equal values in every column the model reads, for every user active in the 30 days before
the time asked (a user quiet for longer is served their last snapshot row by Feast: pinned below).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.catalog import USER_FEATURE_COLUMNS
from tasks.config import Settings, get_settings
from tasks.contracts import EVENTS_SCHEMA, ITEMS_SCHEMA, partition_dir
from tasks.dataset import feature_state, load_catalog, per_user_cuts
from tasks.embeddings import load_pretrained_encoder
from tasks.evaluation import temporal_split
from tasks.feast_store import apply_definitions
from tasks.features import MAX_PURCHASED_ITEMS, compute_features, snapshot_time, user_state_at

pytestmark = pytest.mark.integration

N_ITEMS = MAX_PURCHASED_ITEMS + 20
START = dt.date(2024, 3, 1)
N_DAYS = 12
HISTORY = 20
TIED = ("i117", "i118", "i119")  # items only the tied events touch (and the heavy buyer)
STATE_COLUMNS = (*USER_FEATURE_COLUMNS, "recent_items", "purchased_items", "purchased_counts")


def _shop() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(5)
    rows = []

    def add(user: str, item: int, etype: str, ts: pd.Timestamp) -> None:
        rows.append(
            {
                "event_id": f"e{len(rows):05d}",
                "user_id": user,
                "item_id": f"i{item:03d}",
                "event_type": etype,
                "event_timestamp": ts,
                "quantity": int(rng.integers(1, 4)),
                "unit_price": float(rng.integers(1, 50)),
                "session_id": f"s-{user}-{ts.date()}",
                "country": "DE",
            }
        )

    base = pd.Timestamp(START, tz="UTC")
    for u in range(25):
        for _ in range(int(rng.integers(5, 40))):
            ts = base + pd.Timedelta(hours=int(rng.integers(0, 24 * N_DAYS)))
            add(f"u{u:02d}", int(rng.integers(0, N_ITEMS - 3)), str(rng.choice(EVENTS_TYPES_WEIGHTED)), ts)
    for u in range(3):  # three events at the very same instant: the tie-break decides recent_items
        for item in (117, 119, 118):
            add(f"u{u:02d}", item, "view", base + pd.Timedelta(days=4, hours=6))
    for item in range(N_ITEMS):  # a heavy buyer of more than MAX_PURCHASED_ITEMS distinct items
        for _ in range(1 + item % 3):
            add("heavy", item, "purchase", base + pd.Timedelta(hours=int(rng.integers(0, 24 * N_DAYS))))
    add("quiet", 1, "purchase", base - pd.Timedelta(days=40))  # gone quiet for more than 30 days
    events = pd.DataFrame(rows)
    items = pd.DataFrame(
        {
            "item_id": [f"i{i:03d}" for i in range(N_ITEMS)],
            "title": [f"item number {i} in colour {i % 7}" for i in range(N_ITEMS)],
            "category": [f"cat{i % 5}" for i in range(N_ITEMS)],
            "price": [float(1 + i % 40) for i in range(N_ITEMS)],
            "first_seen": pd.Timestamp("2024-01-01", tz="UTC"),
        }
    )
    return events, items


EVENTS_TYPES_WEIGHTED = ("view",) * 5 + ("click",) * 3 + ("add_to_cart",) * 2 + ("purchase",) * 2


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, pd.DataFrame]:
    settings = get_settings(home=tmp_path_factory.mktemp("one-state") / "shoprec")
    events, items = _shop()
    for day, part in events.groupby(events["event_timestamp"].dt.date):
        folder = partition_dir(settings.events_dir, day)
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(part, schema=EVENTS_SCHEMA, preserve_index=False)
        pq.write_table(table, folder / "part-0.parquet")
    settings.items_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.Table.from_pandas(items, schema=ITEMS_SCHEMA, preserve_index=False),
        settings.items_dir / "items.parquet",
    )
    days = sorted(events["event_timestamp"].dt.date.unique())
    compute_features(settings, days, encoder=load_pretrained_encoder(device="cpu"))
    apply_definitions(settings)
    events = events.astype({"event_timestamp": "datetime64[us, UTC]"})
    return settings, events


def _active(state: pd.DataFrame) -> pd.DataFrame:
    """The users with an event in the 30 days before their state's time: those Feast holds exactly."""
    return state[state[[c for c in USER_FEATURE_COLUMNS if c.endswith("_30d")][:4]].sum(axis=1) > 0]


def _comparable(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.set_index("user_id").sort_index()[list(STATE_COLUMNS)].copy()
    for col in USER_FEATURE_COLUMNS:
        out[col] = out[col].astype("float64")
    for col in ("recent_items", "purchased_items", "purchased_counts"):
        out[col] = out[col].map(lambda v: [x.item() if hasattr(x, "item") else x for x in list(v)])
    return out


def test_feast_training_and_evaluation_see_the_same_state_at_one_cut(shop) -> None:
    settings, events = shop
    cut = snapshot_time(START + dt.timedelta(days=N_DAYS - 4))
    lake = _active(user_state_at(events, cut, HISTORY))
    feast = feature_state(settings, lake["user_id"].tolist(), cut)
    assert len(lake) > 20
    heavy = lake.set_index("user_id").loc["heavy"]
    assert len(heavy["purchased_items"]) == MAX_PURCHASED_ITEMS  # the cap holds on the lake path too
    assert len(heavy["recent_items"]) == HISTORY
    pd.testing.assert_frame_equal(_comparable(lake), _comparable(feast))
    split = temporal_split(events, load_catalog(settings), cut, 4, HISTORY)
    assert split.n_users > 5
    evaluated = _comparable(_active(split.state))
    pd.testing.assert_frame_equal(evaluated, _comparable(feast).loc[evaluated.index])


def test_a_user_quiet_for_30_days_is_served_their_last_snapshot_by_feast(shop) -> None:
    """The one difference, pinned: Feast (TTL 0) serves a quiet user the last snapshot that holds
    them; the lake function gives the state at the cut (same definition, a later time)."""
    settings, events = shop
    cut = snapshot_time(START + dt.timedelta(days=N_DAYS - 4))
    lake = user_state_at(events, cut, HISTORY).set_index("user_id").loc["quiet"]
    feast = feature_state(settings, ["quiet"], cut).set_index("user_id").loc["quiet"]
    assert (lake["purchases_30d"], lake["days_since_last_purchase"]) == (0, 49)
    assert (feast["purchases_30d"], feast["days_since_last_purchase"]) == (1, 1)  # its own day's snapshot
    assert list(lake["recent_items"]) == list(feast["recent_items"]) == ["i001"]


def test_feast_and_the_lake_agree_at_each_users_own_training_cut(shop) -> None:
    """Training reads each user's state at their own cut (:func:`tasks.dataset.per_user_cuts`)."""
    settings, events = shop
    cuts = per_user_cuts(events, snapshot_time(START + dt.timedelta(days=N_DAYS - 1)), horizon_days=3)
    assert len(cuts) > 20
    feast = feature_state(settings, cuts["user_id"].tolist(), list(cuts["cut"]))
    lake = pd.concat(
        [
            user_state_at(events[events["user_id"] == u], pd.Timestamp(c), HISTORY)
            for u, c in cuts.itertuples(index=False)
        ],
        ignore_index=True,
    )
    lake = _active(lake[lake["recent_items"].map(len) > 0])
    assert len(lake) == len(cuts)
    pd.testing.assert_frame_equal(_comparable(lake), _comparable(feast))


def test_tied_timestamps_break_by_event_id_on_every_path(shop) -> None:
    settings, events = shop
    at = snapshot_time(START + dt.timedelta(days=4))
    lake = user_state_at(events, at, HISTORY).set_index("user_id")
    feast = feature_state(settings, ["u00"], at).set_index("user_id")
    assert lake.loc["u00", "recent_items"] == list(feast.loc["u00", "recent_items"])
    tied = [i for i in lake.loc["u00", "recent_items"] if i in TIED]
    assert tied == ["i118", "i119", "i117"]  # at one instant: the highest event id first
