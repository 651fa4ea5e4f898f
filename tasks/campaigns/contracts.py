"""The campaign-log contract: ``offers`` and ``exposures`` (see docs/data-contract.md, "Campaign logs").

``offers``: one row per offer a campaign can make.  ``exposures``: one row per decision the running
(logging) policy took for one customer, with the probability it gave the chosen action (the propensity
off-policy evaluation needs) and the outcome within the attribution window.  The action "no offer" is
logged like any other, with offer id :data:`NO_OFFER`.  Landing batches follow the events layout:
``landing/date=YYYY-MM-DD/offers*.parquet|csv`` and ``exposures*.parquet|csv``; the ingest
(:mod:`tasks.campaigns.ingest`) writes them to the lake partitions named below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.config import Settings
from tasks.contracts import TIMESTAMP_TYPE

NO_OFFER: Final = "no_offer"

# The smallest propensity the lake accepts: off-policy evaluation divides by it, and a positive but
# tiny one (1e-320 is in (0, 1]) makes the importance weight inf (IPS inf, SNIPS NaN); at 1e-6 the
# weight is at most 1e6, far beyond any useful logging policy over the shop's few actions.
MIN_PROPENSITY: Final = 1e-6

OFFER_KINDS: Final[tuple[str, ...]] = ("percent_off", "amount_off", "free_shipping", "promoted_item")

OFFERS_SCHEMA: Final = pa.schema(
    [
        pa.field("offer_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        # a catalog category the offer applies to; null = the whole shop
        pa.field("scope", pa.string(), nullable=True),
        # percent_off: percent of the basket; amount_off: currency off the basket; otherwise 0
        pa.field("value", pa.float64(), nullable=False),
        # fixed cost to the shop per redemption (shipping paid, placement fee), on top of the discount
        pa.field("unit_cost", pa.float64(), nullable=False),
    ]
)

EXPOSURES_SCHEMA: Final = pa.schema(
    [
        pa.field("decision_id", pa.string(), nullable=False),
        # raw customer id in landing/, pseudonym (keyed HMAC) in the lake, as for events
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("decision_timestamp", TIMESTAMP_TYPE, nullable=False),
        # the chosen action: an offer_id of the offers table, or NO_OFFER
        pa.field("offer_id", pa.string(), nullable=False),
        # slot of the offer where several are shown (1 = first); 1 when one action is taken
        pa.field("position", pa.int64(), nullable=False),
        # probability the logging policy gave the chosen action for this customer, in [MIN_PROPENSITY, 1]
        pa.field("propensity", pa.float64(), nullable=True),
        pa.field("policy_name", pa.string(), nullable=False),
        pa.field("policy_version", pa.string(), nullable=False),
        # outcome within attribution_hours after the decision
        pa.field("attribution_hours", pa.int64(), nullable=False),
        pa.field("clicked", pa.bool_(), nullable=False),
        pa.field("purchased", pa.bool_(), nullable=False),
        # gross margin of the purchases in the window (0 without a purchase)
        pa.field("margin", pa.float64(), nullable=False),
        # what redeeming the offer cost the shop (0 when not redeemed or no offer)
        pa.field("redemption_cost", pa.float64(), nullable=False),
    ]
)

OFFER_COLUMNS: Final[tuple[str, ...]] = tuple(OFFERS_SCHEMA.names)
EXPOSURE_COLUMNS: Final[tuple[str, ...]] = tuple(EXPOSURES_SCHEMA.names)


def profit(exposures: pd.DataFrame) -> np.ndarray:
    """The reward of each decision: margin minus redemption cost within the attribution window."""
    return exposures["margin"].to_numpy(dtype=float) - exposures["redemption_cost"].to_numpy(dtype=float)


def offers_lake_dir(settings: Settings) -> Path:
    """``lake/campaigns/offers/date=D/part-0.parquet``: the offers landed on day D, validated."""
    return settings.campaigns_dir / "offers"


def exposures_lake_dir(settings: Settings) -> Path:
    """``lake/campaigns/exposures/date=D/part-0.parquet``: day D's exposures, pseudonymised and gated."""
    return settings.campaigns_dir / "exposures"


def published_dir(settings: Settings) -> Path:
    """``lake/campaigns/published/date=D.json``: day D's offers and exposures partitions are complete.

    The ingest removes a day's marker before it rewrites the day's partitions and writes it last, and
    readers take only the days that have one: they see a day's offers and exposures of one ingest run
    together, or not the day at all (a crash between the two writes never pairs new offers with old
    exposures)."""
    return settings.campaigns_dir / "published"


def campaigns_quarantine_dir(settings: Settings) -> Path:
    """``quarantine/campaigns/date=D/``: day D's failing exposure rows (``rows.parquet``) and its report."""
    return settings.quarantine_dir / "campaigns"


def run_folder(settings: Settings, run_key: str) -> Path:
    """Where one offer-policy run keeps its files (inside the trust boundary): ``models/offers/<run>``."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_key)
    return settings.models_dir / "offers" / safe
