"""The ledger's tables are append-only inside PostgreSQL itself: triggers, an owner role and an app role.

* Triggers (installed whenever a keyed :class:`~tasks.privacy.ledger.Ledger` creates the tables, and by
  :func:`prepare_ledger_database`): DELETE and TRUNCATE are refused on all three tables, UPDATE on
  ``privacy_budgets`` and ``privacy_charge_events``, and on ``privacy_charges`` every UPDATE except the
  status transition reserved -> committed | released, which may change only
  :data:`~tasks.privacy.tables.TRANSITION_COLUMNS`.
* Roles (:func:`prepare_ledger_database`, run by ``scripts/stack.sh`` and the compose stack's init): an
  owner role (NOLOGIN) owns the tables and triggers; the services log in as an app role that may
  SELECT, INSERT, UPDATE the transition columns of ``privacy_charges`` and use the id sequences, and
  nothing else: it can neither drop nor disable the triggers, delete, truncate nor rewrite a row.

A PostgreSQL superuser can still do anything; that trust is stated in docs/privacy.md, and the keyed
chain with its anchors outside the database (:mod:`tasks.privacy.anchors`) detects what it changes.
"""

from __future__ import annotations

import re
from typing import Final

import sqlalchemy as sa

from tasks.privacy.tables import CHAINED_TABLES, TRANSITION_COLUMNS, ChargeStatus, charges_table, metadata

_ROLE: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_COLUMNS: Final = ", ".join(f"'{c}'" for c in TRANSITION_COLUMNS)

_FUNCTIONS: Final = (
    """
CREATE OR REPLACE FUNCTION shoprec_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'privacy ledger is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$
""",
    f"""
CREATE OR REPLACE FUNCTION shoprec_ledger_charge_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> '{ChargeStatus.RESERVED.value}'
       OR NEW.status NOT IN ('{ChargeStatus.COMMITTED.value}', '{ChargeStatus.RELEASED.value}') THEN
        RAISE EXCEPTION 'privacy ledger: charge % may not go from % to %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF (to_jsonb(NEW) - ARRAY[{_COLUMNS}]) IS DISTINCT FROM (to_jsonb(OLD) - ARRAY[{_COLUMNS}]) THEN
        RAISE EXCEPTION 'privacy ledger: only the status transition may change charge %', OLD.id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$
""",
)


def _trigger_statements() -> list[str]:
    statements = []
    for table in CHAINED_TABLES:
        name = table.name
        row_ops = "DELETE" if table is charges_table else "UPDATE OR DELETE"
        statements += [
            f"CREATE OR REPLACE TRIGGER {name}_append_only BEFORE {row_ops} ON {name} "
            "FOR EACH ROW EXECUTE FUNCTION shoprec_ledger_append_only()",
            f"CREATE OR REPLACE TRIGGER {name}_no_truncate BEFORE TRUNCATE ON {name} "
            "FOR EACH STATEMENT EXECUTE FUNCTION shoprec_ledger_append_only()",
        ]
    statements.append(
        f"CREATE OR REPLACE TRIGGER {charges_table.name}_transition_only BEFORE UPDATE ON {charges_table.name} "
        "FOR EACH ROW EXECUTE FUNCTION shoprec_ledger_charge_transition()"
    )
    return statements


def install_triggers(conn: sa.Connection) -> None:
    """Create (or replace) the append-only triggers; the connection's role must own the tables."""
    for statement in (*_FUNCTIONS, *_trigger_statements()):
        conn.execute(sa.text(statement))  # (text() escapes the format's % signs for the driver)


def _role(name: str) -> str:
    if not _ROLE.match(name):
        raise ValueError(f"not a plain PostgreSQL role name: {name!r}")
    return f'"{name}"'


def prepare_ledger_database(
    admin_url: str, *, owner_role: str, app_role: str, app_password: str | None = None
) -> None:
    """Set up the ledger database at ``admin_url`` (a superuser connection); idempotent.

    Creates the owner role (NOLOGIN) and the app role (LOGIN, with ``app_password`` when given) when
    missing, creates the tables and triggers as the owner role (or hands
    existing tables to it), and grants the app role exactly SELECT, INSERT, UPDATE of the transition
    columns and the sequences.
    """
    owner, app = _role(owner_role), _role(app_role)
    engine = sa.create_engine(admin_url)
    try:
        with engine.begin() as conn:
            for role, login in ((owner_role, "NOLOGIN"), (app_role, "LOGIN")):
                found = conn.execute(
                    sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}
                ).first()
                if found is None:
                    conn.exec_driver_sql(f"CREATE ROLE {_role(role)} {login}")
            if app_password:
                conn.exec_driver_sql(f"ALTER ROLE {app} PASSWORD %(password)s", {"password": app_password})
            conn.exec_driver_sql(f"GRANT USAGE, CREATE ON SCHEMA public TO {owner}")
            conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA public TO {app}")
            inspector = sa.inspect(conn)
            for table in CHAINED_TABLES:
                if inspector.has_table(table.name):
                    conn.exec_driver_sql(f"ALTER TABLE {table.name} OWNER TO {owner}")
            conn.exec_driver_sql(f"SET LOCAL ROLE {owner}")
            metadata.create_all(conn)
            install_triggers(conn)
            names = ", ".join(t.name for t in CHAINED_TABLES)
            conn.exec_driver_sql(f"REVOKE ALL ON {names} FROM PUBLIC, {app}")
            conn.exec_driver_sql(f"GRANT SELECT, INSERT ON {names} TO {app}")
            conn.exec_driver_sql(
                f"GRANT UPDATE ({', '.join(TRANSITION_COLUMNS)}) ON {charges_table.name} TO {app}"
            )
            conn.exec_driver_sql(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {app}")
    finally:
        engine.dispose()


def drop_ledger_roles(admin_url: str, *, owner_role: str, app_role: str) -> None:
    """Drop both roles (after the ledger database that holds their objects has been dropped)."""
    engine = sa.create_engine(admin_url)
    try:
        with engine.begin() as conn:
            for role in (app_role, owner_role):
                conn.exec_driver_sql(f"DROP ROLE IF EXISTS {_role(role)}")
    finally:
        engine.dispose()
