"""The synthetic shop: contract shape, determinism, idempotent rewrites and the statistics it promises."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tasks.config import Settings
from tasks.contracts import EVENTS_SCHEMA, ITEMS_SCHEMA, list_partitions, partition_dir
from tasks.sources.synthetic import SyntheticConfig, generate

# Big enough for stable statistics, small enough to generate in well under a second.
SMALL = SyntheticConfig(n_users=600, n_items=200, days=21, seed=3)


def _events(landing: Path) -> pd.DataFrame:
    frames = [pq.read_table(p).to_pandas() for p in sorted(landing.glob("date=*/events.parquet"))]
    return pd.concat(frames, ignore_index=True)


def _items(landing: Path) -> pd.DataFrame:
    frames = []
    for path in sorted(landing.glob("date=*/items.parquet")):
        frame = pq.read_table(path).to_pandas()
        frame["landing_day"] = dt.date.fromisoformat(path.parent.name.removeprefix("date="))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


@pytest.fixture
def landing(shoprec_home: Settings) -> Path:
    generate(SMALL, shoprec_home.landing_dir)
    return shoprec_home.landing_dir


def test_default_config_fits_the_cpu_pipeline_budget(shoprec_home: Settings) -> None:
    manifest = generate(SyntheticConfig(), shoprec_home.landing_dir)
    assert manifest.source == "synthetic"
    assert 1_400 <= manifest.n_users <= 1_500  # users with at least one event; a few never visit
    assert manifest.n_items == 400
    assert len(manifest.days) == 40
    assert manifest.days[0] == dt.date(2026, 9, 1)
    assert 40_000 <= manifest.n_events <= 100_000


def test_one_landing_folder_per_day_with_contract_schemas(landing: Path) -> None:
    days = list_partitions(landing)
    assert days == [SMALL.start + dt.timedelta(days=k) for k in range(SMALL.days)]
    for day in days:
        folder = partition_dir(landing, day)
        events = pq.read_table(folder / "events.parquet")
        assert events.schema.equals(EVENTS_SCHEMA)
        assert events.num_rows > 0
        assert {t.date() for t in events.column("event_timestamp").to_pylist()} == {day}
    assert pq.read_table(partition_dir(landing, days[0]) / "items.parquet").schema.equals(ITEMS_SCHEMA)


def test_same_seed_writes_byte_identical_parquet(tmp_path: Path, landing: Path) -> None:
    again = tmp_path / "again"
    generate(SMALL, again)
    files = sorted(p.relative_to(landing) for p in landing.rglob("*.parquet"))
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.parquet"))
    assert all((landing / f).read_bytes() == (again / f).read_bytes() for f in files)


def test_different_seed_gives_different_events(tmp_path: Path, landing: Path) -> None:
    generate(dataclasses.replace(SMALL, seed=4), tmp_path / "other")
    day = partition_dir(Path("."), SMALL.start).name
    first = (landing / day / "events.parquet").read_bytes()
    assert first != (tmp_path / "other" / day / "events.parquet").read_bytes()


def test_regenerating_replaces_day_folders_and_leaves_no_temporaries(landing: Path) -> None:
    day = partition_dir(landing, SMALL.start)
    before = (day / "events.parquet").read_bytes()
    (day / "events_stale.parquet").write_bytes(b"left over from an older run")
    generate(SMALL, landing)
    assert sorted(p.name for p in day.iterdir()) == ["events.parquet", "items.parquet"]
    assert (day / "events.parquet").read_bytes() == before
    assert [p.name for p in landing.iterdir() if p.name.startswith(".")] == []


def test_top_tenth_of_items_gets_over_40_percent_of_views(landing: Path) -> None:
    views = _events(landing).query("event_type == 'view'")["item_id"].value_counts()
    top = views.head(SMALL.n_items // 10).sum()
    assert top / views.sum() > 0.40


def test_funnel_conversion_rates_are_plausible(landing: Path) -> None:
    counts = _events(landing)["event_type"].value_counts()
    assert 0.22 <= counts["click"] / counts["view"] <= 0.38
    assert 0.17 <= counts["add_to_cart"] / counts["click"] <= 0.33
    assert 0.33 <= counts["purchase"] / counts["add_to_cart"] <= 0.57
    assert 0.01 <= counts["purchase"] / counts["view"] <= 0.06


def test_purchases_follow_a_cart_of_the_same_item_in_the_same_session(landing: Path) -> None:
    events = _events(landing)
    carts = set(
        events.query("event_type == 'add_to_cart'")[["session_id", "item_id"]].itertuples(index=False)
    )
    purchases = set(
        events.query("event_type == 'purchase'")[["session_id", "item_id"]].itertuples(index=False)
    )
    assert purchases
    assert purchases <= carts


def test_new_users_keep_arriving_after_day_zero(landing: Path) -> None:
    events = _events(landing)
    first_day = events.groupby("user_id")["event_timestamp"].min().dt.date
    last_third = SMALL.start + dt.timedelta(days=SMALL.days * 2 // 3)
    # 40% join after day 0; with everyone present from day 0 this share is ~0.09 (measured)
    assert (first_day >= last_third).mean() >= 0.14
    daily_active = events.groupby(events["event_timestamp"].dt.date)["user_id"].nunique()
    assert daily_active.iloc[-5:].mean() >= 1.25 * daily_active.iloc[:5].mean()  # ~1.0 without joins


def test_a_quarter_of_the_catalog_is_added_after_day_zero(landing: Path) -> None:
    items = _items(landing)
    late_items = (items["landing_day"] > SMALL.start).mean()
    assert 0.15 <= late_items <= 0.35


def test_items_land_on_the_day_they_are_first_seen(landing: Path) -> None:
    items = _items(landing)
    assert items["item_id"].is_unique
    assert len(items) == SMALL.n_items
    assert (items["first_seen"].dt.date == items["landing_day"]).all()


def test_every_event_item_is_in_the_catalog_by_that_day(landing: Path) -> None:
    events = _events(landing)
    first_seen = _items(landing).set_index("item_id")["landing_day"]
    event_day = events["event_timestamp"].dt.date
    assert events["item_id"].isin(first_seen.index).all()
    assert (events["item_id"].map(first_seen) <= event_day).all()


def test_raw_user_ids_look_like_shop_customer_ids_and_appear_nowhere_else(landing: Path) -> None:
    events = _events(landing)
    assert events["user_id"].str.fullmatch(r"C\d{6}").all()
    users = set(events["user_id"])
    for column in ("event_id", "session_id", "item_id"):
        assert not any(user in value for value in set(events[column]) for user in users)


def test_each_user_has_one_country(landing: Path) -> None:
    countries = _events(landing).groupby("user_id")["country"].nunique()
    assert (countries == 1).all()
    assert _events(landing)["country"].value_counts().index[0] == "United Kingdom"


def test_titles_are_english_and_built_from_the_category_vocabulary(landing: Path) -> None:
    items = _items(landing)
    assert items["title"].is_unique
    assert items["title"].str.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+ [A-Z][a-z]+( [A-Z][a-z]+)?").all()
    mugs = items[items["title"].str.endswith(" Mug")]
    assert (mugs["category"] == "kitchen").all()
    assert items["category"].nunique() >= 8
    assert (items["price"] >= 0.99).all()


def test_users_concentrate_on_few_categories(landing: Path) -> None:
    views = _events(landing).query("event_type == 'view'")
    category = views["item_id"].map(_items(landing).set_index("item_id")["category"])
    shares = (
        views.assign(category=category)
        .groupby("user_id")["category"]
        .agg(lambda c: c.value_counts(normalize=True).iloc[0])
    )
    active = views["user_id"].value_counts() >= 10
    assert shares[active[active].index].mean() > 0.45  # ten categories: uniform taste would give ~0.2


def test_weekends_are_busier_and_nights_are_quiet(landing: Path) -> None:
    events = _events(landing)
    stamps = events["event_timestamp"]
    per_day = stamps.dt.date.value_counts()
    weekend = [d for d in per_day.index if d.weekday() >= 5 and d > SMALL.start]
    midweek = [d for d in per_day.index if d.weekday() in (1, 2) and d > SMALL.start]
    assert per_day[weekend].mean() > 1.1 * per_day[midweek].mean()
    hours = stamps.dt.hour.value_counts(normalize=True)
    assert hours.reindex(range(2, 5), fill_value=0).sum() < 0.3 * hours.reindex(range(18, 21)).sum()


@pytest.mark.parametrize(
    "change",
    [{"n_users": 0}, {"days": 0}, {"click_rate": 1.5}, {"views_per_session": 0.5}, {"n_items": 100_000}],
)
def test_invalid_config_is_refused(change: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must"):
        dataclasses.replace(SMALL, **change)


def test_code_titles_carry_no_information_and_keep_the_same_events(tmp_path: Path, landing: Path) -> None:
    """``titles="codes"``: the title is the item's own code and the category is empty, so the catalog
    tells a text tower nothing; the events are those of the same shop with English titles."""
    codes = tmp_path / "codes"
    generate(dataclasses.replace(SMALL, titles="codes"), codes)
    items, words = _items(codes), _items(landing)
    assert (items["title"] == items["item_id"]).all()
    assert items["title"].str.fullmatch(r"P\d{5}").all()
    assert items["category"].isna().all()
    assert items["item_id"].tolist() == words["item_id"].tolist()
    assert items["price"].tolist() == words["price"].tolist()
    pd.testing.assert_frame_equal(_events(codes), _events(landing))
    with pytest.raises(ValueError, match="titles must be one of words, codes"):
        dataclasses.replace(SMALL, titles="emoji")
