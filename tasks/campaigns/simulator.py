"""A campaign simulator with ground truth: every off-policy estimate can be checked against the truth.

Customers are the synthetic shop's (:func:`tasks.sources.synthetic.shop_customers`: raw id, country,
activity, category affinities) plus a recency (days since their last purchase) and a typical basket.
Each customer has one *response type* per offer, drawn once (potential outcomes):

- ``SURE``: buys within the attribution window with or without the offer (an offer only costs money),
- ``PERSUADABLE``: buys only with the offer (the customers a campaign is for),
- ``SLEEPING_DOG``: buys without an offer but is put off by it,
- ``LOST``: buys in neither case.

Whether a customer buys without any offer is drawn once, so the types of one customer are coherent:
``SURE``/``SLEEPING_DOG`` are buyers without an offer, ``PERSUADABLE``/``LOST`` are not.  A purchase
earns ``margin_rate`` times a basket drawn around the customer's typical basket (mean-preserving
log-normal noise); redeeming an offer costs its discount plus its unit cost.  The reward of a decision
is that profit (margin minus redemption cost), so the expected reward of every (customer, action) pair
is known exactly (:attr:`Population.expected_reward`) and so is the true value of any policy given as
action probabilities per customer (:func:`true_value`, :func:`true_incremental_value`).

Randomness comes from the :class:`numpy.random.Generator` the caller passes: this is test data, not a
privacy mechanism.  Action 0 is always :data:`~tasks.campaigns.contracts.NO_OFFER`; action ``k >= 1`` is
``offers[k - 1]``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property
from typing import Final

import numpy as np
import pandas as pd

from tasks.campaigns.contracts import EXPOSURE_COLUMNS, NO_OFFER, OFFER_COLUMNS, OFFER_KINDS
from tasks.campaigns.ope import LoggedDecisions
from tasks.sources.synthetic import CATEGORY_NAMES, SyntheticConfig, shop_customers


class Response(IntEnum):
    SURE = 0
    PERSUADABLE = 1
    SLEEPING_DOG = 2
    LOST = 3


_BUYS: Final = (Response.SURE, Response.PERSUADABLE)


@dataclass(frozen=True)
class Offer:
    """One row of the ``offers`` table (see :data:`~tasks.campaigns.contracts.OFFERS_SCHEMA`)."""

    offer_id: str
    kind: str
    scope: str | None
    value: float
    unit_cost: float

    def __post_init__(self) -> None:
        if self.kind not in OFFER_KINDS:
            raise ValueError(
                f"offer {self.offer_id!r}: kind {self.kind!r} is not one of {', '.join(OFFER_KINDS)}"
            )
        if self.offer_id == NO_OFFER:
            raise ValueError(f"offer id {NO_OFFER!r} is reserved for the no-offer action")
        if self.scope is not None and self.scope not in CATEGORY_NAMES:
            raise ValueError(f"offer {self.offer_id!r}: scope {self.scope!r} is not a catalog category")
        if self.value < 0 or self.unit_cost < 0 or (self.kind == "percent_off" and self.value > 100):
            raise ValueError(f"offer {self.offer_id!r}: value and unit_cost must be >= 0 (percent <= 100)")

    def redemption_cost(self, basket: np.ndarray) -> np.ndarray:
        """What redeeming the offer on ``basket`` (basket values) costs the shop; linear in the basket."""
        discount = {"percent_off": self.value / 100 * basket, "amount_off": np.full_like(basket, self.value)}
        return self.unit_cost + discount.get(self.kind, np.zeros_like(basket))


DEFAULT_OFFERS: Final[tuple[Offer, ...]] = (
    Offer("pct10", "percent_off", None, 10.0, 0.0),
    Offer("amt5", "amount_off", None, 5.0, 0.0),
    Offer("free_ship", "free_shipping", None, 0.0, 3.5),
    Offer("promo_home", "promoted_item", "home decor", 0.0, 0.5),
)

FEATURE_NAMES: Final[tuple[str, ...]] = (
    "log_activity",
    "recency_months",
    "is_home_country",
    "log_basket_mean",
    *(f"affinity_{c.replace(' ', '_')}" for c in CATEGORY_NAMES),
)

HOME_COUNTRY: Final = "United Kingdom"


@dataclass(frozen=True)
class Population:
    """Customers, their response type per action and what a purchase earns (arrays indexed by customer)."""

    user_id: np.ndarray
    country: np.ndarray
    activity: np.ndarray
    recency_days: np.ndarray
    affinity: np.ndarray  # (n_users, len(CATEGORY_NAMES))
    basket_mean: np.ndarray
    response: np.ndarray  # (n_users, n_actions) Response codes; column 0 (no offer) is SURE or LOST
    offers: tuple[Offer, ...]
    margin_rate: float = 0.35
    basket_sigma: float = 0.4
    attribution_hours: int = 168

    def __post_init__(self) -> None:
        n = len(self.user_id)
        if self.response.shape != (n, 1 + len(self.offers)):
            raise ValueError(
                f"response must have shape ({n}, {1 + len(self.offers)}), not {self.response.shape}"
            )
        if not np.isin(self.response[:, 0], (Response.SURE, Response.LOST)).all():
            raise ValueError("without an offer a customer is SURE (buys) or LOST (does not)")
        buys_anyway = self.response[:, :1] == Response.SURE
        coherent = np.where(
            buys_anyway,
            np.isin(self.response[:, 1:], (Response.SURE, Response.SLEEPING_DOG)),
            np.isin(self.response[:, 1:], (Response.PERSUADABLE, Response.LOST)),
        )
        if not coherent.all():
            raise ValueError("response types must agree with the no-offer column (buyers: SURE/SLEEPING_DOG)")

    @property
    def n_users(self) -> int:
        return len(self.user_id)

    @property
    def actions(self) -> tuple[str, ...]:
        return (NO_OFFER, *(o.offer_id for o in self.offers))

    @property
    def n_actions(self) -> int:
        return 1 + len(self.offers)

    @cached_property
    def buys(self) -> np.ndarray:
        """(n_users, n_actions) booleans: does the customer buy within the window under each action."""
        return np.isin(self.response, _BUYS)

    def redemption_costs(self, basket: np.ndarray) -> np.ndarray:
        """(len(basket), n_actions) cost of redeeming each action on each basket (0 for no offer)."""
        costs = [np.zeros_like(basket)] + [o.redemption_cost(basket) for o in self.offers]
        return np.stack(costs, axis=1)

    @cached_property
    def expected_reward(self) -> np.ndarray:
        """(n_users, n_actions) exact expected profit of each action for each customer.

        Costs are linear in the basket and the basket noise has mean 1, so the expectation is the
        profit at the typical basket.
        """
        basket = self.basket_mean.astype(float)
        profit = self.margin_rate * basket[:, None] - self.redemption_costs(basket)
        return np.where(self.buys, profit, 0.0)

    def features(self) -> np.ndarray:
        """(n_users, len(FEATURE_NAMES)) what a reward model may see about each customer."""
        columns = [
            np.log(self.activity),
            self.recency_days / 30.0,
            (self.country == HOME_COUNTRY).astype(float),
            np.log(self.basket_mean),
        ]
        return np.column_stack([*columns, self.affinity])

    def offers_frame(self) -> pd.DataFrame:
        """The ``offers`` table of this population's campaign."""
        rows = [(o.offer_id, o.kind, o.scope, float(o.value), float(o.unit_cost)) for o in self.offers]
        return pd.DataFrame(rows, columns=list(OFFER_COLUMNS))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _offer_lift(offer: Offer, activity: np.ndarray, recency: np.ndarray, home: np.ndarray,
                basket: np.ndarray, affinity: np.ndarray) -> np.ndarray:  # fmt: skip
    """Share of customers who would not buy anyway that ``offer`` persuades."""
    if offer.kind == "percent_off":  # lapsed customers come back for a discount
        lift = 0.04 + 0.40 * _sigmoid((recency - 45.0) / 10.0)
    elif offer.kind == "amount_off":  # a fixed amount tempts small baskets
        lift = 0.04 + 0.40 * np.exp(-basket / 20.0)
    elif offer.kind == "free_shipping":  # shipping abroad costs more, so the offer matters there
        lift = np.where(home, 0.02, 0.35)
    else:  # promoted_item: works for customers who like the category
        lift = np.full_like(activity, 0.08)
    if offer.scope is not None:
        share = affinity[:, CATEGORY_NAMES.index(offer.scope)]
        lift = (0.15 + 0.8 * np.minimum(1.0, share * 3)) * (lift if offer.kind != "promoted_item" else 0.6)
    return np.clip(lift, 0.0, 1.0)


