"""Keyed pseudonyms for user ids: raw ids never leave the landing zone.

A pseudonym is ``"u_"`` followed by the first 32 hex characters (128 bits) of
HMAC-SHA256(key, raw user id).  The same raw id maps to the same pseudonym under the same key; without
the key a pseudonym cannot be linked back to the raw id by hashing guesses.

The key comes, in order, from the ``SHOPREC_PSEUDONYM_KEY`` environment variable
(``Settings.pseudonym_key``), the Airflow connection ``shoprec_pseudonym_key`` (its password), or the
embedded default: ``settings.secrets_dir / "pseudonym.key"``, generated once with mode 0600 and never
committed (``.shoprec/`` is git-ignored).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path
from typing import Final

from tasks.config import Settings

log = logging.getLogger(__name__)

PSEUDONYM_PREFIX: Final = "u_"
PSEUDONYM_HEX_CHARS: Final = 32
KEY_CONNECTION_ID: Final = "shoprec_pseudonym_key"
KEY_FILE_NAME: Final = "pseudonym.key"
_KEY_BYTES: Final = 32


class PseudonymKeyError(RuntimeError):
    """The pseudonymisation key is missing, empty or unreadable."""


def pseudonymize(raw_id: str, key: bytes) -> str:
    """The pseudonym of one raw user id: ``u_`` + 32 hex chars of HMAC-SHA256(key, raw_id)."""
    if not key:
        raise PseudonymKeyError("empty pseudonymisation key")
    digest = hmac.new(key, raw_id.encode("utf-8"), hashlib.sha256).hexdigest()
    return PSEUDONYM_PREFIX + digest[:PSEUDONYM_HEX_CHARS]


def is_pseudonym(value: str) -> bool:
    """Whether ``value`` has the pseudonym form (prefix + 32 lowercase hex chars)."""
    body = value.removeprefix(PSEUDONYM_PREFIX)
    return (
        value.startswith(PSEUDONYM_PREFIX)
        and len(body) == PSEUDONYM_HEX_CHARS
        and all(c in "0123456789abcdef" for c in body)
    )


def _key_from_airflow_connection() -> bytes | None:
    """The password of the Airflow connection ``shoprec_pseudonym_key``, if Airflow has one."""
    try:
        from airflow.sdk import Connection
    except ImportError:
        return None
    try:
        conn = Connection.get(KEY_CONNECTION_ID)
    except Exception:  # not found, or no Airflow context/backend available here: fall through
        log.debug("no Airflow connection %s; using the next key source", KEY_CONNECTION_ID)
        return None
    secret = conn.password or conn.extra_dejson.get("key")
    return str(secret).encode("utf-8") if secret else None


def _key_from_file(path: Path) -> bytes:
    """Read the local key file, creating it once (0600, random 256-bit hex) if it does not exist."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secrets.token_hex(_KEY_BYTES))
        log.info("generated a new local pseudonymisation key at %s", path)
    text = path.read_text(encoding="ascii").strip()
    if not text:
        raise PseudonymKeyError(f"pseudonymisation key file {path} is empty")
    return bytes.fromhex(text)


def load_key(settings: Settings) -> bytes:
    """The HMAC key: environment (``SHOPREC_PSEUDONYM_KEY``), Airflow connection, else local key file."""
    if settings.pseudonym_key is not None:
        value = settings.pseudonym_key.get_secret_value()
        if not value:
            raise PseudonymKeyError("SHOPREC_PSEUDONYM_KEY is set but empty")
        return value.encode("utf-8")
    from_connection = _key_from_airflow_connection()
    if from_connection:
        return from_connection
    return _key_from_file(settings.secrets_dir / KEY_FILE_NAME)
