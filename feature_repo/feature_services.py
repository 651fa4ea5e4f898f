"""Feature services, versioned by name: a breaking change gets a new ``_vN`` beside the old one.

* ``recommender_v1``: all of ``user_features`` (what the two-tower model reads per user);
* ``item_catalog_v1``: ``item_features``.
"""

from tasks.feast_store import build_definitions, repo_settings

_definitions = build_definitions(repo_settings().features_dir)

recommender_v1 = _definitions.recommender_v1
item_catalog_v1 = _definitions.item_catalog_v1
