"""A seeded, deterministic shop simulator that writes landing batches in the data contract.

The shape it simulates (every knob is a :class:`SyntheticConfig` field):

* **Catalog.** ``n_items`` products in ten categories, English titles built from each category's
  vocabulary ("Vintage Teal Teapot"), log-normal prices around a category's typical price.  With
  ``titles="codes"`` the catalog says nothing about what an item is, like a shop that lists stock
  codes only: each title is the item's code (its ``item_id``) and the category is empty; the shop's
  events are the same as with ``titles="words"`` (same draws), so the two compare like for like.  A share
  ``initial_item_share`` exists on day 0; the rest appear on uniformly drawn later days (cold start) and
  land in ``items.parquet`` of the day they are first seen.
* **Popularity.** Each item has a Zipf weight ``1 / rank ** zipf_exponent`` (ranks shuffled over items).
* **Users.** ``n_users`` customers with shop-like raw ids (``C004217``), a country, an activity level
  (Gamma, mean 1) and category affinities (Dirichlet with ``affinity_concentration``; small = focused
  tastes).  A share ``initial_user_share`` is active from day 0, the others join on later days and have
  their first session on the day they join (day 0's users are the existing customer base).
* **Sessions.** Per user and day a Poisson number of sessions with mean
  ``sessions_per_user_per_day * activity * weekday factor`` (busier at weekends); the session's start hour
  follows a daily profile (lunch and evening peaks, quiet nights).  A session views
  ``1 + Poisson(views_per_session - 1)`` items drawn with weight popularity x the user's affinity for the
  item's category, among the items already in the catalog that day.
* **Funnel.** Each view is clicked with ``click_rate``; a click is added to the cart with ``cart_rate``;
  a cart line is purchased at the end of the session with ``purchase_rate``.

The same config writes byte-identical parquet: one ``numpy.random.Generator`` seeded by ``seed``, drawn
in a fixed order, and rows sorted before writing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from tasks.contracts import EVENTS_SCHEMA, ITEMS_SCHEMA
from tasks.sources.loader import SourceManifest, conform, write_landing

# category -> (typical price, nouns)
_CATEGORIES: Final[dict[str, tuple[float, tuple[str, ...]]]] = {
    "home decor": (14.0, ("Cushion Cover", "Photo Frame", "Wall Clock", "Vase", "Candle Holder", "Mirror")),
    "kitchen": (9.0, ("Mug", "Teapot", "Cake Tin", "Chopping Board", "Tea Towel", "Storage Jar")),
    "stationery": (
        4.5,
        ("Notebook", "Card Set", "Pencil Case", "Wrapping Paper", "Journal", "Sticker Sheet"),
    ),
    "toys": (11.0, ("Jigsaw Puzzle", "Building Blocks", "Plush Bear", "Kite", "Board Game", "Toy Car")),
    "garden": (12.0, ("Plant Pot", "Watering Can", "Bird Feeder", "Garden Gloves", "Lantern", "Wind Chime")),
    "bags and accessories": (16.0, ("Tote Bag", "Scarf", "Umbrella", "Purse", "Beanie", "Lunch Bag")),
    "jewellery": (19.0, ("Necklace", "Bracelet", "Earrings", "Ring", "Brooch", "Charm Set")),
    "christmas": (
        7.5,
        ("Bauble Set", "Advent Calendar", "Stocking", "Tree Topper", "Fairy Lights", "Wreath"),
    ),
    "bath and beauty": (6.5, ("Soap Dish", "Bath Towel", "Toiletry Bag", "Scented Candle", "Bath Salts")),
    "electronics": (
        24.0,
        ("Phone Stand", "Charging Cable", "Earphones", "Speaker", "Power Bank", "Desk Lamp"),
    ),
}
CATEGORY_NAMES: Final[tuple[str, ...]] = tuple(_CATEGORIES)
_ADJECTIVES: Final = (
    "Vintage", "Retro", "Classic", "Rustic", "Scandi", "Floral", "Striped", "Spotty", "Pastel", "Modern",
    "Handmade", "Mini", "Large", "Travel", "Deluxe",
)  # fmt: skip
_COLOURS: Final = ("Red", "Blue", "Green", "Pink", "Ivory", "Black", "White", "Yellow", "Grey", "Teal")
_COUNTRIES: Final[tuple[tuple[str, float], ...]] = (
    ("United Kingdom", 0.55), ("Germany", 0.09), ("France", 0.08), ("Netherlands", 0.05),
    ("Ireland", 0.04), ("Spain", 0.04), ("Italy", 0.03), ("Belgium", 0.03), ("Sweden", 0.02),
    ("United States", 0.04), ("Australia", 0.02), ("Poland", 0.01),
)  # fmt: skip
TITLE_KINDS: Final = ("words", "codes")
# Monday .. Sunday
_WEEKDAY_FACTOR: Final = (1.0, 0.95, 0.95, 1.0, 1.05, 1.15, 1.2)
# Share of session starts per UTC hour 0 .. 23: quiet nights, a lunch peak and an evening peak.
_HOUR_PROFILE: Final = (
    0.4, 0.25, 0.15, 0.1, 0.1, 0.2, 0.5, 1.0, 1.6, 2.0, 2.2, 2.6,
    3.0, 2.8, 2.3, 2.2, 2.3, 2.6, 3.0, 3.4, 3.5, 3.0, 2.0, 1.0,
)  # fmt: skip


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and shape of the simulated shop. Defaults: ~60-70k events, the whole pipeline in minutes on CPU."""

    n_users: int = 1500
    n_items: int = 400
    days: int = 40
    start: dt.date = dt.date(2026, 9, 1)
    seed: int = 42
    sessions_per_user_per_day: float = 0.18
    views_per_session: float = 5.0
    click_rate: float = 0.30
    cart_rate: float = 0.25
    purchase_rate: float = 0.45
    zipf_exponent: float = 1.1
    affinity_concentration: float = 0.3
    initial_user_share: float = 0.6
    initial_item_share: float = 0.75
    titles: str = "words"  # "words": English titles and categories; "codes": item codes, no category

    def __post_init__(self) -> None:
        if self.titles not in TITLE_KINDS:
            raise ValueError(f"titles must be one of {', '.join(TITLE_KINDS)}, got {self.titles!r}")
        if self.n_users < 1 or self.n_items < 1 or self.days < 1:
            raise ValueError("n_users, n_items and days must be at least 1")
        if self.n_users > 999_999:
            raise ValueError("n_users must be below 1,000,000 (raw ids are C + six digits)")
        if self.n_items > 90_000:
            raise ValueError("n_items must be at most 90,000 (item ids are P + five digits)")
        if self.views_per_session < 1:
            raise ValueError("views_per_session must be at least 1")
        if self.sessions_per_user_per_day <= 0 or self.zipf_exponent < 0 or self.affinity_concentration <= 0:
            raise ValueError("sessions_per_user_per_day and affinity_concentration must be > 0, zipf >= 0")
        for name in ("click_rate", "cart_rate", "purchase_rate", "initial_user_share", "initial_item_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]")


