"""Attacks on the DP co-occurrence release (issue 17 item 2), written before the release.

* **One user moves the release no further than its stated sensitivity.**  The adversary controls one
  user (a "heavy" user who interacted with every item of the catalog, many times) and compares the
  counts with and without that user: the exact counts the noise is added to differ by at most the
  L2 sensitivity the ledger is charged for, whatever random subset the user keeps, and the bound is
  reached (so the charge is not loose by a wrong formula either).
* **The noise is not reproducible from the configuration.**  Seeding every generator a configuration
  could reach (numpy's, Python's, torch's) with the public seed before each release does not make
  two releases equal, and no seeded numpy draw explains the noise of a release.
* **The domain is public.**  A release covers exactly the items it was given, bought or not, so its
  shape says nothing about who interacted with what.
"""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
import torch

from tasks.privacy.cooccurrence import (
    CooccurrenceRelease,
    cooccurrence_mechanism,
    cooccurrence_sensitivity,
    exact_cooccurrence,
    release_dp_cooccurrence,
)
from tasks.privacy.popularity import capped_pairs, discrete_gaussian

CAP = 6
ITEMS = [f"I{k:03d}" for k in range(30)]
PUBLIC_SEED = 7  # Settings.seed's default, in the public repository


def _light_users() -> pd.DataFrame:
    """150 users with at most CAP distinct items each: their kept subset is all of their items, so the
    exact counts without the attacker do not depend on any draw."""
    rng = np.random.default_rng(2024)
    rows = []
    for user in range(150):
        for item in rng.choice(ITEMS, size=int(rng.integers(1, CAP + 1)), replace=False):
            rows += [(f"u{user:03d}", item)] * int(rng.integers(1, 3))  # repeats count once
    return pd.DataFrame(rows, columns=["user_id", "item_id"])


LIGHT = _light_users()
HEAVY = pd.DataFrame({"user_id": "attacker", "item_id": ITEMS * 4})  # every item, four times


def test_one_user_moves_the_exact_counts_by_at_most_the_charged_sensitivity() -> None:
    without = exact_cooccurrence(LIGHT, ITEMS, CAP)
    bound = cooccurrence_mechanism(2.0, CAP).l2_sensitivity
    assert bound == pytest.approx(np.sqrt(CAP * (CAP + 1) / 2))
    moved = []
    for _ in range(20):  # a new random subset of the attacker's items every release
        with_attacker = exact_cooccurrence(pd.concat([LIGHT, HEAVY]), ITEMS, CAP)
        moved.append(float(np.linalg.norm(with_attacker - without)))
    assert max(moved) <= bound + 1e-9
    # CAP distinct items: CAP item counts and CAP (CAP - 1) / 2 pair counts, each moved by exactly 1
    assert moved == pytest.approx([bound] * 20)


def test_removing_any_light_user_stays_within_the_sensitivity() -> None:
    full = exact_cooccurrence(LIGHT, ITEMS, CAP)
    bound = cooccurrence_sensitivity(CAP)
    for user in LIGHT["user_id"].unique()[:40]:
        neighbour = exact_cooccurrence(LIGHT[LIGHT["user_id"] != user], ITEMS, CAP)
        assert np.linalg.norm(full - neighbour) <= bound + 1e-9


def test_the_charged_rho_is_opendps_own_privacy_map() -> None:
    mechanism = CooccurrenceRelease(
        noise_multiplier=2.0, cap_per_user=CAP, days=30, event_types=("purchase",)
    ).mechanism()
    assert mechanism.scale == pytest.approx(2.0 * cooccurrence_sensitivity(CAP))
    assert mechanism.rho == pytest.approx(1 / (2 * 2.0**2))
    measured = discrete_gaussian(mechanism.scale, mechanism.l2_sensitivity).map(mechanism.l2_sensitivity)
    assert measured == pytest.approx(mechanism.rho, rel=1e-9)


def _seed_everything(seed: int) -> None:
    np.random.seed(seed)
    random.seed(seed)
    torch.manual_seed(seed)


def test_seeding_every_generator_with_the_public_seed_does_not_repeat_a_release() -> None:
    releases = []
    for _ in range(2):
        _seed_everything(PUBLIC_SEED)
        releases.append(
            release_dp_cooccurrence(LIGHT, noise_multiplier=1.0, cap_per_user=CAP, item_ids=ITEMS).counts
        )
    # 465 counts at scale 4.6: two equal releases have probability far below 1e-100
    assert not np.array_equal(releases[0], releases[1])


def test_no_seeded_numpy_draw_explains_the_noise() -> None:
    """The adversary knows the exact counts (all but the attacker's) and tries every seed 0..2000 of
    numpy's generator for the noise, as drawn, rounded, and as integers of the release's scale."""
    mechanism = cooccurrence_mechanism(1.0, CAP)
    release = release_dp_cooccurrence(LIGHT, noise_multiplier=1.0, cap_per_user=CAP, item_ids=ITEMS)
    noise = release.counts - exact_cooccurrence(LIGHT, ITEMS, CAP)
    assert np.abs(noise).max() > 0
    hits = []
    for seed in range(2001):
        rng = np.random.default_rng(seed)
        drawn = rng.normal(0.0, mechanism.scale, size=len(noise))
        if np.array_equal(np.rint(drawn).astype(np.int64), noise):
            hits.append(seed)
        if np.array_equal(np.random.default_rng(seed).integers(-50, 51, size=len(noise)), noise):
            hits.append(seed)
    assert hits == []


def test_the_released_domain_is_the_given_items_bought_or_not() -> None:
    catalog = [*ITEMS, "NEVER-BOUGHT-1", "NEVER-BOUGHT-2"]
    release = release_dp_cooccurrence(LIGHT, noise_multiplier=1.0, cap_per_user=CAP, item_ids=catalog)
    assert release.item_ids == tuple(catalog)
    assert release.counts.shape == (len(catalog) * (len(catalog) + 1) // 2,)
    assert release.matrix().shape == (len(catalog), len(catalog))
    outside = pd.concat([LIGHT, pd.DataFrame({"user_id": ["u000"], "item_id": ["NOT-IN-DOMAIN"]})])
    assert np.array_equal(exact_cooccurrence(outside, ITEMS, CAP), exact_cooccurrence(LIGHT, ITEMS, CAP))


def test_one_user_under_two_spellings_of_the_same_id_is_still_capped() -> None:
    """The attacker's events carry the id as the integer 5 and as the string "5" (an object column that
    mixes types, e.g. concatenated sources): the cap must hold for the user the counts are keyed by."""
    items = ITEMS[:12]
    attacker = pd.DataFrame({"user_id": [5] * 6 + ["5"] * 6, "item_id": items}, dtype=object)
    light = LIGHT.astype({"user_id": object})
    moved = np.linalg.norm(
        exact_cooccurrence(pd.concat([light, attacker]), ITEMS, CAP) - exact_cooccurrence(light, ITEMS, CAP)
    )
    assert moved <= cooccurrence_sensitivity(CAP) + 1e-9
    kept = capped_pairs(attacker, ["item_id"], CAP)
    assert len(kept) == CAP
