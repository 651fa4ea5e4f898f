"""Attack: recompute the DP noise of a release from the public configuration seed (issue 14).

The review's attack on the popularity release, written first: the adversary holds one released
popularity vector (every model artifact stores one), the public config seed (default 7), sigma and the
catalog, and searches the seed space for numpy noise that explains the release.  On the old code
(``np.random.default_rng(settings.seed + k)``: a permutation of the user-item pairs, then
``normal(0, sigma)``) the search recovers every exact count; :func:`test_the_seed_search_recovers_every_count_of_a_seeded_release`
keeps that scheme as a control, so the attack is known to work.  Against the OpenDP release, no seed
explains the noise, even to an adversary who also knows the true counts.

Also here: the deterministic-noise test switch is refused by the production profile, and the DP-SGD
noise and Poisson sampling generators start from a new state in every run and every resumed attempt.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers_settings import tiny_catalog
from pydantic import ValidationError

from tasks.config import Profile, Settings
from tasks.model import build_model
from tasks.privacy.popularity import release_dp_popularity
from tasks.training import TrainConfig, UserExamples, make_private_trainer, train

SIGMA = 5.0
CAP = 10  # at least every user's number of distinct items: the exact counts do not depend on sampling
PUBLIC_SEED = 7  # Settings.seed's default, in the public repository
ITEMS = [f"I{k:03d}" for k in range(40)]
SEED_SPACE = range(0, 5001)
OFFSETS = range(0, 21)  # settings.seed + 1/2/3 (training) and + 11 (publishing), and more


def _events() -> pd.DataFrame:
    rng = np.random.default_rng(2024)
    popular = rng.dirichlet(np.full(len(ITEMS), 0.5))
    rows = []
    for user in range(150):
        for item in rng.choice(ITEMS, size=int(rng.integers(1, 9)), replace=False, p=popular):
            rows += [(f"u{user:03d}", item)] * int(rng.integers(1, 3))  # repeats count once
    return pd.DataFrame(rows, columns=["user_id", "item_id"])


EVENTS = _events()
PAIRS = EVENTS.drop_duplicates()
EXACT = PAIRS.groupby("item_id").size().reindex(ITEMS, fill_value=0).to_numpy(np.float64)


def seeded_release(seed: int) -> np.ndarray:
    """The old ``release_dp_popularity(..., rng_seed=seed)`` (main before issue 14), in catalog order."""
    rng = np.random.default_rng(seed)
    pairs = PAIRS.iloc[rng.permutation(len(PAIRS))]
    kept = pairs[pairs.groupby("user_id").cumcount() < CAP]
    exact = kept.groupby("item_id").size().reindex(ITEMS, fill_value=0).to_numpy(np.float64)
    return np.clip(exact + rng.normal(0.0, SIGMA, size=len(exact)), 0.0, None)


def released_vector(frame: pd.DataFrame) -> np.ndarray:
    """What the adversary reads from an artifact: noisy counts, put back in catalog order."""
    return frame.set_index("item_id")["noisy_count"].reindex(ITEMS).to_numpy(np.float64)


def candidate_noise() -> list[tuple[str, int, int, np.ndarray]]:
    """(scheme, seed, 64-bit outputs skipped, noise) of every seeded draw the adversary tries.

    * every seed of SEED_SPACE after a permutation of the (known) number of user-item pairs;
    * the public seed's offsets with every possible amount of state the permutation consumed
      (PCG64 ``advance``: the adversary need not know the number of pairs), 0..5 x pairs.
    """
    out = []
    for seed in SEED_SPACE:
        rng = np.random.default_rng(seed)
        rng.permutation(len(PAIRS))
        out.append(("after permutation", seed, -1, rng.normal(0.0, SIGMA, size=len(ITEMS))))
    for offset in OFFSETS:
        for skipped in range(0, 5 * len(PAIRS)):
            bits = np.random.PCG64(PUBLIC_SEED + offset)
            bits.advance(skipped)
            noise = np.random.Generator(bits).normal(0.0, SIGMA, size=len(ITEMS))
            out.append(("public seed + offset", PUBLIC_SEED + offset, skipped, noise))
    return out


@pytest.fixture(scope="module")
def candidates() -> list[tuple[str, int, int, np.ndarray]]:
    return candidate_noise()


def explained_by(release: np.ndarray, noise: np.ndarray) -> bool:
    """The adversary's test (no knowledge of the data): release - noise is a count on every item the
    clipping at 0 left alone."""
    shown = release > 0
    residual = release[shown] - noise[shown]
    return bool(np.all(np.abs(residual - np.round(residual)) < 1e-6) and np.all(np.round(residual) >= 0))


def reproduces_truth(release: np.ndarray, noise: np.ndarray) -> bool:
    """An adversary who also knows the exact counts: does the seeded noise (as is, or rounded to the
    integers a discrete mechanism would add) turn the release into them on every unclipped item?"""
    shown = release > 0
    for candidate in (noise, np.round(noise)):
        if np.all(np.abs(release[shown] - candidate[shown] - EXACT[shown]) < 0.5):
            return True
    return False


def test_the_seed_search_recovers_every_count_of_a_seeded_release(candidates: list) -> None:
    """Control: the attack works against the old scheme (training's release seeded with seed + 1)."""
    release = seeded_release(PUBLIC_SEED + 1)
    hits = [(scheme, seed) for scheme, seed, _, noise in candidates if explained_by(release, noise)]
    assert ("after permutation", PUBLIC_SEED + 1) in hits
    assert {seed for _, seed in hits} == {PUBLIC_SEED + 1}  # the adversary finds the seed, nothing else
    (_, _, _, noise), *_ = [c for c in candidates if c[1] == PUBLIC_SEED + 1 and explained_by(release, c[3])]
    shown = release > 0
    assert np.array_equal(np.round(release - noise)[shown], EXACT[shown])  # every released count recovered


def test_no_seed_explains_an_opendp_release(candidates: list) -> None:
    release = released_vector(
        release_dp_popularity(EVENTS, sigma=SIGMA, cap_per_user=CAP, by_country=False, item_ids=ITEMS)
    )
    assert (release > 0).sum() >= 20  # enough unclipped items for the attack to bite
    assert len(candidates) == len(SEED_SPACE) + len(OFFSETS) * 5 * len(PAIRS)
    explained = [(s, seed, k) for s, seed, k, noise in candidates if explained_by(release, noise)]
    reproduced = [(s, seed, k) for s, seed, k, noise in candidates if reproduces_truth(release, noise)]
    assert explained == []
    assert reproduced == []


def test_two_releases_of_the_same_data_differ() -> None:
    first, second = (
        released_vector(
            release_dp_popularity(EVENTS, sigma=SIGMA, cap_per_user=CAP, by_country=False, item_ids=ITEMS)
        )
        for _ in range(2)
    )
    # 40 items at scale 5: all equal with probability below 1e-40
    assert not np.array_equal(first, second)
    assert np.abs(first - second).sum() > 0


# --- the deterministic test switch ------------------------------------------------------------------


def test_production_profile_refuses_the_deterministic_noise_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match=r"DETERMINISTIC_NOISE_FOR_TESTS.*production"):
        Settings(profile=Profile.PRODUCTION, deterministic_noise_for_tests=True)
    monkeypatch.setenv("SHOPREC_PROFILE", "production")
    monkeypatch.setenv("SHOPREC_DETERMINISTIC_NOISE_FOR_TESTS", "1")
    with pytest.raises(ValidationError, match="not be differentially private"):
        Settings()
    monkeypatch.delenv("SHOPREC_DETERMINISTIC_NOISE_FOR_TESTS")
    # model_copy skips validation; the place that reads the switch checks again
    sneaked = Settings(profile=Profile.PRODUCTION).model_copy(update={"deterministic_noise_for_tests": True})
    with pytest.raises(ValueError, match="production"):
        sneaked.test_noise_seed()