@dataclass(frozen=True)
class _Catalog:
    item_id: np.ndarray
    title: np.ndarray
    category: np.ndarray  # index into _CATEGORIES
    price: np.ndarray
    first_day: np.ndarray  # day index the item is first in the catalog
    popularity: np.ndarray


@dataclass(frozen=True)
class _Users:
    user_id: np.ndarray
    country: np.ndarray
    join_day: np.ndarray
    activity: np.ndarray
    affinity: np.ndarray  # (n_users, n_categories)


def _arrival_days(rng: np.random.Generator, n: int, days: int, initial_share: float) -> np.ndarray:
    """Day index each of ``n`` entities appears: ``initial_share`` on day 0, the rest uniform after."""
    arrivals = np.zeros(n, dtype=np.int64)
    if days > 1:
        late = rng.random(n) >= initial_share
        arrivals[late] = rng.integers(1, days, size=int(late.sum()))
    return arrivals


def _catalog(config: SyntheticConfig, rng: np.random.Generator) -> _Catalog:
    names = list(_CATEGORIES)
    category_weights = rng.dirichlet(np.full(len(names), 5.0))
    category = rng.choice(len(names), size=config.n_items, p=category_weights)
    titles = np.empty(config.n_items, dtype=object)
    for c, name in enumerate(names):
        members = np.flatnonzero(category == c)
        nouns = _CATEGORIES[name][1]
        combos = [f"{a} {k} {n}" for a in _ADJECTIVES for k in _COLOURS for n in nouns]
        order = rng.permutation(len(combos))
        for j, item in enumerate(members):
            round_ = j // len(combos)
            suffix = f" No. {round_ + 1}" if round_ else ""
            titles[item] = combos[order[j % len(combos)]] + suffix
    typical = np.array([_CATEGORIES[names[c]][0] for c in category])
    raw_price = typical * rng.lognormal(mean=0.0, sigma=0.45, size=config.n_items)
    price = np.maximum(np.round(raw_price, 1) - 0.01, 0.99).round(2)
    first_day = _arrival_days(rng, config.n_items, config.days, config.initial_item_share)
    ranks = rng.permutation(config.n_items) + 1
    popularity = 1.0 / ranks.astype(float) ** config.zipf_exponent
    numbers = rng.choice(np.arange(10_000, 100_000), size=config.n_items, replace=False)
    item_id = np.array([f"P{n}" for n in numbers], dtype=object)
    return _Catalog(item_id, titles, category, price, first_day, popularity)


