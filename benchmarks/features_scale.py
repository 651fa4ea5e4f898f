"""Benchmark (features_scale): cost of the user feature snapshot against the number of users.

Synthetic shops of growing size from the project's generator (``SCALING_DAYS`` days, 4,000 items, as
the pipeline benchmark's scaling table): 10k and 100k users, and 999,999 (the generator's maximum) in
the full run only.  For each shop, the last day's snapshot as ``build_features`` computes it:
:func:`tasks.features.user_features_at` (THE user state plus top categories) and
:func:`tasks.features.item_popularity_at`, wall and CPU seconds of one call each after one warm-up
call on the smallest shop.  The growth exponent is the slope of log(seconds) against log(active
users) between the two largest shops (issue 19: at most 1.0, linear).
"""

from __future__ import annotations

import math
import shutil
import time
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.harness import Context, Goal, Section, line_plot
from benchmarks.pipeline import SCALING_DAYS, synthetic_land
from benchmarks.quality import read_landing

ITEMS = 4_000
HISTORY = 20


def _timed(call: Any) -> tuple[float, float, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = call()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def point(ctx: Context, users: int) -> dict[str, Any]:
    from tasks.features import item_popularity_at, user_features_at

    landing = ctx.work_dir / f"shop_{users}"
    synthetic_land(users, ITEMS, SCALING_DAYS)(landing)
    events, items = read_landing(landing)
    shutil.rmtree(landing)
    at = events["event_timestamp"].max().normalize() + pd.Timedelta(days=1)
    user_wall, user_cpu, frame = _timed(lambda: user_features_at(events, items, at, HISTORY))
    pop_wall, pop_cpu, _ = _timed(lambda: item_popularity_at(events, at))
    return {
        "users": users,
        "active_users": len(frame),
        "events": len(events),
        "user_features_s": user_wall,
        "user_features_cpu_s": user_cpu,
        "item_popularity_s": pop_wall,
        "item_popularity_cpu_s": pop_cpu,
    }


def slope(xs: list[float], ys: list[float]) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def run(ctx: Context) -> Section:
    from tasks.features import user_features_at

    section = Section(key="features_scale", title="Features at scale (user feature snapshot)")
    sizes = [10_000, 100_000] if ctx.quick else [10_000, 100_000, 999_999]
    warm = synthetic_land(300, 100, SCALING_DAYS)
    warm(ctx.work_dir / "warm")
    events, items = read_landing(ctx.work_dir / "warm")
    user_features_at(
        events, items, events["event_timestamp"].max().normalize() + pd.Timedelta(days=1), HISTORY
    )
    points = [point(ctx, n) for n in sizes]
    table = section.table(
        f"Last-day snapshot, synthetic shop ({SCALING_DAYS} days, {ITEMS:,} items): seconds, wall / CPU",
        [
            "users",
            "active users",
            "events",
            "user_features_at",
            "item_popularity_at",
            "user ms per active user",
        ],
    )
    for p in points:
        table.add(
            p["users"],
            p["active_users"],
            p["events"],
            f"{p['user_features_s']:.2f} / {p['user_features_cpu_s']:.2f}",
            f"{p['item_popularity_s']:.2f} / {p['item_popularity_cpu_s']:.2f}",
            1000 * p["user_features_s"] / p["active_users"],
        )
    top = points[-2:]
    users = [float(p["active_users"]) for p in top]
    wall = slope(users, [p["user_features_s"] for p in top])
    cpu = slope(users, [p["user_features_cpu_s"] for p in top])
    both = slope(users, [p["user_features_s"] + p["item_popularity_s"] for p in top])
    span = f"{top[0]['users']:,} -> {top[1]['users']:,} users"
    section.goals.append(
        Goal(
            f"user features cost grows linearly, {span} (log-log slope <= 1.0)",
            wall <= 1.0 if math.isfinite(wall) else None,
            f"{wall:.2f} wall, {cpu:.2f} CPU; with item popularity {both:.2f} wall",
        )
    )
    path, link = ctx.figure_path("features_scale.png")
    line_plot(
        path,
        {
            "user_features_at (wall)": (
                [float(p["active_users"]) for p in points],
                [p["user_features_s"] for p in points],
                None,
            ),
            "item_popularity_at (wall)": (
                [float(p["active_users"]) for p in points],
                [p["item_popularity_s"] for p in points],
                None,
            ),
        },
        title="Feature snapshot cost against active users",
        xlabel="active users",
        ylabel="seconds",
        logx=True,
        logy=True,
    )
    section.figures.append(link)
    section.notes += [
        "user_features_at is vectorised on integer codes (issue 19); tests/unit/test_features_vectorised.py "
        "pins it equal to the groupby-apply it replaced",
        "CPU seconds are this process's (both cores when numpy or pandas use them); wall seconds depend on "
        "what else the machine runs (the load average is in the machine table)",
    ]
    section.data["points"] = points
    return section