def test_the_switch_is_off_by_default_and_only_then_noise_is_unseeded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SHOPREC_DETERMINISTIC_NOISE_FOR_TESTS", raising=False)
    monkeypatch.delenv("SHOPREC_PROFILE", raising=False)
    assert Settings().test_noise_seed() is None
    assert Settings(deterministic_noise_for_tests=True, seed=5).test_noise_seed() == 5


# --- DP-SGD noise and Poisson sampling generators -----------------------------------------------------


def _examples(n_users: int = 40) -> UserExamples:
    rng = np.random.default_rng(0)
    positives = [rng.integers(1, 31, 1 + u % 6) for u in range(n_users)]
    history = np.zeros((n_users, 5), dtype=np.int64)
    features = rng.normal(size=(n_users, 12)).astype(np.float32)
    return UserExamples(features, history, positives, n_items=30, cap_k=6, n_negatives=10, seed=0)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)  # model init: the same weights in every run (not DP noise)
    return build_model(tiny_catalog(30, 0), dim=8, hidden=16, item_id_dim=4)


def _generators(config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    _, optimizer, _, loader, _ = make_private_trainer(_model(), _examples(), config)
    sampler_generator = loader.batch_sampler.generator
    assert sampler_generator is not None  # Poisson sampling does not fall back to torch's global RNG
    assert optimizer.generator is not None
    return optimizer.generator.get_state(), sampler_generator.get_state()


def test_dp_sgd_generators_start_from_a_new_state_in_every_run() -> None:
    config = TrainConfig(epochs=1, batch_size=10, seed=7)
    torch.manual_seed(7)
    noise_a, sampling_a = _generators(config)
    torch.manual_seed(7)  # even with the global generator reset to the same seed
    noise_b, sampling_b = _generators(config)
    assert not torch.equal(noise_a, noise_b)
    assert not torch.equal(sampling_a, sampling_b)
    assert not torch.equal(noise_a, sampling_a)
    # the test switch (TrainConfig.noise_seed) is what makes them equal
    seeded = TrainConfig(epochs=1, batch_size=10, noise_seed=3)
    assert all(torch.equal(x, y) for x, y in zip(_generators(seeded), _generators(seeded), strict=True))


def test_two_trainings_with_the_same_config_add_different_noise() -> None:
    config = TrainConfig(epochs=1, batch_size=10, noise_multiplier=1.0, seed=7)
    first, second = _model(), _model()
    train(first, _examples(), config, delta=1e-3)
    train(second, _examples(), config, delta=1e-3)
    differs = [not torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters(), strict=True)]
    assert any(differs)