def _users(config: SyntheticConfig, rng: np.random.Generator) -> _Users:
    numbers = rng.choice(np.arange(1, 1_000_000), size=config.n_users, replace=False)
    user_id = np.array([f"C{n:06d}" for n in numbers], dtype=object)
    countries = [c for c, _ in _COUNTRIES]
    weights = np.array([w for _, w in _COUNTRIES])
    country = np.array(countries, dtype=object)[
        rng.choice(len(countries), size=config.n_users, p=weights / weights.sum())
    ]
    join_day = _arrival_days(rng, config.n_users, config.days, config.initial_user_share)
    activity = rng.gamma(shape=1.5, scale=1 / 1.5, size=config.n_users)
    affinity = rng.dirichlet(np.full(len(_CATEGORIES), config.affinity_concentration), size=config.n_users)
    return _Users(user_id, country, join_day, activity, affinity)


def _simulate_day(
    config: SyntheticConfig,
    rng: np.random.Generator,
    day_index: int,
    catalog: _Catalog,
    users: _Users,
) -> dict[str, list[Any]]:
    """All events of one day as columns (item and user positions, types, second offsets, quantities)."""
    day = config.start + dt.timedelta(days=day_index)
    rate = config.sessions_per_user_per_day * _WEEKDAY_FACTOR[day.weekday()] * users.activity
    joined = users.join_day <= day_index
    sessions = np.where(joined, rng.poisson(rate), 0)
    if day_index > 0:  # a customer who joins today has a first session today; day 0 is the existing base
        joining = users.join_day == day_index
        sessions[joining] = np.maximum(sessions[joining], 1)
    available = np.flatnonzero(catalog.first_day <= day_index)
    base = catalog.popularity[available]
    categories = catalog.category[available]
    hour_p = np.array(_HOUR_PROFILE) / sum(_HOUR_PROFILE)
    out: dict[str, list[Any]] = {k: [] for k in ("user", "item", "type", "second", "quantity", "session")}
    session_no = 0
    for user in np.flatnonzero(sessions):
        weights = base * users.affinity[user, categories]
        cumulative = np.cumsum(weights)
        for _ in range(int(sessions[user])):
            n_views = 1 + int(rng.poisson(config.views_per_session - 1))
            picks = available[np.searchsorted(cumulative, rng.random(n_views) * cumulative[-1], side="right")]
            t = 0.0
            rows: list[tuple[int, str, float, int]] = []
            carts: list[tuple[int, int]] = []
            for item in picks:
                t += float(rng.exponential(40.0)) + 3.0
                rows.append((int(item), "view", t, 1))
                if rng.random() < config.click_rate:
                    rows.append((int(item), "click", t + float(rng.uniform(2, 20)), 1))
                    if rng.random() < config.cart_rate:
                        quantity = int(rng.geometric(0.7))
                        rows.append((int(item), "add_to_cart", t + float(rng.uniform(25, 90)), quantity))
                        carts.append((int(item), quantity))
                    t += 90.0
            end = t + 60.0
            for item, quantity in carts:
                if rng.random() < config.purchase_rate:
                    rows.append((item, "purchase", end + float(rng.uniform(30, 240)), quantity))
            duration = max(r[2] for r in rows)
            start = int(rng.choice(24, p=hour_p)) * 3600 + float(rng.uniform(0, 3600))
            start = min(start, 86_399.0 - duration)
            session_no += 1
            for item, kind, offset, quantity in rows:
                out["user"].append(int(user))
                out["item"].append(item)
                out["type"].append(kind)
                out["second"].append(start + offset)
                out["quantity"].append(quantity)
                out["session"].append(session_no)
    return out


