"""Issue 14's attacks on the privacy ledger, each asserting detection or refusal (SQLite and PostgreSQL).

On the code before issue 14, every attack below went unnoticed: ``verify`` printed "ledger verified"
after it (or the configuration bought a bigger budget).  Tampering on PostgreSQL runs as a superuser
with ``session_replication_role = replica``, the one way past the append-only triggers; the tests
that the triggers and the app role refuse the same statements are at the end.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import sqlalchemy as sa
from helpers_settings import only_shoprec_env
from typer.testing import CliRunner

from tasks.config import Settings, get_settings
from tasks.privacy.accounting import DpSgdMechanism
from tasks.privacy.anchors import ANCHOR_TAG, anchors_dir, write_anchor_file
from tasks.privacy.cli import app
from tasks.privacy.ledger import GENESIS_HASH, Ledger, LedgerKeyError, LedgerMissing, row_digest
from tasks.privacy.ledger_key import key_file, ledger_key, open_ledger
from tasks.privacy.pg_guard import drop_ledger_roles, prepare_ledger_database
from tasks.privacy.policy import PolicyMismatch, budget_for_run
from tasks.privacy.statement import PrivacyStatement, attach_to_model_version
from tasks.privacy.tables import CHAINED_TABLES
from tasks.privacy.verify import verify_settings

pytestmark = pytest.mark.integration

DELTA = 1e-5
CAP = 8.0
RUN = DpSgdMechanism(noise_multiplier=1.1, sample_rate=0.01, steps=1000, clip_norm=1.0, cap_k=20)
JANUARY = (dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 2, 1, tzinfo=dt.UTC))
AT = JANUARY[1]
ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432"


@dataclass
class Target:
    """A ledger under attack: its settings and how the attacker writes to its database."""

    settings: Settings
    admin_url: str  # bypasses the PostgreSQL triggers (superuser, replica mode); the file itself on SQLite

    def sql(self, *statements: str) -> None:
        engine = sa.create_engine(self.admin_url)
        try:
            with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
                for statement in statements:
                    conn.exec_driver_sql(statement)
        finally:
            engine.dispose()

    def rehash(self, key: bytes) -> None:
        """Recompute every chain under ``key`` (an attacker's guess, or the stolen ledger key)."""
        engine = sa.create_engine(self.admin_url)
        try:
            with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
                for table in CHAINED_TABLES:
                    prev = GENESIS_HASH
                    for row in conn.execute(sa.select(table).order_by(table.c.id)).all():
                        digest = row_digest(table.name, prev, row._asdict(), key)
                        conn.execute(
                            sa.update(table)
                            .where(table.c.id == row.id)
                            .values(prev_hash=prev, row_hash=digest)
                        )
                        prev = digest
        finally:
            engine.dispose()

    def verify(self) -> list[str]:
        result = verify_settings(self.settings, at=AT)
        assert result.ok is not bool(result.problems)
        return list(result.problems)


def _reserve(ledger: Ledger, run_id: str) -> Any:
    """Reserve one training of ``RUN`` over January for ``run_id``."""
    return ledger.reserve(
        scope="events",
        run_id=run_id,
        mechanism=RUN,
        data_window=JANUARY,
        n_users=5000,
        code_version="abc",
        data_hash="sha256:x",
        purpose="train_recommender",
    )


def _history(settings: Settings, runs: int = 3) -> None:
    """A budget and ``runs`` committed trainings; each commit anchors the head (as publishing does)."""
    ledger = open_ledger(settings)
    try:
        ledger.ensure_budget("events", CAP, DELTA, 365)
        for i in range(runs):
            charge = _reserve(ledger, f"scheduled__{i}")
            ledger.commit(charge.id, model_version=str(i + 1), artifact_uri=None)
            write_anchor_file(settings, f"commit-{charge.id}", ledger.anchor())
    finally:
        ledger.close()


@pytest.fixture
def pg_database() -> Iterator[tuple[str, str, str]]:
    """A fresh database set up by prepare_ledger_database: (superuser URL, app URL, app role)."""
    name = f"shoprec_adv_{uuid.uuid4().hex[:10]}"
    owner, app_role = f"{name}_owner", f"{name}_app"
    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        prepare_ledger_database(f"{ADMIN}/{name}", owner_role=owner, app_role=app_role)
        prepare_ledger_database(f"{ADMIN}/{name}", owner_role=owner, app_role=app_role)  # idempotent
        yield f"{ADMIN}/{name}", f"postgresql+psycopg2://{app_role}@127.0.0.1:5432/{name}", app_role
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        drop_ledger_roles(f"{ADMIN}/postgres", owner_role=owner, app_role=app_role)
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Target:
    """Three committed trainings with anchors, on SQLite or on PostgreSQL (services as the app role)."""
    env = {"SHOPREC_HOME": str(tmp_path / "shoprec")}
    if request.param == "postgresql":
        admin_url, app_url, _ = request.getfixturevalue("pg_database")
        env["SHOPREC_LEDGER_URL"] = app_url
    only_shoprec_env(monkeypatch, env)
    settings = get_settings()
    if request.param == "sqlite":
        admin_url = settings.resolved_ledger_url
    _history(settings)
    found = Target(settings, admin_url)
    assert found.verify() == []
    return found


# --- rows removed ---------------------------------------------------------------------------------
def test_deleting_the_last_charge_and_its_events_is_caught_by_the_anchor(target: Target) -> None:
    target.sql(
        "DELETE FROM privacy_charge_events WHERE charge_id = 3", "DELETE FROM privacy_charges WHERE id = 3"
    )
    problems = target.verify()
    assert any("privacy_charges: 2 rows up to id 3" in p and "(rows removed)" in p for p in problems)


def test_deleting_the_last_charge_alone_leaves_events_without_their_charge(target: Target) -> None:
    for anchor in anchors_dir(target.settings).iterdir():
        anchor.unlink()  # even without any anchor
    target.sql("DELETE FROM privacy_charges WHERE id = 3")
    assert any("refers to charge 3, which does not exist" in p for p in target.verify())


def test_deleting_everything_is_caught(target: Target) -> None:
    target.sql(
        "DELETE FROM privacy_charge_events", "DELETE FROM privacy_charges", "DELETE FROM privacy_budgets"
    )
    problems = target.verify()
    assert problems
    assert all("is empty but" in p for p in problems)
    with pytest.raises(LedgerMissing, match="refusing to start a new, empty privacy ledger"):
        open_ledger(target.settings)  # and no run spends a fresh budget on it


# --- rows rewritten -------------------------------------------------------------------------------
def test_moving_a_window_and_rehashing_without_the_key_is_caught(target: Target) -> None:
    for anchor in anchors_dir(target.settings).iterdir():
        anchor.unlink()  # the keyed chain alone catches it
    target.sql(
        "UPDATE privacy_charges SET window_start = '2000-01-01T00:00:00.000000+00:00', "
        "window_end = '2000-02-01T00:00:00.000000+00:00' WHERE id = 1"
    )
    target.rehash(b"a guessed key")  # a re-hash without the ledger key fails
    problems = target.verify()
    assert any("privacy_charges row 1: content does not match its keyed hash" in p for p in problems)


def test_moving_a_window_and_rehashing_with_the_stolen_key_is_caught_by_the_anchor(target: Target) -> None:
    target.sql(
        "UPDATE privacy_charges SET window_start = '2000-01-01T00:00:00.000000+00:00', "
        "window_end = '2000-02-01T00:00:00.000000+00:00' WHERE id = 1"
    )
    target.rehash(ledger_key(target.settings))
    problems = target.verify()
    assert not any("keyed hash" in p for p in problems)  # the stolen key makes the chain consistent...
    assert any("no longer has the hash anchored" in p for p in problems)  # ...but not the anchors


def test_rehash_with_the_stolen_key_that_drops_rows_is_caught_by_the_anchor(target: Target) -> None:
    """Drop the middle training, renumber the rest and re-hash: a consistent chain, but not the anchored one."""
    target.sql(
        "DELETE FROM privacy_charge_events WHERE charge_id = 2",
        "DELETE FROM privacy_charges WHERE id = 2",
        "UPDATE privacy_charges SET id = 2, composed_with = '[1]' WHERE id = 3",
        "UPDATE privacy_charge_events SET charge_id = 2 WHERE charge_id = 3",
        "UPDATE privacy_charge_events SET id = id - 2 WHERE id > 4",
    )
    target.rehash(ledger_key(target.settings))
    problems = target.verify()
    assert not any("keyed hash" in p or "prev_hash" in p for p in problems)
    assert any("privacy_charges: 2 rows up to id 3" in p for p in problems)
    assert any("privacy_charges: row 2 no longer has the hash anchored" in p for p in problems)


def test_raising_the_cap_by_editing_the_budget_row_is_caught(target: Target) -> None:
    target.sql("UPDATE privacy_budgets SET epsilon_cap = 1000")
    assert any("privacy_budgets row 1: content does not match its keyed hash" in p for p in target.verify())
    target.rehash(ledger_key(target.settings))
    assert any("privacy_budgets: row 1 no longer has the hash anchored" in p for p in target.verify())


# --- illegal transitions --------------------------------------------------------------------------
def test_turning_a_committed_charge_into_a_released_one_is_caught(target: Target) -> None:
    target.sql("UPDATE privacy_charges SET status = 'released', model_version = NULL WHERE id = 1")
    assert any("status released but its last recorded transition is committed" in p for p in target.verify())


def test_a_forged_release_after_a_commit_is_an_illegal_transition_even_with_the_key(target: Target) -> None:
    target.sql(
        "UPDATE privacy_charges SET status = 'released', model_version = NULL WHERE id = 1",
        "INSERT INTO privacy_charge_events (id, charge_id, status, model_version, artifact_uri, at, prev_hash, "
        "row_hash) VALUES (7, 1, 'released', NULL, NULL, '2026-02-02T00:00:00.000000+00:00', 'x', 'y')",
    )
    target.rehash(ledger_key(target.settings))
    assert any("illegal transition reserved -> committed -> released" in p for p in target.verify())


# --- budget from the configuration ----------------------------------------------------------------
def test_cap_raised_by_configuration_is_refused(target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOPREC_PRIVACY_EPSILON_CAP", "1000")
    settings = get_settings()
    ledger = open_ledger(settings)
    try:
        with pytest.raises(PolicyMismatch) as refusal:
            budget_for_run(ledger, settings, n_users=5000)
        assert "SHOPREC_PRIVACY_EPSILON_CAP=1000 but the ledger's cap is 8" in str(refusal.value)
        assert "shoprec privacy budget set" in str(refusal.value)
        assert [b.epsilon_cap for b in ledger.policies("events")] == [CAP]  # nothing bought
    finally:
        ledger.close()


def test_derived_delta_uses_the_ledgers_policy(target: Target) -> None:
    ledger = open_ledger(target.settings)
    try:
        budget = budget_for_run(ledger, target.settings, n_users=123_456)  # another derived delta
        assert (budget.id, budget.delta, budget.epsilon_cap) == (1, DELTA, CAP)
        assert len(ledger.policies("events")) == 1
    finally:
        ledger.close()


def test_budget_set_records_who_and_why_and_anchors(target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(
        app,
        ["budget", "set", "--cap", "9", "--delta", "1e-5", "--reason", "DPO approved Q3", "--by", "alice"],
    )
    assert result.exit_code == 0, result.output
    ledger = Ledger(target.settings.resolved_ledger_url)
    try:
        latest = ledger.policies("events")[-1]
    finally:
        ledger.close()
    assert (latest.epsilon_cap, latest.set_by, latest.reason, latest.period_days) == (
        9.0,
        "alice",
        "DPO approved Q3",
        365,
    )
    assert (anchors_dir(target.settings) / f"budget-{latest.id}.json").exists()
    assert target.verify() == []
    monkeypatch.setenv("SHOPREC_PRIVACY_EPSILON_CAP", "9")
    ledger = open_ledger(get_settings())
    try:
        assert budget_for_run(ledger, get_settings(), n_users=10).epsilon_cap == pytest.approx(9.0)  # agree
    finally:
        ledger.close()


# --- the ledger's file and the home (SQLite) ------------------------------------------------------
@pytest.fixture
def sqlite_home(shoprec_home: Settings) -> Settings:
    _history(shoprec_home)
    return shoprec_home


def test_deleting_the_ledger_file_is_caught_and_no_new_ledger_is_started(sqlite_home: Settings) -> None:
    ledger_file = Path(sqlite_home.resolved_ledger_url.removeprefix("sqlite:///"))
    ledger_file.unlink()
    result = CliRunner().invoke(app, ["verify", "--at", AT.isoformat()])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0  # one clear line
    assert "does not exist" in result.output
    assert not ledger_file.exists()  # verify never creates a ledger
    with pytest.raises(LedgerMissing, match=r"anchors \d+ rows"):
        open_ledger(sqlite_home)
    assert not ledger_file.exists()


def test_a_wrong_home_fails_with_one_line(
    sqlite_home: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOPREC_HOME", str(tmp_path / "typo"))
    result = CliRunner().invoke(app, ["verify", "--at", AT.isoformat()])
    assert result.exit_code == 1
    assert result.output.startswith("LEDGER VERIFICATION FAILED: privacy ledger sqlite:///")
    assert "wrong SHOPREC_HOME" in result.output
    assert not (tmp_path / "typo").exists()


def test_a_ledger_with_rows_and_no_key_is_an_error_not_a_new_key(sqlite_home: Settings) -> None:
    key_file(sqlite_home).unlink()
    with pytest.raises(Exception, match="has 10 rows but no ledger key was found"):
        open_ledger(sqlite_home)
    assert not key_file(sqlite_home).exists()
    assert any("no ledger key found" in p for p in verify_settings(sqlite_home, at=AT).problems)


def test_the_key_file_is_owner_only(sqlite_home: Settings) -> None:
    assert key_file(sqlite_home).stat().st_mode & 0o777 == 0o600


# --- MLflow holds DP versions and anchors ---------------------------------------------------------
@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def mlflow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_store: str) -> Settings:
    """A home whose model version in a real MLflow registry carries the DP statement and the anchor."""
    from mlflow import MlflowClient

    name = f"shoprec-{uuid.uuid4().hex[:8]}"
    only_shoprec_env(
        monkeypatch,
        {
            "SHOPREC_HOME": str(tmp_path / "shoprec"),
            "SHOPREC_MLFLOW_TRACKING_URI": mlflow_store,
            "SHOPREC_REGISTERED_MODEL_NAME": name,
        },
    )
    settings = get_settings()
    _history(settings, runs=1)
    client = MlflowClient(mlflow_store, mlflow_store)
    experiment = client.create_experiment(name, artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment)
    client.create_registered_model(name)
    version = client.create_model_version(
        name, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
    )
    ledger = open_ledger(settings)
    try:
        attach_to_model_version(
            PrivacyStatement.from_charge(ledger.charge(1), secure_rng=False),
            tracking_uri=mlflow_store,
            registry_uri=mlflow_store,
            model_name=name,
            version=str(version.version),
            ledger_anchor=ledger.anchor(),
        )
    finally:
        ledger.close()
    assert ANCHOR_TAG in client.get_model_version(name, str(version.version)).tags
    for anchor in anchors_dir(settings).iterdir():
        anchor.unlink()  # the attacker removes the anchors under the home; MLflow's remain
    assert verify_settings(settings, at=AT).ok
    return settings


def test_missing_ledger_while_mlflow_holds_a_dp_version_is_caught(mlflow_home: Settings) -> None:
    ledger_file = Path(mlflow_home.resolved_ledger_url.removeprefix("sqlite:///"))
    ledger_file.unlink()
    assert any("does not exist" in p for p in verify_settings(mlflow_home, at=AT).problems)
    ledger_file.touch()  # an empty database in its place
    problems = verify_settings(mlflow_home, at=AT).problems
    assert any("is empty but MLflow holds DP model version(s) 1" in p for p in problems)
    with pytest.raises(LedgerMissing, match="MLflow holds DP model version"):
        open_ledger(mlflow_home)


def test_mlflow_anchor_catches_a_rehash_with_the_stolen_key(mlflow_home: Settings) -> None:
    target = Target(mlflow_home, mlflow_home.resolved_ledger_url)
    target.sql("UPDATE privacy_charges SET n_users = 50 WHERE id = 1")
    target.rehash(ledger_key(mlflow_home))
    problems = target.verify()
    assert any("no longer has the hash anchored by mlflow" in p for p in problems)


# --- PostgreSQL: the database itself refuses --------------------------------------------------------
def _refused(url: str, statement: str, match: str) -> None:
    engine = sa.create_engine(url)
    try:
        with pytest.raises(sa.exc.DBAPIError, match=match), engine.begin() as conn:
            conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def _pg_history(app_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    only_shoprec_env(monkeypatch, {"SHOPREC_HOME": str(tmp_path / "shoprec"), "SHOPREC_LEDGER_URL": app_url})
    settings = get_settings()
    _history(settings)
    assert verify_settings(settings, at=AT).ok  # the app role runs the whole protocol
    return settings


TAMPERING: list[tuple[str, str]] = [
    ("DELETE FROM privacy_charges WHERE id = 3", "append-only: DELETE on privacy_charges"),
    ("DELETE FROM privacy_charge_events", "append-only: DELETE on privacy_charge_events"),
    ("DELETE FROM privacy_budgets", "append-only: DELETE on privacy_budgets"),
    ("TRUNCATE privacy_charges, privacy_charge_events, privacy_budgets", "append-only: TRUNCATE"),
    ("UPDATE privacy_budgets SET epsilon_cap = 1000", "append-only: UPDATE on privacy_budgets"),
    ("UPDATE privacy_charge_events SET status = 'released'", "append-only: UPDATE on privacy_charge_events"),
    ("UPDATE privacy_charges SET status = 'released' WHERE id = 1", "may not go from committed to released"),
    (
        "UPDATE privacy_charges SET window_start = '2000-01-01T00:00:00+00:00' WHERE id = 1",
        "may not go from committed to committed",
    ),
]


@pytest.mark.parametrize(("statement", "match"), TAMPERING)
def test_postgres_triggers_refuse_tampering_even_by_the_owner(
    pg_database: tuple[str, str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    statement: str,
    match: str,
) -> None:
    admin_url, app_url, _ = pg_database
    _pg_history(app_url, tmp_path, monkeypatch)
    _refused(admin_url, statement, match)


def test_postgres_trigger_allows_only_the_transition_columns(
    pg_database: tuple[str, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin_url, app_url, _ = pg_database
    settings = _pg_history(app_url, tmp_path, monkeypatch)
    ledger = open_ledger(settings)
    try:
        charge = _reserve(ledger, "scheduled__9")
    finally:
        ledger.close()
    _refused(
        admin_url,
        f"UPDATE privacy_charges SET status = 'committed', epsilon = 0.1 WHERE id = {charge.id}",
        "only the status transition may change",
    )


@pytest.mark.parametrize(
    ("statement", "match"),
    [
        ("DELETE FROM privacy_charges WHERE id = 3", "permission denied for table privacy_charges"),
        ("TRUNCATE privacy_budgets", "permission denied for table privacy_budgets"),
        (
            "UPDATE privacy_charges SET epsilon = 0.1 WHERE id = 1",
            "permission denied for table privacy_charges",
        ),
        ("UPDATE privacy_budgets SET epsilon_cap = 1000", "permission denied for table privacy_budgets"),
        (
            "UPDATE privacy_charges SET status = 'released' WHERE id = 1",
            "may not go from committed to released",
        ),
        ("ALTER TABLE privacy_charges DISABLE TRIGGER ALL", "must be owner of table privacy_charges"),
        ("DROP TRIGGER privacy_charges_append_only ON privacy_charges", "must be owner of (table|relation)"),
        ("SET session_replication_role = replica", "permission denied to set parameter"),
    ],
)
def test_postgres_app_role_cannot_change_the_ledger(
    pg_database: tuple[str, str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    statement: str,
    match: str,
) -> None:
    _, app_url, _ = pg_database
    _pg_history(app_url, tmp_path, monkeypatch)
    _refused(app_url, statement, match)


# --- attacks from the review of the first defence -------------------------------------------------
def test_deleting_an_unanchored_reservation_is_caught_by_the_head_anchor_of_its_write(target: Target) -> None:
    """Every write of a pipeline ledger anchors the new head, so a reservation not yet committed
    cannot be cut off the end of the chain (a truncated chain is otherwise still a valid chain)."""
    ledger = open_ledger(target.settings)
    try:
        _reserve(ledger, "scheduled__reserved")
    finally:
        ledger.close()
    # rows of privacy_budgets, privacy_charge_events, privacy_charges after the reserve
    assert (anchors_dir(target.settings) / "head-1-7-4.json").is_file()
    assert target.verify() == []
    target.sql(
        "DELETE FROM privacy_charge_events WHERE charge_id = 4", "DELETE FROM privacy_charges WHERE id = 4"
    )
    assert any("privacy_charges: 3 rows up to id 4" in p for p in target.verify())


def test_a_wrong_ledger_key_cannot_extend_the_chain(target: Target) -> None:
    before = target.verify()
    wrong = Ledger(target.settings.resolved_ledger_url, key=b"oops-wrong-key")
    try:
        with pytest.raises(LedgerKeyError, match="does not verify under this ledger key"):
            _reserve(wrong, "scheduled__wrong_key")
    finally:
        wrong.close()
    assert before == []
    assert target.verify() == []  # nothing was written under the wrong key
    assert len(open_ledger(target.settings).charges("events")) == 3


def test_a_new_scope_from_the_configuration_is_refused_where_the_ledger_budgets_another(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SHOPREC_PRIVACY_SCOPE=events2 over the same users would be a fresh budget: refused."""
    monkeypatch.setenv("SHOPREC_PRIVACY_SCOPE", "events2")
    settings = get_settings()
    ledger = open_ledger(settings)
    try:
        with pytest.raises(
            PolicyMismatch, match="'events2' has no policy, but this ledger already budgets 'events'"
        ):
            budget_for_run(ledger, settings, n_users=5000)
        assert [b.scope for b in ledger.budgets()] == ["events"]
    finally:
        ledger.close()


def test_a_committed_training_run_is_not_trained_and_released_again(target: Target) -> None:
    """A cleared and re-run train task must not release and train again under its spent charge."""
    from tasks.privacy.policy import active_charge

    ledger = open_ledger(target.settings)
    try:
        with pytest.raises(RuntimeError, match="charge 1 is already committed"):
            active_charge(ledger, "events", "scheduled__0", "train_recommender")
        assert active_charge(ledger, "events", "scheduled__never", "train_recommender") is None
    finally:
        ledger.close()
