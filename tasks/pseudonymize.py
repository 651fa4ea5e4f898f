"""Keyed pseudonyms for user ids and source ids: raw ids never leave the landing zone.

A user pseudonym is ``"u_"`` followed by the first 32 hex characters (128 bits) of
HMAC-SHA256(key, raw user id).  The same raw id maps to the same pseudonym under the same key; without
the key a pseudonym cannot be linked back to the raw id by hashing guesses.  Source identifiers that
link back to raw records (``event_id``, ``session_id``: invoice numbers in the Online Retail data) are
keyed the same way with the column name as domain separator (:func:`pseudonymize_source_id`): ``e_`` /
``s_`` + 32 hex chars of HMAC-SHA256(key, column + "\\x1f" + raw id).  One invoice's lines keep one
session id and every event id stays unique, but whoever holds the shop's invoices cannot match them.

The key comes, in order, from the ``SHOPREC_PSEUDONYM_KEY`` environment variable
(``Settings.pseudonym_key``), the Airflow connection ``shoprec_pseudonym_key`` (its password), or the
embedded default: ``settings.secrets_dir / "pseudonym.key"`` (mode 0600, never committed:
``.shoprec/`` is git-ignored).

The lake remembers its key: the first ingest records the key's fingerprint (HMAC-SHA256(key, a public
constant), never the key) in ``lake/pseudonym_key.fingerprint``.  A process whose key does not match
refuses with :class:`PseudonymKeyError`, and a new key file is generated only while there is no lake:
a lost variable or a mistyped secrets path would otherwise split every person into two "users".
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import uuid
from pathlib import Path
from typing import Final

from tasks.config import Settings
from tasks.contracts import list_partitions, partition_dir
from tasks.permissions import PRIVATE_FILE_MODE, private_dir

log = logging.getLogger(__name__)

PSEUDONYM_PREFIX: Final = "u_"
PSEUDONYM_HEX_CHARS: Final = 32
# Source-id columns keyed at ingest, with the prefix of their pseudonyms.
SOURCE_ID_PREFIXES: Final = {"event_id": "e_", "session_id": "s_"}
# The same for the campaign logs (tasks.campaigns.ingest): a decision id links back to the campaign
# system's raw records of the customer.
CAMPAIGN_ID_PREFIXES: Final = {"decision_id": "d_"}
KEY_CONNECTION_ID: Final = "shoprec_pseudonym_key"
KEY_FILE_NAME: Final = "pseudonym.key"
FINGERPRINT_FILE_NAME: Final = "pseudonym_key.fingerprint"
_FINGERPRINT_MESSAGE: Final = b"shoprec pseudonym key fingerprint v1"
_KEY_BYTES: Final = 32


class PseudonymKeyError(RuntimeError):
    """The pseudonymisation key is missing, empty, unreadable, or not the key the lake was written with."""


def pseudonymize(raw_id: str, key: bytes) -> str:
    """The pseudonym of one raw user id: ``u_`` + 32 hex chars of HMAC-SHA256(key, raw_id)."""
    if not key:
        raise PseudonymKeyError("empty pseudonymisation key")
    digest = hmac.new(key, raw_id.encode("utf-8"), hashlib.sha256).hexdigest()
    return PSEUDONYM_PREFIX + digest[:PSEUDONYM_HEX_CHARS]


def pseudonymize_source_id(raw_id: str, key: bytes, column: str) -> str:
    """The pseudonym of a source id in ``column`` (``event_id``/``session_id``/``decision_id``): prefix +
    32 hex chars.

    HMAC-SHA256(key, column + "\\x1f" + raw_id): the column name keeps an invoice number from hashing to
    the same digest as a customer id with the same digits.
    """
    if not key:
        raise PseudonymKeyError("empty pseudonymisation key")
    message = f"{column}\x1f{raw_id}".encode()
    digest = hmac.new(key, message, hashlib.sha256).hexdigest()
    return (SOURCE_ID_PREFIXES | CAMPAIGN_ID_PREFIXES)[column] + digest[:PSEUDONYM_HEX_CHARS]


def is_pseudonym(value: str) -> bool:
    """Whether ``value`` has the pseudonym form (prefix + 32 lowercase hex chars)."""
    body = value.removeprefix(PSEUDONYM_PREFIX)
    return (
        value.startswith(PSEUDONYM_PREFIX)
        and len(body) == PSEUDONYM_HEX_CHARS
        and all(c in "0123456789abcdef" for c in body)
    )


def key_fingerprint(key: bytes) -> str:
    """HMAC-SHA256(key, a public constant) as hex: tells keys apart without revealing them."""
    return hmac.new(key, _FINGERPRINT_MESSAGE, hashlib.sha256).hexdigest()


def fingerprint_path(settings: Settings) -> Path:
    """Where the lake records the fingerprint of the key its pseudonyms were made with."""
    return settings.lake_dir / FINGERPRINT_FILE_NAME


def key_from_airflow_connection(connection_id: str) -> bytes | None:
    """The password (or extra ``key``) of the Airflow connection ``connection_id``, if Airflow has one.

    Used for the pseudonymisation key (``shoprec_pseudonym_key``) and the ledger key
    (``shoprec_ledger_key``, :mod:`tasks.privacy.ledger_key`).
    """
    try:
        from airflow.sdk import Connection
    except ImportError:
        return None
    try:
        conn = Connection.get(connection_id)
    except Exception:  # not found, or no Airflow context/backend available here: fall through
        log.debug("no Airflow connection %s; using the next key source", connection_id)
        return None
    secret = conn.password or conn.extra_dejson.get("key")
    return str(secret).encode("utf-8") if secret else None


def _read_key_file(path: Path) -> bytes | None:
    """The local key file's key; None when there is no such file."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    if not text:
        raise PseudonymKeyError(f"pseudonymisation key file {path} is empty")
    return bytes.fromhex(text)


