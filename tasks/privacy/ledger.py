"""The privacy budget ledger: append-only, hash-chained budgets and charges on SQLAlchemy.

Three tables (SQLite by default, PostgreSQL in production; URL from ``Settings.resolved_ledger_url``):

* ``privacy_budgets``: policy versions (scope, privacy unit = user, rolling period in days, epsilon cap,
  delta).  The newest row of a scope is the policy in force.
* ``privacy_charges``: one row per mechanism release (DP-SGD training, Gaussian/Laplace counts) with its
  parameters, data window, number of users, code version, data snapshot hash, Airflow run id, its own
  epsilon, the composed epsilon of the worst budget period it falls in and the ids composed with it.
  The only in-place change ever made is the status transition reserved -> committed | released
  (with the model version / artifact it produced).
* ``privacy_charge_events``: every status transition, append-only; a charge's status must equal its
  last event's status.

Each table is a keyed hash chain: ``row_hash = HMAC-SHA256(ledger key, prev_hash || canonical JSON of the
immutable fields)`` and ``prev_hash`` is unique, so the chain cannot fork and nobody without the ledger
key (:mod:`tasks.privacy.ledger_key`) can re-hash a rewritten chain.  Whoever holds the key could, so the
chain head (:meth:`Ledger.head`) is also anchored outside the database (:mod:`tasks.privacy.anchors`).
Every write runs in one serialised transaction (``BEGIN IMMEDIATE`` on SQLite, an advisory
transaction lock on PostgreSQL), which makes the read-compose-insert of :meth:`Ledger.reserve` atomic:
two runs racing for the last budget cannot both pass.  On PostgreSQL the tables are append-only in the
database itself (:mod:`tasks.privacy.pg_guard`).

Budget policies change only through :meth:`Ledger.set_budget` (``shoprec privacy budget set``), which
records who and why; :meth:`Ledger.ensure_budget` only creates the first policy of an empty scope.

A charge counts in the rolling period ``[t - period_days, t]`` when its data window overlaps it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Callable, Generator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa

from tasks.permissions import private_sqlite
from tasks.privacy.accounting import (
    LEDGER_ACCOUNTANT,
    Mechanism,
    NoNoiseFits,
    calibrate_noise,
    compose_epsilon,
    mechanism_from_json,
    mechanism_kind,
    mechanism_params_json,
)
from tasks.privacy.pg_guard import install_triggers
from tasks.privacy.tables import (
    CHAINED_TABLES,
    HASHED_COLUMNS,
    ChargeStatus,
    budgets_table,
    charges_table,
    events_table,
    metadata,
)

GENESIS_HASH: Final = "0" * 64
PRIVACY_UNIT: Final = "user"
_CAP_SLACK: Final = 1e-9  # float noise allowed when comparing a composition with the cap


@dataclass(frozen=True)
class TableHead:
    """The head of one table's chain: how many rows, the last id and the last row's hash."""

    rows: int
    last_id: int
    head: str


def table_heads(conn: sa.Connection) -> dict[str, TableHead]:
    """Each chained table's head as read in ``conn`` (an empty table: 0 rows, id 0, the genesis hash)."""
    heads = {}
    for table in CHAINED_TABLES:
        count = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
        last = conn.execute(
            sa.select(table.c.id, table.c.row_hash).order_by(table.c.id.desc()).limit(1)
        ).first()
        heads[table.name] = TableHead(
            rows=int(count), last_id=last.id if last else 0, head=last.row_hash if last else GENESIS_HASH
        )
    return heads


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL (None for other backends and in-memory databases)."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def ledger_exists(url: str) -> bool:
    """Whether the ledger database exists (never creates it): a SQLite file, or a reachable database."""
    path = sqlite_path(url)
    if path is not None:
        return path.is_file()
    if sa.engine.make_url(url).get_backend_name() == "sqlite":
        return True  # in-memory
    engine = sa.create_engine(url)
    try:
        with engine.connect():
            return True
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


def ledger_row_count(url: str) -> int:
    """Rows in the ledger's chained tables (0 when the database or its tables do not exist); never creates."""
    if not ledger_exists(url):
        return 0
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            return sum(
                conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                for t in CHAINED_TABLES
                if inspector.has_table(t.name)
            )
    finally:
        engine.dispose()


INITIAL_POLICY_REASON: Final = "initial policy from configuration"


class LedgerKeyError(RuntimeError):
    """The ledger key is missing, empty, or does not belong to this ledger."""