def build_population(
    rng: np.random.Generator,
    *,
    shop: SyntheticConfig | None = None,
    offers: tuple[Offer, ...] = DEFAULT_OFFERS,
) -> Population:
    """The synthetic shop's customers (``shop``, default :class:`SyntheticConfig()`) with drawn responses.

    P(buys without an offer) grows with activity and falls with recency; each offer persuades a share of
    the others that depends on its kind (:func:`_offer_lift`); very active customers (activity > 2) are
    put off by any offer with probability 0.3, others with 0.03.
    """
    customers = shop_customers(shop or SyntheticConfig())
    n = len(customers.user_id)
    activity = np.maximum(customers.activity, 0.02)
    recency = np.minimum(rng.exponential(20.0 / activity), 365.0)
    basket = rng.lognormal(np.log(30.0), 0.3, n) * (0.8 + 0.2 * activity)
    home = customers.country == HOME_COUNTRY
    buys_anyway = rng.random(n) < _sigmoid(-0.6 + 0.8 * np.log(activity) - 0.03 * recency)
    put_off = np.where(activity > 2.0, 0.30, 0.03)
    response = np.empty((n, 1 + len(offers)), dtype=np.int8)
    response[:, 0] = np.where(buys_anyway, Response.SURE, Response.LOST)
    for k, offer in enumerate(offers, start=1):
        lift = _offer_lift(offer, activity, recency, home, basket, customers.affinity)
        u = rng.random(n)
        response[:, k] = np.where(
            buys_anyway,
            np.where(u < put_off, Response.SLEEPING_DOG, Response.SURE),
            np.where(u < lift, Response.PERSUADABLE, Response.LOST),
        )
    return Population(
        user_id=customers.user_id,
        country=customers.country,
        activity=activity,
        recency_days=recency,
        affinity=customers.affinity,
        basket_mean=basket,
        response=response,
        offers=offers,
    )


