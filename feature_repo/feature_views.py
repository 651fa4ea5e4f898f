"""Feature views (schemas and TTLs are documented in ``tasks/feast_store.py``):

* ``user_features`` (entity user): daily point-in-time snapshots, TTL 0 (no expiry);
* ``item_features`` (entity item): title, category, price, first_seen, 384-d title embedding;
* ``item_popularity`` (entity item): raw, NON-private counts, never read by DP training.

Publishing's ``user_recommendations`` views are built in ``recommendations.py`` and applied by
``tasks.publishing``.
"""

from tasks.feast_store import build_definitions, repo_settings

_definitions = build_definitions(repo_settings().features_dir)

user_features = _definitions.user_features
item_features = _definitions.item_features
item_popularity = _definitions.item_popularity
