"""The Feast feature store of ShopRec: definitions, store construction and the calls other stages use.

Interface (names are stable; training and publishing code against them):

* entities ``user`` (join key ``user_id``) and ``item`` (join key ``item_id``), project ``shoprec``;
* feature view ``user_features`` (entity ``user``): daily snapshots written by :mod:`tasks.features`, one
  row per user active in the trailing 30 days per day D, ``event_timestamp = D+1 00:00 UTC``.  Fields:
  ``views_7d clicks_7d carts_7d purchases_7d views_30d clicks_30d carts_30d purchases_30d`` (Int64),
  ``spend_30d avg_basket_value_30d days_since_last_purchase`` (Float64; the last is -1 when never),
  ``top_categories`` (Array(String), <= 3), ``recent_items`` (Array(String), <= history_length distinct
  item ids, newest first), ``purchased_items``/``purchased_counts`` (Array(String)/Array(Int64): the
  user's own all-time purchase counts, top 100).  **TTL = 0 (no expiry)**: a user inactive for more than
  30 days gets no new snapshot, and point-in-time retrieval still returns their latest row (its 7/30-day
  counts are as of that row's day; ``recent_items`` and ``purchased_*`` stay valid);
* feature view ``item_features`` (entity ``item``): ``title category price first_seen`` and ``embedding``
  (Array(Float32), 384, vector-indexed, cosine); ``event_timestamp = first_seen``, TTL 0;
* feature view ``item_popularity`` (entity ``item``): raw, NON-private event counts over 7/30 days and
  ``users_30d``; TTL 2 days.  It is computed from many users' data without a DP mechanism, so it is
  **offline only** (``online=False``, refused by :func:`materialize`): operators may read it from the
  offline store, feature consumers (online store, feature server) never see it; DP training never reads
  it;
* feature services ``recommender_v1`` (all of ``user_features``: what training and serving read per user)
  and ``item_catalog_v1`` (``item_features``).  Neither contains ``item_popularity``.

Functions: :func:`get_store`, :func:`apply_definitions`, :func:`materialize`,
:func:`get_training_frame`, :func:`get_online_user_features`, :func:`item_vectors`, :func:`search_items`,
:func:`write_repo_yaml` (a ``feature_store.yaml`` with this Settings' absolute paths, for ``feast serve``).

Profiles: embedded = local provider, DuckDB offline store on the parquet files (absolute paths), SQLite
online store, SQL registry on SQLite; production = the same offline store, Redis online store
(``settings.redis_url``) and the SQL registry on PostgreSQL.  Semantic search does not go through
Feast's vector retrieval (see :func:`search_items` for why): it ranks the item vectors exactly.

Adding a feature view (e.g. publishing's ``user_recommendations``): build it from
:func:`build_definitions`' entities, expose it from a new file in ``feature_repo/`` for the CLI and pass
it to :func:`apply_definitions` through ``extra`` (which keeps everything else as is).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml

from tasks.config import Profile, Settings, get_settings
from tasks.contracts import ExpectedError
from tasks.features import (
    COUNT_COLUMNS,
    USER_FEATURES_SCHEMA,
    item_features_path,
    user_features_dir,
)
from tasks.io import atomic_write_text

if TYPE_CHECKING:
    from feast import FeatureStore, RepoConfig

PROJECT: Final = "shoprec"
EMBEDDING_DIM: Final = 384
USER_FEATURES: Final = "user_features"
ITEM_FEATURES: Final = "item_features"
ITEM_POPULARITY: Final = "item_popularity"
# Views computed from many users without a DP mechanism: never materialised to the online store.
OFFLINE_ONLY_VIEWS: Final = frozenset({ITEM_POPULARITY})
RECOMMENDER_SERVICE: Final = "recommender_v1"
ITEM_SERVICE: Final = "item_catalog_v1"
EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# the user feature columns Feast serves: the snapshot schema less its keys
USER_FIELDS: Final = tuple(
    f.name for f in USER_FEATURES_SCHEMA if f.name not in ("user_id", "event_timestamp")
)


@dataclass(frozen=True)
class FeastDefinitions:
    """Every Feast object of the repository, built for one features folder."""

    user: Any
    item: Any
    user_source: Any
    item_source: Any
    popularity_source: Any
    user_features: Any
    item_features: Any
    item_popularity: Any
    recommender_v1: Any
    item_catalog_v1: Any

    def objects(self) -> list[Any]:
        return [
            self.user,
            self.item,
            self.user_source,
            self.item_source,
            self.popularity_source,
            self.user_features,
            self.item_features,
            self.item_popularity,
            self.recommender_v1,
            self.item_catalog_v1,
        ]


@functools.cache
def build_definitions(features_dir: Path) -> FeastDefinitions:
    """The entities, sources, views and services, reading parquet below ``features_dir`` (absolute)."""
    from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
    from feast.data_format import ParquetFormat
    from feast.types import Array, Float32, Float64, Int64, String, UnixTimestamp

    root = features_dir.resolve()
    user = Entity(
        name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="A shopper (pseudonym)"
    )
    item = Entity(
        name="item", join_keys=["item_id"], value_type=ValueType.STRING, description="A catalog item"
    )

    def source(name: str, pattern: str) -> FileSource:
        return FileSource(
            name=f"{name}_source",
            path=str(root / name / pattern),
            file_format=ParquetFormat(),
            timestamp_field="event_timestamp",
            description=f"{name} parquet files written by tasks.features",
        )

    user_source = source("user_features", "*.parquet")
    item_source = source("item_features", "catalog.parquet")
    popularity_source = source("item_popularity", "*.parquet")

    user_features = FeatureView(
        name=USER_FEATURES,
        entities=[user],
        ttl=dt.timedelta(0),  # no expiry: an inactive user's latest snapshot stays retrievable
        schema=[Field(name=c, dtype=Int64) for c in COUNT_COLUMNS]
        + [
            Field(name="spend_30d", dtype=Float64),
            Field(name="avg_basket_value_30d", dtype=Float64),
            Field(name="days_since_last_purchase", dtype=Float64, description="-1 when never"),
            Field(name="top_categories", dtype=Array(String)),
            Field(name="recent_items", dtype=Array(String), description="newest first, distinct"),
            Field(name="purchased_items", dtype=Array(String), description="the user's own purchases"),
            Field(name="purchased_counts", dtype=Array(Int64)),
        ],
        source=user_source,
        online=True,
        tags={"privacy": "user's own data", "snapshot": "daily, event_timestamp = end of day"},
    )
    item_features = FeatureView(
        name=ITEM_FEATURES,
        entities=[item],
        ttl=dt.timedelta(0),
        schema=[
            Field(name="title", dtype=String),
            Field(name="category", dtype=String),
            Field(name="price", dtype=Float64),
            Field(name="first_seen", dtype=UnixTimestamp),
            Field(
                name="embedding",
                dtype=Array(Float32),
                vector_index=True,
                vector_length=EMBEDDING_DIM,
                vector_search_metric="COSINE",
                description="all-MiniLM-L6-v2 title embedding, L2-normalised",
            ),
        ],
        source=item_source,
        online=True,
        tags={"privacy": "public catalog"},
    )
    item_popularity = FeatureView(
        name=ITEM_POPULARITY,
        entities=[item],
        ttl=dt.timedelta(days=2),
        schema=[Field(name=c, dtype=Int64) for c in (*COUNT_COLUMNS, "users_30d")],
        source=popularity_source,
        online=False,  # raw counts of many users: never in the store feature consumers read
        tags={"privacy": "NOT differentially private: offline only, never read by DP training"},
    )
    recommender_v1 = FeatureService(
        name=RECOMMENDER_SERVICE,
        features=[user_features],
        description="Per-user features the two-tower model reads (training and serving).",
    )
    item_catalog_v1 = FeatureService(
        name=ITEM_SERVICE, features=[item_features], description="Catalog attributes and title vectors."
    )
    return FeastDefinitions(
        user=user,
        item=item,
        user_source=user_source,
        item_source=item_source,
        popularity_source=popularity_source,
        user_features=user_features,
        item_features=item_features,
        item_popularity=item_popularity,
        recommender_v1=recommender_v1,
        item_catalog_v1=item_catalog_v1,
    )


def repo_settings() -> Settings:
    """Settings for the ``feature_repo/`` files run by the Feast CLI: ``SHOPREC_HOME`` when set, else
    the checkout's ``.shoprec`` (the Makefile's default, which ``feature_store.yaml`` points at)."""
    settings = get_settings()
    if "home" in settings.model_fields_set:  # SHOPREC_HOME (environment or .env)
        return settings
    return settings.model_copy(update={"home": settings.project_root / ".shoprec"})


# --- configuration -------------------------------------------------------------------------------
def redis_connection_string(redis_url: str) -> str:
    """Feast's ``host:port,db=N[,password=...]`` form of a ``redis://[:password@]host:port/N`` URL."""
    parsed = urlparse(redis_url)
    parts = [f"{parsed.hostname or '127.0.0.1'}:{parsed.port or 6379}"]
    db = parsed.path.lstrip("/")
    if db:
        parts.append(f"db={int(db)}")
    if parsed.password:
        parts.append(f"password={parsed.password}")
    if parsed.scheme == "rediss":
        parts.append("ssl=true")
    return ",".join(parts)


