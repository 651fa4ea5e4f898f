"""Data sources: the parquet files written by ``tasks.features`` below ``$SHOPREC_HOME/features/``
(absolute paths, read by the DuckDB offline store).

* ``user_features_source``: ``user_features/YYYY-MM-DD.parquet``, one daily snapshot per file;
* ``item_features_source``: ``item_features/catalog.parquet`` (catalog + title embeddings);
* ``item_popularity_source``: ``item_popularity/YYYY-MM-DD.parquet`` (raw counts, not private).
"""

from tasks.feast_store import build_definitions, repo_settings

_definitions = build_definitions(repo_settings().features_dir)

user_features_source = _definitions.user_source
item_features_source = _definitions.item_source
item_popularity_source = _definitions.popularity_source
