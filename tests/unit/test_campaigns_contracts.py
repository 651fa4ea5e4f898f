"""The campaign-log contracts: simulated logs fit them; the exposures gate quarantines rows whose
propensity off-policy evaluation cannot use, and counts each reason."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from tasks.campaigns import simulator
from tasks.campaigns.contracts import EXPOSURES_SCHEMA, OFFERS_SCHEMA, profit
from tasks.campaigns.validation import FAILED_EXPECTATIONS, validate_exposures, validate_offers
from tasks.config import Settings
from tasks.contracts import ContractError
from tasks.sources.synthetic import SyntheticConfig

START = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def population() -> simulator.Population:
    return simulator.build_population(np.random.default_rng(3), shop=SyntheticConfig(n_users=200))


def simulated_exposures(population: simulator.Population, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(4)
    decisions = simulator.draw_decisions(population, simulator.uniform(population), n, rng)
    return simulator.exposures_frame(
        population, decisions, policy_name="uniform", policy_version="1", start=START, rng=rng
    )


def test_simulated_tables_have_the_contract_types(population: simulator.Population) -> None:
    exposures = simulated_exposures(population, 50)
    table = pa.Table.from_pandas(exposures, schema=EXPOSURES_SCHEMA, preserve_index=False)
    assert table.schema.equals(EXPOSURES_SCHEMA)
    assert str(exposures["decision_timestamp"].dt.tz) == "UTC"
    offers = pa.Table.from_pandas(population.offers_frame(), schema=OFFERS_SCHEMA, preserve_index=False)
    assert offers.num_rows == 4
    assert set(exposures["offer_id"]) <= {"no_offer", *population.offers_frame()["offer_id"]}
    np.testing.assert_allclose(profit(exposures), exposures["margin"] - exposures["redemption_cost"])


def test_rows_without_a_valid_propensity_are_quarantined_with_counted_reasons(
    shoprec_home: Settings, population: simulator.Population
) -> None:
    exposures = simulated_exposures(population, 40)
    exposures["propensity"] = exposures["propensity"].astype(float)
    exposures.loc[[1, 2], "propensity"] = np.nan  # missing
    exposures.loc[3, "propensity"] = 0.0  # the logging policy "never" took it
    exposures.loc[4, "propensity"] = -0.2
    exposures.loc[5, "propensity"] = 1.5
    exposures.loc[6, "offer_id"] = "unknown_offer"
    offer_ids = population.offers_frame()["offer_id"]

    gate = validate_exposures(exposures, offer_ids, settings=shoprec_home)

    assert gate.reason_counts == {
        "offer_id_known": 1,
        "propensity_in_unit_interval": 3,
        "propensity_present": 2,
    }
    assert len(gate.clean) == 34
    assert sorted(gate.quarantined["decision_id"]) == sorted(exposures.loc[1:6, "decision_id"])
    reasons = dict(zip(gate.quarantined["decision_id"], gate.quarantined[FAILED_EXPECTATIONS], strict=True))
    assert reasons[exposures.at[3, "decision_id"]] == ("propensity_in_unit_interval",)
    assert ((gate.clean["propensity"] > 0) & (gate.clean["propensity"] <= 1)).all()


def test_exposures_with_a_missing_column_stop_with_one_line(
    shoprec_home: Settings, population: simulator.Population
) -> None:
    exposures = simulated_exposures(population, 5).drop(columns=["propensity"])
    with pytest.raises(ContractError, match=r"^exposures: columns_match_contract") as info:
        validate_exposures(exposures, [], settings=shoprec_home)
    assert "\n" not in str(info.value)


def test_offers_gate_refuses_unknown_kinds_and_the_reserved_id(
    shoprec_home: Settings, population: simulator.Population
) -> None:
    offers = population.offers_frame()
    assert validate_offers(offers, settings=shoprec_home).equals(offers)
    offers.loc[0, "kind"] = "buy_one_get_one"
    offers.loc[1, "offer_id"] = "no_offer"
    with pytest.raises(ContractError, match=r"offers: 2 rows break the contract: row 0 .*kind_allowed.*"
                       r"row 1 .*offer_id_not_reserved"):  # fmt: skip
        validate_offers(offers, settings=shoprec_home)
