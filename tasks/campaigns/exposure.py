"""Who gets the discounts: exposure of a published decision set by country and by recency band, DP.

Each published decision set comes with a report of, per group and action, the share of customers the
policy gives that action and the redemption cost it commits to per customer (the cost if redeemed at
the customer's typical basket), from the published action probabilities.  Groups: country (the public
market list ``publish_countries``, else the home market, plus ``other``) and recency band (months since
the last purchase: under 1, 1 to 3, 3 or more).

The decisions themselves are the output of the user-level DP model on each customer's own features,
but a count of customers per country is computed from many customers' own features, which the model's
DP does not cover: marketers are feature consumers (docs/privacy.md), so the report leaves the trust
boundary only as a DP release.  Per group, each customer adds ``UNIT`` to the group's customer count,
``UNIT * p_a`` to each action's share sum and ``UNIT * p_a * min(cost_a, clip) / clip`` to its cost
sum, floored to integers: at most ``UNIT * sqrt(3)`` in L2 norm per grouping (``sum p_a**2 <= 1``), so
``UNIT * sqrt(6)`` for both groupings.  OpenDP's discrete Gaussian adds the noise (fresh CSPRNG bits);
the rho-zCDP cost is reserved on the ledger (purpose :data:`PURPOSE`) before the draw.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any, Final

import numpy as np
import pandas as pd

from tasks.campaigns import release, simulator
from tasks.config import Settings
from tasks.privacy.accounting import LEDGER_ACCOUNTANT, DiscreteGaussianCountMechanism
from tasks.privacy.popularity import discrete_gaussian

PURPOSE: Final = "offer_exposure_report"
UNIT: Final = 1000
OTHER: Final = "other"
RECENCY_BANDS: Final = ("under 1 month", "1-3 months", "3+ months")
GROUPINGS: Final = ("country", "recency")


def recency_band(recency_months: np.ndarray) -> np.ndarray:
    """The band of each customer's months since the last purchase."""
    return np.asarray(RECENCY_BANDS, dtype=object)[np.digitize(recency_months, [1.0, 3.0])]


def country_domain(settings: Settings) -> tuple[str, ...]:
    """The public country groups: the published market list, else the home market; then ``other``."""
    return (*(settings.publish_countries or (simulator.HOME_COUNTRY,)), OTHER)


def redemption_costs(offers: pd.DataFrame, basket: np.ndarray) -> np.ndarray:
    """(customers, 1 + offers) cost of redeeming each action at each customer's typical basket."""
    rows = [simulator.Offer(**row) for row in offers.to_dict("records")]
    return np.stack([np.zeros_like(basket), *(o.redemption_cost(basket) for o in rows)], axis=1)


def exact_vector(
    groups: dict[str, np.ndarray],
    domains: dict[str, tuple[str, ...]],
    probs: np.ndarray,
    costs: np.ndarray,
    clip: float,
) -> list[int]:
    """Per grouping, group and action: [count, share sums..., cost sums...] in fixed point (floored)."""
    shares = np.floor(probs * UNIT).astype(np.int64)
    spend = np.floor(probs * np.minimum(costs, clip) / clip * UNIT).astype(np.int64)
    vector: list[int] = []
    for name in GROUPINGS:
        for group in domains[name]:
            mask = groups[name] == group
            vector.append(UNIT * int(mask.sum()))
            vector += [int(v) for v in shares[mask].sum(axis=0)]
            vector += [int(v) for v in spend[mask].sum(axis=0)]
    return vector