def test_resumed_attempts_draw_fresh_noise_not_a_stored_state(tmp_path: Path) -> None:
    """Two retries resumed from the same checkpoint: equal if the checkpoint restored the noise state."""
    checkpoint = tmp_path / "first" / "checkpoint.pt"
    config = TrainConfig(epochs=1, batch_size=10, seed=7)
    train(_model(), _examples(), config, delta=1e-3, checkpoint_path=checkpoint)
    stored = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert set(stored) == {"epoch", "losses", "model", "optimizer", "accountant", "rng"}  # no DP generator
    resumed = []
    for attempt in ("a", "b"):
        copy = tmp_path / attempt / "checkpoint.pt"
        copy.parent.mkdir()
        shutil.copy(checkpoint, copy)
        model = _model()
        result = train(
            model, _examples(), TrainConfig(epochs=2, batch_size=10, seed=7), delta=1e-3, checkpoint_path=copy
        )
        assert result.resumed_from_epoch == 1
        resumed.append(model)
    assert any(not torch.equal(a, b) for a, b in zip(*(m.parameters() for m in resumed), strict=True))


def test_a_statement_of_seeded_noise_says_so() -> None:
    """The test switch's seeded DP-SGD noise is never described as OS entropy."""
    from tasks.training import noise_generator_name

    seeded = noise_generator_name("cpu", noise_seed=7)
    assert "SEEDED FROM THE CONFIGURATION" in seeded
    assert "os.urandom" not in seeded
    assert "os.urandom" in noise_generator_name("cpu")
