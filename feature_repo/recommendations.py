"""Published recommendations: the blue/green pair of views and the feature service consumers read.

``user_recommendations_blue`` / ``user_recommendations_green`` (entity ``user``): ``item_ids``,
``scores``, ``reasons``, ``model_version``, ``publish_id``, ``generated_at``.  ``recommendations_v1``
projects the live slot under the name ``user_recommendations``; ``tasks.publishing.publish_online``
switches it after a verified write (see docs/consumers.md).  The objects are built by
``tasks.publishing``; this file exposes them for the Feast CLI.  The service is exposed as currently
registered (read from the registry), so ``feast apply`` from this folder keeps the live slot.
"""

from tasks.feast_store import build_definitions, repo_settings
from tasks.publishing import SLOTS, live_service_definition, recommendation_view, recommendations_source

_settings = repo_settings()
_user = build_definitions(_settings.features_dir).user

user_recommendations_source = recommendations_source(_settings)
user_recommendations_blue = recommendation_view(SLOTS[0], _user, user_recommendations_source)
user_recommendations_green = recommendation_view(SLOTS[1], _user, user_recommendations_source)
recommendations_v1 = live_service_definition(_settings)
