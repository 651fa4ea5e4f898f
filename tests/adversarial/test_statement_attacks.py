"""Attack on the privacy statement of a model version that ships DP count releases.

A model version trained with ``SHOPREC_COOC_ENABLED`` carries in its item tower the behaviour vectors
of a DP co-occurrence release and serves with a DP popularity release; both are charged on the ledger.
A reader of the version's tags (the registry answers "what privacy loss does this model imply?") must
find the loss of everything the version ships composed by the ledger accountant, at the statement's
delta and unit, not the DP-SGD training's alone.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import pytest

from tasks.privacy.accounting import DiscreteGaussianCountMechanism, DpSgdMechanism, compose_epsilon
from tasks.privacy.cooccurrence import cooccurrence_mechanism
from tasks.privacy.ledger import Ledger
from tasks.privacy.statement import PrivacyStatement


def test_the_version_states_the_composed_loss_of_what_it_ships(tmp_path: Path) -> None:
    window = (dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 2, 1, tzinfo=dt.UTC))
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", key=b"test-ledger-key")
    try:
        ledger.ensure_budget("events", 20.0, 1e-5, 365)
        common = dict(scope="events", run_id="run", data_window=window, n_users=4000, code_version="abc")
        mechanisms = {
            "dp_popularity": DiscreteGaussianCountMechanism(4 * math.sqrt(50), math.sqrt(50), releases=3),
            "dp_cooccurrence": cooccurrence_mechanism(2.0, 10),
            "train_recommender": DpSgdMechanism(1.1, 0.01, 1000, 1.0, 20),
        }
        charges = {
            purpose: ledger.reserve(mechanism=m, data_hash="h", purpose=purpose, **common)  # type: ignore[arg-type]
            for purpose, m in mechanisms.items()
        }
    finally:
        ledger.close()
    statement = PrivacyStatement.from_charge(
        charges["train_recommender"],
        secure_rng=False,
        count_charges=[charges["dp_popularity"], charges["dp_cooccurrence"]],
    )
    tags = statement.to_tags()
    shipped = compose_epsilon(list(mechanisms.values()), 1e-5)
    training_alone = float(tags["privacy.epsilon"])
    assert shipped > training_alone + 1.0  # the count releases are not free
    assert float(tags["privacy.epsilon_with_counts"]) == pytest.approx(shipped, rel=1e-9)
    assert f"({shipped:.4g}, 1e-05)-DP per user" in tags["privacy.statement"]
    assert PrivacyStatement.from_json(statement.to_json()) == statement


def test_the_gate_reads_the_composed_loss() -> None:
    from tasks.config import Settings
    from tasks.registry import privacy_within_policy

    tags = {
        "privacy.unit": "user",
        "privacy.accountant": "opacus-rdp",
        "privacy.ledger_charge_id": "3",
        "privacy.epsilon": "1.7",
        "privacy.delta": "1e-05",
        "privacy.epsilon_with_counts": "3.47",
    }
    assert privacy_within_policy(Settings(privacy_epsilon_cap=4.0), tags, n_users=1000) == []
    problems = privacy_within_policy(Settings(privacy_epsilon_cap=3.0), tags, n_users=1000)
    assert problems == ["epsilon 3.47 with the count releases exceeds the cap 3"]
