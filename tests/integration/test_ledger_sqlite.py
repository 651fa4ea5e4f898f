"""The ledger on SQLite: reservation protocol, refusal, rolling period, calibration, tamper detection."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tasks.config import Settings
from tasks.privacy.accounting import DpSgdMechanism, GaussianCountMechanism, Mechanism, compose_epsilon
from tasks.privacy.cli import app
from tasks.privacy.ledger import BudgetExceeded, Charge, Ledger, calibrate_noise_multiplier
from tasks.privacy.ledger_key import open_ledger
from tasks.privacy.tables import ChargeStatus
from tasks.privacy.verify import verify_ledger

pytestmark = pytest.mark.integration

DELTA = 1e-5
KEY = b"test-ledger-key"
RUN = DpSgdMechanism(noise_multiplier=1.1, sample_rate=0.01, steps=1000, clip_norm=1.0, cap_k=20)
JANUARY = (dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 2, 1, tzinfo=dt.UTC))


def _reserve(
    ledger: Ledger,
    run_id: str,
    mechanism: Mechanism = RUN,
    window: tuple[dt.datetime, dt.datetime] = JANUARY,
    purpose: str = "train",
) -> Charge:
    return ledger.reserve(
        scope="events",
        run_id=run_id,
        mechanism=mechanism,
        data_window=window,
        n_users=5000,
        code_version="abc123",
        data_hash="sha256:snapshot",
        purpose=purpose,
    )


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'privacy' / 'ledger.db'}"


@pytest.fixture
def ledger(url: str) -> Iterator[Ledger]:
    ledger = Ledger(url, key=KEY)
    ledger.ensure_budget("events", epsilon_cap=2.5, delta=DELTA, period_days=365)
    yield ledger
    ledger.close()


def test_retried_task_gets_its_reservation_back(ledger: Ledger) -> None:
    first = _reserve(ledger, "run-1")
    again = _reserve(ledger, "run-1")
    assert again.id == first.id
    assert len(ledger.charges("events")) == 1


def test_refusal_states_spent_requested_and_remaining(ledger: Ledger) -> None:
    _reserve(ledger, "run-1")
    _reserve(ledger, "run-2")
    with pytest.raises(BudgetExceeded) as refusal:
        _reserve(ledger, "run-3")
    assert refusal.value.spent == pytest.approx(2.382, abs=1e-3)
    assert refusal.value.requested == pytest.approx(1.725, abs=1e-3)
    assert refusal.value.remaining == pytest.approx(2.5 - 2.382, abs=1e-3)
    assert "spent epsilon=2.382" in refusal.value.message
    assert "remaining epsilon=0.1178" in refusal.value.message
    assert "delta=1e-05" in refusal.value.message


def test_released_reservation_frees_the_budget(ledger: Ledger) -> None:
    _reserve(ledger, "run-1")
    failed = _reserve(ledger, "run-2")
    assert ledger.release(failed.id).status is ChargeStatus.RELEASED
    retried = _reserve(ledger, "run-2")
    assert retried.id != failed.id
    assert retried.status is ChargeStatus.RESERVED


def test_committed_charge_keeps_its_cost_and_model(ledger: Ledger) -> None:
    charge = _reserve(ledger, "run-1")
    committed = ledger.commit(charge.id, model_version="4", artifact_uri="models:/shoprec/4")
    assert (committed.status, committed.model_version) == (ChargeStatus.COMMITTED, "4")
    with pytest.raises(ValueError, match="only a reserved charge"):
        ledger.release(charge.id)
    assert ledger.spent("events", JANUARY[1]).epsilon == pytest.approx(charge.epsilon)


def test_charges_outside_the_rolling_period_do_not_count(ledger: Ledger) -> None:
    _reserve(ledger, "run-2025", window=(JANUARY[0].replace(year=2024), JANUARY[1].replace(year=2024)))
    spent = ledger.spent("events", JANUARY[1])
    assert spent.charge_ids == ()
    assert spent.epsilon == pytest.approx(0.0, abs=1e-12)
    assert _reserve(ledger, "run-2026").composed_epsilon == pytest.approx(1.7253, abs=1e-3)


def test_count_release_and_training_compose_in_one_budget(ledger: Ledger) -> None:
    counts = GaussianCountMechanism(sigma=40.0, l2_sensitivity=4.0)
    _reserve(ledger, "run-1", mechanism=counts, purpose="popularity")
    charge = _reserve(ledger, "run-1")
    assert charge.composed_epsilon == pytest.approx(compose_epsilon([counts, RUN], DELTA))


def test_calibrated_noise_fills_exactly_the_remaining_budget(ledger: Ledger) -> None:
    _reserve(ledger, "run-1")
    noise = calibrate_noise_multiplier(
        ledger,
        scope="events",
        sample_rate=0.01,
        steps=1000,
        delta=DELTA,
        epsilon_target=None,
        at=JANUARY[1],
        max_noise_multiplier=Settings().dp_max_noise_multiplier,
    )
    planned = DpSgdMechanism(noise, 0.01, 1000, 1.0, 20)
    charge = _reserve(ledger, "run-2", mechanism=planned)
    assert charge.composed_epsilon == pytest.approx(2.5, rel=1e-3)
    with pytest.raises(BudgetExceeded):
        _reserve(ledger, "run-3", mechanism=DpSgdMechanism(noise * 0.98, 0.01, 1000, 1.0, 20))


def test_untampered_ledger_verifies(ledger: Ledger, url: str) -> None:
    charge = _reserve(ledger, "run-1")
    ledger.commit(charge.id, model_version="1", artifact_uri=None)
    result = verify_ledger(url, key=KEY, at=JANUARY[1])
    assert result.ok
    assert (result.charges_checked, result.rows_checked) == (1, 4)


def _tamper(url: str, sql: str) -> None:
    connection = sqlite3.connect(url.removeprefix("sqlite:///"))
    connection.execute(sql)
    connection.commit()
    connection.close()


def test_verify_detects_a_lowered_epsilon(ledger: Ledger, url: str) -> None:
    _reserve(ledger, "run-1")
    _tamper(url, "UPDATE privacy_charges SET epsilon = 0.5 WHERE id = 1")
    result = verify_ledger(url, key=KEY, at=JANUARY[1])
    assert not result.ok
    assert any("row altered" in p for p in result.problems)
    assert any("stored epsilon 0.5 != recomputed 1.72" in p for p in result.problems)


def test_verify_detects_a_removed_row(ledger: Ledger, url: str) -> None:
    _reserve(ledger, "run-1")
    _reserve(ledger, "run-2")
    _tamper(url, "DELETE FROM privacy_charges WHERE id = 1")
    result = verify_ledger(url, key=KEY, at=JANUARY[1])
    assert not result.ok
    assert any("prev_hash does not match" in p for p in result.problems)


def test_verify_detects_a_status_changed_outside_the_ledger(ledger: Ledger, url: str) -> None:
    _reserve(ledger, "run-1")
    _tamper(url, "UPDATE privacy_charges SET status = 'released' WHERE id = 1")
    result = verify_ledger(url, key=KEY, at=JANUARY[1])
    assert not result.ok
    assert any("last recorded transition is reserved" in p for p in result.problems)


def test_cli_verify_exits_non_zero_on_tampering(shoprec_home: Settings) -> None:
    ledger = open_ledger(shoprec_home)
    ledger.ensure_budget("events", epsilon_cap=2.5, delta=DELTA, period_days=365)
    _reserve(ledger, "run-1")
    ledger.close()
    runner = CliRunner()
    clean = runner.invoke(app, ["verify", "--at", "2026-02-01T00:00:00+00:00"])
    assert clean.exit_code == 0, clean.output
    assert "ledger verified" in clean.output
    status = runner.invoke(app, ["status", "--at", "2026-02-01T00:00:00+00:00"])
    assert "events: epsilon=1.725 at delta=1e-05 (unit: user, accountant: opacus-rdp)" in status.output
    _tamper(shoprec_home.resolved_ledger_url, "UPDATE privacy_charges SET n_users = 9 WHERE id = 1")
    tampered = runner.invoke(app, ["verify", "--at", "2026-02-01T00:00:00+00:00"])
    assert tampered.exit_code == 1
    assert "LEDGER VERIFICATION FAILED" in tampered.output
