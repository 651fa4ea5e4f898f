"""Published recommendations: a blue/green pair of feature views and the feature service consumers read.

``user_recommendations_blue`` and ``user_recommendations_green`` have the same schema (entity ``user``):
``item_ids``, ``scores``, ``reasons`` (lists, best first), ``model_version``, ``publish_id`` and
``generated_at`` (the scoring time, also the rows' event timestamp).  A publish writes the slot that is
NOT live, verifies it, then re-applies the feature service ``recommendations_v1`` so that it projects
the new slot under the stable name ``user_recommendations`` (one registry row, one transaction): a
consumer reading ``recommendations_v1`` sees the old set or the new one, never half of the new one.
The service's tags say which slot is live and which publish it holds.

The offline (audit) copy is one parquet file per publish below ``<SHOPREC_HOME>/recommendations/``.
This module only builds objects; ``tasks.publishing.ensure_recommendation_objects`` applies them.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from feast import Entity, FeatureService, FeatureView, Field, FileSource
from feast.types import Array, Float64, String, UnixTimestamp

VIEW_NAME: Final = "user_recommendations"
SLOTS: Final = ("user_recommendations_blue", "user_recommendations_green")
SERVICE_NAME: Final = "recommendations_v1"
SOURCE_NAME: Final = "user_recommendations_source"

SCHEMA: Final = (
    Field(name="item_ids", dtype=Array(String), description="recommended item ids, best first"),
    Field(name="scores", dtype=Array(Float64), description="blended score of each item"),
    Field(
        name="reasons",
        dtype=Array(String),
        description="bought:<item> / viewed:<item> (most similar history item), popular:<country|global>",
    ),
    Field(name="model_version", dtype=String, description="MLflow version of the champion that scored"),
    Field(name="publish_id", dtype=String, description="<model version>@<scoring time>"),
    Field(name="generated_at", dtype=UnixTimestamp, description="scoring time (the run's interval end)"),
)


def recommendations_source(offline_root: str) -> FileSource:
    """The per-publish parquet audit copies (``publish_id=*/recommendations.parquet``)."""
    return FileSource(
        name=SOURCE_NAME,
        path=f"{offline_root.rstrip('/')}/publish_id=*/recommendations.parquet",
        timestamp_field="event_timestamp",
        description="audit copy of every publish of user recommendations",
    )


def recommendation_view(slot: str, user: Entity, source: FileSource) -> FeatureView:
    """One slot of the blue/green pair."""
    if slot not in SLOTS:
        raise ValueError(f"unknown slot {slot!r}; expected one of {SLOTS}")
    return FeatureView(
        name=slot,
        entities=[user],
        ttl=dt.timedelta(0),
        online=True,
        source=source,
        schema=list(SCHEMA),
        description=f"top-K recommendations per user ({slot.rsplit('_', 1)[1]} slot)",
        tags={"slot": slot},
    )


def recommendations_service(view: FeatureView, tags: dict[str, str]) -> FeatureService:
    """``recommendations_v1``: the live slot projected as ``user_recommendations``."""
    return FeatureService(
        name=SERVICE_NAME,
        features=[view.with_name(VIEW_NAME)],
        description="published recommendations: item_ids, scores, reasons, model_version, generated_at",
        tags=tags,
    )