# --- policies: (n_users, n_actions) action probabilities per customer ---------------------------------


def nobody(population: Population) -> np.ndarray:
    """Offer to nobody: always action 0."""
    probs = np.zeros((population.n_users, population.n_actions))
    probs[:, 0] = 1.0
    return probs


def everybody(population: Population, offer_id: str) -> np.ndarray:
    """Give ``offer_id`` to every customer."""
    probs = np.zeros((population.n_users, population.n_actions))
    probs[:, population.actions.index(offer_id)] = 1.0
    return probs


def uniform(population: Population) -> np.ndarray:
    """Uniform random logging: every action (no offer included) with probability 1 / n_actions."""
    return np.full((population.n_users, population.n_actions), 1.0 / population.n_actions)


def business_rule(
    population: Population, *, recent_days: float = 14.0, min_activity: float = 1.0, explore: float = 0.1
) -> np.ndarray:
    """Offers go to recent, active customers: those with recency <= ``recent_days`` and activity >=
    ``min_activity`` get one of the offers uniformly, the others no offer; with probability ``explore``
    any action uniformly instead.  ``explore=0`` gives a deterministic rule (zero propensities)."""
    if not 0.0 <= explore <= 1.0:
        raise ValueError(f"explore must lie in [0, 1], not {explore}")
    targeted = (population.recency_days <= recent_days) & (population.activity >= min_activity)
    chosen = np.zeros((population.n_users, population.n_actions))
    chosen[targeted, 1:] = 1.0 / len(population.offers)
    chosen[~targeted, 0] = 1.0
    return (1.0 - explore) * chosen + explore / population.n_actions


def oracle(population: Population) -> np.ndarray:
    """The best policy there is: each customer's most profitable action (ties to the lowest index)."""
    probs = np.zeros((population.n_users, population.n_actions))
    probs[np.arange(population.n_users), population.expected_reward.argmax(axis=1)] = 1.0
    return probs


