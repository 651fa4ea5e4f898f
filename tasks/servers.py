"""Run a local HTTP server (``feast serve``, ``mlflow server``) for the length of a ``with`` block.

The server binds 127.0.0.1 on a free port, runs in its own process group, is waited for on its
``/health`` endpoint within a bounded time, and is stopped by that process group (TERM, then KILL).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Generator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def venv_bin(name: str) -> str:
    """A console script of this interpreter's environment (``feast``, ``mlflow``, ``airflow``)."""
    return str(Path(sys.executable).with_name(name))


@contextmanager
def local_server(
    command: Callable[[int], list[str]],
    *,
    name: str,
    timeout_s: float = 120.0,
    log_path: Path | None = None,
) -> Generator[str]:
    """Start ``command(port)``, wait until ``/health`` answers 200, yield the base URL, then stop it."""
    port = free_port()
    log = log_path.open("wb") if log_path else None
    process = subprocess.Popen(
        command(port),
        stdout=log or subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while not _healthy(url):
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited before it became healthy{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not become healthy in {timeout_s:.0f} s{_tail(log_path)}")
            time.sleep(0.5)
        yield url
    finally:
        _stop_group(process)
        if log:
            log.close()


def feast_server(repo_yaml: Path) -> Callable[[int], list[str]]:
    """``feast serve`` with one worker for the repository config ``repo_yaml``."""
    return lambda port: [
        venv_bin("feast"),
        "-c",
        str(repo_yaml),
        "serve",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "--workers",
        "1",
    ]


def mlflow_server(backend_store_uri: str, artifacts: Path) -> Callable[[int], list[str]]:
    """``mlflow server`` with one worker (the default starts several and uses ~1.7 GB)."""
    return lambda port: [
        venv_bin("mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        str(artifacts),
    ]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:  # ruff: ignore[suspicious-url-open-usage] - loopback URL we built
            return bool(response.status == 200)
    except OSError:
        return False


def _tail(log_path: Path | None) -> str:
    if log_path is None or not log_path.exists():
        return ""
    return ":\n" + log_path.read_text(errors="replace")[-2000:]


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
