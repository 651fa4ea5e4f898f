"""Keyed pseudonyms and where their key comes from."""

from __future__ import annotations

import stat

import pytest

from tasks.config import Settings
from tasks.pseudonymize import PseudonymKeyError, is_pseudonym, load_key, pseudonymize, pseudonymize_source_id


def test_same_raw_id_and_key_give_same_pseudonym() -> None:
    assert pseudonymize("13085", b"k1") == pseudonymize("13085", b"k1")


def test_pseudonym_is_prefix_and_32_hex_chars() -> None:
    value = pseudonymize("13085", b"k1")
    assert value.startswith("u_")
    assert len(value) == 34
    assert is_pseudonym(value)


def test_pseudonym_matches_hmac_sha256_reference() -> None:
    # hmac.new(b"key", b"alice", hashlib.sha256).hexdigest()[:32], computed independently.
    assert pseudonymize("alice", b"key") == "u_76fb55e929c06b97b01c35950ee5f72f"


def test_different_keys_give_different_pseudonyms() -> None:
    assert pseudonymize("13085", b"k1") != pseudonymize("13085", b"k2")


def test_different_raw_ids_give_different_pseudonyms() -> None:
    assert len({pseudonymize(str(i), b"k") for i in range(1000)}) == 1000


def test_empty_key_is_refused() -> None:
    with pytest.raises(PseudonymKeyError):
        pseudonymize("13085", b"")


def test_key_from_environment_wins(shoprec_home: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOPREC_PSEUDONYM_KEY", "from-env")
    assert load_key(Settings()) == b"from-env"
    assert not (shoprec_home.secrets_dir / "pseudonym.key").exists()


def test_key_from_airflow_connection_env(shoprec_home: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_SHOPREC_PSEUDONYM_KEY", '{"conn_type": "generic", "password": "from-conn"}'
    )
    assert load_key(shoprec_home) == b"from-conn"


def test_key_file_is_created_once_with_owner_only_mode(shoprec_home: Settings) -> None:
    first = load_key(shoprec_home)
    path = shoprec_home.secrets_dir / "pseudonym.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) == 32
    assert load_key(shoprec_home) == first


def test_empty_key_file_is_an_error(shoprec_home: Settings) -> None:
    path = shoprec_home.secrets_dir / "pseudonym.key"
    path.parent.mkdir(parents=True)
    path.write_text("")
    with pytest.raises(PseudonymKeyError, match="is empty"):
        load_key(shoprec_home)


def test_source_id_pseudonym_is_hmac_of_column_and_raw_id() -> None:
    import hashlib
    import hmac

    expected = hmac.new(b"key", b"session_id\x1f489434", hashlib.sha256).hexdigest()[:32]
    assert pseudonymize_source_id("489434", b"key", "session_id") == "s_" + expected
    assert pseudonymize_source_id("489434-0001", b"key", "event_id").startswith("e_")


def test_an_invoice_and_a_customer_with_the_same_digits_get_unrelated_pseudonyms() -> None:
    user = pseudonymize("489434", b"k").removeprefix("u_")
    session = pseudonymize_source_id("489434", b"k", "session_id").removeprefix("s_")
    event = pseudonymize_source_id("489434", b"k", "event_id").removeprefix("e_")
    assert len({user, session, event}) == 3


def test_a_source_id_needs_a_key() -> None:
    with pytest.raises(PseudonymKeyError):
        pseudonymize_source_id("489434", b"", "session_id")
