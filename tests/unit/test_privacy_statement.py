"""The privacy statement a model version carries."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

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


def test_statement_names_the_noise_generator_and_the_count_releases(tmp_path: Path) -> None:
    from tasks.privacy.accounting import DiscreteGaussianCountMechanism, DpSgdMechanism
    from tasks.privacy.ledger import Ledger
    from tasks.training import noise_generator_name

    window = (dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 2, 1, tzinfo=dt.UTC))
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", key=b"test-ledger-key")
    try:
        ledger.ensure_budget("events", 10.0, 1e-5, 365)
        common = dict(scope="events", run_id="run", data_window=window, n_users=4000, code_version="abc")
        popularity = ledger.reserve(
            mechanism=DiscreteGaussianCountMechanism(4 * math.sqrt(50), math.sqrt(50), releases=3),
            data_hash="h",
            purpose="dp_popularity",
            **common,  # type: ignore[arg-type]
        )
        training = ledger.reserve(
            mechanism=DpSgdMechanism(1.1, 0.01, 1000, 1.0, 20),
            data_hash="h",
            purpose="train_recommender",
            **common,  # type: ignore[arg-type]
        )
    finally:
        ledger.close()
    statement = PrivacyStatement.from_charge(
        training, secure_rng=False, noise_generator=noise_generator_name("cpu"), count_charges=[popularity]
    )
    tags = statement.to_tags()
    assert tags["privacy.noise_generator"] == (
        "torch.Generator on cpu (Mersenne Twister mt19937), seeded with 64 bits of os.urandom for every run "
        "and resumed attempt; not a CSPRNG"
    )
    assert "Philox4x32-10" in noise_generator_name("cuda")
    counts = tags["privacy.count_mechanisms"]
    assert counts.startswith("OpenDP discrete Gaussian counts (CSPRNG): 3 release(s), scale 28.28")
    assert "rho 0.09375-zCDP" in counts
    assert f"epsilon {popularity.epsilon:.4g} at delta 1e-05 per user (opacus-rdp), ledger charge 1" in counts
    assert "not a CSPRNG" in tags["privacy.statement"]
    assert "OpenDP discrete Gaussian" in tags["privacy.statement"]
    assert PrivacyStatement.from_json(statement.to_json()) == statement
    # statements written before these fields existed still load
    old = json.loads(_statement().to_json())
    del old["noise_generator"], old["count_mechanisms"]
    assert PrivacyStatement.from_json(json.dumps(old)).count_mechanisms == ()


def test_statement_says_what_its_epsilon_does_not_cover() -> None:
    """Selections made on real users' data without DP are named on every version, not left implicit."""
    tags = _statement().to_tags()
    not_covered = tags["privacy.not_covered"].split(" | ")
    assert len(not_covered) == 4
    assert any(line.startswith("blend weights") and "without a DP selection" in line for line in not_covered)
    assert any(line.startswith("the promotion decision") for line in not_covered)
    assert any(line.startswith("the non-private twin") for line in not_covered)
    assert "not covered: blend weights" in tags["privacy.statement"]
    old = json.loads(_statement().to_json())
    del old["not_covered"]  # a statement written before the field existed reads with today's list
    assert PrivacyStatement.from_json(json.dumps(old)).not_covered == _statement().not_covered


def test_a_statement_names_the_trainings_its_charge_covers_and_older_ones_load_without() -> None:
    import dataclasses

    plain = _statement()
    both = dataclasses.replace(plain, trainings="this charge covers two DP-SGD trainings: a and b")
    assert "two DP-SGD trainings" in both.summary()
    assert both.to_tags()["privacy.trainings"] == both.trainings
    assert plain.to_tags()["privacy.trainings"] == "the released model's training alone"
    assert PrivacyStatement.from_json(both.to_json()) == both
    old = json.loads(plain.to_json())
    del old["trainings"]
    assert PrivacyStatement.from_json(json.dumps(old)).trainings == ""
