"""Expected errors through the ``shoprec`` CLI: one line on stderr naming the file (or option) and the
problem, a non-zero exit, no traceback; ``--verbose`` or SHOPREC_VERBOSE=1 shows the traceback."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tasks.cli import app
from tasks.config import Settings
from tasks.contracts import ContractError, OptionError
from tasks.sources.online_retail import TooLittleKept, load_online_retail

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "online_retail_sample.parquet"


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        app(args=args, prog_name="shoprec")
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def assert_one_line(err: str, expected: str) -> None:
    assert err == f"shoprec: error: {expected}\n"
    assert "Traceback" not in err


def test_file_without_invoice_columns(
    shoprec_home: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "other.csv"
    pd.read_parquet(SAMPLE).head(5).drop(columns=["Invoice", "StockCode"]).to_csv(path, index=False)
    code, _, err = run(["load-online-retail", str(path)], capsys)
    assert code == 1
    assert_one_line(err, f"{path}: not an Online Retail file, missing columns: Invoice, StockCode")


def test_missing_file(shoprec_home: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nowhere.parquet"
    code, _, err = run(["load-online-retail", str(path)], capsys)
    assert (code, err) == (1, f"shoprec: error: {path}: no such file\n")
    code, _, err = run(["load", str(tmp_path / "nowhere.csv")], capsys)
    assert (code, err) == (1, f"shoprec: error: {tmp_path / 'nowhere.csv'}: no such file\n")


def test_empty_csv(shoprec_home: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    code, _, err = run(["load-online-retail", str(path)], capsys)
    assert (code, err) == (1, f"shoprec: error: {path}: empty file (0 bytes)\n")
    code, _, err = run(["load", str(path)], capsys)
    assert (code, err) == (1, f"shoprec: error: {path}: empty file (no header, no rows)\n")


def test_unreadable_parquet(
    shoprec_home: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not a parquet file at all")
    code, _, err = run(["load-online-retail", str(path)], capsys)
    assert code == 1
    assert err.startswith(f"shoprec: error: {path}: unreadable as parquet (")
    assert err.count("\n") == 1


def test_header_only_csv_through_load_is_refused(
    shoprec_home: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: 'wrote 0 events over 0 days', exit 0."""
    path = tmp_path / "events.csv"
    path.write_text(
        "event_id,user_id,item_id,event_type,event_timestamp,quantity,unit_price,session_id,country\n"
    )
    code, out, err = run(["load", str(path)], capsys)
    assert code == 1
    assert_one_line(
        err,
        f"{path}: no rows (columns event_id, user_id, item_id, event_type, event_timestamp, quantity, "
        "unit_price, session_id, country)",
    )
    assert "wrote" not in out
    assert not shoprec_home.landing_dir.exists() or not any(shoprec_home.landing_dir.iterdir())


@pytest.mark.parametrize("command", ["demo", "load-online-retail"])
def test_bad_start_date(command: str, shoprec_home: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        [
            command,
            *(["--source", "online-retail", "--path"] if command == "demo" else []),
            str(SAMPLE),
            "--start",
            "2011-02-30",
        ],
        capsys,
    )
    assert code == 2
    assert_one_line(err, "--start '2011-02-30' is not a day (YYYY-MM-DD): day is out of range for month")


def test_privacy_status_at_yesterday(shoprec_home: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["privacy", "status", "--at", "yesterday"], capsys)
    assert code == 2
    assert err.startswith("shoprec: error: --at 'yesterday' is not an ISO 8601 time")
    assert err.count("\n") == 1


def test_verbose_flag_shows_the_traceback(shoprec_home: Settings, tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="no such file"):
        app(args=["--verbose", "load", str(tmp_path / "nowhere.csv")], prog_name="shoprec")