def repo_config_dict(settings: Settings) -> dict[str, Any]:
    """The ``feature_store.yaml`` content for ``settings`` (absolute paths, no environment needed)."""
    online: dict[str, Any]
    if settings.profile is Profile.PRODUCTION:
        online = {"type": "redis", "connection_string": redis_connection_string(settings.redis_url)}
    else:
        online = {"type": "sqlite", "path": str(settings.feast_online_path)}
    return {
        "project": PROJECT,
        "provider": "local",
        "registry": {
            "registry_type": "sql",
            "path": settings.resolved_feast_registry_url,
            "cache_ttl_seconds": 60,
            "sqlalchemy_config_kwargs": {"pool_pre_ping": True},
        },
        "online_store": online,
        "offline_store": {"type": "duckdb"},
        "entity_key_serialization_version": 3,
    }


def repo_config(settings: Settings) -> RepoConfig:
    from feast import RepoConfig

    return RepoConfig(repo_path=settings.feast_dir, **repo_config_dict(settings))


def get_store(settings: Settings) -> FeatureStore:
    """A FeatureStore for the Settings' profile, built in Python (no yaml is read)."""
    from feast import FeatureStore

    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    return FeatureStore(config=repo_config(settings))


def write_repo_yaml(settings: Settings) -> Path:
    """Write ``feast_dir/repo/feature_store.yaml`` for the CLI (``feast -c DIR serve``); return DIR."""
    folder = settings.feast_dir / "repo"
    atomic_write_text(
        folder / "feature_store.yaml", yaml.safe_dump(repo_config_dict(settings), sort_keys=False)
    )
    return folder


