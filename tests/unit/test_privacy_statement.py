"""The privacy statement a model version carries."""

from __future__ import annotations

import datetime as dt

from tasks.privacy.statement import PrivacyStatement


def _statement() -> PrivacyStatement:
    return PrivacyStatement(
        epsilon=1.25,
        delta=1e-5,
        accountant="opacus-rdp",
        noise_multiplier=1.1,
        sample_rate=0.01,
        steps=1000,
        clip_norm=1.0,
        cap_k=20,
        data_window=(dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 2, 1, tzinfo=dt.UTC)),
        n_users=4000,
        ledger_charge_id=3,
        secure_rng=False,
    )


def test_tags_state_epsilon_with_delta_unit_accountant_and_rng() -> None:
    tags = _statement().to_tags()
    assert tags["privacy.epsilon"] == "1.25"
    assert tags["privacy.delta"] == "1e-05"
    assert tags["privacy.unit"] == "user"
    assert tags["privacy.accountant"] == "opacus-rdp"
    assert tags["privacy.secure_rng"] == "false"
    assert "NOT a secure RNG" in tags["privacy.statement"]


def test_statement_round_trips_through_json() -> None:
    statement = _statement()
    assert PrivacyStatement.from_json(statement.to_json()) == statement
