"""Benchmark 3 (pipeline): wall time of each stage and of the whole chain, and cost against size.

Three measurements:

* **The default ``make run``** (full run only): :func:`tasks.demo.run_demo` with the default options,
  i.e. every DAG through real Airflow ``dag.test()``; seconds per DAG as Airflow reports them.
* **The stage chain** the DAGs call, without Airflow's per-run overhead, one stage after another in a
  fresh SHOPREC_HOME: land -> ingest (GX gate, every day) -> features (every day's snapshot) -> Feast
  apply + materialize -> DP training (+ twin, blend tuning) -> registration and promotion gate ->
  publish.  Full run: the Online Retail II file (volume check off, as for any historical backfill)
  and the default synthetic shop; quick run: a small synthetic shop.
* **Scaling** on synthetic shops of growing size (full: 10k, 100k and 999,999 users, the generator's
  maximum; quick: 1k and 3k), ``SCALING_DAYS`` days, 4,000 items: landing, the user feature snapshot of the last
  day, one DP-SGD training epoch (batch 256, seconds per step measured on up to ``MAX_STEPS`` steps and
  multiplied by the epoch's steps) and scoring every user (users/s measured on up to
  ``MAX_SCORED`` users).  The growth exponent is the slope of log(cost) against log(users).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.harness import (
    Context,
    Goal,
    Section,
    line_plot,
    online_retail_file,
    run_in_fresh_home,
    stopwatch,
)

MAX_STEPS = 10
SCALING_DAYS = 7
MAX_SCORED = 20_000


@contextlib.contextmanager
def _env(**values: str) -> Generator[None, None, None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def run_chain(settings: Any, land: Callable[[Path], list[dt.date]], notes: list[str]) -> dict[str, float]:
    """Seconds per stage of the chain the DAGs run (their task bodies' calls, in order).

    As in the DAGs, publishing runs only when the promotion gate made the challenger champion; a
    rejected challenger leaves the publish stage unmeasured (NaN) and its reasons in ``notes``.
    """
    from tasks import ingest
    from tasks.feast_store import apply_definitions, materialize
    from tasks.features import compute_features, snapshot_time
    from tasks.publishing import run_publish, scoring_time_for_days
    from tasks.registry import register_and_gate
    from tasks.training import run_training
    from tasks.training_data import pin_training_data

    settings.ensure_dirs()
    seconds: dict[str, float] = {}
    with stopwatch() as elapsed:
        days = land(settings.landing_dir)
    seconds["land"] = elapsed()
    with stopwatch() as elapsed:
        for day in days:
            ingest.update_catalog(settings, day)
            ingest.ingest_day(
                settings, day, run_id=f"bench__{day}", interval_end=snapshot_time(day).to_pydatetime()
            )
    seconds["ingest (GX gate, every day)"] = elapsed()
    with stopwatch() as elapsed:
        features = compute_features(settings, days)
    seconds["features (every day's snapshot)"] = elapsed()
    with stopwatch() as elapsed:
        apply_definitions(settings)
        materialize(
            settings, dt.datetime.fromisoformat(features.start), dt.datetime.fromisoformat(features.end)
        )
    seconds["Feast apply + materialize"] = elapsed()
    with stopwatch() as elapsed:
        pinned = pin_training_data(settings, "bench")  # the lake days, catalog and Feast state it reads
        manifest = run_training(settings, run_key="bench", training_data_uri=pinned.uri)
    seconds["training (DP + twin + blend)"] = elapsed()
    with stopwatch() as elapsed:
        registration = register_and_gate(settings, manifest.to_dict())
    seconds["registration + gate"] = elapsed()
    seconds["publish"] = math.nan
    if registration.champion_changed:
        with stopwatch() as elapsed:
            run_publish(settings, scoring_time_for_days([d.isoformat() for d in days]))
        seconds["publish"] = elapsed()
    else:
        notes.append(f"the gate rejected the challenger ({'; '.join(registration.reasons)}): not published")
    seconds["whole chain"] = sum(v for v in seconds.values() if not math.isnan(v))
    return seconds


def synthetic_land(users: int, items: int, days: int) -> Callable[[Path], list[dt.date]]:
    def land(landing: Path) -> list[dt.date]:
        from tasks.sources import SyntheticConfig, generate

        return sorted(generate(SyntheticConfig(n_users=users, n_items=items, days=days), landing).days)

    return land


def online_retail_land(ctx: Context) -> Callable[[Path], list[dt.date]]:
    def land(landing: Path) -> list[dt.date]:
        from tasks.sources import load_online_retail

        manifest, _ = load_online_retail(online_retail_file(ctx.repo_root), landing)
        return sorted(manifest.days)

    return land


def default_make_run(ctx: Context) -> dict[str, float]:
    """Seconds per DAG of ``shoprec demo`` with its defaults (real Airflow), in a fresh process.

    A process of its own, as ``make run`` is: Airflow reads AIRFLOW_HOME and its database settings once,
    at import, so this process (which already imported it) cannot point it at a fresh home.
    """
    figures = run_in_fresh_home(ctx, "make_run", ["benchmarks.pipeline", "--make-run"], timeout=1800)
    return {k: float(v) for k, v in figures.items()}


def _make_run_here(out: Path) -> None:
    """``shoprec demo`` with its defaults in this process; seconds per DAG to ``out`` (JSON)."""
    import json

    from rich.console import Console

    from tasks.config import get_settings
    from tasks.demo import DemoOptions, run_demo

    settings = get_settings()
    summary = run_demo(settings, DemoOptions(), console=Console())
    if not summary.ok:
        raise SystemExit(f"the default demo failed: {[r.dag_id for r in summary.runs if not r.succeeded]}")
    per_dag: dict[str, float] = {}
    for result in summary.runs:
        per_dag[result.dag_id] = per_dag.get(result.dag_id, 0.0) + result.seconds
    per_dag["whole chain (incl. landing, Airflow set-up)"] = summary.seconds
    out.write_text(json.dumps(per_dag))


def scaling_point(ctx: Context, users: int) -> dict[str, Any]:
    """Landing, last-day features, one DP epoch and scoring on a synthetic shop of ``users`` users."""
    import torch

    from benchmarks.dp_speed import Side
    from benchmarks.quality import read_landing
    from tasks.catalog import build_item_catalog, history_matrix, user_feature_matrix
    from tasks.config import get_settings
    from tasks.dataset import purchases_between
    from tasks.features import item_popularity_at, user_features_at, user_state_at
    from tasks.model import build_model
    from tasks.publishing import PublishRules, score_top_k
    from tasks.training import build_examples

    landing = ctx.work_dir / f"scale_{users}"
    with stopwatch() as elapsed:
        synthetic_land(users, 4_000, SCALING_DAYS)(landing)
    land_s = elapsed()
    events, items = read_landing(landing)
    at = events["event_timestamp"].max().normalize() + pd.Timedelta(days=1)
    with stopwatch() as elapsed:
        user_features_at(events, items, at, 20)
        item_popularity_at(events, at)
    features_s = elapsed()
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(items), 384)).astype(np.float32)
    embeddings = pd.DataFrame({"item_id": items["item_id"], "embedding": list(vectors)})
    catalog = build_item_catalog(items, embeddings)
    cut = at - pd.Timedelta(days=4)
    state = user_state_at(events, cut, 20)
    examples, _ = build_examples(
        state,
        purchases_between(events, cut, at),
        catalog,
        history_length=20,
        cap_k=20,
        n_negatives=64,
        seed=0,
    )
    batch = 256
    side = Side("book_keeping", get_settings(), catalog, examples, batch)  # the shipped DP-SGD step
    from benchmarks.dp_speed import fixed_batches

    steps_per_epoch = math.ceil(len(examples) / batch)
    timed = min(MAX_STEPS, steps_per_epoch)
    batches = fixed_batches(examples, min(batch, len(examples)), timed + 1)
    side.step(batches[0])
    with stopwatch() as elapsed:
        for b in batches[1:]:
            side.step(b)
    epoch_s = elapsed() / timed * steps_per_epoch
    scored = min(MAX_SCORED, len(state))
    model = build_model(catalog).eval()
    with torch.inference_mode():
        user_vectors = model.user_vectors(
            torch.from_numpy(user_feature_matrix(state.iloc[:scored])),
            torch.from_numpy(history_matrix(state["recent_items"].iloc[:scored].tolist(), catalog, 20)),
        )
        item_vectors = model.item_vectors(torch.arange(1, catalog.n_items + 1))
    empty = [(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))] * scored
    with stopwatch() as elapsed:
        score_top_k(
            user_vectors, item_vectors, rules=PublishRules(), purchases=empty, category=catalog.category_index
        )
    scoring_s = elapsed() / scored * len(state)
    return {
        "users": users,
        "active_users": len(state),
        "events": len(events),
        "train_users": len(examples),
        "land_s": land_s,
        "features_s": features_s,
        "train_epoch_s": epoch_s,
        "train_steps_timed": timed,
        "train_steps_per_epoch": steps_per_epoch,
        "scoring_s": scoring_s,
        "users_scored": scored,
    }


def _slope(xs: list[float], ys: list[float]) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def run(ctx: Context) -> Section:
    from tasks.config import get_settings

    section = Section(key="pipeline", title="3. Pipeline stages and scaling")
    chains: dict[str, dict[str, float]] = {}
    if ctx.quick:
        plan = [("synthetic, 300 users, 30 days", synthetic_land(300, 150, 30), {})]
        sizes = [1_000, 3_000]
    else:
        plan = [
            ("synthetic, make-run defaults (1,500 users, 40 days)", synthetic_land(1_500, 400, 40), {}),
            ("Online Retail II 2009-2010", online_retail_land(ctx), {"volume_check": "off"}),
        ]
        sizes = [10_000, 100_000, 999_999]
    for name, land, overrides in plan:
        home = ctx.work_dir / f"chain_{len(chains)}"
        with _env(SHOPREC_HOME=str(home)):
            chain_notes: list[str] = []
            chains[name] = run_chain(get_settings(home=home, **overrides), land, chain_notes)
            section.notes += [f"{name}: {note}" for note in chain_notes]
    stages = list(next(iter(chains.values())))
    table = section.table("Stage chain without Airflow (seconds)", ["stage", *chains])
    for stage in stages:
        table.add(stage, *(chains[c][stage] for c in chains))
    if not ctx.quick:
        per_dag = default_make_run(ctx)
        dag_table = section.table(
            "Default `make run` through Airflow dag.test() (seconds)", ["DAG", "seconds"]
        )
        for dag_id, seconds in per_dag.items():
            dag_table.add(dag_id, seconds)
        section.data["make_run"] = per_dag
        retail = chains["Online Retail II 2009-2010"]["whole chain"]
        section.goals.append(
            Goal(
                "the Online Retail II chain completes in under 10 minutes on 2 cores (stage chain, no Airflow)",
                retail < 600,
                f"{retail / 60:.1f} min",
            )
        )
    points = [scaling_point(ctx, n) for n in sizes]
    scale = section.table(
        f"Cost against size (synthetic, {SCALING_DAYS} days, 4,000 items; seconds)",
        [
            "users",
            "active users",
            "events",
            "landing",
            "features (last day)",
            "DP epoch",
            "scoring all users",
        ],
    )
    for p in points:
        scale.add(
            p["users"],
            p["active_users"],
            p["events"],
            p["land_s"],
            p["features_s"],
            p["train_epoch_s"],
            p["scoring_s"],
        )
    users = [float(p["active_users"]) for p in points]
    events = [float(p["events"]) for p in points]
    slopes = {
        key: (_slope(users, [p[key] for p in points]), _slope(events, [p[key] for p in points]))
        for key in ("features_s", "train_epoch_s", "scoring_s")
    }
    worst = max(max(s) for s in slopes.values())
    section.goals.append(
        Goal(
            "cost grows no faster than linearly in users and events (log-log slope <= 1.1)",
            worst <= 1.1,
            "; ".join(f"{k[:-2]}: {u:.2f} (users) / {e:.2f} (events)" for k, (u, e) in slopes.items()),
        )
    )
    path, link = ctx.figure_path("pipeline_scaling.png")
    line_plot(
        path,
        {
            "features (last day)": (users, [p["features_s"] for p in points], None),
            "DP training, one epoch": (users, [p["train_epoch_s"] for p in points], None),
            "scoring all users": (users, [p["scoring_s"] for p in points], None),
        },
        title="Stage cost against active users",
        xlabel="active users",
        ylabel="seconds",
        logx=True,
        logy=True,
    )
    section.figures.append(link)
    section.notes += [
        f"DP epoch: seconds per step measured on up to {MAX_STEPS} full batches of 256 users, times the "
        "epoch's steps; scoring: users/s of score_top_k (publish defaults) measured on up to "
        f"{MAX_SCORED:,} users, times the active users — both extrapolated where the table's sizes exceed them",
        "stage chain: the functions the DAG tasks call, in the same order, without dag.test() "
        "(Airflow adds several seconds per run; the default `make run` table shows it per DAG)",
    ]
    section.data.update({"chains": chains, "scaling": points, "slopes": slopes})
    return section


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "--make-run":
        raise SystemExit("usage: python -m benchmarks.pipeline --make-run OUT.json")
    _make_run_here(Path(sys.argv[2]))