def decode(
    noisy: list[int], domains: dict[str, tuple[str, ...]], actions: list[str], clip: float
) -> dict[str, list[dict[str, Any]]]:
    """Groups with their noisy customer count and, per action, share and cost per customer."""
    k = len(actions)
    out: dict[str, list[dict[str, Any]]] = {}
    position = 0
    for name in GROUPINGS:
        rows = []
        for group in domains[name]:
            cell = noisy[position : position + 1 + 2 * k]
            position += 1 + 2 * k
            customers = max(cell[0] / UNIT, 0.0)
            per = max(customers, 1.0)
            rows.append(
                {
                    "group": group,
                    "customers": round(customers),
                    "actions": {
                        a: {
                            "share": min(max(cell[1 + j] / UNIT / per, 0.0), 1.0),
                            "cost_per_customer": max(cell[1 + k + j] * clip / UNIT / per, 0.0),
                        }
                        for j, a in enumerate(actions)
                    },
                }
            )
        out[name] = rows
    return out


def exposure_report(
    settings: Settings,
    *,
    run_key: str,
    candidate: pd.DataFrame,
    customers: pd.DataFrame,
    offers: pd.DataFrame,
    data_window: tuple[dt.datetime, dt.datetime],
    code_version: str = "unknown",
) -> dict[str, Any]:
    """The DP exposure report of the decision set ``candidate`` (user_id + one probability column per
    action), charged on the ledger at ``offer_exposure_epsilon``; drawn once per run."""

    actions = [c for c in candidate.columns if c != "user_id"]
    rows = customers.set_index("user_id").loc[candidate["user_id"]]
    country = (
        rows["country"].astype(str).to_numpy()
        if "country" in rows
        else np.where(rows["is_home_country"] > 0.5, simulator.HOME_COUNTRY, OTHER)
    )
    domains = {"country": country_domain(settings), "recency": RECENCY_BANDS}
    groups = {
        "country": np.where(np.isin(country, domains["country"]), country, OTHER),
        "recency": recency_band(rows["recency_months"].to_numpy(dtype=float)),
    }
    basket = np.exp(rows["log_basket_mean"].to_numpy(dtype=float))
    probs = candidate[actions].to_numpy(dtype=np.float64)
    clip = settings.offer_release_clip
    exact = exact_vector(groups, domains, probs, redemption_costs(offers, basket), clip)
    l2 = UNIT * math.sqrt(3 * len(GROUPINGS))
    epsilon = settings.offer_exposure_epsilon

    def mechanism_at(delta: float) -> DiscreteGaussianCountMechanism:
        multiplier = release.noise_for_epsilon(1, epsilon, delta)
        return DiscreteGaussianCountMechanism(scale=multiplier * l2, l2_sensitivity=l2)

    def draw(mechanism: DiscreteGaussianCountMechanism, spent: float, delta: float) -> dict[str, Any]:
        noisy = [int(v) for v in discrete_gaussian(mechanism.scale, mechanism.l2_sensitivity)(exact)]
        return {
            "by": decode(noisy, domains, actions, clip),
            "epsilon": spent,
            "delta": delta,
            "accountant": LEDGER_ACCOUNTANT,
            "unit": "user",
            "noise_scale_customers": mechanism.scale / UNIT,
            "cost_clip": clip,
            "cost": "redemption cost if redeemed, at the customer's typical basket",
        }

    result: dict[str, Any] = release.charged_draw(
        settings,
        run_key=run_key,
        purpose=PURPOSE,
        mechanism_at=mechanism_at,
        n_users=len(candidate),
        data_window=data_window,
        data_hash=f"decisions:{len(candidate)}:{run_key}",
        code_version=code_version,
        draw=draw,
    )
    return result


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The report as text: per group, customers and the share and cost per customer of each action."""
    lines = [
        f"exposure of the published decisions ({report['epsilon']:.3g}, {report['delta']:.2e})-DP per "
        f"{report['unit']}, accountant {report['accountant']}; share / cost per customer if redeemed:"
    ]
    for name in GROUPINGS:
        for row in report["by"][name]:
            shown = ", ".join(
                f"{a} {v['share']:.0%}/{v['cost_per_customer']:.2f}" for a, v in row["actions"].items()
            )
            lines.append(f"  {name} {row['group']} (~{row['customers']} customers): {shown}")
    return lines
