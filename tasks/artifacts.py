"""The shared artifact store: what one task hands to another, addressed by URI, never by a local path.

Tasks of one DAG run may run on different machines (the trainer on a GPU worker, registration on a
default worker, a retry on whichever worker is free). Everything one task reads from another (the
trained models, the run's pinned data, its training users, its checkpoint, its DP releases) is put
here under a key of the run and passed on as a URI; the reader fetches the URI into a local folder.

The store is an fsspec URL (``Settings.resolved_artifact_store_url``): by default a ``file://``
folder below ``SHOPREC_HOME`` (one machine, or a shared volume), in a deployment an S3-compatible
bucket (``s3://bucket/prefix``; MinIO through ``SHOPREC_ARTIFACT_STORE_ENDPOINT_URL``), which needs
``s3fs`` installed beside fsspec.

An artifact is one file or one folder. A folder is complete when its marker :data:`MARKER` exists:
it is written last and names every file with its SHA-256, so a reader never takes a half-uploaded
folder and :meth:`ArtifactStore.get` checks what it fetched. :meth:`ArtifactStore.put` with
``once=True`` is write-once: a second put of different content under the same key is refused
(:class:`ArtifactRefused`), a second put of the same content is a no-op, so the first drawn DP noise
wins. Publishing is atomic on both backends, never check-then-put:

- file backend: a file is published with a hard link and a folder with a rename, both of which fail
  when the target exists;
- other backends (S3): a file, and a folder's marker, are written with an exclusive create
  (fsspec's ``mode="create"``, on S3 a conditional ``PutObject`` with ``If-None-Match: *``: AWS S3,
  MinIO and moto refuse it with 412 when the key exists). A folder's files go first under a prefix of
  their own attempt (``<key>/.v-<uuid>/``, named in the marker), so two racing writers never
  overwrite each other's files: the one whose marker lands first wins, the other removes its prefix
  and compares contents.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from fsspec.core import url_to_fs

from tasks.config import Settings
from tasks.io import atomic_write, atomic_write_json, replace_dir
from tasks.permissions import private_dir

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

MARKER: Final = ".artifact.json"  # a folder artifact's file list with SHA-256s, written last
ATTEMPT_PREFIX: Final = ".v-"  # a remote folder's files lie under <key>/.v-<uuid>/, named in its marker


class ArtifactRefused(ValueError):
    """A write-once key already holds different content: the first write wins."""


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_digests(folder: Path) -> dict[str, str]:
    """``{relative posix path: sha256}`` of every file below ``folder`` (the marker excluded)."""
    return {
        p.relative_to(folder).as_posix(): file_digest(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


@dataclass(frozen=True)
class ArtifactStore:
    """An fsspec location holding the artifacts of every run (``url``, e.g. ``file:///...`` or
    ``s3://bucket/prefix``; ``storage_options`` go to the fsspec filesystem)."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def _fs_root(self) -> tuple[AbstractFileSystem, str]:
        return url_to_fs(self.url, **self.storage_options)

    @property
    def fs(self) -> AbstractFileSystem:
        return self._fs_root[0]

    @property
    def local(self) -> bool:
        """Whether the store is a folder of this machine's file system (the atomic local backend)."""
        protocol = self.fs.protocol
        return "file" in (protocol if isinstance(protocol, tuple) else (protocol,))

    def uri(self, key: str) -> str:
        """The URI of ``key`` (``runs/<run>/recommender``) in this store."""
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"artifact key {key!r} must be a relative path without '..'")
        return f"{self.url.rstrip('/')}/{key}"

    def _path(self, uri: str) -> str:
        """The filesystem path of ``uri``, which must lie in this store."""
        root = self.url.rstrip("/") + "/"
        if not uri.startswith(root):
            raise ValueError(f"{uri} is not in the artifact store {self.url}")
        return self._fs_root[1].rstrip("/") + "/" + uri[len(root) :]

    # --- reading -------------------------------------------------------------------------------
    def exists(self, uri: str) -> bool:
        """Whether ``uri`` holds a complete artifact: a file, or a folder with its marker."""
        path = self._path(uri)
        self.fs.invalidate_cache(path)  # another machine may have written it since this process looked
        return bool(self.fs.isfile(path) or self.fs.isfile(f"{path}/{MARKER}"))

    def _marker(self, uri: str) -> dict[str, Any] | None:
        """The marker of a folder artifact (``files``: name -> SHA-256; ``prefix``: where a remote
        folder's files lie below the key); None when ``uri`` is a file artifact."""
        path = self._path(uri)
        if self.fs.isfile(path):
            return None
        marker: dict[str, Any] = json.loads(self.fs.cat_file(f"{path}/{MARKER}"))
        return marker

    def get(self, uri: str, dest: Path) -> Path:
        """Fetch the artifact at ``uri`` to ``dest`` (replaced; owner-only) and return ``dest``.

        A folder's files are checked against its marker. Raises FileNotFoundError when ``uri`` holds
        no complete artifact, OSError when a fetched file does not match its SHA-256.
        """
        if not self.exists(uri):
            raise FileNotFoundError(f"no artifact at {uri}")
        path, dest = self._path(uri), Path(dest)
        marker = self._marker(uri)
        if marker is None:
            return atomic_write(dest, lambda handle: handle.write(self.fs.cat_file(path)), private=True)
        base = f"{path}/{marker['prefix']}" if marker.get("prefix") else path

        def download(staging: Path) -> None:
            for name, expected in marker["files"].items():
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(f"{base}/{name}", str(target))
                if file_digest(target) != expected:
                    raise OSError(f"{uri}/{name} does not match its SHA-256 in {MARKER}")

        return replace_dir(dest, download, private=True)

    # --- writing -------------------------------------------------------------------------------
    def put(self, local: Path, key: str, *, once: bool = False) -> str:
        """Put the file or folder ``local`` under ``key``; return its URI.

        ``once=False`` replaces what the key held. ``once=True``: when the key already holds the
        same content (put earlier, or by a writer that won a race), nothing is written; different
        content raises :class:`ArtifactRefused`.
        """
        local, uri = Path(local), self.uri(key)
        if not local.exists():
            raise FileNotFoundError(f"nothing to put at {local}")
        if once and self.exists(uri):  # saves the upload; the publish below is atomic on its own
            self._same_or_refuse(local, uri)
            return uri
        path = self._path(uri)
        if local.is_dir():
            digests = folder_digests(local)
            if self.local:
                published = self._publish_local_folder(local, Path(path), digests, once=once)
            else:
                published = self._upload_folder(local, path, digests, once=once)
        elif self.local:
            published = self._publish_local_file(local, Path(path), once=once)
        elif once:
            published = self._create(path, local.read_bytes())
        else:
            self.fs.put_file(str(local), path)
            published = True
        if not published:  # another writer's artifact was there first
            self._same_or_refuse(local, uri)
        return uri

    def _same(self, local: Path, uri: str) -> bool:
        marker = self._marker(uri)
        if marker is None:
            if not local.is_file():
                return False
            return hashlib.sha256(self.fs.cat_file(self._path(uri))).hexdigest() == file_digest(local)
        return local.is_dir() and dict(marker["files"]) == folder_digests(local)

    def _same_or_refuse(self, local: Path, uri: str) -> None:
        if not self._same(local, uri):
            raise ArtifactRefused(
                f"{uri} already holds a different artifact and is write-once: the first write wins"
            )

    def _create(self, path: str, data: bytes) -> bool:
        """Write ``data`` at ``path`` only if nothing is there (one exclusive create: on S3 a
        ``PutObject`` with ``If-None-Match: *``); False when something was."""
        try:
            self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        except OSError:
            # some S3-compatible servers answer 412 without naming the condition (s3fs then raises
            # a plain OSError): the create failed because the key exists iff it exists now
            self.fs.invalidate_cache(path)
            if self.fs.isfile(path):
                return False
            raise
        return True

    def _upload_folder(self, local: Path, path: str, digests: dict[str, str], *, once: bool) -> bool:
        """Upload the files under a prefix of this attempt, then the marker that names it (exclusive
        create when ``once``; else it replaces the old marker, whose files are then removed). False
        when ``once`` and another writer's marker was there first (this attempt's files are removed)."""
        prefix = f"{ATTEMPT_PREFIX}{uuid.uuid4().hex}"
        for name in digests:
            self.fs.put_file(str(local / name), f"{path}/{prefix}/{name}")
        marker = json.dumps({"files": digests, "prefix": prefix}, sort_keys=True).encode()
        if once:
            if self._create(f"{path}/{MARKER}", marker):
                return True
            self._remove(path, {"prefix": prefix, "files": digests})
            return False
        old = self._marker_or_none(f"{path}/{MARKER}")
        self.fs.pipe_file(f"{path}/{MARKER}", marker)
        if old is not None and old.get("prefix") != prefix:
            self._remove(path, old)
        return True

    def _marker_or_none(self, marker_path: str) -> dict[str, Any] | None:
        try:
            old: dict[str, Any] = json.loads(self.fs.cat_file(marker_path))
        except FileNotFoundError:
            return None
        return old

    def _remove(self, path: str, marker: dict[str, Any]) -> None:
        """Remove the files a (replaced or losing) marker names: its prefix, or, without one, its files."""
        with contextlib.suppress(FileNotFoundError):
            if marker.get("prefix"):
                self.fs.rm(f"{path}/{marker['prefix']}", recursive=True)
            else:
                self.fs.rm([f"{path}/{name}" for name in marker["files"]])

    @staticmethod
    def _publish_local_file(local: Path, target: Path, *, once: bool) -> bool:
        private_dir(target.parent)
        if not once:
            atomic_write(target, lambda handle: handle.write(local.read_bytes()), private=True)
            return True
        staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            atomic_write(staging, lambda handle: handle.write(local.read_bytes()), private=True)
            try:
                os.link(staging, target)  # fails when the target exists: the first write wins
            except FileExistsError:
                return False
            return True
        finally:
            staging.unlink(missing_ok=True)

    @staticmethod
    def _publish_local_folder(local: Path, target: Path, digests: dict[str, str], *, once: bool) -> bool:
        def copy(staging: Path) -> None:
            for name in digests:
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(local / name, staging / name)
            atomic_write_json(staging / MARKER, {"files": digests}, private=True)

        if not once:
            replace_dir(target, copy, private=True)
            return True
        private_dir(target.parent)
        staging = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        try:
            replace_dir(staging, copy, private=True)
            try:
                os.rename(staging, target)  # fails when the target exists and is not empty
            except OSError:
                if not (target / MARKER).is_file():
                    raise
                return False
            return True
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def artifact_store(settings: Settings) -> ArtifactStore:
    """The store of ``settings`` (:attr:`Settings.resolved_artifact_store_url`, its S3 endpoint and
    credentials when set; without credentials s3fs takes botocore's chain: ``AWS_*`` variables, the
    shared credentials file, an instance or pod role). Raises ValueError when only one of the key id
    and the secret is set."""
    options: dict[str, Any] = {}
    key = settings.artifact_store_key_id or None
    secret = settings.artifact_store_secret.get_secret_value() if settings.artifact_store_secret else None
    if bool(key) != bool(secret):
        raise ValueError(
            "SHOPREC_ARTIFACT_STORE_KEY_ID and SHOPREC_ARTIFACT_STORE_SECRET go together: set both or neither"
        )
    if settings.artifact_store_endpoint_url:
        options["endpoint_url"] = settings.artifact_store_endpoint_url
    if key and secret:
        options["key"], options["secret"] = key, secret
    return ArtifactStore(settings.resolved_artifact_store_url, options)


def run_key_path(run_key: str) -> str:
    """A run key (the Airflow run id) as one safe path segment."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in run_key)


def fetch(settings: Settings, uri: str) -> Path:
    """A local copy of the artifact at ``uri``, below this machine's ``cache_dir/artifacts``."""
    name = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return artifact_store(settings).get(
        uri, settings.cache_dir / "artifacts" / name / uri.rstrip("/").rsplit("/", 1)[-1]
    )
