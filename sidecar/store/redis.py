"""``redis://``, ``rediss://``, ``redis+sentinel://`` and ``redis+cluster://``:
the store for several replicas.

Every operation is one Redis command on one key, so each is atomic in Redis
itself and Cluster can never answer CROSSSLOT:

========================  ==========================================
``get``                   GET
``put``                   SET ... PX
``put_if_absent``         SET ... NX PX
``swap``                  SET ... GET PX (Redis 6.2+)
``take``                  GETDEL (Redis 6.2+)
``incr``                  one Lua script: INCR, and PEXPIRE on the first
``scan``                  SCAN MATCH (every primary, on Cluster)
========================  ==========================================

Record lifetimes are Redis expiries. Keys are ``sidecar:<ns>:{<key>}``; the
braces make the hash tag explicit, one key per slot decision.

URL forms:
- ``redis://[:password@]host:port/db`` and ``rediss://`` (TLS)
- ``redis+sentinel://[:password@]host:port[,host:port...]/service_name[/db]``
- ``redis+cluster://[:password@]host:port`` (any node; the rest are discovered)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

from sidecar.store.base import Record, StoreUnavailable

T = TypeVar("T")
PREFIX = "sidecar"
SOCKET_TIMEOUT = 2.0
MAX_CONNECTIONS = 64
IN_FLIGHT = 32
POOL_WAIT = 5.0

INCR_WITH_EXPIRY = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"""


def key_of(ns: str, key: str) -> str:
    return f"{PREFIX}:{ns}:{{{key}}}"


def _ms(ttl: float | None) -> int | None:
    return None if ttl is None else max(1, int(ttl * 1000))


def connect(url: str) -> Any:
    """A redis-py asyncio client for any of the supported URL forms."""
    options: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": SOCKET_TIMEOUT,
        "decode_responses": False,
    }
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("redis", "rediss"):
        # A bounded pool that waits for a free connection: a burst of requests
        # must not open hundreds of (TLS) connections at once.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            health_check_interval=30,
            max_connections=MAX_CONNECTIONS,
            timeout=POOL_WAIT,
            **options,
        )
        return aioredis.Redis.from_pool(pool)  # closing the client closes the pool
    parts = urlsplit(url)
    password = unquote(parts.password) if parts.password else None
    hosts = parts.netloc.rsplit("@", 1)[-1]
    default_port = 26379 if scheme == "redis+sentinel" else 6379
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        name, _, number = item.rpartition(":")
        nodes.append((name.strip("[]") or "127.0.0.1", int(number or default_port)))
    if scheme == "redis+cluster":
        host, port = nodes[0]
        return RedisCluster(host=host, port=port, password=password, **options)
    if scheme == "redis+sentinel":
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError("redis+sentinel:// needs the service name as its path")
        db = int(path[1]) if len(path) > 1 else 0
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            nodes,
            sentinel_kwargs={"password": password, **options},
            password=password,
            db=db,
            **options,
        )
        client = sentinel.master_for(path[0])
        client.sidecar_sentinels = sentinel.sentinels  # closed with the client
        return client
    raise ValueError(f"{scheme}:// is not a Redis URL")


class RedisStore:
    def __init__(self, url: str, client: Any | None = None) -> None:
        self.url = url
        # Built now (no I/O yet) so a malformed URL stops start-up at once.
        self._client = client if client is not None else connect(url)
        self._in_flight = asyncio.Semaphore(IN_FLIGHT)

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            # At most IN_FLIGHT commands at once per process: a burst of
            # requests queues here instead of opening (TLS) connections by the
            # hundred, which on a busy host time out.
            async with self._in_flight:
                return await fn()
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    @property
    def r(self) -> Any:
        if self._client is None:
            self._client = connect(self.url)
        return self._client

    async def open(self) -> None:
        if self._client is None:
            self._client = connect(self.url)
        # A Redis that is away at start is reported by readiness, not fatal:
        # the proxy keeps serving the app while Redis comes back.

    async def close(self) -> None:
        if self._client is not None:
            for sentinel in getattr(self._client, "sidecar_sentinels", ()):
                await sentinel.aclose()
            await self._client.aclose()
            self._client = None

    async def ping(self) -> None:
        await self._call(lambda: self.r.ping())

    @staticmethod
    def _load(raw: bytes | None) -> Record | None:
        return None if raw is None else dict(json.loads(raw))

    @staticmethod
    def _dump(value: Record) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    async def get(self, ns: str, key: str) -> Record | None:
        return self._load(await self._call(lambda: self.r.get(key_of(ns, key))))

    async def put(self, ns: str, key: str, value: Record, ttl: float | None = None) -> None:
        await self._call(lambda: self.r.set(key_of(ns, key), self._dump(value), px=_ms(ttl)))

    async def put_if_absent(
        self, ns: str, key: str, value: Record, ttl: float | None = None
    ) -> bool:
        stored = await self._call(
            lambda: self.r.set(key_of(ns, key), self._dump(value), px=_ms(ttl), nx=True)
        )
        return bool(stored)

    async def swap(
        self, ns: str, key: str, value: Record, ttl: float | None = None
    ) -> Record | None:
        old = await self._call(
            lambda: self.r.set(key_of(ns, key), self._dump(value), px=_ms(ttl), get=True)
        )
        return self._load(old)

    async def take(self, ns: str, key: str) -> Record | None:
        return self._load(await self._call(lambda: self.r.getdel(key_of(ns, key))))

    async def delete(self, ns: str, key: str) -> None:
        await self._call(lambda: self.r.delete(key_of(ns, key)))

    async def incr(self, ns: str, key: str, ttl: float) -> int:
        count = await self._call(
            lambda: self.r.eval(INCR_WITH_EXPIRY, 1, key_of(ns, key), _ms(ttl))
        )
        return int(count)

    async def scan(self, ns: str) -> list[tuple[str, Record]]:
        async def collect() -> list[tuple[str, Record]]:
            found = []
            prefix = f"{PREFIX}:{ns}:{{"
            async for raw_key in self.r.scan_iter(match=f"{PREFIX}:{ns}:*", count=500):
                name = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
                value = self._load(await self.r.get(name))
                if value is not None and name.startswith(prefix):
                    found.append((name[len(prefix) : -1], value))
            return sorted(found)

        return await self._call(collect)
