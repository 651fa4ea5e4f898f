"""Two runs racing for the last budget cannot both pass: SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from tasks.privacy.accounting import DpSgdMechanism
from tasks.privacy.ledger import BudgetExceeded, Ledger
from tasks.privacy.tables import ChargeStatus
from tasks.privacy.verify import verify_ledger

pytestmark = pytest.mark.integration

RUN = DpSgdMechanism(noise_multiplier=1.1, sample_rate=0.01, steps=1000, clip_norm=1.0, cap_k=20)
WINDOW = (dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 2, 1, tzinfo=dt.UTC))
CAP = 2.5  # one run costs 1.725, two compose to 2.382, three to 2.934 (delta 1e-5, opacus-rdp)
RACERS = 6
KEY = b"test-ledger-key"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database on 127.0.0.1:5432, dropped afterwards."""
    name = f"shoprec_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _race(url: str) -> tuple[list[int], list[BudgetExceeded]]:
    setup = Ledger(url, key=KEY)
    setup.ensure_budget("events", epsilon_cap=CAP, delta=1e-5, period_days=365)
    setup.close()
    ledgers = [Ledger(url, key=KEY) for _ in range(RACERS)]
    barrier = threading.Barrier(RACERS)
    reserved: list[int] = []
    refused: list[BudgetExceeded] = []

    def racer(index: int) -> None:
        barrier.wait()
        try:
            charge = ledgers[index].reserve(
                scope="events",
                run_id=f"run-{index}",
                mechanism=RUN,
                data_window=WINDOW,
                n_users=5000,
                code_version="test",
                data_hash="snapshot",
                purpose="train_recommender",
            )
            reserved.append(charge.id)
        except BudgetExceeded as refusal:
            refused.append(refusal)

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for ledger in ledgers:
        ledger.close()
    return reserved, refused


def _assert_exactly_two_fit(url: str) -> None:
    reserved, refused = _race(url)
    assert len(reserved) == 2
    assert len(refused) == RACERS - 2
    ledger = Ledger(url, key=KEY)
    try:
        active = [c for c in ledger.charges("events") if c.status is ChargeStatus.RESERVED]
        assert len(active) == 2
        assert ledger.spent("events", WINDOW[1]).epsilon <= CAP
    finally:
        ledger.close()
    assert verify_ledger(url, key=KEY, at=WINDOW[1]).ok


def test_concurrent_reservations_on_sqlite_never_exceed_the_cap(tmp_path: Path) -> None:
    _assert_exactly_two_fit(f"sqlite:///{tmp_path / 'ledger.db'}")


def test_concurrent_reservations_on_postgresql_never_exceed_the_cap(postgres_url: str) -> None:
    _assert_exactly_two_fit(postgres_url)