def _check_policy(population: Population, probs: np.ndarray) -> None:
    if probs.shape != (population.n_users, population.n_actions):
        raise ValueError(
            f"a policy needs shape ({population.n_users}, {population.n_actions}), not {probs.shape}"
        )
    if (probs < 0).any() or not np.allclose(probs.sum(axis=1), 1.0):
        raise ValueError("a policy's action probabilities must be >= 0 and sum to 1 for every customer")


def true_value(population: Population, probs: np.ndarray) -> float:
    """Exact expected profit per customer (customers drawn uniformly) of the policy ``probs``."""
    _check_policy(population, probs)
    return float((probs * population.expected_reward).sum(axis=1).mean())


def true_incremental_value(population: Population, probs: np.ndarray) -> float:
    """Exact expected profit per customer of ``probs`` minus that of offering to nobody."""
    return true_value(population, probs) - float(population.expected_reward[:, 0].mean())


# --- logs -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decisions:
    """A simulated log as arrays: one entry per decision (customer index, action, its propensity, outcome)."""

    users: np.ndarray
    actions: np.ndarray
    propensities: np.ndarray
    logging_probs: np.ndarray  # (n, n_actions): the logging policy's probabilities for that customer
    clicked: np.ndarray
    purchased: np.ndarray
    margin: np.ndarray
    redemption_cost: np.ndarray

    @property
    def rewards(self) -> np.ndarray:
        return self.margin - self.redemption_cost

    def logged(self) -> LoggedDecisions:
        """The log as off-policy evaluation reads it (with the logging policy's full probabilities)."""
        return LoggedDecisions(self.actions, self.rewards, self.propensities, self.logging_probs)


def draw_decisions(
    population: Population, logging_probs: np.ndarray, n_decisions: int, rng: np.random.Generator
) -> Decisions:
    """``n_decisions`` decisions: customers drawn uniformly with replacement, actions from ``logging_probs``."""
    _check_policy(population, logging_probs)
    users = rng.integers(0, population.n_users, n_decisions)
    probs = logging_probs[users]
    below = probs.cumsum(axis=1) < rng.random(n_decisions)[:, None]
    actions = np.minimum(below.sum(axis=1), population.n_actions - 1)
    rows = np.arange(n_decisions)
    purchased = population.buys[users, actions]
    sigma = population.basket_sigma
    basket = population.basket_mean[users] * rng.lognormal(-(sigma**2) / 2, sigma, n_decisions)
    margin = np.where(purchased, population.margin_rate * basket, 0.0)
    cost = np.where(purchased, population.redemption_costs(basket)[rows, actions], 0.0)
    clicked = (actions > 0) & (rng.random(n_decisions) < np.where(purchased, 0.6, 0.08))
    return Decisions(users, actions, probs[rows, actions], probs, clicked, purchased, margin, cost)


def exposures_frame(
    population: Population,
    decisions: Decisions,
    *,
    policy_name: str,
    policy_version: str,
    start: dt.datetime,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """The log as an ``exposures`` table: decisions spread over the day from ``start`` (tz-aware)."""
    if start.tzinfo is None:
        raise ValueError("start must be tz-aware")
    n = len(decisions.users)
    micros = np.sort(np.floor(rng.uniform(0, 86_400, n) * 1e6).astype(np.int64))  # the contract's unit
    return pd.DataFrame(
        {
            "decision_id": [f"D{start:%Y%m%d}-{i:07d}" for i in range(1, n + 1)],
            "user_id": population.user_id[decisions.users],
            "decision_timestamp": pd.Timestamp(start).tz_convert("UTC") + pd.to_timedelta(micros, unit="us"),
            "offer_id": np.asarray(population.actions, dtype=object)[decisions.actions],
            "position": np.ones(n, dtype=np.int64),
            "propensity": decisions.propensities,
            "policy_name": policy_name,
            "policy_version": policy_version,
            "attribution_hours": np.full(n, population.attribution_hours, dtype=np.int64),
            "clicked": decisions.clicked,
            "purchased": decisions.purchased,
            "margin": decisions.margin,
            "redemption_cost": decisions.redemption_cost,
        },
        columns=list(EXPOSURE_COLUMNS),
    )
