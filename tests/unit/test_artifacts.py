"""The shared artifact store (tasks.artifacts): put, get, exists, write-once, on the file backend and
on fsspec's in-memory filesystem, which takes the generic path an S3 bucket takes (no atomic create)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tasks.artifacts import MARKER, ArtifactRefused, ArtifactStore, artifact_store, fetch
from tasks.config import get_settings


def _store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore((tmp_path / "store").as_uri())


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    """The file backend, or fsspec's memory filesystem standing in for a bucket (generic path)."""
    if request.param == "file":
        return _store(tmp_path)
    made = ArtifactStore(f"memory://shoprec-test-{uuid.uuid4().hex}/artifacts")
    assert not made.local
    return made


def _folder(root: Path, text: str) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text(text)
    (root / "sub" / "b.bin").write_bytes(b"\x00\x01")
    return root


def test_a_folder_put_under_a_key_comes_back_whole_from_its_uri(store: ArtifactStore, tmp_path: Path) -> None:
    uri = store.put(_folder(tmp_path / "model", "weights"), "runs/r1/recommender")
    assert uri == f"{store.url}/runs/r1/recommender"
    assert store.exists(uri)
    got = store.get(uri, tmp_path / "elsewhere" / "recommender")
    assert (got / "a.txt").read_text() == "weights"
    assert (got / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    assert not (got / MARKER).exists()
    assert got.stat().st_mode & 0o777 == 0o700


def test_a_file_put_and_replaced_reads_back_the_last_version(store: ArtifactStore, tmp_path: Path) -> None:
    local = tmp_path / "checkpoint.pt"
    local.write_bytes(b"epoch 1")
    uri = store.put(local, "runs/r1/checkpoint.pt")
    local.write_bytes(b"epoch 2")
    assert store.put(local, "runs/r1/checkpoint.pt") == uri
    assert store.get(uri, tmp_path / "copy.pt").read_bytes() == b"epoch 2"


def test_nothing_exists_before_a_put_and_getting_it_fails(store: ArtifactStore, tmp_path: Path) -> None:
    uri = store.uri("runs/r1/missing")
    assert not store.exists(uri)
    with pytest.raises(FileNotFoundError, match="no artifact at"):
        store.get(uri, tmp_path / "x")


def test_a_folder_without_its_marker_is_not_an_artifact(tmp_path: Path) -> None:
    """A half-uploaded folder (no marker yet) is never taken for the artifact."""
    store = _store(tmp_path)
    half = tmp_path / "store" / "runs" / "r1" / "data"
    _folder(half, "partial")
    assert not store.exists(store.uri("runs/r1/data"))


def test_write_once_refuses_different_content_and_the_first_write_wins(
    store: ArtifactStore, tmp_path: Path
) -> None:
    first, second = tmp_path / "first.npz", tmp_path / "second.npz"
    first.write_bytes(b"noise drawn first")
    second.write_bytes(b"noise drawn again")
    uri = store.put(first, "runs/r1/dp_popularity.npz", once=True)
    assert store.put(first, "runs/r1/dp_popularity.npz", once=True) == uri  # same content: fine
    with pytest.raises(ArtifactRefused, match="write-once"):
        store.put(second, "runs/r1/dp_popularity.npz", once=True)
    assert store.get(uri, tmp_path / "back.npz").read_bytes() == b"noise drawn first"


def test_write_once_folders_refuse_a_different_folder(store: ArtifactStore, tmp_path: Path) -> None:
    uri = store.put(_folder(tmp_path / "one", "pin A"), "runs/r1/data", once=True)
    assert store.put(tmp_path / "one", "runs/r1/data", once=True) == uri
    with pytest.raises(ArtifactRefused):
        store.put(_folder(tmp_path / "two", "pin B"), "runs/r1/data", once=True)
    assert (store.get(uri, tmp_path / "back") / "a.txt").read_text() == "pin A"


def test_a_corrupted_file_in_the_store_is_refused_on_get(tmp_path: Path) -> None:
    store = _store(tmp_path)
    uri = store.put(_folder(tmp_path / "model", "weights"), "runs/r1/recommender")
    (tmp_path / "store" / "runs" / "r1" / "recommender" / "a.txt").write_text("tampered")
    with pytest.raises(OSError, match="SHA-256"):
        store.get(uri, tmp_path / "back")
    assert not (tmp_path / "back").exists()


@pytest.mark.parametrize("key", ["", "/abs", "runs/../../etc"])
def test_keys_stay_inside_the_store(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match="relative path"):
        _store(tmp_path).uri(key)


def test_a_uri_of_another_store_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not in the artifact store"):
        _store(tmp_path).exists((tmp_path / "other" / "x").as_uri())


def test_settings_default_to_a_folder_below_home_and_fetch_copies_into_the_cache(tmp_path: Path) -> None:
    settings = get_settings(home=tmp_path / "home")
    assert settings.resolved_artifact_store_url == (tmp_path / "home" / "artifacts").as_uri()
    shared = get_settings(home=tmp_path / "b", artifact_store_url=(tmp_path / "shared").as_uri())
    local = tmp_path / "users.json"
    local.write_text("[]")
    uri = artifact_store(shared).put(local, "runs/r1/training_users.json")
    copy = fetch(shared, uri)
    assert copy.read_text() == "[]"
    assert copy.is_relative_to(shared.cache_dir)
