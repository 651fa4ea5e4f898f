"""Entities: ``user`` (join key ``user_id``, a pseudonym) and ``item`` (join key ``item_id``).

Every object of this repository is built by ``tasks.feast_store.build_definitions`` (typed, tested, the
same objects the pipeline applies); the files here expose them by kind for the Feast CLI.
"""

from tasks.feast_store import build_definitions, repo_settings

_definitions = build_definitions(repo_settings().features_dir)

user = _definitions.user
item = _definitions.item
