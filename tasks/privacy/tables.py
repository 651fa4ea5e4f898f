"""The privacy ledger's tables: budgets, charges and their status events, hash-chained row by row.

Shared by :mod:`tasks.privacy.ledger` (which writes and reads them) and :mod:`tasks.privacy.pg_guard`
(which makes them append-only inside PostgreSQL), so neither imports the other's schema.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

import sqlalchemy as sa

# the only columns of privacy_charges an UPDATE may change (the status transition)
TRANSITION_COLUMNS: Final = ("status", "model_version", "artifact_uri", "updated_at")


class ChargeStatus(StrEnum):
    RESERVED = "reserved"
    COMMITTED = "committed"
    RELEASED = "released"


metadata = sa.MetaData()

budgets_table = sa.Table(
    "privacy_budgets",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("scope", sa.String(128), nullable=False),
    sa.Column("unit", sa.String(32), nullable=False),
    sa.Column("period_days", sa.Integer, nullable=False),
    sa.Column("epsilon_cap", sa.Double, nullable=False),
    sa.Column("delta", sa.Double, nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("set_by", sa.String(128), nullable=False),  # who changed the policy
    sa.Column("reason", sa.Text, nullable=False),  # and why
    sa.Column("prev_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("row_hash", sa.String(64), nullable=False),
)

charges_table = sa.Table(
    "privacy_charges",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("scope", sa.String(128), nullable=False),
    sa.Column("budget_id", sa.Integer, nullable=False),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("purpose", sa.String(128), nullable=False),
    sa.Column("mechanism_kind", sa.String(32), nullable=False),
    sa.Column("mechanism_params", sa.Text, nullable=False),
    sa.Column("window_start", sa.String(40), nullable=False),
    sa.Column("window_end", sa.String(40), nullable=False),
    sa.Column("n_users", sa.Integer, nullable=False),
    sa.Column("code_version", sa.String(128), nullable=False),
    sa.Column("data_hash", sa.String(128), nullable=False),
    sa.Column("unit", sa.String(32), nullable=False),
    sa.Column("delta", sa.Double, nullable=False),
    sa.Column("epsilon", sa.Double, nullable=False),
    sa.Column("composed_epsilon", sa.Double, nullable=False),
    sa.Column("composed_with", sa.Text, nullable=False),
    sa.Column("accountant", sa.String(64), nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("row_hash", sa.String(64), nullable=False),
    # the status transition: the only columns ever updated in place
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("model_version", sa.String(128), nullable=True),
    sa.Column("artifact_uri", sa.Text, nullable=True),
    sa.Column("updated_at", sa.String(40), nullable=False),
)
sa.Index(
    "uq_privacy_charges_active_run",
    charges_table.c.scope,
    charges_table.c.run_id,
    charges_table.c.purpose,
    unique=True,
    sqlite_where=charges_table.c.status != ChargeStatus.RELEASED.value,
    postgresql_where=charges_table.c.status != ChargeStatus.RELEASED.value,
)

events_table = sa.Table(
    "privacy_charge_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("charge_id", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("model_version", sa.String(128), nullable=True),
    sa.Column("artifact_uri", sa.Text, nullable=True),
    sa.Column("at", sa.String(40), nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("row_hash", sa.String(64), nullable=False),
)

# Columns covered by each table's hash (everything but the hashes and, for charges, the status transition).
HASHED_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    budgets_table.name: tuple(c.name for c in budgets_table.c if c.name not in {"prev_hash", "row_hash"}),
    charges_table.name: tuple(
        c.name for c in charges_table.c if c.name not in {"prev_hash", "row_hash", *TRANSITION_COLUMNS}
    ),
    events_table.name: tuple(c.name for c in events_table.c if c.name not in {"prev_hash", "row_hash"}),
}
CHAINED_TABLES: Final = (budgets_table, charges_table, events_table)
