"""The corpus of real-world export variants (issue 15): each variant of a slice of the shared Online
Retail II file through ``shoprec load-online-retail``, with its expected outcome (tests/export_variants.py).

The slice is four trading days, 2009-12-10 to 2009-12-14: days after the 12th make day-first and
month-first dates tell themselves apart (a slice of days 1-12 only is refused as ambiguous, as it should
be).  Data: UCI Online Retail II, Daqing Chen, CC BY 4.0 (tests/data/ATTRIBUTION.md); nothing derived is
committed.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from export_variants import (
    EVENT_VARIANTS,
    VARIANTS,
    Fails,
    Same,
    Shifted,
    Variant,
    canonical_slice,
    shared_file,
    with_bot,
)

from tasks.cli import app
from tasks.config import Settings
from tasks.contracts import list_partitions
from tasks.ingest import DOMINANT_USER, ingest_day, update_catalog
from tasks.pseudonymize import load_key, pseudonymize
from tasks.sources.loader import load_contract_files
from tasks.sources.online_retail import LOCAL_TZ, OnlineRetailReport, load_online_retail

FIRST, LAST = pd.Timestamp("2009-12-10"), pd.Timestamp("2009-12-14")


@pytest.fixture(scope="module")
def canonical(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path, OnlineRetailReport]:
    """The slice as the shared file has it, and what the adapter makes of it."""
    frame = canonical_slice(shared_file(), FIRST, LAST)
    folder = tmp_path_factory.mktemp("canonical")
    frame.to_parquet(folder / "slice.parquet", index=False)
    _, report = load_online_retail(folder / "slice.parquet", folder / "landing")
    return frame, folder / "landing", report


def _table(landing: Path, name: str) -> pd.DataFrame:
    files = sorted(landing.glob(f"date=*/{name}.parquet"))
    return pd.concat([pq.read_table(p).to_pandas() for p in files], ignore_index=True)


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        app(args=args, prog_name="shoprec")
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def test_the_slice_is_what_the_corpus_needs(canonical: tuple[pd.DataFrame, Path, OnlineRetailReport]) -> None:
    frame, _, report = canonical
    assert report.days == 4
    assert report.kept.rows > 3000
    # the missing customers (the placeholder variants' "customer") hold more than the dominant-user share
    # of some day's rows: were they one customer, the gate would have to catch them
    missing = frame["Customer ID"].isna().groupby(pd.to_datetime(frame["InvoiceDate"]).dt.date).mean()
    assert missing.max() > Settings().max_user_share


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
def test_variant_has_its_expected_outcome(
    variant: Variant,
    canonical: tuple[pd.DataFrame, Path, OnlineRetailReport],
    shoprec_home: Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    frame, canonical_landing, expected = canonical
    path = variant.write(frame, tmp_path)
    landing = shoprec_home.landing_dir
    outcome = variant.outcome
    if isinstance(outcome, Fails):
        code, out, err = run_cli(["load-online-retail", str(path)], capsys)
        assert (code, err) == (
            outcome.exit_code,
            f"shoprec: error: {outcome.message(frame).format(path=path)}\n",
        )
        assert "Traceback" not in err
        assert "wrote" not in out
        assert list_partitions(landing) == []
        return

    code, out, err = run_cli(["load-online-retail", str(path)], capsys)
    assert (code, err) == (0, "")
    report = json.loads((landing / "_online_retail_report.json").read_text())
    assert report["kept"] == asdict(expected.kept)
    events, reference = _table(landing, "events"), _table(canonical_landing, "events")
    written = f"wrote {expected.kept.rows:,} purchase events of {expected.kept.customers:,} customers"
    assert written in " ".join(out.split())
    if isinstance(outcome, Same):
        pd.testing.assert_frame_equal(events, reference)
        pd.testing.assert_frame_equal(_table(landing, "items"), _table(canonical_landing, "items"))
        assert report["dropped"] == {**expected.dropped, **outcome.dropped(frame)}
        assert report["days"] == expected.days
        assert list_partitions(landing) == list_partitions(canonical_landing)
    else:
        assert isinstance(outcome, Shifted)
        wall = reference["event_timestamp"].dt.tz_convert(outcome.wall_clock_zone).dt.tz_localize(None)
        reread = wall.dt.tz_localize(LOCAL_TZ).dt.tz_convert("UTC").astype(reference["event_timestamp"].dtype)
        assert (reread != reference["event_timestamp"]).all()  # the zone matters for every row
        shifted = reference.assign(event_timestamp=reread)
        key = ["event_id"]
        pd.testing.assert_frame_equal(
            events.sort_values(key).reset_index(drop=True), shifted.sort_values(key).reset_index(drop=True)
        )
        assert list_partitions(landing) == sorted(set(reread.dt.date))


def test_the_same_file_landed_twice_is_idempotent(
    canonical: tuple[pd.DataFrame, Path, OnlineRetailReport], shoprec_home: Settings, tmp_path: Path
) -> None:
    frame, _, expected = canonical
    path = tmp_path / "delivery.parquet"
    frame.to_parquet(path, index=False)
    landing = shoprec_home.landing_dir
    load_online_retail(path, landing)
    first = {p.relative_to(landing): p.read_bytes() for p in landing.rglob("*.parquet")}
    manifest, report = load_online_retail(path, landing)
    again = {p.relative_to(landing): p.read_bytes() for p in landing.rglob("*.parquet")}
    assert again == first
    assert (manifest.n_events, report.kept) == (expected.kept.rows, expected.kept)
    assert len(_table(landing, "events")) == expected.kept.rows


def test_a_day_with_a_bot_is_quarantined_by_pseudonym_and_share(
    canonical: tuple[pd.DataFrame, Path, OnlineRetailReport], shoprec_home: Settings, tmp_path: Path
) -> None:
    """One customer with a third of a day's lines: its rows are quarantined as user_share_within_limit,
    the report names its pseudonym and share (never the raw id), the other customers reach the lake."""
    frame, canonical_landing, _ = canonical
    day = FIRST.date()
    day_events = len(pq.read_table(canonical_landing / f"date={day}" / "events.parquet"))
    bot_id = 99999.0
    botted = with_bot(frame, FIRST, day_events // 2, bot_id)
    path = tmp_path / "with_bot.parquet"
    botted.to_parquet(path, index=False)
    load_online_retail(path, shoprec_home.landing_dir)
    landed = pq.read_table(shoprec_home.landing_dir / f"date={day}" / "events.parquet").to_pandas()
    bot_rows = int((landed["user_id"] == "99999").sum())
    # (a few copied lines are postage or free, dropped by the adapter as any customer's would be)
    assert bot_rows > shoprec_home.max_user_share * len(landed)
    assert landed["user_id"].nunique() >= shoprec_home.dominant_user_min_users

    update_catalog(shoprec_home, day)
    manifest = ingest_day(shoprec_home, day, run_id="bot")
    assert (manifest.rows_in, manifest.rows_clean, manifest.rows_quarantined) == (
        len(landed),
        len(landed) - bot_rows,
        bot_rows,
    )
    report_text = (shoprec_home.quarantine_dir / f"date={day}" / "report.json").read_text()
    report = json.loads(report_text)
    bot = pseudonymize("99999", load_key(shoprec_home))
    assert report["status"] == "accepted"
    assert report["dominant_users"] == {bot: round(bot_rows / len(landed), 4)}
    assert report["dominant_users"][bot] > shoprec_home.max_user_share
    assert report["failed_expectation_counts"] == {DOMINANT_USER: bot_rows}
    assert "99999" not in report_text
    quarantined = pq.read_table(shoprec_home.quarantine_dir / f"date={day}" / "rows.parquet").to_pandas()
    assert set(quarantined["user_id"]) == {bot}


@pytest.fixture(scope="module")
def canonical_events(
    canonical: tuple[pd.DataFrame, Path, OnlineRetailReport], tmp_path_factory: pytest.TempPathFactory
) -> tuple[pd.DataFrame, Path]:
    """The slice's purchase events as a contract events file, and what ``shoprec load`` makes of it."""
    events = _table(canonical[1], "events")
    folder = tmp_path_factory.mktemp("canonical_events")
    events.to_parquet(folder / "events.parquet", index=False)
    load_contract_files([folder / "events.parquet"], folder / "landing")
    return events, folder / "landing"


@pytest.mark.parametrize("variant", EVENT_VARIANTS, ids=[v.name for v in EVENT_VARIANTS])
def test_events_file_variant_has_its_expected_outcome(
    variant: Variant,
    canonical_events: tuple[pd.DataFrame, Path],
    shoprec_home: Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    events, reference_landing = canonical_events
    path = variant.write(events, tmp_path)
    landing = shoprec_home.landing_dir
    code, out, err = run_cli(["load", str(path)], capsys)
    if isinstance(variant.outcome, Fails):
        expected = f"shoprec: error: {variant.outcome.message(events).format(path=path)}\n"
        assert (code, err) == (variant.outcome.exit_code, expected)
        assert list_partitions(landing) == []
        return
    assert isinstance(variant.outcome, Same)
    assert (code, err) == (0, "")
    days = list_partitions(reference_landing)
    assert f"wrote {len(events):,} events over {len(days)} days" in " ".join(out.split())
    assert list_partitions(landing) == days
    for day in days:  # byte for byte: the same rows, types and order as the contract file
        name = f"date={day}/events.parquet"
        assert (landing / name).read_bytes() == (reference_landing / name).read_bytes()
