"""The ledger key: the HMAC key of the ledger's hash chains, held like the pseudonym key.

It comes, in order, from ``SHOPREC_LEDGER_KEY`` (``Settings.ledger_key``), the Airflow connection
``shoprec_ledger_key`` (its password), or the key file ``settings.secrets_dir / "ledger.key"`` (0600).
A key file is created only together with a brand-new, empty ledger: a ledger that has rows and no key
is an error (:class:`~tasks.privacy.ledger.LedgerKeyError`), never a silently new key, because a new
key would make every existing row look forged (or, worse, invite re-hashing the chain).
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Final

from tasks.config import Settings
from tasks.privacy.anchors import find_anchors, head_anchor_name, write_anchor_file
from tasks.privacy.ledger import Ledger, LedgerKeyError, LedgerMissing, ledger_row_count
from tasks.pseudonymize import key_from_airflow_connection

log = logging.getLogger(__name__)

KEY_CONNECTION_ID: Final = "shoprec_ledger_key"
KEY_FILE_NAME: Final = "ledger.key"
_KEY_BYTES: Final = 32


def key_file(settings: Settings) -> Path:
    return settings.secrets_dir / KEY_FILE_NAME


def _read_key_file(path: Path) -> bytes:
    text = path.read_text(encoding="ascii").strip()
    if not text:
        raise LedgerKeyError(f"ledger key file {path} is empty")
    return bytes.fromhex(text)


def find_ledger_key(settings: Settings) -> bytes | None:
    """The ledger key from the environment, the Airflow connection or the key file; None if none exists."""
    if settings.ledger_key is not None:
        value = settings.ledger_key.get_secret_value()
        if not value:
            raise LedgerKeyError("SHOPREC_LEDGER_KEY is set but empty")
        return value.encode("utf-8")
    from_connection = key_from_airflow_connection(KEY_CONNECTION_ID)
    if from_connection:
        return from_connection
    path = key_file(settings)
    return _read_key_file(path) if path.exists() else None


def ledger_key(settings: Settings) -> bytes:
    """The key of the ledger at ``settings.resolved_ledger_url``, creating the key file only for a new,
    empty ledger; raises :class:`LedgerKeyError` for a ledger with rows and no key."""
    found = find_ledger_key(settings)
    if found is not None:
        return found
    rows = ledger_row_count(settings.resolved_ledger_url)
    path = key_file(settings)
    if rows:
        raise LedgerKeyError(
            f"the privacy ledger has {rows} rows but no ledger key was found (SHOPREC_LEDGER_KEY, Airflow "
            f"connection {KEY_CONNECTION_ID!r}, or {path}); refusing to create a new key for it"
        )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it just now
        return _read_key_file(path)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secrets.token_hex(_KEY_BYTES))
    log.info("generated a new ledger key at %s for a new, empty ledger", path)
    return _read_key_file(path)


def open_ledger(settings: Settings) -> Ledger:
    """The ledger of ``settings``, opened with its key (able to write).

    An empty or missing ledger is started only when nothing says one existed: no anchor with rows
    (files, reports, MLflow versions) and no DP model version in MLflow.  Otherwise (a wrong
    ``SHOPREC_HOME``, a deleted or emptied ledger) it raises :class:`LedgerMissing` instead of
    spending a fresh budget.
    """
    if ledger_row_count(settings.resolved_ledger_url) == 0:
        found = find_anchors(settings)
        claims = [f"{a.source} anchors {a.rows} rows" for a in found.anchors if a.rows]
        if found.dp_versions:
            claims.append(f"MLflow holds DP model version(s) {', '.join(found.dp_versions)}")
        if claims:
            raise LedgerMissing(
                f"refusing to start a new, empty privacy ledger at {settings.resolved_ledger_url}: "
                f"{'; '.join(claims[:3])} (wrong SHOPREC_HOME or ledger URL, or a deleted ledger?)"
            )
    return Ledger(
        settings.resolved_ledger_url,
        key=ledger_key(settings),
        on_write=lambda anchor: write_anchor_file(settings, head_anchor_name(anchor), anchor),
    )
