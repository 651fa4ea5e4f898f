"""A real S3 protocol server for tests: moto's server on 127.0.0.1, a free port, in this process.

It speaks the S3 REST API over HTTP (conditional ``PutObject`` with ``If-None-Match: *`` included), so
the artifact store's s3:// backend is exercised through s3fs, aiobotocore and HTTP exactly as against
AWS S3 or MinIO. The server is stopped by its own handle. Each test takes a bucket of its own.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

import s3fs
from moto.moto_server.threaded_moto_server import ThreadedMotoServer

# moto accepts any credentials; these are the test's own, never a real account's
TEST_KEY_ID = "shoprec-test-key"
TEST_SECRET = "shoprec-test-secret"


@contextmanager
def moto_s3_server() -> Generator[str, None, None]:
    """Start moto's S3 server on 127.0.0.1 (port chosen by the OS); yield its endpoint URL."""
    requests_log = logging.getLogger("werkzeug")
    level = requests_log.level
    requests_log.setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        requests_log.setLevel(level)


def s3_options(endpoint: str) -> dict[str, Any]:
    """fsspec storage options for the test server, as ``tasks.artifacts.artifact_store`` builds them."""
    return {"endpoint_url": endpoint, "key": TEST_KEY_ID, "secret": TEST_SECRET}


def new_bucket(endpoint: str) -> str:
    """Create a bucket with a fresh name on the server; return its name."""
    name = f"shoprec-test-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(**s3_options(endpoint)).mkdir(name)
    return name
