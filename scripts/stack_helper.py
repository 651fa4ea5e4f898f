"""Small, dependency-light helpers for scripts/stack.sh (databases, secrets, bounded health waits).

Run with the project's interpreter: ``.venv/bin/python scripts/stack_helper.py COMMAND ...``.
Every wait is bounded by a timeout and exits non-zero with the last error when it runs out.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

STORES = ("airflow", "mlflow", "feast", "ledger")


def _run_admin_sql(base_url: str, statements: Callable[[Any], None]) -> None:
    """Run ``statements(cursor)`` on the server's ``postgres`` database in autocommit mode.

    (``with connection:`` would open a transaction, in which CREATE/DROP DATABASE cannot run.)
    """
    import psycopg2

    dsn = base_url.replace("postgresql+psycopg2://", "postgresql://", 1).rstrip("/") + "/postgres"
    connection = psycopg2.connect(dsn, connect_timeout=5)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            statements(cursor)
    finally:
        connection.close()


def database_names(name: str) -> list[str]:
    """The stack's databases: the base one (``SHOPREC_POSTGRES_URL``) and one per store."""
    return [name, *(f"{name}_{store}" for store in STORES)]


def create_databases(base_url: str, name: str) -> None:
    def create(cursor: Any) -> None:
        for database in database_names(name):
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if cursor.fetchone() is None:
                cursor.execute(f'CREATE DATABASE "{database}"')
                print(f"created database {database}")

    _run_admin_sql(base_url, create)


def drop_databases(base_url: str, name: str) -> None:
    def drop(cursor: Any) -> None:
        for database in database_names(name):
            cursor.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

    _run_admin_sql(base_url, drop)


def ledger_roles(name: str) -> tuple[str, str]:
    """The stack's ledger roles: the owner of the tables (NOLOGIN) and the role the services log in as."""
    return f"{name}_ledger_owner", f"{name}_ledger_app"


def prepare_ledger(base_url: str, name: str) -> None:
    """Make the stack's ledger database append-only (tasks.privacy.pg_guard): triggers, owner and app role."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tasks.privacy.pg_guard import prepare_ledger_database

    owner, app = ledger_roles(name)
    prepare_ledger_database(f"{base_url.rstrip('/')}/{name}_ledger", owner_role=owner, app_role=app)
    print(f"ledger {name}_ledger: tables owned by {owner}; services connect as {app}")


def drop_ledger(base_url: str, name: str) -> None:
    """Drop the ledger roles (after drop-dbs)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tasks.privacy.pg_guard import drop_ledger_roles

    owner, app = ledger_roles(name)
    drop_ledger_roles(f"{base_url.rstrip('/')}/postgres", owner_role=owner, app_role=app)


def flush_redis(url: str) -> None:
    import redis

    redis.Redis.from_url(url, socket_timeout=5).flushdb()


def write_secrets(directory: Path, user: str) -> None:
    """Generate each secret once (mode 0600); existing files are kept so restarts keep sessions valid."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    generated = {
        "jwt_secret": lambda: secrets.token_urlsafe(64),  # 64 random bytes -> 86 characters
        "api_secret_key": lambda: secrets.token_urlsafe(48),
        "fernet_key": lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        "admin_password": lambda: secrets.token_urlsafe(24),
        "pseudonym_key": lambda: secrets.token_urlsafe(32),
        "ledger_key": lambda: secrets.token_urlsafe(32),  # HMAC key of the privacy ledger's chains
    }
    for name, make in generated.items():
        path = directory / name
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(make())
    passwords = directory / "simple_auth_manager_passwords.json"
    fd = os.open(passwords, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({user: (directory / "admin_password").read_text()}, handle)


def _wait(what: str, probe: Callable[[], str | None], timeout: float, interval: float = 2.0) -> None:
    """Call ``probe`` until it returns None (healthy) or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    problem: str | None = "not checked yet"
    while time.monotonic() < deadline:
        problem = probe()
        if problem is None:
            print(f"{what}: healthy after {time.monotonic() - started:.1f} s")
            return
        time.sleep(interval)
    sys.exit(f"{what}: not healthy after {timeout:.0f} s: {problem}")


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # ruff: ignore[suspicious-url-open-usage] (loopback URLs we built)
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_http(url: str, timeout: float) -> None:
    def probe() -> str | None:
        try:
            status, _ = _get(url)
        except OSError as error:
            return str(error)
        return None if status == 200 else f"HTTP {status}"

    _wait(url, probe, timeout)


def wait_airflow(url: str, timeout: float) -> None:
    """Airflow's /api/v2/monitor/health: metadata DB, scheduler, triggerer and dag-processor healthy."""

    def probe() -> str | None:
        try:
            status, body = _get(url.rstrip("/") + "/api/v2/monitor/health")
        except OSError as error:
            return str(error)
        if status != 200:
            return f"HTTP {status}"
        health = json.loads(body)
        unhealthy = {
            part: (health.get(part) or {}).get("status")
            for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")
            if (health.get(part) or {}).get("status") != "healthy"
        }
        return f"unhealthy: {unhealthy}" if unhealthy else None

    _wait("airflow (api-server, scheduler, triggerer, dag-processor)", probe, timeout)


def wait_celery(broker_url: str, hostnames: list[str], timeout: float) -> None:
    """Every named Celery worker answers a broadcast ping."""
    from celery import Celery

    app = Celery(broker=broker_url)

    def probe() -> str | None:
        try:
            replies = app.control.ping(timeout=2.0)
        except Exception as error:  # broker unreachable: report and retry until the deadline
            return repr(error)
        answered = {name for reply in replies for name in reply}
        missing = sorted(set(hostnames) - answered)
        return f"no answer from {missing}" if missing else None

    _wait(f"celery workers {hostnames}", probe, timeout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="stack_helper")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("create-dbs", "drop-dbs", "prepare-ledger", "drop-ledger-roles"):
        one = sub.add_parser(command)
        one.add_argument("base_url")
        one.add_argument("name")
    flush = sub.add_parser("flush-redis")
    flush.add_argument("url")
    write = sub.add_parser("write-secrets")
    write.add_argument("directory", type=Path)
    write.add_argument("user")
    http = sub.add_parser("wait-http")
    http.add_argument("url")
    http.add_argument("timeout", type=float)
    airflow = sub.add_parser("wait-airflow")
    airflow.add_argument("url")
    airflow.add_argument("timeout", type=float)
    celery = sub.add_parser("wait-celery")
    celery.add_argument("broker_url")
    celery.add_argument("timeout", type=float)
    celery.add_argument("hostnames", nargs="+")
    args = parser.parse_args(argv)

    if args.command == "create-dbs":
        create_databases(args.base_url, args.name)
    elif args.command == "drop-dbs":
        drop_databases(args.base_url, args.name)
    elif args.command == "prepare-ledger":
        prepare_ledger(args.base_url, args.name)
    elif args.command == "drop-ledger-roles":
        drop_ledger(args.base_url, args.name)
    elif args.command == "flush-redis":
        flush_redis(args.url)
    elif args.command == "write-secrets":
        write_secrets(args.directory, args.user)
    elif args.command == "wait-http":
        wait_http(args.url, args.timeout)
    elif args.command == "wait-airflow":
        wait_airflow(args.url, args.timeout)
    elif args.command == "wait-celery":
        wait_celery(args.broker_url, args.hostnames, args.timeout)


if __name__ == "__main__":
    main()
