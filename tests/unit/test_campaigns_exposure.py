"""The exposure report of a published decision set: one customer moves the released vector by at most
its stated sensitivity, the groups are a public domain, the values match the exact ones up to the
noise, and the report is charged once on the ledger."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest

from tasks.campaigns import exposure, simulator
from tasks.campaigns.policy import explore
from tasks.config import Settings
from tasks.privacy.ledger_key import open_ledger
from tasks.privacy.verify import verify_settings

WINDOW = (dt.datetime(2026, 11, 1, tzinfo=dt.UTC), dt.datetime(2026, 11, 29, tzinfo=dt.UTC))
DOMAINS = {"country": ("United Kingdom", "other"), "recency": exposure.RECENCY_BANDS}


def _decision_set() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, np.ndarray]:
    population = simulator.build_population(np.random.default_rng(1))
    probs = explore(simulator.oracle(population), 0.1)
    candidate = pd.DataFrame(probs, columns=list(population.actions))
    candidate.insert(0, "user_id", population.user_id)
    customers = pd.DataFrame(population.features(), columns=list(simulator.FEATURE_NAMES))
    customers.insert(0, "user_id", population.user_id)
    customers.insert(1, "country", population.country.astype(str))
    return candidate, customers, population.offers_frame(), population.country


def test_recency_bands_split_at_one_and_three_months() -> None:
    bands = exposure.recency_band(np.array([0.0, 0.99, 1.0, 2.9, 3.0, 12.0]))
    assert list(bands) == [exposure.RECENCY_BANDS[i] for i in (0, 0, 1, 1, 2, 2)]


def test_one_customer_moves_the_vector_by_at_most_the_sensitivity() -> None:
    rng = np.random.default_rng(0)
    n, k = 300, 5
    probs = rng.dirichlet(np.ones(k), n)
    costs = rng.uniform(0, 80, (n, k))
    groups = {
        "country": rng.choice(DOMAINS["country"], n),
        "recency": rng.choice(exposure.RECENCY_BANDS, n),
    }
    base = np.array(exposure.exact_vector(groups, DOMAINS, probs, costs, 30.0), dtype=float)
    extra = np.zeros((1, k))
    extra[0, 2] = 1.0  # the worst case: all mass on one action, cost over the clip
    with_one = np.array(
        exposure.exact_vector(
            {name: np.r_[g, [DOMAINS[name][0]]] for name, g in groups.items()},
            DOMAINS,
            np.r_[probs, extra],
            np.r_[costs, [[1e9] * k]],
            30.0,
        ),
        dtype=float,
    )
    assert np.linalg.norm(with_one - base) <= exposure.UNIT * math.sqrt(6) + 1e-9
    assert np.linalg.norm(with_one - base) == pytest.approx(exposure.UNIT * math.sqrt(6))


def test_released_report_matches_the_exact_shares_is_charged_once_and_verifies(
    shoprec_home: Settings,
) -> None:
    settings = shoprec_home.model_copy(update={"offer_exposure_epsilon": 1.0})
    candidate, customers, offers, country = _decision_set()
    report = exposure.exposure_report(
        settings,
        run_key="r1",
        candidate=candidate,
        customers=customers,
        offers=offers,
        data_window=WINDOW,
    )
    assert [row["group"] for row in report["by"]["country"]] == ["United Kingdom", "other"]
    assert [row["group"] for row in report["by"]["recency"]] == list(exposure.RECENCY_BANDS)
    uk = country == "United Kingdom"
    released = {row["group"]: row for row in report["by"]["country"]}
    noise = report["noise_scale_customers"]
    assert noise > 0
    for group, mask in (("United Kingdom", uk), ("other", ~uk)):
        row = released[group]
        assert abs(row["customers"] - mask.sum()) <= 5 * noise + 1
        for action in candidate.columns[1:]:
            exact = candidate.loc[mask, action].mean()
            # share = noisy sum / noisy count: within 5 noise scales of both, relative to the group size
            assert abs(row["actions"][action]["share"] - exact) <= 12 * noise / mask.sum() + 1e-3
    assert report["epsilon"] == pytest.approx(1.0, rel=1e-3)
    again = exposure.exposure_report(
        settings, run_key="r1", candidate=candidate, customers=customers, offers=offers, data_window=WINDOW
    )
    assert again == report  # a retried task reads the release back: no second draw, no second charge
    ledger = open_ledger(settings)
    try:
        charges = ledger.charges(settings.privacy_scope)
    finally:
        ledger.close()
    assert [(c.purpose, str(c.status)) for c in charges] == [(exposure.PURPOSE, "committed")]
    assert verify_settings(settings).ok
    lines = exposure.summary_lines(report)
    assert lines[0].startswith("exposure of the published decisions (1")
    assert any(line.startswith("  country United Kingdom (~") for line in lines)
