"""The campaign-log ingest (tasks/campaigns/ingest.py) on small landed days: real GX, the ingest key."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers_raw_ids import find_raw_ids

from tasks.campaigns import simulator
from tasks.campaigns.contracts import campaigns_quarantine_dir, exposures_lake_dir, offers_lake_dir
from tasks.campaigns.ingest import (
    CampaignDayRejected,
    ingest_campaign_day,
    ingest_campaign_days,
    offers_in_force,
    read_lake_exposures,
)
from tasks.config import Settings
from tasks.contracts import partition_dir
from tasks.pseudonymize import load_key, pseudonymize, pseudonymize_source_id
from tasks.sources.synthetic import SyntheticConfig

DAY = dt.date(2026, 10, 1)
START = dt.datetime.combine(DAY, dt.time(), dt.UTC)


@pytest.fixture(scope="module")
def population() -> simulator.Population:
    return simulator.build_population(np.random.default_rng(3), shop=SyntheticConfig(n_users=200))


def exposures_of(population: simulator.Population, n: int, day: dt.date = DAY) -> pd.DataFrame:
    rng = np.random.default_rng(4)
    decisions = simulator.draw_decisions(population, simulator.uniform(population), n, rng)
    start = dt.datetime.combine(day, dt.time(), dt.UTC)
    frame = simulator.exposures_frame(
        population, decisions, policy_name="uniform", policy_version="1", start=start, rng=rng
    )
    frame["decision_id"] = [f"RAWDECISION-{day:%Y%m%d}-{i:05d}" for i in range(n)]
    return frame


def land(settings: Settings, day: dt.date, exposures: pd.DataFrame, offers: pd.DataFrame | None) -> Path:
    folder = partition_dir(settings.landing_dir, day)
    folder.mkdir(parents=True, exist_ok=True)
    if offers is not None:
        offers.to_parquet(folder / "offers.parquet", index=False)
    exposures.to_parquet(folder / "exposures.parquet", index=False)
    return folder


def lake_file(settings: Settings, day: dt.date = DAY) -> Path:
    return partition_dir(exposures_lake_dir(settings), day) / "part-0.parquet"


def test_a_landed_day_goes_to_the_lake_pseudonymised(
    shoprec_home: Settings, population: simulator.Population
) -> None:
    exposures = exposures_of(population, 120)
    land(shoprec_home, DAY, exposures, population.offers_frame())
    outcome = ingest_campaign_day(shoprec_home, DAY)
    assert (outcome["status"], outcome["rows_in"], outcome["rows_clean"], outcome["rows_quarantined"]) == (
        "accepted",
        120,
        120,
        0,
    )
    lake = pd.read_parquet(lake_file(shoprec_home))
    key = load_key(shoprec_home)
    assert sorted(lake["user_id"]) == sorted(pseudonymize(str(u), key) for u in exposures["user_id"])
    assert set(lake["decision_id"]) == {
        pseudonymize_source_id(d, key, "decision_id") for d in exposures["decision_id"]
    }
    assert lake["decision_id"].str.startswith("d_").all()
    assert lake["decision_timestamp"].is_monotonic_increasing
    np.testing.assert_allclose(
        np.sort(lake["propensity"].to_numpy()), np.sort(exposures["propensity"].to_numpy())
    )
    offers = pd.read_parquet(partition_dir(offers_lake_dir(shoprec_home), DAY) / "part-0.parquet")
    assert sorted(offers["offer_id"]) == sorted(population.offers_frame()["offer_id"])
    report = json.loads(
        (partition_dir(campaigns_quarantine_dir(shoprec_home), DAY) / "report.json").read_text()
    )
    assert report["status"] == "accepted"
    assert report["failed_expectation_counts"] == {}


def test_raw_ids_never_reach_the_lake_or_the_quarantine(
    shoprec_home: Settings, population: simulator.Population
) -> None:
    exposures = exposures_of(population, 100)
    exposures.loc[0, "propensity"] = 0.0  # a quarantined row keeps pseudonyms too
    land(shoprec_home, DAY, exposures, population.offers_frame())
    ingest_campaign_day(shoprec_home, DAY)
    raw = {str(u) for u in exposures["user_id"]} | set(exposures["decision_id"])
    for root in (shoprec_home.lake_dir, shoprec_home.quarantine_dir, shoprec_home.reports_dir):
        assert root.is_dir()
        assert find_raw_ids(root, raw) == []


def test_bad_propensities_are_quarantined_with_counted_reasons(
    shoprec_home: Settings, population: simulator.Population
) -> None:
    exposures = exposures_of(population, 200)
    exposures["propensity"] = exposures["propensity"].astype(float)
    exposures.loc[[1, 2], "propensity"] = np.nan
    exposures.loc[3, "propensity"] = 0.0
    exposures.loc[4, "propensity"] = 1.5
    land(shoprec_home, DAY, exposures, population.offers_frame())
    outcome = ingest_campaign_day(shoprec_home, DAY)
    assert outcome["reasons"] == {"propensity_in_unit_interval": 2, "propensity_present": 2}
    assert (outcome["rows_clean"], outcome["rows_quarantined"]) == (196, 4)
    lake = pd.read_parquet(lake_file(shoprec_home))
    assert len(lake) == 196
    assert ((lake["propensity"] > 0) & (lake["propensity"] <= 1)).all()
    folder = partition_dir(campaigns_quarantine_dir(shoprec_home), DAY)
    rows = pd.read_parquet(folder / "rows.parquet")
    key = load_key(shoprec_home)
    by_id = dict(zip(rows["decision_id"], rows["failed_expectations"], strict=True))
    assert list(by_id[pseudonymize_source_id(exposures.at[3, "decision_id"], key, "decision_id")]) == [
        "propensity_in_unit_interval"
    ]
    assert sorted(rows["source_row"]) == [1, 2, 3, 4]
    report = json.loads((folder / "report.json").read_text())
    assert report["failed_expectation_counts"] == outcome["reasons"]


def test_too_many_bad_rows_reject_the_day_and_nothing_reaches_the_lake(
    shoprec_home: Settings, population: simulator.Population
) -> None:
    exposures = exposures_of(population, 40)
    land(shoprec_home, DAY, exposures, population.offers_frame())
    ingest_campaign_day(shoprec_home, DAY)
    assert lake_file(shoprec_home).is_file()
    exposures.loc[0:9, "propensity"] = 0.0  # 25% of the day
    land(shoprec_home, DAY, exposures, population.offers_frame())
    with pytest.raises(CampaignDayRejected, match=r"10 of 40 exposure rows .*propensity_in_unit_interval=10"):
        ingest_campaign_day(shoprec_home, DAY)
    assert not partition_dir(exposures_lake_dir(shoprec_home), DAY).exists()  # the earlier run's day too
    assert not partition_dir(offers_lake_dir(shoprec_home), DAY).exists()
    report = json.loads(
        (partition_dir(campaigns_quarantine_dir(shoprec_home), DAY) / "report.json").read_text()
    )
    assert report["status"] == "rejected"
    assert report["rows_quarantined"] == 10


def test_a_rerun_is_byte_identical(shoprec_home: Settings, population: simulator.Population) -> None:
    exposures = exposures_of(population, 80)
    exposures.loc[5, "propensity"] = -1.0
    land(shoprec_home, DAY, exposures, population.offers_frame())
    ingest_campaign_day(shoprec_home, DAY)
    files = sorted(
        p
        for root in (shoprec_home.campaigns_dir, campaigns_quarantine_dir(shoprec_home))
        for p in root.rglob("*")
        if p.is_file()
    )
    first = {p: p.read_bytes() for p in files}
    ingest_campaign_day(shoprec_home, DAY)
    assert {p: p.read_bytes() for p in files} == first
    assert [p.name for p in exposures_lake_dir(shoprec_home).iterdir()] == ["date=2026-10-01"]


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda folder: (folder / "exposures.parquet").write_bytes(b"PAR1 not parquet"), r"unreadable"),
        (
            lambda folder: (
                pd.read_parquet(folder / "exposures.parquet")
                .drop(columns=["propensity"])
                .to_parquet(folder / "exposures.parquet")
            ),
            r"propensity",
        ),
        (lambda folder: (folder / "exposures.parquet").write_bytes(b""), r"empty file"),
        (
            # the contract's own policy_name passes the personal-data check; an extra name column does not
            lambda folder: (
                pd.read_parquet(folder / "exposures.parquet")
                .assign(customer_name="Jane Doe")
                .to_parquet(folder / "exposures.parquet")
            ),
            r"personal-data columns are refused: customer_name$",
        ),
    ],
    ids=["not-parquet", "missing-column", "empty", "personal-data-column"],
)
def test_a_malformed_file_is_refused_in_one_line(
    shoprec_home: Settings, population: simulator.Population, write: object, message: str
) -> None:
    folder = land(shoprec_home, DAY, exposures_of(population, 30), population.offers_frame())
    write(folder)  # type: ignore[operator]
    with pytest.raises(CampaignDayRejected, match=message) as info:
        ingest_campaign_day(shoprec_home, DAY)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("campaign logs of 2026-10-01 rejected, nothing written to the lake")
    assert not exposures_lake_dir(shoprec_home).exists()


def test_csv_landing_is_parsed_and_unparseable_values_are_named(
    shoprec_home: Settings, population: simulator.Population
) -> None:
    exposures = exposures_of(population, 100)
    folder = partition_dir(shoprec_home.landing_dir, DAY)
    folder.mkdir(parents=True)
    population.offers_frame().to_csv(folder / "offers.csv", index=False)
    text = exposures.astype(object)
    text.loc[7, "propensity"] = "high"
    text.to_csv(folder / "exposures.csv", index=False)
    outcome = ingest_campaign_day(shoprec_home, DAY)
    assert outcome["reasons"] == {"propensity_parses_as_contract_type": 1, "propensity_present": 1}
    lake = pq.read_table(lake_file(shoprec_home))
    assert lake.num_rows == 99
    assert lake.column("clicked").type == "bool"


def test_offers_carry_forward_and_a_day_without_exposures_is_none(
    shoprec_home: Settings, population: simulator.Population
) -> None:
    land(shoprec_home, DAY, exposures_of(population, 30), population.offers_frame())
    later = DAY + dt.timedelta(days=1)
    land(shoprec_home, later, exposures_of(population, 30, later), None)  # no offers file that day
    empty = DAY + dt.timedelta(days=2)
    partition_dir(shoprec_home.landing_dir, empty).mkdir(parents=True)
    outcomes = ingest_campaign_days(shoprec_home, [DAY, later, empty])
    assert [o["status"] for o in outcomes] == ["accepted", "accepted", "none"]
    assert lake_file(shoprec_home, later).is_file()


def _priced(population: simulator.Population, percent: float) -> pd.DataFrame:
    """The population's offers with ``pct10`` at ``percent`` off: the day's offers, told apart by value."""
    frame = population.offers_frame()
    frame.loc[frame["offer_id"] == "pct10", "value"] = percent
    return frame


def _pct(settings: Settings) -> int | None:
    """The percent off of ``pct10`` in force on DAY (whole percents: the test's offers differ by 10)."""
    offers = offers_in_force(settings, DAY)
    return None if offers is None else round(offers.set_index("offer_id").at["pct10", "value"])


def test_a_rerun_without_its_offers_file_drops_the_days_earlier_offers(
    shoprec_home: Settings, population: simulator.Population
) -> None:
    """A day re-landed without offers is judged (and read back) with the offers in force before it,
    as on a first run without one, not with the offers of its earlier run."""
    before = DAY - dt.timedelta(days=1)
    land(shoprec_home, before, exposures_of(population, 30, before), _priced(population, 10.0))
    land(shoprec_home, DAY, exposures_of(population, 30), _priced(population, 20.0))
    ingest_campaign_days(shoprec_home, [before, DAY])
    assert _pct(shoprec_home) == 20
    (partition_dir(shoprec_home.landing_dir, DAY) / "offers.parquet").unlink()
    outcome = ingest_campaign_day(shoprec_home, DAY)
    assert outcome["status"] == "accepted"
    assert not partition_dir(offers_lake_dir(shoprec_home), DAY).exists()
    assert _pct(shoprec_home) == 10
    assert len(read_lake_exposures(shoprec_home, DAY, DAY)) == 30


def test_a_crash_between_the_offers_and_the_exposures_write_never_pairs_new_offers_with_old_exposures(
    shoprec_home: Settings, population: simulator.Population, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The day is published by its marker, written last: after a crash between the two partition
    writes the readers see neither the new offers beside the old exposures nor half the day."""
    from tasks.campaigns import ingest

    land(shoprec_home, DAY, exposures_of(population, 30), _priced(population, 20.0))
    ingest_campaign_day(shoprec_home, DAY)
    assert _pct(shoprec_home) == 20
    land(shoprec_home, DAY, exposures_of(population, 50), _priced(population, 30.0))
    real = ingest.replace_dir

    def crash_on_exposures(target: Path, write: object, **kwargs: object) -> Path:
        if target == partition_dir(exposures_lake_dir(shoprec_home), DAY):
            raise OSError("injected crash between the offers and the exposures write")
        return real(target, write, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ingest, "replace_dir", crash_on_exposures)
    with pytest.raises(OSError, match="injected crash"):
        ingest_campaign_day(shoprec_home, DAY)
    # the new offers are on disk beside the old exposures: the day is not published
    on_disk = pd.read_parquet(partition_dir(offers_lake_dir(shoprec_home), DAY) / "part-0.parquet")
    assert round(on_disk.set_index("offer_id").at["pct10", "value"]) == 30
    assert len(pd.read_parquet(lake_file(shoprec_home))) == 30
    assert _pct(shoprec_home) is None
    assert read_lake_exposures(shoprec_home, DAY, DAY).empty
    monkeypatch.setattr(ingest, "replace_dir", real)
    ingest_campaign_day(shoprec_home, DAY)  # the re-run publishes the day whole
    assert _pct(shoprec_home) == 30
    assert len(read_lake_exposures(shoprec_home, DAY, DAY)) == 50