class LedgerMissing(FileNotFoundError):
    """The ledger database does not exist (a wrong ``SHOPREC_HOME`` or ledger URL, or a deleted ledger)."""


def row_digest(table: str, prev_hash: str, row: dict[str, Any], key: bytes) -> str:
    """HMAC-SHA256 with the ledger key over the previous hash and the canonical JSON of the hashed columns."""
    if not key:
        raise LedgerKeyError("empty ledger key")
    payload = json.dumps({k: row[k] for k in HASHED_COLUMNS[table]}, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, (prev_hash + payload).encode(), hashlib.sha256).hexdigest()


def key_fingerprint(key: bytes) -> str:
    """A short public fingerprint of the ledger key (names the key in anchors without revealing it)."""
    return hashlib.sha256(b"shoprec-ledger-key:" + key).hexdigest()[:16]


def _iso(moment: dt.datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError(f"timestamps must be timezone-aware, got {moment!r}")
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


def _parse(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


class BudgetExceeded(RuntimeError):
    """The planned mechanism would take the composed epsilon above the budget's cap: the run is refused."""

    def __init__(self, spent: float, requested: float, remaining: float, message: str) -> None:
        super().__init__(message)
        self.spent = spent
        self.requested = requested
        self.remaining = remaining
        self.message = message


@dataclass(frozen=True)
class Budget:
    id: int
    scope: str
    unit: str
    period_days: int
    epsilon_cap: float
    delta: float
    created_at: dt.datetime
    set_by: str
    reason: str


@dataclass(frozen=True)
class Charge:
    id: int
    scope: str
    budget_id: int
    run_id: str
    purpose: str
    mechanism: Mechanism
    data_window: tuple[dt.datetime, dt.datetime]
    n_users: int
    code_version: str
    data_hash: str
    unit: str
    delta: float
    epsilon: float
    composed_epsilon: float
    composed_with: tuple[int, ...]
    accountant: str
    status: ChargeStatus
    model_version: str | None
    artifact_uri: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True)
class EpsilonReport:
    """Composed privacy loss of one scope's rolling period ending at ``at``."""

    scope: str
    at: dt.datetime
    period_start: dt.datetime
    epsilon: float
    delta: float
    unit: str
    accountant: str
    epsilon_cap: float
    remaining: float
    charge_ids: tuple[int, ...]

    def describe(self) -> str:
        return (
            f"epsilon={self.epsilon:.4g} at delta={self.delta:.3g} (unit: {self.unit}, accountant: "
            f"{self.accountant}) of cap {self.epsilon_cap:.4g}; remaining {self.remaining:.4g}"
        )


def _budget_from_row(row: Any) -> Budget:
    return Budget(
        id=row.id,
        scope=row.scope,
        unit=row.unit,
        period_days=row.period_days,
        epsilon_cap=row.epsilon_cap,
        delta=row.delta,
        created_at=_parse(row.created_at),
        set_by=row.set_by,
        reason=row.reason,
    )


def charge_from_row(row: Any) -> Charge:
    return Charge(
        id=row.id,
        scope=row.scope,
        budget_id=row.budget_id,
        run_id=row.run_id,
        purpose=row.purpose,
        mechanism=mechanism_from_json(row.mechanism_kind, row.mechanism_params),
        data_window=(_parse(row.window_start), _parse(row.window_end)),
        n_users=row.n_users,
        code_version=row.code_version,
        data_hash=row.data_hash,
        unit=row.unit,
        delta=row.delta,
        epsilon=row.epsilon,
        composed_epsilon=row.composed_epsilon,
        composed_with=tuple(json.loads(row.composed_with)),
        accountant=row.accountant,
        status=ChargeStatus(row.status),
        model_version=row.model_version,
        artifact_uri=row.artifact_uri,
        created_at=_parse(row.created_at),
        updated_at=_parse(row.updated_at),
    )


def counts_in_period(charge: Charge, start: dt.datetime, end: dt.datetime) -> bool:
    """A charge counts in a period when its data window overlaps ``[start, end]``."""
    return charge.data_window[0] <= end and charge.data_window[1] >= start


def make_engine(url: str) -> sa.Engine:
    """An engine whose transactions serialise writers (SQLite: ``BEGIN IMMEDIATE``)."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    private_sqlite(url)  # ledger.db: 0600 in a 0700 folder
    engine = sa.create_engine(url, connect_args={"timeout": 60})

    @sa.event.listens_for(engine, "connect")
    def _autocommit_driver(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let SQLAlchemy's "begin" below start transactions

    @sa.event.listens_for(engine, "begin")
    def _begin_immediate(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class Ledger:
    """The privacy ledger on the database at ``url``.

    With ``key`` (the ledger key, :func:`tasks.privacy.ledger_key.open_ledger`) it can write and creates
    its tables on first use; without a key it is read-only and never creates anything: a ledger database
    that does not exist raises :class:`LedgerMissing`.
    """

    def __init__(
        self,
        url: str,
        *,
        key: bytes | None = None,
        clock: Callable[[], dt.datetime] | None = None,
        on_write: Callable[[dict[str, Any]], object] | None = None,
    ) -> None:
        """``on_write`` receives :meth:`anchor` after every committed write that appended rows (the
        pipeline's ledgers record it outside the database: :func:`tasks.privacy.ledger_key.open_ledger`)."""
        self.url = url
        self._on_write = on_write
        self._appended = False
        if key is not None and not key:
            raise LedgerKeyError("empty ledger key")
        self._key = key
        if key is None and not ledger_exists(url):
            raise LedgerMissing(f"privacy ledger {_safe_url(url)} does not exist")
        self._engine = make_engine(url)
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        if key is not None:
            with self._write() as conn:
                if not all(sa.inspect(conn).has_table(t.name) for t in CHAINED_TABLES):
                    metadata.create_all(conn)
                    if conn.dialect.name == "postgresql":
                        install_triggers(conn)

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _write(self) -> Generator[sa.Connection]:
        if self._key is None:
            raise LedgerKeyError(f"the ledger {_safe_url(self.url)} was opened without its key: read-only")
        self._appended = False
        with self._engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(7272002)")
                )  # serialises all ledger writers
            yield conn
        if self._appended and self._on_write is not None:
            self._on_write(self.anchor())  # the new head, recorded outside the database

    def head(self) -> dict[str, TableHead]:
        """The chain head of every table (what anchors outside the database record)."""
        with self._engine.begin() as conn:
            return table_heads(conn)

    def anchor(self) -> dict[str, Any]:
        """The JSON-able anchor of the current head (:mod:`tasks.privacy.anchors`): per table the row
        count, last id and head hash, and the public fingerprint of the ledger key."""
        if self._key is None:
            raise LedgerKeyError("an anchor names the ledger key: open the ledger with its key")
        return {
            "tables": {name: asdict(head) for name, head in self.head().items()},
            "key_fingerprint": key_fingerprint(self._key),
        }

    # --- reading ------------------------------------------------------------------------------
    def budget(self, scope: str) -> Budget:
        """The policy in force for ``scope`` (its newest budget row)."""
        with self._engine.begin() as conn:
            found = self._latest_budget(conn, scope)
        if found is None:
            raise LookupError(f"no privacy budget for scope {scope!r}; call ensure_budget first")
        return found

    def budgets(self) -> list[Budget]:
        """The policy in force of every scope."""
        with self._engine.begin() as conn:
            rows = conn.execute(sa.select(budgets_table).order_by(budgets_table.c.id)).all()
        latest: dict[str, Budget] = {}
        for row in rows:
            latest[row.scope] = _budget_from_row(row)
        return list(latest.values())

    def policies(self, scope: str) -> list[Budget]:
        """Every policy version of ``scope``, oldest first."""
        query = sa.select(budgets_table).where(budgets_table.c.scope == scope).order_by(budgets_table.c.id)
        with self._engine.begin() as conn:
            return [_budget_from_row(r) for r in conn.execute(query).all()]

    def charges(self, scope: str | None = None) -> list[Charge]:
        query = sa.select(charges_table).order_by(charges_table.c.id)
        if scope is not None:
            query = query.where(charges_table.c.scope == scope)
        with self._engine.begin() as conn:
            return [charge_from_row(r) for r in conn.execute(query).all()]

    def charge(self, charge_id: int) -> Charge:
        with self._engine.begin() as conn:
            return self._charge(conn, charge_id)

    def spent(self, scope: str, at: dt.datetime) -> EpsilonReport:
        """Composed epsilon of all active charges whose data window overlaps ``[at - period, at]``."""
        budget = self.budget(scope)
        start = at - dt.timedelta(days=budget.period_days)
        counted = [
            c
            for c in self.charges(scope)
            if c.status is not ChargeStatus.RELEASED and counts_in_period(c, start, at)
        ]
        epsilon = compose_epsilon([c.mechanism for c in counted], budget.delta)
        return EpsilonReport(
            scope=scope,
            at=at,
            period_start=start,
            epsilon=epsilon,
            delta=budget.delta,
            unit=budget.unit,
            accountant=LEDGER_ACCOUNTANT,
            epsilon_cap=budget.epsilon_cap,
            remaining=max(budget.epsilon_cap - epsilon, 0.0),
            charge_ids=tuple(c.id for c in counted),
        )

    # --- writing ------------------------------------------------------------------------------
    def ensure_budget(
        self, scope: str, epsilon_cap: float, delta: float, period_days: int, *, set_by: str = "configuration"
    ) -> Budget:
        """The policy in force of ``scope``; creates the initial policy only when the scope has none.

        Never changes an existing policy (whatever the arguments say): that is :meth:`set_budget`.
        """
        _check_policy(epsilon_cap, delta, period_days)
        with self._write() as conn:
            latest = self._latest_budget(conn, scope)
            if latest is not None:
                return latest
            return self._append_budget(
                conn, scope, epsilon_cap, delta, period_days, set_by, INITIAL_POLICY_REASON
            )

    def set_budget(
        self, scope: str, epsilon_cap: float, delta: float, period_days: int, *, set_by: str, reason: str
    ) -> Budget:
        """Append a new policy version of ``scope``, recording who changed it and why."""
        _check_policy(epsilon_cap, delta, period_days)
        if not reason.strip() or not set_by.strip():
            raise ValueError("a budget policy change needs a reason and who made it")
        with self._write() as conn:
            return self._append_budget(conn, scope, epsilon_cap, delta, period_days, set_by, reason.strip())

    def _append_budget(
        self,
        conn: sa.Connection,
        scope: str,
        epsilon_cap: float,
        delta: float,
        period_days: int,
        set_by: str,
        reason: str,
    ) -> Budget:
        row = {
            "scope": scope,
            "unit": PRIVACY_UNIT,
            "period_days": int(period_days),
            "epsilon_cap": float(epsilon_cap),
            "delta": float(delta),
            "created_at": _iso(self._clock()),
            "set_by": set_by,
            "reason": reason,
        }
        new_id = self._append(conn, budgets_table, row)
        found = conn.execute(sa.select(budgets_table).where(budgets_table.c.id == new_id)).one()
        return _budget_from_row(found)

    def reserve(
        self,
        *,
        scope: str,
        run_id: str,
        mechanism: Mechanism,
        data_window: tuple[dt.datetime, dt.datetime],
        n_users: int,
        code_version: str,
        data_hash: str,
        purpose: str,
    ) -> Charge:
        """Reserve the privacy cost of ``mechanism`` before it runs; idempotent on (run_id, purpose).

        A retried task of the same run gets its active (reserved or committed) charge back unchanged.
        Raises :class:`BudgetExceeded` when the worst rolling period the data window falls in would
        exceed the cap.
        """
        start, end = data_window
        if start > end:
            raise ValueError(f"data window starts after it ends: {start} > {end}")
        with self._write() as conn:
            existing = conn.execute(
                sa.select(charges_table).where(
                    charges_table.c.scope == scope,
                    charges_table.c.run_id == run_id,
                    charges_table.c.purpose == purpose,
                    charges_table.c.status != ChargeStatus.RELEASED.value,
                )
            ).one_or_none()
            if existing is not None:
                return charge_from_row(existing)
            budget = self._latest_budget(conn, scope)
            if budget is None:
                raise LookupError(f"no privacy budget for scope {scope!r}; call ensure_budget first")
            active = [
                charge_from_row(r)
                for r in conn.execute(
                    sa.select(charges_table).where(
                        charges_table.c.scope == scope,
                        charges_table.c.status != ChargeStatus.RELEASED.value,
                    )
                ).all()
            ]
            own = compose_epsilon([mechanism], budget.delta)
            spent, total, composed_with = worst_period(active, mechanism, data_window, budget)
            if total > budget.epsilon_cap + _CAP_SLACK:
                remaining = max(budget.epsilon_cap - spent, 0.0)
                raise BudgetExceeded(
                    spent,
                    own,
                    remaining,
                    f"privacy budget {scope!r} refuses run {run_id!r} ({purpose}): spent epsilon={spent:.4g}, "
                    f"requested epsilon={own:.4g} (composed total would be {total:.4g}), remaining "
                    f"epsilon={remaining:.4g} of cap {budget.epsilon_cap:.4g} at delta={budget.delta:.3g} "
                    f"(unit: {budget.unit}, accountant: {LEDGER_ACCOUNTANT}, period {budget.period_days} days)",
                )
            now = _iso(self._clock())
            row = {
                "scope": scope,
                "budget_id": budget.id,
                "run_id": run_id,
                "purpose": purpose,
                "mechanism_kind": mechanism_kind(mechanism),
                "mechanism_params": mechanism_params_json(mechanism),
                "window_start": _iso(start),
                "window_end": _iso(end),
                "n_users": int(n_users),
                "code_version": code_version,
                "data_hash": data_hash,
                "unit": budget.unit,
                "delta": budget.delta,
                "epsilon": own,
                "composed_epsilon": total,
                "composed_with": json.dumps(sorted(composed_with)),
                "accountant": LEDGER_ACCOUNTANT,
                "created_at": now,
                "status": ChargeStatus.RESERVED.value,
                "model_version": None,
                "artifact_uri": None,
                "updated_at": now,
            }
            charge_id = self._append(conn, charges_table, row)
            self._append_event(conn, charge_id, ChargeStatus.RESERVED, None, None, now)
            return self._charge(conn, charge_id)

    def commit(self, charge_id: int, *, model_version: str | None, artifact_uri: str | None) -> Charge:
        """Mark a reserved charge as spent: the run wrote an artifact (promoted or not)."""
        return self._transition(charge_id, ChargeStatus.COMMITTED, model_version, artifact_uri)

    def release(self, charge_id: int) -> Charge:
        """Give back a reservation whose run failed before writing any artifact."""
        return self._transition(charge_id, ChargeStatus.RELEASED, None, None)

    # --- internals ----------------------------------------------------------------------------
    def _transition(
        self, charge_id: int, status: ChargeStatus, model_version: str | None, artifact_uri: str | None
    ) -> Charge:
        with self._write() as conn:
            current = self._charge(conn, charge_id)
            if current.status is status:
                same = status is ChargeStatus.RELEASED or (
                    (current.model_version, current.artifact_uri) == (model_version, artifact_uri)
                )
                if same:
                    return current  # a retried commit / release changes nothing
            if current.status is not ChargeStatus.RESERVED:
                raise ValueError(
                    f"charge {charge_id} is {current.status.value}; only a reserved charge can become "
                    f"{status.value}"
                )
            now = _iso(self._clock())
            conn.execute(
                sa.update(charges_table)
                .where(charges_table.c.id == charge_id)
                .values(
                    status=status.value,
                    model_version=model_version,
                    artifact_uri=artifact_uri,
                    updated_at=now,
                )
            )
            self._append_event(conn, charge_id, status, model_version, artifact_uri, now)
            return self._charge(conn, charge_id)

    def _append_event(
        self,
        conn: sa.Connection,
        charge_id: int,
        status: ChargeStatus,
        model_version: str | None,
        artifact_uri: str | None,
        at: str,
    ) -> None:
        row = {
            "charge_id": charge_id,
            "status": status.value,
            "model_version": model_version,
            "artifact_uri": artifact_uri,
            "at": at,
        }
        self._append(conn, events_table, row)

    def _append(self, conn: sa.Connection, table: sa.Table, row: dict[str, Any]) -> int:
        assert self._key is not None  # _write() refused a read-only ledger
        last = conn.execute(sa.select(table).order_by(table.c.id.desc()).limit(1)).first()
        if (
            last is not None
            and row_digest(table.name, last.prev_hash, last._asdict(), self._key) != last.row_hash
        ):
            raise LedgerKeyError(
                f"the newest row of {table.name} does not verify under this ledger key (a wrong "
                "SHOPREC_LEDGER_KEY or key file, or an altered row): refusing to extend the chain; "
                "run `shoprec privacy verify`"
            )
        self._appended = True
        next_id = (last.id if last else 0) + 1
        prev_hash = last.row_hash if last else GENESIS_HASH
        full = {"id": next_id, **row}
        full["prev_hash"] = prev_hash
        full["row_hash"] = row_digest(table.name, prev_hash, full, self._key)
        conn.execute(sa.insert(table).values(**full))
        return next_id

    @staticmethod
    def _latest_budget(conn: sa.Connection, scope: str) -> Budget | None:
        row = conn.execute(
            sa.select(budgets_table)
            .where(budgets_table.c.scope == scope)
            .order_by(budgets_table.c.id.desc())
            .limit(1)
        ).first()
        return None if row is None else _budget_from_row(row)

    @staticmethod
    def _charge(conn: sa.Connection, charge_id: int) -> Charge:
        row = conn.execute(sa.select(charges_table).where(charges_table.c.id == charge_id)).one_or_none()
        if row is None:
            raise LookupError(f"no privacy charge {charge_id}")
        return charge_from_row(row)


def _check_policy(epsilon_cap: float, delta: float, period_days: int) -> None:
    if not epsilon_cap > 0 or not 0 < delta < 1 or period_days < 1:
        raise ValueError(f"invalid budget: cap={epsilon_cap}, delta={delta}, period_days={period_days}")


def _safe_url(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def worst_period(
    active: Sequence[Charge],
    mechanism: Mechanism,
    data_window: tuple[dt.datetime, dt.datetime],
    budget: Budget,
) -> tuple[float, float, list[int]]:
    """The rolling period containing the new data window where the composition is largest.

    Returns (spent before the new charge, total with it, ids composed with it) for that period.  The
    set of charges counted at time ``t`` only grows when ``t`` passes a window start, so the periods
    ending at the new window's start and at every later window start (while the new charge still
    counts) are the only candidates.
    """
    start, end = data_window
    period = dt.timedelta(days=budget.period_days)
    candidates = {start} | {c.data_window[0] for c in active if start <= c.data_window[0] <= end + period}
    best: tuple[float, float, list[int]] = (0.0, -1.0, [])
    for t in sorted(candidates):
        counted = [c for c in active if counts_in_period(c, t - period, t)]
        mechanisms = [c.mechanism for c in counted]
        total = compose_epsilon([*mechanisms, mechanism], budget.delta)
        if total > best[1]:
            best = (compose_epsilon(mechanisms, budget.delta), total, [c.id for c in counted])
    return best


def calibrate_noise_multiplier(
    ledger: Ledger,
    *,
    scope: str,
    sample_rate: float,
    steps: int,
    delta: float,
    epsilon_target: float | None,
    at: dt.datetime,
    max_noise_multiplier: float,
) -> float:
    """Smallest DP-SGD noise multiplier that keeps the scope's budget.

    Composes (with the ledger accountant, at ``delta``) the active charges of the period ending at
    ``at`` with a run of ``steps`` steps at ``sample_rate``, and bisects the noise multiplier so that
    the total is at most ``min(cap, spent + epsilon_target)``
    (:func:`~tasks.privacy.accounting.calibrate_noise`).  ``delta`` may not exceed the budget's delta
    (a smaller one is conservative).  Raises :class:`BudgetExceeded` when nothing is left, or when so
    little is left that the run would need a noise multiplier above ``max_noise_multiplier``
    (``Settings.dp_max_noise_multiplier``: such a run would train on noise, and spend what is left).
    """
    budget = ledger.budget(scope)
    if delta > budget.delta:
        raise ValueError(f"delta {delta:.3g} is larger than the budget's delta {budget.delta:.3g}")
    report = ledger.spent(scope, at)
    existing = [c.mechanism for c in ledger.charges(scope) if c.id in set(report.charge_ids)]
    spent = compose_epsilon(existing, delta)
    limit = budget.epsilon_cap if epsilon_target is None else min(budget.epsilon_cap, spent + epsilon_target)
    remaining = max(budget.epsilon_cap - spent, 0.0)
    where = f"at delta={delta:.3g} (unit: user, accountant: {LEDGER_ACCOUNTANT})"
    if limit - spent <= 1e-6:
        raise BudgetExceeded(
            spent,
            0.0 if epsilon_target is None else epsilon_target,
            remaining,
            f"privacy budget {scope!r} has nothing left: spent epsilon={spent:.4g} of cap "
            f"{budget.epsilon_cap:.4g} {where}",
        )
    try:
        return calibrate_noise(
            limit, delta, sample_rate, steps, existing=existing, max_noise_multiplier=max_noise_multiplier
        )
    except NoNoiseFits:
        raise BudgetExceeded(
            spent,
            limit - spent,
            remaining,
            f"privacy budget {scope!r} has too little left for a DP-SGD run: epsilon={limit - spent:.3g} "
            f"(spent {spent:.4g} of cap {budget.epsilon_cap:.4g} {where}) needs a noise multiplier above "
            f"the maximum {max_noise_multiplier:g} (SHOPREC_DP_MAX_NOISE_MULTIPLIER) for {steps} steps at "
            f"sample rate {sample_rate:.3g}; refused, nothing reserved",
        ) from None
