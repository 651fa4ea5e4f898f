"""Keyed pseudonyms and where their key comes from."""

from __future__ import annotations

import stat

import pytest

from tasks.config import Settings
from tasks.pseudonymize import PseudonymKeyError, is_pseudonym, load_key, pseudonymize


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
