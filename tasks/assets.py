"""Names and URIs of the Airflow Assets that link the DAGs (cheap: no Airflow import here)."""

from __future__ import annotations

from typing import Final

EVENTS_CLEAN: Final = ("events_clean", "shoprec://lake/events")
ITEM_CATALOG: Final = ("item_catalog", "shoprec://lake/items")
FEATURES: Final = ("features", "shoprec://feast/features")
MODEL_CHAMPION: Final = ("model_champion", "shoprec://mlflow/champion")
RECOMMENDATIONS: Final = ("recommendations", "shoprec://feast/user_recommendations")
