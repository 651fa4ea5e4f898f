"""Attacks on the campaign-log ingest (tasks/campaigns/ingest.py), real GX, the ingest key.

* **A propensity that is positive but useless.**  ``1e-320`` (subnormal) or ``1e-310`` lies in (0, 1]
  yet its importance weight ``1 / p`` is ``inf`` (or beyond any reward scale): one such row must be
  quarantined, not put in the lake where off-policy evaluation divides by it.
* **Non-finite and non-numeric propensities** (``inf``, ``-inf``, ``nan``, strings) in parquet and CSV.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from tasks.campaigns import simulator
from tasks.campaigns.contracts import exposures_lake_dir
from tasks.campaigns.ingest import ingest_campaign_day
from tasks.config import Settings
from tasks.contracts import partition_dir
from tasks.sources.synthetic import SyntheticConfig

DAY = dt.date(2026, 10, 1)


@pytest.fixture(scope="module")
def population() -> simulator.Population:
    return simulator.build_population(np.random.default_rng(3), shop=SyntheticConfig(n_users=200))


def _exposures(population: simulator.Population, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(4)
    decisions = simulator.draw_decisions(population, simulator.uniform(population), n, rng)
    start = dt.datetime.combine(DAY, dt.time(), dt.UTC)
    frame = simulator.exposures_frame(
        population, decisions, policy_name="uniform", policy_version="1", start=start, rng=rng
    )
    frame["decision_id"] = [f"RAWDECISION-{i:05d}" for i in range(n)]
    frame["propensity"] = frame["propensity"].astype(float)
    return frame


def _lake(settings: Settings) -> pd.DataFrame:
    return pd.read_parquet(partition_dir(exposures_lake_dir(settings), DAY) / "part-0.parquet")


BAD = [1e-320, 1e-310, 5e-324, float("inf"), float("-inf"), float("nan"), 0.0, -0.5, 1.0000001]


def test_parquet_propensities_without_a_finite_importance_weight_are_quarantined(
    shoprec_home: Settings, population: simulator.Population
) -> None:
    exposures = _exposures(population, 200)
    exposures.loc[: len(BAD) - 1, "propensity"] = BAD
    folder = partition_dir(shoprec_home.landing_dir, DAY)
    folder.mkdir(parents=True)
    population.offers_frame().to_parquet(folder / "offers.parquet", index=False)
    exposures.to_parquet(folder / "exposures.parquet", index=False)
    outcome = ingest_campaign_day(shoprec_home, DAY)
    assert (outcome["rows_clean"], outcome["rows_quarantined"]) == (200 - len(BAD), len(BAD))
    weights = 1.0 / _lake(shoprec_home)["propensity"].to_numpy()
    assert np.isfinite(weights).all()
    assert weights.max() < 1e6


def test_csv_propensities_without_a_finite_importance_weight_are_quarantined(
    shoprec_home: Settings, population: simulator.Population
) -> None:
    exposures = _exposures(population, 400).astype(object)
    texts = ["1e-320", "1e-310", "4.9e-324", "inf", "-Infinity", "NaN", "0", "-0.5", "1.5", "high", "0x1p-3"]
    exposures.loc[: len(texts) - 1, "propensity"] = texts
    folder = partition_dir(shoprec_home.landing_dir, DAY)
    folder.mkdir(parents=True)
    population.offers_frame().to_csv(folder / "offers.csv", index=False)
    exposures.to_csv(folder / "exposures.csv", index=False)
    outcome = ingest_campaign_day(shoprec_home, DAY)
    assert (outcome["rows_clean"], outcome["rows_quarantined"]) == (400 - len(texts), len(texts))
    weights = 1.0 / _lake(shoprec_home)["propensity"].to_numpy()
    assert np.isfinite(weights).all()
    assert weights.max() < 1e6
