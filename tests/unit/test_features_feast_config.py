"""The Feast configuration built from Settings (no Feast services touched)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.config import Profile, get_settings
from tasks.feast_store import (
    EMBEDDING_DIM,
    RECOMMENDER_SERVICE,
    USER_FIELDS,
    build_definitions,
    redis_connection_string,
    repo_config_dict,
)


def test_redis_url_becomes_feast_connection_string() -> None:
    assert redis_connection_string("redis://127.0.0.1:6379/3") == "127.0.0.1:6379,db=3"
    assert redis_connection_string("redis://:s3cret@cache:6380/0") == "cache:6380,db=0,password=s3cret"


def test_embedded_profile_uses_absolute_sqlite_paths(tmp_path: Path) -> None:
    config = repo_config_dict(get_settings(home=tmp_path))
    assert config["registry"]["path"] == f"sqlite:///{tmp_path.resolve() / 'feast' / 'registry.db'}"
    assert config["online_store"] == {
        "type": "sqlite",
        "path": str(tmp_path.resolve() / "feast" / "online.db"),
    }
    assert config["offline_store"] == {"type": "duckdb"}


def test_production_profile_uses_redis_and_postgres_registry(tmp_path: Path) -> None:
    settings = get_settings(home=tmp_path, profile=Profile.PRODUCTION, redis_url="redis://10.0.0.5:6379/2")
    config = repo_config_dict(settings)
    assert config["online_store"] == {"type": "redis", "connection_string": "10.0.0.5:6379,db=2"}
    assert config["registry"]["path"].startswith("postgresql+psycopg2://")


@pytest.fixture(scope="module")
def definitions(tmp_path_factory: pytest.TempPathFactory):
    return build_definitions(tmp_path_factory.mktemp("features"))


def test_sources_read_absolute_paths_below_the_features_dir(definitions) -> None:
    for source in (definitions.user_source, definitions.item_source, definitions.popularity_source):
        assert Path(source.path).is_absolute()


def test_recommender_service_serves_user_features_only(definitions) -> None:
    assert definitions.recommender_v1.name == RECOMMENDER_SERVICE
    projections = definitions.recommender_v1.feature_view_projections
    assert [p.name for p in projections] == ["user_features"]
    assert [f.name for f in definitions.user_features.features] == list(USER_FIELDS)


def test_user_features_never_expire(definitions) -> None:
    assert definitions.user_features.ttl.total_seconds() == 0


def test_item_embedding_is_a_384_d_vector_field(definitions) -> None:
    field = next(f for f in definitions.item_features.features if f.name == "embedding")
    assert (field.vector_index, field.vector_length) == (True, EMBEDDING_DIM)


def test_popularity_is_in_no_feature_service(definitions) -> None:
    for service in (definitions.recommender_v1, definitions.item_catalog_v1):
        assert "item_popularity" not in [p.name for p in service.feature_view_projections]