# --- apply and materialize -----------------------------------------------------------------------
@dataclass(frozen=True)
class ApplyManifest:
    project: str
    registry: str
    feature_views: list[str]
    feature_services: list[str]


def apply_definitions(settings: Settings, extra: Iterable[Any] = ()) -> ApplyManifest:
    """Register the definitions (plus ``extra`` objects) and create the online tables. Idempotent."""
    from feast import FeatureService, FeatureView

    definitions = build_definitions(settings.features_dir)
    objects = definitions.objects() + list(extra)
    get_store(settings).apply(objects)
    return ApplyManifest(
        project=PROJECT,
        registry=_redact(settings.resolved_feast_registry_url),
        feature_views=sorted(o.name for o in objects if isinstance(o, FeatureView)),
        feature_services=sorted(o.name for o in objects if isinstance(o, FeatureService)),
    )


def _redact(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url


@dataclass(frozen=True)
class MaterializeManifest:
    start: str
    end: str
    feature_views: list[str]
    source_rows: int  # offline rows inside the window (Feast writes the latest one per entity)
    seconds: float


def _rows_between(folder: Path, start: dt.datetime, end: dt.datetime) -> int:
    rows = 0
    for file in sorted(folder.glob("*.parquet")):
        column = pq.read_table(file, columns=["event_timestamp"]).column("event_timestamp").to_pandas()
        rows += int(((column >= start) & (column <= end)).sum())
    return rows


def materialize(
    settings: Settings, start: dt.datetime, end: dt.datetime, views: Sequence[str] | None = None
) -> MaterializeManifest:
    """Load the offline rows with ``start <= event_timestamp <= end`` into the online store.

    ``start``/``end`` come from the run's data (snapshot times), never from the wall clock.  Item
    features are keyed on ``first_seen``, so they are materialised from the epoch up to ``end``.
    Offline-only views (:data:`OFFLINE_ONLY_VIEWS`: raw, non-private counts) are refused.
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("materialize: start and end must be timezone-aware")
    chosen = list(views or (USER_FEATURES, ITEM_FEATURES))
    refused = sorted(OFFLINE_ONLY_VIEWS.intersection(chosen))
    if refused:
        raise ValueError(
            f"materialize: {', '.join(refused)} is offline only (raw counts of many users, no DP "
            "mechanism): it never goes to the online store feature consumers read"
        )
    store = get_store(settings)
    started = time.perf_counter()
    windowed = [v for v in chosen if v != ITEM_FEATURES]
    rows = 0
    if windowed:
        store.materialize(start_date=start, end_date=end, feature_views=windowed)
        if USER_FEATURES in windowed:
            rows += _rows_between(user_features_dir(settings), start, end)
    if ITEM_FEATURES in chosen:
        store.materialize(start_date=EPOCH, end_date=end, feature_views=[ITEM_FEATURES])
        rows += _rows_between(item_features_path(settings).parent, EPOCH, end)
    return MaterializeManifest(
        start=start.isoformat(),
        end=end.isoformat(),
        feature_views=chosen,
        source_rows=rows,
        seconds=time.perf_counter() - started,
    )


# --- reading -------------------------------------------------------------------------------------
def get_training_frame(settings: Settings, entity_df: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time correct ``recommender_v1`` features for rows of (``user_id``, ``event_timestamp``).

    One output row per entity row, in Feast's order (none dropped): each row gets the user's latest
    snapshot with ``event_timestamp <=`` the row's timestamp (a snapshot stamped ``D+1 00:00`` holds
    only events before that instant), or nulls when there is none.
    """
    missing = {"user_id", "event_timestamp"} - set(entity_df.columns)
    if missing:
        raise ValueError(f"get_training_frame: entity_df lacks {sorted(missing)}")
    frame = entity_df.copy()
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    store = get_store(settings)
    service = store.get_feature_service(RECOMMENDER_SERVICE)
    job = store.get_historical_features(entity_df=frame, features=service)
    return job.to_df()


class ServiceNotRegistered(ExpectedError):
    """The feature service a consumer asked for is not in the Feast registry (nothing published)."""


class FeatureServerError(ExpectedError):
    """The configured feature server (``SHOPREC_FEATURE_SERVER_URL``) did not answer a lookup."""


# One FeatureStore per store configuration and process: building one parses the config and opens the
# registry; a consumer process (a server, a benchmark, a notebook) reuses it for every lookup.
_STORES: dict[str, FeatureStore] = {}


def cached_store(settings: Settings) -> FeatureStore:
    """The process's FeatureStore for ``settings``' store configuration (built once, then reused)."""
    key = json.dumps([str(settings.feast_dir), repo_config_dict(settings)], sort_keys=True, default=str)
    if key not in _STORES:
        _STORES[key] = get_store(settings)
    return _STORES[key]


def read_online_service(settings: Settings, service: str, user_ids: Sequence[str]) -> dict[str, list[Any]]:
    """Online values of feature service ``service`` for ``user_ids``: column name -> one value per user
    (None where a user has no row).

    With ``settings.feature_server_url`` the lookup is one HTTP request to that ``feast serve`` (the
    Feast SDK is not imported); else through the SDK with the process's cached FeatureStore, the
    service definition from the registry cache (``cache_ttl_seconds``: a blue/green switch shows
    within that time), not re-read from the registry database per lookup.  Raises
    :class:`ServiceNotRegistered` when the service does not exist.
    """
    if settings.feature_server_url:
        return _read_through_server(settings.feature_server_url, service, user_ids)
    from feast.errors import FeatureServiceNotFoundException

    store = cached_store(settings)
    try:
        definition = store.get_feature_service(service)
    except FeatureServiceNotFoundException as missing:
        raise ServiceNotRegistered(f"feature service {service} is not registered") from missing
    rows = [{"user_id": u} for u in user_ids]
    return dict(store.get_online_features(features=definition, entity_rows=rows).to_dict())


def _read_through_server(url: str, service: str, user_ids: Sequence[str]) -> dict[str, list[Any]]:
    if urlparse(url).scheme not in ("http", "https"):
        raise FeatureServerError(f"feature server URL {url!r} is not http(s)://")
    body = json.dumps({"feature_service": service, "entities": {"user_id": list(user_ids)}}).encode()
    endpoint = f"{url.rstrip('/')}/get-online-features"
    request = urllib.request.Request(endpoint, data=body, headers={"Content-Type": "application/json"})  # ruff: ignore[suspicious-url-open-usage] (http(s) only, checked above)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # ruff: ignore[suspicious-url-open-usage] (http(s) only)
            payload = json.loads(response.read())
    except urllib.error.HTTPError as failed:
        detail = failed.read().decode(errors="replace")
        if "FeatureServiceNotFound" in detail or "not found" in detail.lower():
            raise ServiceNotRegistered(f"feature service {service} is not registered") from failed
        raise FeatureServerError(f"feature server {url}: HTTP {failed.code}: {detail[:200]}") from failed
    except (urllib.error.URLError, OSError) as failed:
        raise FeatureServerError(f"feature server {url} does not answer: {failed}") from failed
    names = payload["metadata"]["feature_names"]
    return {name: list(column["values"]) for name, column in zip(names, payload["results"], strict=True)}


def get_online_user_features(settings: Settings, user_ids: Sequence[str]) -> dict[str, list[Any]]:
    """``recommender_v1`` features of ``user_ids`` from the online store: column name -> values."""
    store = get_store(settings)
    service = store.get_feature_service(RECOMMENDER_SERVICE)
    response = store.get_online_features(features=service, entity_rows=[{"user_id": u} for u in user_ids])
    return dict(response.to_dict())


def item_vectors(settings: Settings) -> tuple[list[str], np.ndarray]:
    """Item ids and their title vectors, float32 ``(n_items, dim)``, from the item feature table."""
    table = pq.read_table(item_features_path(settings), columns=["item_id", "embedding"])
    ids = [str(v) for v in table.column("item_id").to_pylist()]
    flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    matrix = np.asarray(flat, dtype=np.float32).reshape(len(ids), -1) if ids else np.zeros((0, 0), np.float32)
    return ids, matrix


def search_items(
    settings: Settings, query_vector: Sequence[float] | np.ndarray, k: int
) -> list[tuple[str, float]]:
    """The ``k`` items whose title vectors are closest to ``query_vector``: (item_id, cosine similarity).

    Exact ranking over :func:`item_vectors` (a few thousand items: one matrix product).  Feast's
    ``retrieve_online_documents_v2`` is not usable with this stack's embedded store: Feast 0.67's
    SQLite store loads sqlite-vec only on Python 3.10, this Python's ``sqlite3`` cannot load
    extensions, and with ``vector_enabled`` the store fails to write list features such as
    ``recent_items``; Redis has no vector search in Feast.  The ``embedding`` field keeps its
    vector-index metadata for a vector-capable online store.
    """
    if k < 1:
        return []
    query = np.asarray(query_vector, dtype=np.float32).ravel()
    query = query / max(float(np.linalg.norm(query)), 1e-12)
    ids, matrix = item_vectors(settings)
    if not ids:
        return []
    if matrix.shape[1] != query.shape[0]:
        raise ValueError(f"search_items: query has {query.shape[0]} dimensions, items {matrix.shape[1]}")
    scores = matrix @ query
    order = np.lexsort((np.asarray(ids), -scores))[:k]
    return [(ids[i], float(scores[i])) for i in order]
