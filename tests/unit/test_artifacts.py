"""The shared artifact store (tasks.artifacts) on its two backends: a file:// folder and an s3://
bucket of a real S3 protocol server (moto on 127.0.0.1, through s3fs): put, get, exists, the
complete-folder marker, tampering, and write-once under racing writers."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from helpers_s3 import new_bucket, s3_options

from tasks.artifacts import ATTEMPT_PREFIX, MARKER, ArtifactRefused, ArtifactStore, artifact_store, fetch
from tasks.config import get_settings


def _store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore((tmp_path / "store").as_uri())


@pytest.fixture(params=["file", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """(store URL, storage options) of a fresh store: a folder, or a prefix in a fresh bucket."""
    if request.param == "file":
        return (tmp_path / "store").as_uri(), {}
    endpoint = request.getfixturevalue("s3_endpoint")
    return f"s3://{new_bucket(endpoint)}/artifacts", s3_options(endpoint)


def _machine(backend: tuple[str, dict[str, str]]) -> ArtifactStore:
    """The store as one machine sees it (on S3 a client of its own: no shared cache or connection)."""
    url, options = backend
    return ArtifactStore(url, {**options, "skip_instance_cache": True} if options else {})


@pytest.fixture
def store(backend: tuple[str, dict[str, str]]) -> ArtifactStore:
    made = _machine(backend)
    assert made.local == backend[0].startswith("file:")
    return made


def _folder(root: Path, text: str) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text(text)
    (root / "sub" / "b.bin").write_bytes(b"\x00\x01")
    return root


def _stored(store: ArtifactStore, uri: str, name: str = "") -> str:
    """The store's own path of ``uri`` (a file artifact) or of the file ``name`` of a folder artifact."""
    path = store._path(uri)
    if not name:
        return path
    prefix = json.loads(store.fs.cat_file(f"{path}/{MARKER}")).get("prefix")
    return f"{path}/{prefix}/{name}" if prefix else f"{path}/{name}"


def _keys_below(store: ArtifactStore, uri: str) -> list[str]:
    path = store._path(uri)
    store.fs.invalidate_cache()
    return sorted(p[len(path) + 1 :] for p in store.fs.find(path))


