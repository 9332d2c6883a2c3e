"""Every store backend, each a real server where there is one: memory,
SQLite, Redis, Redis over TLS, a Redis Cluster and Sentinel."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sidecar.store import Store, open_store
from tools.processes import (
    Process,
    start_redis,
    start_redis_cluster,
    start_redis_sentinel,
    start_redis_tls,
)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[Process]:
    process = start_redis()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[list[Process]]:
    servers = start_redis_cluster()
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def redis_sentinel(redis_server: Process) -> Iterator[Process]:
    sentinel = start_redis_sentinel(redis_server)
    yield sentinel
    sentinel.stop()


@pytest.fixture(scope="module")
def redis_tls() -> Iterator[Process]:
    server = start_redis_tls()
    yield server
    server.stop()


@pytest.fixture(params=["memory", "sqlite", "redis", "rediss", "redis-cluster", "redis-sentinel"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        url = f"redis://127.0.0.1:{server.port}/0"
    elif request.param == "rediss":
        server = request.getfixturevalue("redis_tls")
        url = f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={server.extra['ca']}"
    elif request.param == "redis-cluster":
        servers = request.getfixturevalue("redis_cluster")
        url = f"redis+cluster://127.0.0.1:{servers[0].port}"
    elif request.param == "redis-sentinel":
        sentinel = request.getfixturevalue("redis_sentinel")
        url = f"redis+sentinel://127.0.0.1:{sentinel.port}/sidecar/2"
    elif request.param == "memory":
        url = "memory://"
    else:
        url = f"sqlite:///{tmp_path}/s.db"
    s = open_store(url)
    await s.open()
    if request.param == "redis-cluster":
        await s.r.flushall()  # type: ignore[attr-defined]
    elif request.param.startswith("redis"):
        await s.r.flushdb()  # type: ignore[attr-defined]
    yield s
    await s.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
