"""Attacks on the pseudonyms: invoice linkage, a key that does not match the lake, a lost key.

Each test plays the adversary of issue 14 against real ingest (Great Expectations included, no
Airflow) and asserts that the attack finds nothing or is refused.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers_landing import write_good_day
from helpers_raw_ids import find_raw_ids
from helpers_settings import only_shoprec_env

from tasks.config import Settings, get_settings
from tasks.contracts import partition_dir
from tasks.embeddings import tiny_random_encoder
from tasks.features import compute_features
from tasks.ingest import ingest_day, update_catalog
from tasks.pseudonymize import (
    KEY_FILE_NAME,
    PseudonymKeyError,
    fingerprint_path,
    key_fingerprint,
    load_key,
)
from tasks.sources.online_retail import load_online_retail

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "online_retail_sample.parquet"
RETAIL_DAY = dt.date(2009, 12, 1)  # 3,223 invoice lines of the sample
DAY = dt.date(2024, 3, 5)
NEXT_DAY = dt.date(2024, 3, 6)
_PSEUDONYM = re.compile(r"^[eus]_[0-9a-f]{32}$")


def _strings(path: Path) -> list[str]:
    """Every string value of a parquet file, list columns flattened."""
    values: list[str] = []
    for column in pq.read_table(path).columns:
        kind = column.type
        while pa.types.is_list(kind) or pa.types.is_large_list(kind):
            column = pa.chunked_array([chunk.flatten() for chunk in column.chunks], type=kind.value_type)
            kind = kind.value_type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            values.extend(v for v in column.to_pylist() if v is not None)
    return values


def _linking_values(roots: list[Path], invoices: set[str]) -> list[tuple[str, str]]:
    """(file, value) pairs whose value equals or contains a raw invoice number.

    A keyed pseudonym (prefix + 32 hex chars) is an HMAC output: digits inside it are not an invoice.
    """
    hits = []
    for root in roots:
        for path in sorted(root.rglob("*.parquet")):
            for value in _strings(path):
                if _PSEUDONYM.match(value):
                    continue
                if value in invoices or any(invoice in value for invoice in invoices):
                    hits.append((str(path), value))
    return hits


@pytest.fixture
def retail_ingested(shoprec_home: Settings, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, pd.DataFrame]:
    """One Online Retail day landed, one row corrupted (so quarantine holds a row), ingested, featurised."""
    monkeypatch.setenv("SHOPREC_VOLUME_CHECK", "off")
    settings = get_settings()
    load_online_retail(SAMPLE, settings.landing_dir, start=RETAIL_DAY, end=RETAIL_DAY)
    landing_file = partition_dir(settings.landing_dir, RETAIL_DAY) / "events.parquet"
    landing = pq.read_table(landing_file).to_pandas()
    landing.loc[0, "quantity"] = 0  # fails quantity_positive: this line goes to quarantine
    pq.write_table(pa.Table.from_pandas(landing, schema=pq.read_schema(landing_file)), landing_file)
    update_catalog(settings, RETAIL_DAY)
    ingest_day(settings, RETAIL_DAY, run_id="attack")
    compute_features(settings, [RETAIL_DAY], encoder=tiny_random_encoder(dim=16))
    return settings, landing


def test_no_lake_feature_or_quarantine_value_carries_an_invoice_number(
    retail_ingested: tuple[Settings, pd.DataFrame],
) -> None:
    """Whoever holds the shop's invoices finds none of them, whole or inside an id, past landing."""
    settings, landing = retail_ingested
    invoices = set(landing["session_id"])
    assert len(invoices) > 50
    assert (settings.quarantine_dir / f"date={RETAIL_DAY}" / "rows.parquet").exists()
    roots = [settings.lake_dir, settings.quarantine_dir, settings.features_dir]
    assert _linking_values(roots, invoices) == []
    # and no file at all (reports, data docs, JSON) holds a landing event id such as "489434-0001"
    event_ids = set(landing["event_id"])
    hits = find_raw_ids(settings.home, event_ids)
    assert [p for p in hits if settings.landing_dir not in p.parents] == []
    assert find_raw_ids(settings.landing_dir, event_ids) != []  # the search can find them