def test_verbose_environment_variable_shows_the_traceback(
    shoprec_home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOPREC_VERBOSE", "1")
    with pytest.raises(OptionError, match="--at 'yesterday'"):
        app(args=["privacy", "status", "--at", "yesterday"], prog_name="shoprec")


def test_a_file_of_which_nothing_is_kept_fails_with_the_drop_table(
    shoprec_home: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: every row dropped as unparseable_timestamp, 'wrote 0 purchase events', exit 0."""
    raw = pd.read_parquet(SAMPLE)
    raw["InvoiceDate"] = "sometime"
    path = tmp_path / "no_dates.parquet"
    raw.to_parquet(path, index=False)
    code, out, err = run(["load-online-retail", str(path)], capsys)
    assert code == 1
    lines = err.splitlines()
    assert lines[0] == (
        f"shoprec: error: {path}: kept 0 of {len(raw):,} rows (0.0%; SHOPREC_MIN_KEPT_ROW_SHARE is 10%), "
        "so nothing was written. Dropped rows by reason:"
    )
    assert lines[1].split() == ["unparseable_timestamp", f"{len(raw):,}"]
    assert len(lines) == 2
    assert "wrote" not in out


def test_kept_share_threshold_is_configurable(shoprec_home: Settings, tmp_path: Path) -> None:
    """The sample keeps about 3 of 4 rows: refused only when the configured share is above that."""
    _, report = load_online_retail(SAMPLE, tmp_path / "a", min_kept_share=0.5)
    share = report.kept.rows / report.rows_read
    assert 0.5 < share < 0.9
    with pytest.raises(
        TooLittleKept, match=r"kept [\d,]+ of [\d,]+ rows .*SHOPREC_MIN_KEPT_ROW_SHARE is 90%"
    ):
        load_online_retail(SAMPLE, tmp_path / "b", min_kept_share=0.9)
    assert not (tmp_path / "b").exists()


def test_unexpected_errors_keep_their_traceback(
    shoprec_home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug is not an expected error: it is not turned into one line."""
    import tasks.cli as cli

    def broken(*_: object, **__: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "load_contract_files", broken)
    with pytest.raises(KeyError, match="a bug"):
        app(args=["load", "x.csv"], prog_name="shoprec")


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (
            "e1,17850,i1,view,2010-12-01T08:26:00+01:00,1,,s1,France\n"
            "e2,17850,i2,view,01/12/2010 09:00,1,,s1,France\n"
            "e3,13085,i1,view,2010-12-01T10:00:00,1,,s2,France\n",
            "1 rows have a null or unparseable event_timestamp (first: '01/12/2010 09:00'; "
            "the column reads as ISO 8601, detected once from all its values)",
        ),
        (  # every event of "unknown customer" 0 or -1: the gate would quarantine every row
            "e1,0,i1,view,2010-12-01T08:26:00,1,,s1,France\ne2,-1,i2,view,2010-12-01T09:00:00,1,,s1,France\n",
            "0 of 2 events have a user id (0.0%; SHOPREC_MIN_KEPT_ROW_SHARE is 10%); the others are "
            "missing or placeholders (0, -1, blank, nan, ...), so nothing was written",
        ),
    ],
    ids=["date-formats-mixed", "users-all-placeholders"],
)
def test_events_file_refused_through_load(
    rows: str, expected: str, shoprec_home: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.csv"
    path.write_text(
        "event_id,user_id,item_id,event_type,event_timestamp,quantity,unit_price,session_id,country\n" + rows
    )
    code, out, err = run(["load", str(path)], capsys)
    assert code == 1
    assert_one_line(err, f"{path}: {expected}")
    assert "wrote" not in out
    assert not shoprec_home.landing_dir.exists() or not any(shoprec_home.landing_dir.iterdir())


def test_offer_before_any_policy_is_published(
    shoprec_home: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """A raw customer id is pseudonymised (as ``shoprec recommend`` does) and answered in one line."""
    code, _, err = run(["offer", "12345"], capsys)
    assert code == 1
    assert_one_line(err, "no offers published yet (offers_v1 is not registered)")


def test_generate_with_code_titles_and_a_bad_title_kind(
    shoprec_home: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    landing = tmp_path / "landing"
    args = ["generate", "--users", "50", "--items", "20", "--days", "3", "--landing", str(landing)]
    code, _, _ = run([*args, "--titles", "codes"], capsys)
    assert code == 0
    items = pd.concat([pd.read_parquet(p) for p in sorted(landing.glob("date=*/items.parquet"))])
    assert (items["title"] == items["item_id"]).all()
    code, _, err = run([*args, "--titles", "emoji"], capsys)
    assert code == 2  # click's usage error: the choices are named
    assert "emoji" in err
    assert "words" in err
    assert "codes" in err
    assert "Traceback" not in err
