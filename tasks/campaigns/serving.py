"""Published offers: the Feast view ``user_offers`` behind the versioned service ``offers_v1``.

When the gate promotes a policy, :func:`publish_offers` writes each customer's offer (the policy's most
likely action, its probability, the DP reward model's expected profit of it and its gain over no offer,
the registered version) to ``features/user_offers/<run>.parquet`` and to the online store.  Everything
published is the output of the user-level DP model on the customer's own features.  ``shoprec offer
USER`` (raw customer id or pseudonym) reads it back through ``offers_v1`` (:func:`offer_for`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from tasks.campaigns.contracts import run_folder
from tasks.campaigns.simulator import FEATURE_NAMES
from tasks.config import Settings
from tasks.contracts import ExpectedError
from tasks.feast_store import (
    ServiceNotRegistered,
    apply_definitions,
    build_definitions,
    get_store,
    read_online_service,
)
from tasks.permissions import private_dir
from tasks.pseudonymize import resolve_user

VIEW_NAME: Final = "user_offers"
SERVICE_NAME: Final = "offers_v1"


class NoOffer(ExpectedError):
    """No offer is published for this customer."""


def offers_dir(settings: Settings) -> Path:
    return settings.features_dir / VIEW_NAME


def offer_definitions(settings: Settings) -> list[Any]:
    """[source, ``user_offers`` view, ``offers_v1`` service] (entity ``user`` of the feature repo)."""
    from feast import FeatureService, FeatureView, Field, FileSource
    from feast.data_format import ParquetFormat
    from feast.types import Float64, String

    user = build_definitions(settings.features_dir).user
    source = FileSource(
        name=f"{VIEW_NAME}_source",
        path=str(offers_dir(settings).resolve() / "*.parquet"),
        file_format=ParquetFormat(),
        timestamp_field="event_timestamp",
        description="offers published by train_offer_policy, one file per promoted run",
    )
    view = FeatureView(
        name=VIEW_NAME,
        entities=[user],
        ttl=dt.timedelta(0),
        schema=[
            Field(name="offer_id", dtype=String),
            Field(name="probability", dtype=Float64, description="the policy's probability of this offer"),
            Field(name="expected_profit", dtype=Float64, description="DP reward model, per customer"),
            Field(name="gain_over_no_offer", dtype=Float64),
            Field(name="model_version", dtype=String),
        ],
        source=source,
        online=True,
        tags={"privacy": "output of a user-level DP-SGD model on the customer's own features"},
    )
    service = FeatureService(
        name=SERVICE_NAME, features=[view], description="The offer each customer gets, and why."
    )
    return [source, view, service]


def publish_offers(settings: Settings, run_key: str, version: str, at: dt.datetime) -> int:
    """Write every customer's offer under the promoted ``version`` (offline file, then online store)."""
    from tasks.campaigns.dp_reward import load_model

    folder = run_folder(settings, run_key)
    candidate = pd.read_parquet(folder / "candidate.parquet")
    actions = [c for c in candidate.columns if c != "user_id"]
    customers = pd.read_parquet(settings.campaigns_dir / "customers.parquet").set_index("user_id")
    features = customers.loc[candidate["user_id"], list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    expected = load_model(folder / "reward_model.pt").predict(features)
    probs = candidate[actions].to_numpy(dtype=np.float64)
    chosen = probs.argmax(axis=1)
    rows = np.arange(len(chosen))
    frame = pd.DataFrame(
        {
            "user_id": candidate["user_id"].astype(str),
            "offer_id": np.asarray(actions, dtype=object)[chosen],
            "probability": probs[rows, chosen],
            "expected_profit": expected[rows, chosen],
            "gain_over_no_offer": expected[rows, chosen] - expected[:, 0],
            "model_version": version,
            "event_timestamp": pd.Timestamp(at).tz_convert("UTC"),
        }
    )
    private_dir(offers_dir(settings))
    path = offers_dir(settings) / f"{folder.name}.parquet"
    staging = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(staging, index=False)
    staging.replace(path)
    apply_definitions(settings, extra=offer_definitions(settings))
    get_store(settings).write_to_online_store(VIEW_NAME, frame)
    return len(frame)


@dataclass(frozen=True)
class Offer:
    user_id: str
    offer_id: str
    probability: float
    expected_profit: float
    gain_over_no_offer: float
    model_version: str

    def describe(self) -> str:
        return (
            f"{self.user_id}: {self.offer_id} (policy probability {self.probability:.2f}; expected profit "
            f"{self.expected_profit:.2f}, {self.gain_over_no_offer:+.2f} over no offer; "
            f"{SERVICE_NAME}, model version {self.model_version})"
        )


def offer_for(settings: Settings, user: str) -> Offer:
    """The published offer of ``user`` (raw customer id, pseudonymised with the ingest key like
    ``shoprec recommend`` does, or pseudonym) from the online store, through ``offers_v1``."""
    user_id = resolve_user(settings, user)
    try:
        columns = read_online_service(settings, SERVICE_NAME, [user_id])
    except ServiceNotRegistered as missing:
        raise NoOffer(f"no offers published yet ({SERVICE_NAME} is not registered)") from missing
    row = {name: values[0] for name, values in columns.items()}
    if row.get("offer_id") is None:
        raise NoOffer(f"no offer published for customer {user!r}")
    return Offer(
        user_id=user_id,
        offer_id=str(row["offer_id"]),
        probability=float(row["probability"]),
        expected_profit=float(row["expected_profit"]),
        gain_over_no_offer=float(row["gain_over_no_offer"]),
        model_version=str(row["model_version"]),
    )
