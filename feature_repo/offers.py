"""Published offers: ``user_offers`` (entity ``user``: ``offer_id``, ``probability``,
``expected_profit``, ``gain_over_no_offer``, ``model_version``) behind the versioned service
``offers_v1``.  Built by ``tasks.campaigns.serving``; this file exposes them for the Feast CLI.
"""

from tasks.campaigns.serving import offer_definitions
from tasks.feast_store import repo_settings

user_offers_source, user_offers, offers_v1 = offer_definitions(repo_settings())