def test_hashed_session_ids_still_group_one_invoices_lines(
    retail_ingested: tuple[Settings, pd.DataFrame],
) -> None:
    settings, landing = retail_ingested
    lake = pq.read_table(partition_dir(settings.events_dir, RETAIL_DAY) / "part-0.parquet").to_pandas()
    quarantine = pq.read_table(settings.quarantine_dir / f"date={RETAIL_DAY}" / "rows.parquet").to_pandas()
    ingested = pd.concat([lake, quarantine[lake.columns]], ignore_index=True)
    assert len(ingested) == len(landing)
    assert ingested["event_id"].is_unique
    assert ingested["event_id"].str.match(r"^e_[0-9a-f]{32}$").all()
    assert ingested["session_id"].str.match(r"^s_[0-9a-f]{32}$").all()
    # one session per invoice: as many sessions as invoices, lines per session as lines per invoice
    sizes = sorted(ingested.groupby("session_id").size())
    assert sizes == sorted(landing.groupby("session_id").size())
    # and every session is one customer at one moment, as an invoice is
    per_session = ingested.groupby("session_id").agg(
        users=("user_id", "nunique"), moments=("event_timestamp", "nunique")
    )
    assert (per_session["users"] == 1).all()
    assert (per_session["moments"] == 1).all()


def test_same_input_and_key_give_the_same_lake_bytes(
    shoprec_home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOPREC_VOLUME_CHECK", "off")
    monkeypatch.setenv("SHOPREC_PSEUDONYM_KEY", "stable-key")
    settings = get_settings()
    load_online_retail(SAMPLE, settings.landing_dir, start=RETAIL_DAY, end=RETAIL_DAY)
    update_catalog(settings, RETAIL_DAY)
    lake_file = partition_dir(settings.events_dir, RETAIL_DAY) / "part-0.parquet"
    ingest_day(settings, RETAIL_DAY, run_id="first")
    first = lake_file.read_bytes()
    ingest_day(settings, RETAIL_DAY, run_id="second")
    assert lake_file.read_bytes() == first


def _ingest(settings: Settings, day: dt.date) -> None:
    write_good_day(settings.landing_dir, day, n=20)
    update_catalog(settings, day)
    ingest_day(settings, day, run_id=f"r-{day}")


def test_a_key_that_does_not_match_the_lake_is_refused_in_one_line(
    shoprec_home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lake written with key A refuses to ingest with key B: no day gets pseudonyms of another key."""
    only_shoprec_env(monkeypatch, {"SHOPREC_HOME": str(shoprec_home.home), "SHOPREC_PSEUDONYM_KEY": "key-A"})
    _ingest(get_settings(), DAY)
    only_shoprec_env(monkeypatch, {"SHOPREC_HOME": str(shoprec_home.home), "SHOPREC_PSEUDONYM_KEY": "key-B"})
    with pytest.raises(PseudonymKeyError) as refused:
        _ingest(get_settings(), NEXT_DAY)
    message = str(refused.value)
    assert "\n" not in message
    assert "SHOPREC_PSEUDONYM_KEY" in message
    assert "is not the key the lake" in message
    assert not partition_dir(shoprec_home.events_dir, NEXT_DAY).exists()
    assert not partition_dir(shoprec_home.quarantine_dir, NEXT_DAY).exists()


def test_a_lost_key_file_with_an_existing_lake_is_refused_not_replaced(shoprec_home: Settings) -> None:
    _ingest(shoprec_home, DAY)  # no key configured: the local key file is created for the new lake
    key_file = shoprec_home.secrets_dir / KEY_FILE_NAME
    assert key_file.exists()
    key_file.unlink()  # lost (or a mistyped secrets folder)
    with pytest.raises(PseudonymKeyError, match=r"refusing to create a new key") as refused:
        _ingest(shoprec_home, NEXT_DAY)
    assert "\n" not in str(refused.value)
    assert not key_file.exists()
    assert not partition_dir(shoprec_home.events_dir, NEXT_DAY).exists()


def test_a_lost_key_variable_does_not_fall_back_to_a_new_key_file(
    shoprec_home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    only_shoprec_env(monkeypatch, {"SHOPREC_HOME": str(shoprec_home.home), "SHOPREC_PSEUDONYM_KEY": "key-A"})
    _ingest(get_settings(), DAY)
    only_shoprec_env(monkeypatch, {"SHOPREC_HOME": str(shoprec_home.home)})  # the variable got lost
    with pytest.raises(PseudonymKeyError, match=r"refusing to create a new key"):
        load_key(get_settings())
    assert not (shoprec_home.secrets_dir / KEY_FILE_NAME).exists()


def test_the_lake_records_a_fingerprint_never_the_key(
    shoprec_home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    only_shoprec_env(
        monkeypatch, {"SHOPREC_HOME": str(shoprec_home.home), "SHOPREC_PSEUDONYM_KEY": "key-A-secret"}
    )
    _ingest(get_settings(), DAY)
    recorded = fingerprint_path(shoprec_home).read_text().strip()
    assert recorded == key_fingerprint(b"key-A-secret")
    assert find_raw_ids(shoprec_home.home, {"key-A-secret"}) == []
