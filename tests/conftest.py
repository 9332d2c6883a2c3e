from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.browser import chromium  # noqa: F401 - a shared fixture
from tools.processes import Process, start_sidecar, start_upstream


@pytest.fixture(scope="session")
def upstream() -> Iterator[Process]:
    process = start_upstream()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def sidecar(upstream: Process) -> Iterator[Process]:
    """One sidecar in front of the local upstream, shared by read-only tests."""
    process = start_sidecar(upstream.url, SIDECAR_UPSTREAM_RESPONSE_TIMEOUT="5")
    yield process
    process.stop()