def test_a_folder_put_under_a_key_comes_back_whole_from_its_uri(store: ArtifactStore, tmp_path: Path) -> None:
    uri = store.put(_folder(tmp_path / "model", "weights"), "runs/r1/recommender")
    assert uri == f"{store.url}/runs/r1/recommender"
    assert store.exists(uri)
    got = store.get(uri, tmp_path / "elsewhere" / "recommender")
    assert (got / "a.txt").read_text() == "weights"
    assert (got / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    assert not (got / MARKER).exists()
    assert got.stat().st_mode & 0o777 == 0o700


def test_a_folder_written_on_one_machine_is_read_on_another(
    backend: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    uri = _machine(backend).put(_folder(tmp_path / "model", "weights"), "runs/r1/recommender")
    other = _machine(backend)
    assert other.exists(uri)
    assert (other.get(uri, tmp_path / "b" / "recommender") / "a.txt").read_text() == "weights"


def test_a_file_put_and_replaced_reads_back_the_last_version(store: ArtifactStore, tmp_path: Path) -> None:
    local = tmp_path / "checkpoint.pt"
    local.write_bytes(b"epoch 1")
    uri = store.put(local, "runs/r1/checkpoint.pt")
    local.write_bytes(b"epoch 2")
    assert store.put(local, "runs/r1/checkpoint.pt") == uri
    assert store.get(uri, tmp_path / "copy.pt").read_bytes() == b"epoch 2"


def test_a_replaced_folder_reads_back_the_new_version_and_leaves_no_old_files(
    store: ArtifactStore, tmp_path: Path
) -> None:
    uri = store.put(_folder(tmp_path / "v1", "version 1"), "runs/r1/recommender")
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "only.txt").write_text("version 2")
    assert store.put(tmp_path / "v2", "runs/r1/recommender") == uri
    got = store.get(uri, tmp_path / "back")
    assert sorted(p.name for p in got.rglob("*")) == ["only.txt"]
    assert (got / "only.txt").read_text() == "version 2"
    names = [k.split("/")[-1] for k in _keys_below(store, uri)]
    assert sorted(names) == [MARKER, "only.txt"]


def test_nothing_exists_before_a_put_and_getting_it_fails(store: ArtifactStore, tmp_path: Path) -> None:
    uri = store.uri("runs/r1/missing")
    assert not store.exists(uri)
    with pytest.raises(FileNotFoundError, match="no artifact at"):
        store.get(uri, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_folder_without_its_marker_is_not_an_artifact(store: ArtifactStore, tmp_path: Path) -> None:
    """A half-uploaded folder (its files, no marker yet) is never taken for the artifact."""
    half = _folder(tmp_path / "half", "partial")
    target = store._path(store.uri("runs/r1/data"))
    for name in ("a.txt", "sub/b.bin"):
        store.fs.makedirs(target + "/" + name.rpartition("/")[0], exist_ok=True)
        store.fs.put_file(str(half / name), f"{target}/{name}")
    assert store.fs.isfile(f"{target}/a.txt")
    assert not store.exists(store.uri("runs/r1/data"))
    with pytest.raises(FileNotFoundError):
        store.get(store.uri("runs/r1/data"), tmp_path / "back")


def test_a_tampered_file_in_the_store_is_refused_on_get(store: ArtifactStore, tmp_path: Path) -> None:
    uri = store.put(_folder(tmp_path / "model", "weights"), "runs/r1/recommender")
    store.fs.pipe_file(_stored(store, uri, "a.txt"), b"tampered")
    with pytest.raises(OSError, match=r"a\.txt does not match its SHA-256"):
        store.get(uri, tmp_path / "back")
    assert not (tmp_path / "back").exists()


def test_a_file_deleted_from_a_folder_in_the_store_fails_the_get(
    store: ArtifactStore, tmp_path: Path
) -> None:
    uri = store.put(_folder(tmp_path / "model", "weights"), "runs/r1/recommender")
    store.fs.rm_file(_stored(store, uri, "sub/b.bin"))
    with pytest.raises(FileNotFoundError):
        store.get(uri, tmp_path / "back")
    assert not (tmp_path / "back").exists()


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


@pytest.mark.parametrize("kind", ["file", "folder"])
@pytest.mark.parametrize("same", [False, True], ids=["different", "same"])
def test_a_writer_that_checked_before_another_published_does_not_overwrite_it(
    backend: tuple[str, dict[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    same: bool,
) -> None:
    """The race check-then-put loses: B looks (nothing there), A publishes, B publishes. B must not
    replace A's artifact: with different content B is refused, with the same content B gets the URI,
    and the store holds A's artifact, complete, with none of B's files left beside it."""
    a, b = _machine(backend), _machine(backend)
    key = "runs/r1/release"
    if kind == "file":
        first, second = tmp_path / "a.npz", tmp_path / "b.npz"
        first.write_bytes(b"noise drawn by A")
        second.write_bytes(b"noise drawn by A" if same else b"noise drawn by B")
    else:
        first = _folder(tmp_path / "a", "pin A")
        second = _folder(tmp_path / "b", "pin A" if same else "pin B")
    looked = ArtifactStore.exists

    def exists_then_a_publishes(self: ArtifactStore, uri: str) -> bool:
        found = looked(self, uri)
        if self is b and not found:
            a.put(first, key, once=True)  # A publishes right after B saw nothing
        return found

    monkeypatch.setattr(ArtifactStore, "exists", exists_then_a_publishes)
    if same:
        assert b.put(second, key, once=True) == b.uri(key)
    else:
        with pytest.raises(ArtifactRefused, match="write-once"):
            b.put(second, key, once=True)
    monkeypatch.undo()
    back = _machine(backend).get(b.uri(key), tmp_path / "back")
    if kind == "file":
        assert back.read_bytes() == b"noise drawn by A"
    else:
        assert (back / "a.txt").read_text() == "pin A"
        below = _keys_below(b, b.uri(key))
        assert len(below) == 3  # A's two files and its marker: none of B's
        if not b.local:
            assert len({k.split("/")[0] for k in below if k != MARKER}) == 1  # one attempt's prefix


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_racing_writers_of_a_write_once_key_leave_exactly_one_winner(
    backend: tuple[str, dict[str, str]], tmp_path: Path, kind: str
) -> None:
    """Four machines put different content under one write-once key at the same moment: one put
    succeeds, three are refused, and every reader gets the winner's content."""
    writers = 4
    start = threading.Barrier(writers)
    outcome: dict[int, str] = {}

    def write(i: int) -> None:
        store = _machine(backend)
        if kind == "file":
            local = tmp_path / f"w{i}.bin"
            local.write_bytes(f"noise of writer {i}".encode())
        else:
            local = _folder(tmp_path / f"w{i}", f"noise of writer {i}")
        start.wait()
        try:
            store.put(local, "runs/r1/race", once=True)
            outcome[i] = "won"
        except ArtifactRefused:
            outcome[i] = "refused"
        except Exception as error:  # recorded, so the assertion below names it
            outcome[i] = repr(error)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(outcome.values()) == ["refused"] * (writers - 1) + ["won"]
    (winner,) = [i for i, result in outcome.items() if result == "won"]
    reader = _machine(backend)
    back = reader.get(reader.uri("runs/r1/race"), tmp_path / "back")
    text = back.read_text() if kind == "file" else (back / "a.txt").read_text()
    assert text == f"noise of writer {winner}"
    if kind == "folder":
        assert len(_keys_below(reader, reader.uri("runs/r1/race"))) == 3  # the losers removed theirs


def test_a_remote_folders_files_lie_under_the_attempt_named_in_its_marker(
    s3_endpoint: str, tmp_path: Path
) -> None:
    store = ArtifactStore(f"s3://{new_bucket(s3_endpoint)}/artifacts", s3_options(s3_endpoint))
    uri = store.put(_folder(tmp_path / "model", "weights"), "runs/r1/recommender", once=True)
    marker = json.loads(store.fs.cat_file(f"{store._path(uri)}/{MARKER}"))
    assert marker["prefix"].startswith(ATTEMPT_PREFIX)
    assert set(marker["files"]) == {"a.txt", "sub/b.bin"}
    assert _keys_below(store, uri) == sorted(
        [MARKER, f"{marker['prefix']}/a.txt", f"{marker['prefix']}/sub/b.bin"]
    )


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


def test_settings_with_an_s3_url_endpoint_and_credentials_reach_the_bucket(
    s3_endpoint: str, tmp_path: Path
) -> None:
    bucket = new_bucket(s3_endpoint)
    options = s3_options(s3_endpoint)
    settings = get_settings(
        home=tmp_path / "home",
        artifact_store_url=f"s3://{bucket}/shoprec",
        artifact_store_endpoint_url=s3_endpoint,
        artifact_store_key_id=options["key"],
        artifact_store_secret=options["secret"],
    )
    store = artifact_store(settings)
    assert not store.local
    local = tmp_path / "users.json"
    local.write_text('["u1"]')
    uri = store.put(local, "runs/r1/training_users.json", once=True)
    assert uri == f"s3://{bucket}/shoprec/runs/r1/training_users.json"
    assert fetch(settings, uri).read_text() == '["u1"]'


@pytest.mark.parametrize(
    ("key_id", "secret"), [("shoprec", None), (None, "s3cret"), ("shoprec", ""), ("", "s3cret")]
)
def test_a_key_id_without_a_secret_or_the_reverse_is_one_clear_error(
    tmp_path: Path, key_id: str | None, secret: str | None
) -> None:
    settings = get_settings(
        home=tmp_path / "home",
        artifact_store_url="s3://shoprec-artifacts/shoprec",
        artifact_store_key_id=key_id,
        artifact_store_secret=secret,
    )
    with pytest.raises(ValueError, match="KEY_ID and SHOPREC_ARTIFACT_STORE_SECRET go together"):
        artifact_store(settings)


def test_empty_credentials_leave_s3fs_to_the_default_credential_chain(tmp_path: Path) -> None:
    settings = get_settings(
        home=tmp_path / "home",
        artifact_store_url="s3://shoprec-artifacts/shoprec",
        artifact_store_endpoint_url="",
        artifact_store_key_id="",
        artifact_store_secret="",
    )
    assert artifact_store(settings).storage_options == {}