def _shop(config: SyntheticConfig) -> tuple[np.random.Generator, _Catalog, _Users]:
    """The shop's generator (seeded by ``config.seed``), catalog and customers, drawn in that order."""
    rng = np.random.default_rng(config.seed)
    catalog = _catalog(config, rng)
    return rng, catalog, _users(config, rng)


def shop_customers(config: SyntheticConfig) -> _Users:
    """The customers :func:`generate` simulates for ``config``: the same raw ids, countries, join days,
    activity (mean sessions factor) and category affinities (rows over :data:`CATEGORY_NAMES`)."""
    return _shop(config)[2]


def generate(config: SyntheticConfig, landing_dir: Path) -> SourceManifest:
    """Simulate ``config.days`` days from ``config.start`` and write one landing folder per day.

    Each day folder holds ``events.parquet`` and, on days when items first appear, ``items.parquet``.
    Rewriting replaces those day folders atomically; other days in ``landing_dir`` are left untouched.
    """
    rng, catalog, users = _shop(config)
    origin = pd.Timestamp(config.start, tz="UTC")
    frames = []
    for day_index in range(config.days):
        columns = _simulate_day(config, rng, day_index, catalog, users)
        user = np.asarray(columns["user"], dtype=np.int64)
        item = np.asarray(columns["item"], dtype=np.int64)
        seconds = np.floor(np.asarray(columns["second"], dtype=float) * 1e6).astype("int64")
        day = config.start + dt.timedelta(days=day_index)
        stamp = origin + pd.Timedelta(days=day_index) + pd.to_timedelta(seconds, unit="us")
        n = len(user)
        frames.append(
            pd.DataFrame(
                {
                    "event_id": [f"E{day:%Y%m%d}-{k:06d}" for k in range(1, n + 1)],
                    "user_id": users.user_id[user],
                    "item_id": catalog.item_id[item],
                    "event_type": columns["type"],
                    "event_timestamp": stamp,
                    "quantity": columns["quantity"],
                    "unit_price": catalog.price[item],
                    "session_id": [f"S{day:%Y%m%d}-{int(s):05d}" for s in columns["session"]],
                    "country": users.country[user],
                }
            )
        )
    events = pd.concat(frames, ignore_index=True)
    names = list(_CATEGORIES)
    codes = config.titles == "codes"
    items = pd.DataFrame(
        {
            "item_id": catalog.item_id,
            "title": catalog.item_id if codes else catalog.title,
            "category": [None if codes else names[c] for c in catalog.category],
            "price": catalog.price,
            "first_seen": origin + pd.to_timedelta(catalog.first_day, unit="D"),
        }
    )
    return write_landing(
        "synthetic",
        landing_dir,
        conform(events, EVENTS_SCHEMA, "synthetic events"),
        conform(items, ITEMS_SCHEMA, "synthetic items"),
    )
