"""``training_due`` against a real MLflow registry (embedded SQLite) and a lake of partition folders.

The scenario of issue 16: a backfill lands 20 days while train_recommender runs. The lake already
holds day 19 when a run triggered by an older ``features`` event checks; it is judged on the days its
event names, against the data end (tag ``shoprec.data_end``) of the versions other runs registered.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from tasks.config import Settings, get_settings
from tasks.contracts import partition_dir
from tasks.registry import data_tags, last_trained_data_end, training_due

pytestmark = pytest.mark.integration

D0 = dt.date(2025, 6, 1)
LAKE = [D0 + dt.timedelta(days=k) for k in range(20)]


def _register(settings: Settings, run_key: str, days: list[dt.date], source: Path) -> None:
    from tasks.registry import client

    mlflow_client = client(settings)
    name = settings.registered_model_name
    if not mlflow_client.search_registered_models(f"name = '{name}'"):
        mlflow_client.create_registered_model(name)
    mlflow_client.create_model_version(
        name, source.as_uri(), tags={"shoprec.run_key": run_key, **data_tags(days)}
    )


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("SHOPREC_EVAL_DAYS", "4")
    monkeypatch.setenv("SHOPREC_MIN_TRAINING_INTERVAL_HOURS", "48")
    settings = get_settings(home=tmp_path / "shoprec")
    for day in LAKE:
        partition_dir(settings.events_dir, day).mkdir(parents=True)
    (tmp_path / "model").mkdir()
    return settings


def test_the_first_run_with_enough_days_is_due_and_earlier_ones_are_not(settings: Settings) -> None:
    assert last_trained_data_end(settings) is None
    assert not training_due(settings, LAKE[10:11], run_key="r-day10").due  # 11 days < 12
    decision = training_due(settings, LAKE[11:12], run_key="r-day11")
    assert (decision.due, decision.reason) == (True, "no version registered yet; data end 2025-06-12")


def test_an_older_event_is_not_due_however_far_the_lake_has_grown(settings: Settings, tmp_path: Path) -> None:
    _register(settings, "r-day15", LAKE[:16], tmp_path / "model")
    assert last_trained_data_end(settings) == LAKE[15]
    # the lake holds day 19; the run's own event names day 13 (the old rule said "due": 19 - 15 >= 48 h)
    assert not training_due(settings, LAKE[13:14], run_key="r-day13").due
    assert not training_due(settings, LAKE[16:17], run_key="r-day16").due  # 24 h < 48 h
    assert training_due(settings, LAKE[17:19], run_key="r-day18").due  # data end day 18: 72 h
    assert training_due(settings, run_key="manual").due  # no day named: the lake's latest, day 19


def test_a_rerun_of_a_run_that_registered_is_judged_without_its_own_version(
    settings: Settings, tmp_path: Path
) -> None:
    _register(settings, "r-day11", LAKE[:12], tmp_path / "model")
    assert not training_due(settings, LAKE[11:12], run_key="another-run").due  # 0 h < 48 h
    assert training_due(settings, LAKE[11:12], run_key="r-day11").due  # its own version left out
