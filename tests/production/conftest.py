"""Fixtures of the production-profile tests: one native stack per test module, behind a services gate.

The gate (in every fixture that starts a stack) skips the test, with the reason shown, when PostgreSQL
or Redis is unreachable, and fails it instead under ``SHOPREC_REQUIRE_SERVICES=1`` (``.ci/run`` sets
it).  Tests that need no service (the offline Kubernetes pod check) are not gated.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from stack_client import REPO_ROOT, Stack, require_services, start_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The native stack on loopback with the probe DAGs; purged (DBs dropped, Redis flushed) after."""
    require_services()
    home = tmp_path_factory.mktemp("shoprec-stack")
    started = time.monotonic()
    running = start_stack(home, REPO_ROOT / "tests" / "production" / "dags")
    print(f"stack start took {time.monotonic() - started:.1f} s")
    try:
        yield running
    finally:
        running.run("purge", timeout=120)
