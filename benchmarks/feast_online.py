"""Feast online store benchmark: materialisation throughput and online lookup latency, SQLite vs Redis.

    .venv/bin/python benchmarks/feast_online.py [--users 20000] [--calls 200] [--json PATH]

For each online store it writes one synthetic ``user_features`` snapshot of ``--users`` users (the real
schema: 8 counts, 3 floats, 4 list features of up to 20 ids) into a temporary SHOPREC_HOME, applies the
ShopRec Feast definitions, times ``materialize`` of that snapshot (rows/s) and then times
``get_online_features(recommender_v1)`` for 1 user and for 100 users per call (p50/p99 over ``--calls``
calls, one FeatureStore object reused, as a server would).

* SQLite: the embedded profile (SQL registry on SQLite, online store ``feast/online.db``);
* Redis: the production profile's online store on 127.0.0.1:6379 in its own DB index (flushed before
  and after) with the SQL registry in a throw-away PostgreSQL database (created and dropped here).

Not a test: numbers depend on the machine; it prints a Markdown table and optionally writes JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.config import Profile, Settings, get_settings
from tasks.features import (
    ITEM_FEATURES_SCHEMA,
    POPULARITY_SCHEMA,
    USER_FEATURES_SCHEMA,
    item_features_path,
    item_popularity_dir,
    user_features_dir,
    write_table,
)

DAY = dt.date(2024, 3, 1)
AT = pd.Timestamp("2024-03-02", tz="UTC")
REDIS_DB = 13
POSTGRES_DB = f"shoprec_bench_feast_{os.getpid()}"


@dataclass
class StoreResult:
    store: str
    users: int
    materialize_seconds: float
    rows_per_second: float
    p50_ms_1_user: float
    p99_ms_1_user: float
    p50_ms_100_users: float
    p99_ms_100_users: float


def write_synthetic_features(settings: Settings, users: int, items: int = 1000, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    item_ids = [f"i{n:05d}" for n in range(items)]
    user_ids = [f"u_{n:032x}" for n in range(users)]
    counts = {c: rng.poisson(3, users).astype("int64") for c in USER_FEATURES_SCHEMA.names[2:10]}
    frame = pd.DataFrame({"user_id": user_ids, "event_timestamp": AT, **counts})
    frame["spend_30d"] = rng.gamma(2.0, 20.0, users)
    frame["avg_basket_value_30d"] = frame["spend_30d"] / 2
    frame["days_since_last_purchase"] = rng.integers(-1, 30, users).astype("float64")
    frame["top_categories"] = [["kitchen", "home", "clothing"]] * users
    frame["recent_items"] = [list(rng.choice(item_ids, 20, replace=False)) for _ in range(users)]
    frame["purchased_items"] = [list(rng.choice(item_ids, 5, replace=False)) for _ in range(users)]
    frame["purchased_counts"] = [[3, 2, 1, 1, 1]] * users
    write_table(frame, USER_FEATURES_SCHEMA, user_features_dir(settings) / f"{DAY}.parquet")
    vectors = rng.normal(size=(items, 384)).astype("float32")
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    catalog = pd.DataFrame(
        {
            "item_id": item_ids,
            "event_timestamp": pd.Timestamp("2024-01-01", tz="UTC"),
            "title": [f"item {n}" for n in range(items)],
            "category": "home",
            "price": 10.0,
            "first_seen": pd.Timestamp("2024-01-01", tz="UTC"),
            "embedding": list(vectors),
        }
    )
    write_table(catalog, ITEM_FEATURES_SCHEMA, item_features_path(settings))
    write_table(
        POPULARITY_SCHEMA.empty_table().to_pandas(),
        POPULARITY_SCHEMA,
        item_popularity_dir(settings) / f"{DAY}.parquet",
    )
    return user_ids


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1000, p99 * 1000


def bench_store(name: str, settings: Settings, users: int, calls: int) -> StoreResult:
    from tasks.feast_store import (
        RECOMMENDER_SERVICE,
        USER_FEATURES,
        apply_definitions,
        get_store,
        materialize,
    )

    user_ids = write_synthetic_features(settings, users)
    apply_definitions(settings)
    start = time.perf_counter()
    materialize(settings, AT.to_pydatetime(), AT.to_pydatetime(), views=[USER_FEATURES])
    seconds = time.perf_counter() - start
    store = get_store(settings)
    service = store.get_feature_service(RECOMMENDER_SERVICE)
    rng = np.random.default_rng(1)
    timings: dict[int, list[float]] = {1: [], 100: []}
    for batch in timings:
        for _ in range(5):  # warm-up: registry cache, connections
            store.get_online_features(features=service, entity_rows=[{"user_id": user_ids[0]}])
        for _ in range(calls):
            rows = [{"user_id": u} for u in rng.choice(user_ids, batch, replace=False)]
            t0 = time.perf_counter()
            response = store.get_online_features(features=service, entity_rows=rows).to_dict()
            timings[batch].append(time.perf_counter() - t0)
            assert response["views_7d"][0] is not None
    p50_1, p99_1 = _percentiles(timings[1])
    p50_100, p99_100 = _percentiles(timings[100])
    return StoreResult(name, users, seconds, users / seconds, p50_1, p99_1, p50_100, p99_100)


def _postgres_admin(sql: str, base_url: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(base_url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(sql))
    engine.dispose()


def run(users: int, calls: int) -> list[StoreResult]:
    import redis

    results = []
    with tempfile.TemporaryDirectory(prefix="shoprec-bench-feast-") as tmp:
        sqlite_settings = get_settings(home=Path(tmp) / "sqlite")
        results.append(bench_store("sqlite", sqlite_settings, users, calls))

        base = get_settings()
        redis_url = f"redis://127.0.0.1:6379/{REDIS_DB}"
        registry = base.postgres_url.rsplit("/", 1)[0] + f"/{POSTGRES_DB}"
        client = redis.Redis.from_url(redis_url)
        client.flushdb()
        _postgres_admin(f'CREATE DATABASE "{POSTGRES_DB}"', base.postgres_url)
        try:
            redis_settings = get_settings(
                home=Path(tmp) / "redis",
                profile=Profile.PRODUCTION,
                redis_url=redis_url,
                feast_registry_url=registry,
            )
            results.append(bench_store("redis", redis_settings, users, calls))
        finally:
            client.flushdb()
            client.close()
            from sqlalchemy import create_engine

            create_engine(registry).dispose()
            _postgres_admin(f'DROP DATABASE IF EXISTS "{POSTGRES_DB}" WITH (FORCE)', base.postgres_url)
    return results


def markdown(results: list[StoreResult]) -> str:
    lines = [
        "| online store | users | materialize rows/s | 1 user p50 / p99 (ms) | 100 users p50 / p99 (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.store} | {r.users} | {r.rows_per_second:,.0f} | {r.p50_ms_1_user:.2f} / {r.p99_ms_1_user:.2f}"
            f" | {r.p50_ms_100_users:.2f} / {r.p99_ms_100_users:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20000)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = run(args.users, args.calls)
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