def _create_key_file(path: Path) -> None:
    """Write a random 256-bit hex key to ``path`` (0600 in a 0700 folder) unless it exists already."""
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:  # another process created it first: use theirs
        return
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secrets.token_hex(_KEY_BYTES))
    log.info("generated a new local pseudonymisation key at %s", path)


def recorded_fingerprint(settings: Settings) -> str | None:
    """The key fingerprint the lake recorded, or None when it has none yet."""
    try:
        return fingerprint_path(settings).read_text(encoding="ascii").strip() or None
    except FileNotFoundError:
        return None


def _lake_has_data(settings: Settings) -> bool:
    """Whether the lake recorded a key or holds event files (written before fingerprints existed)."""
    if recorded_fingerprint(settings) is not None:
        return True
    return any(
        any(partition_dir(settings.events_dir, day).glob("*.parquet"))
        for day in list_partitions(settings.events_dir)
    )


def load_key(settings: Settings) -> bytes:
    """The HMAC key: environment (``SHOPREC_PSEUDONYM_KEY``), Airflow connection, else local key file.

    Refuses (:class:`PseudonymKeyError`, one line) when the key's fingerprint differs from the one the
    lake recorded, and when no key is found but the lake already holds pseudonymised events; a new key
    file is created only while there is no lake.
    """
    key_file = settings.secrets_dir / KEY_FILE_NAME
    if settings.pseudonym_key is not None:
        value = settings.pseudonym_key.get_secret_value()
        if not value:
            raise PseudonymKeyError("SHOPREC_PSEUDONYM_KEY is set but empty")
        key, source = value.encode("utf-8"), "SHOPREC_PSEUDONYM_KEY"
    elif (from_connection := key_from_airflow_connection(KEY_CONNECTION_ID)) is not None:
        key, source = from_connection, f"Airflow connection {KEY_CONNECTION_ID}"
    elif (from_file := _read_key_file(key_file)) is not None:
        key, source = from_file, str(key_file)
    elif _lake_has_data(settings):
        raise PseudonymKeyError(
            f"no pseudonymisation key found (SHOPREC_PSEUDONYM_KEY, Airflow connection {KEY_CONNECTION_ID}, "
            f"{key_file}) but the lake {settings.lake_dir} already holds pseudonymised events; refusing to "
            "create a new key, which would split every user in two: restore the lake's key"
        )
    else:
        _create_key_file(key_file)
        key, source = _read_key_file(key_file) or b"", str(key_file)
    recorded = recorded_fingerprint(settings)
    if recorded is not None and not hmac.compare_digest(recorded, key_fingerprint(key)):
        raise PseudonymKeyError(
            f"pseudonymisation key from {source} (fingerprint {key_fingerprint(key)[:12]}) is not the key "
            f"the lake {settings.lake_dir} was written with (fingerprint {recorded[:12]}); refusing to "
            "pseudonymise with it: point SHOPREC_HOME / SHOPREC_PSEUDONYM_KEY at the lake's key"
        )
    return key


def record_key_fingerprint(settings: Settings, key: bytes) -> None:
    """Record ``key``'s fingerprint beside the lake if it has none (the first ingest); else check it.

    The file is linked into place only if absent, so two first ingests cannot record different keys.
    """
    path = fingerprint_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    staging.write_text(key_fingerprint(key) + "\n", encoding="ascii")
    try:
        os.link(staging, path)
    except FileExistsError:
        pass
    finally:
        staging.unlink()
    recorded = recorded_fingerprint(settings)
    if recorded is None or not hmac.compare_digest(recorded, key_fingerprint(key)):
        raise PseudonymKeyError(
            f"the lake {settings.lake_dir} records a different pseudonymisation key (fingerprint "
            f"{(recorded or '')[:12]}); refusing to write with key fingerprint {key_fingerprint(key)[:12]}"
        )


def resolve_user(settings: Settings, user: str) -> str:
    """The pseudonym of ``user``: a raw customer id is pseudonymised with the ingest key, a pseudonym is
    kept (what a consumer types into ``shoprec recommend`` / ``shoprec offer``)."""
    return user if is_pseudonym(user) else pseudonymize(user, load_key(settings))
