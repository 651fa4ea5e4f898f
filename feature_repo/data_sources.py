"""Data sources: the parquet files written by ``tasks.features`` below ``$SHOPREC_HOME/features/``
(absolute paths, read by the DuckDB offline store).

* ``user_features_source``: ``user_features/YYYY-MM-DD.parquet``, one daily snapshot per file;
* ``item_features_source``: ``item_features/catalog.parquet`` (catalog + title embeddings);
* ``item_popularity_source``: ``item_popularity/YYYY-MM-DD.parquet`` (raw counts, not private).
"""

from tasks.feast_store import build_definitions, repo_settings

_settings = repo_settings()
# The embedded registry and online store (feature_store.yaml) live in $SHOPREC_HOME/feast: make sure
# the folder exists so that `feast plan` / `feast apply` work on a fresh checkout.
_settings.feast_dir.mkdir(parents=True, exist_ok=True)
_definitions = build_definitions(_settings.features_dir)

user_features_source = _definitions.user_source
item_features_source = _definitions.item_source
item_popularity_source = _definitions.popularity_source
