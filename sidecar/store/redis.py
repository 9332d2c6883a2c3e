"""``redis://``, ``rediss://``, ``redis+sentinel://`` and ``redis+cluster://``:
the store for several replicas.

Every operation on a record is one Redis command on one key, so each is
atomic in Redis itself and Cluster can never answer CROSSSLOT:

========================  ==========================================
``get``                   GET
``put``                   SET ... PX
``put_if_absent``         SET ... NX PX
``swap``                  SET ... GET PX (Redis 6.2+)
``take``                  GETDEL (Redis 6.2+)
``delete``                DEL
``incr``                  one Lua script: INCR, and PEXPIRE on the first
``add_member``            one Lua script: HSET, and the hash's PEXPIRE
``remove_member``         HDEL
``members``               one Lua script: HGETALL, HDEL of expired members
``scan``                  ZSCAN of the namespace's index, GET of each key
========================  ==========================================

Record lifetimes are Redis expiries. Keys are ``sidecar:<ns>:{<key>}``; the
braces make the hash tag explicit, one key per slot decision.

A collection (what one person or client holds) is one hash,
``sidecar:<ns>:{<key>}:members``, so on Cluster it is one slot by
construction. Redis before 7.4 has no expiry per hash field (HPEXPIRE), so
each field's value carries its own expiry time (Redis's clock, ms) and reads
drop what has passed; the hash itself expires with its longest-lived member.

A namespace's keys are indexed in the sorted set ``sidecar:<ns>:keys``,
scored by an upper bound of each record's expiry (``+inf`` for durable
ones), written in the same round trip as the record (MULTI/EXEC, except on
Cluster where the two keys are in different slots) and pruned of what has
expired on every write. ``scan`` walks that index: it never SCANs a keyspace
that the app may share with millions of its own keys (README, "Scale"). A
store written by a release without the index is indexed once, by the first
``scan`` that finds no ``sidecar:migrations:namespace-index`` marker; the
walk is idempotent, so replicas starting together may each run it.

URL forms:
- ``redis://[:password@]host:port/db`` and ``rediss://`` (TLS)
- ``redis+sentinel://[:password@]host:port[,host:port...]/service_name[/db]``
- ``redis+cluster://[:password@]host:port`` (any node; the rest are discovered)
"""

from __future__ import annotations

import asyncio
import json
import time
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

SCAN_BATCH = 500
INDEX_MARKER = f"{PREFIX}:migrations:namespace-index"

INCR_WITH_EXPIRY = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"""

# ARGV: member, JSON value, ttl in ms (0: durable). The field's value is
# "<expiry ms, 0 for none> <JSON>"; the hash lives as long as its
# longest-lived member.
ADD_MEMBER = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ttl = tonumber(ARGV[3])
local pttl = redis.call('PTTL', KEYS[1])
local expires = 0
if ttl > 0 then expires = now + ttl end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%.0f', expires) .. ' ' .. ARGV[2])
if ttl == 0 then
  if pttl >= 0 then redis.call('PERSIST', KEYS[1]) end
elseif pttl == -2 or (pttl >= 0 and pttl < ttl) then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
"""

# The live members, flat (member, JSON, ...); expired ones are removed.
LIVE_MEMBERS = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local flat = redis.call('HGETALL', KEYS[1])
local live, gone = {}, {}
for i = 1, #flat, 2 do
  local v = flat[i + 1]
  local space = string.find(v, ' ', 1, true)
  local expires = tonumber(string.sub(v, 1, space - 1))
  if expires ~= 0 and expires <= now then
    gone[#gone + 1] = flat[i]
  else
    live[#live + 1] = flat[i]
    live[#live + 1] = string.sub(v, space + 1)
  end
end
if #gone > 0 then redis.call('HDEL', KEYS[1], unpack(gone)) end
return live
"""


def key_of(ns: str, key: str) -> str:
    return f"{PREFIX}:{ns}:{{{key}}}"


def index_of(ns: str) -> str:
    """The sorted set of a namespace's keys (never a record's name: those
    end with a brace)."""
    return f"{PREFIX}:{ns}:keys"


def collection_of(ns: str, key: str) -> str:
    return f"{key_of(ns, key)}:members"


def record_name(raw: bytes | str) -> tuple[str, str] | None:
    """``(ns, key)`` of a record's Redis key, or None for any other key."""
    name = raw.decode() if isinstance(raw, bytes) else raw
    head, sep, rest = name.partition(":")
    ns, brace, key = rest.partition(":{")
    if head != PREFIX or not sep or not brace or not key.endswith("}"):
        return None
    return ns, key[:-1]


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
        self._indexed = False  # the index migration has been seen done

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

    def _pipeline(self) -> Any:
        # A record and its namespace's index are two keys: one MULTI/EXEC
        # where they can share it, one round trip (not atomic) on Cluster,
        # where they live in different slots.
        return self.r.pipeline(transaction=not isinstance(self.r, RedisCluster))

    async def _write(self, ns: str, key: str, ttl: float | None, command: Any) -> Any:
        """Run ``command(pipeline)`` (one command on the record) and index
        the key; returns that command's answer."""
        now = time.time() * 1000
        index = index_of(ns)
        expires = float("inf") if ttl is None else now + ttl * 1000
        pipe = self._pipeline()
        command(pipe)
        # GT: the score only grows, so it stays an upper bound of the
        # record's expiry however writes interleave.
        pipe.zadd(index, {key: expires}, gt=True)
        pipe.zremrangebyscore(index, "-inf", now)
        results = await pipe.execute()
        return results[0]

    async def _unindex(self, ns: str, key: str, command: Any) -> Any:
        pipe = self._pipeline()
        command(pipe)
        pipe.zrem(index_of(ns), key)
        results = await pipe.execute()
        return results[0]

    async def get(self, ns: str, key: str) -> Record | None:
        return self._load(await self._call(lambda: self.r.get(key_of(ns, key))))

    async def put(self, ns: str, key: str, value: Record, ttl: float | None = None) -> None:
        data = self._dump(value)
        await self._call(
            lambda: self._write(ns, key, ttl, lambda p: p.set(key_of(ns, key), data, px=_ms(ttl)))
        )

    async def put_if_absent(
        self, ns: str, key: str, value: Record, ttl: float | None = None
    ) -> bool:
        data = self._dump(value)
        stored = await self._call(
            lambda: self._write(
                ns, key, ttl, lambda p: p.set(key_of(ns, key), data, px=_ms(ttl), nx=True)
            )
        )
        return bool(stored)

    async def swap(
        self, ns: str, key: str, value: Record, ttl: float | None = None
    ) -> Record | None:
        data = self._dump(value)
        old = await self._call(
            lambda: self._write(
                ns, key, ttl, lambda p: p.set(key_of(ns, key), data, px=_ms(ttl), get=True)
            )
        )
        return self._load(old)

    async def take(self, ns: str, key: str) -> Record | None:
        old = await self._call(lambda: self._unindex(ns, key, lambda p: p.getdel(key_of(ns, key))))
        return self._load(old)

    async def delete(self, ns: str, key: str) -> None:
        await self._call(lambda: self._unindex(ns, key, lambda p: p.delete(key_of(ns, key))))

    async def incr(self, ns: str, key: str, ttl: float) -> int:
        count = await self._call(
            lambda: self.r.eval(INCR_WITH_EXPIRY, 1, key_of(ns, key), _ms(ttl))
        )
        return int(count)

    async def scan(self, ns: str) -> list[tuple[str, Record]]:
        async def collect() -> list[tuple[str, Record]]:
            if not self._indexed:
                await self._index_previous_release()
            found: list[tuple[str, Record]] = []
            index = index_of(ns)
            cursor = 0
            while True:
                cursor, entries = await self.r.zscan(index, cursor, count=SCAN_BATCH)
                now = time.time() * 1000
                keys = [
                    m.decode() if isinstance(m, bytes) else m for m, score in entries if score > now
                ]
                if keys:
                    pipe = self.r.pipeline(transaction=False)
                    for key in keys:
                        pipe.get(key_of(ns, key))
                    for key, raw in zip(keys, await pipe.execute(), strict=True):
                        # An entry whose record is gone (or a counter's) is
                        # skipped; expired ones are pruned by the next write.
                        if raw is not None and raw.startswith(b"{"):
                            found.append((key, dict(json.loads(raw))))
                if not cursor:
                    break
            return sorted(found)

        return await self._call(collect)

    async def _index_previous_release(self) -> None:
        """Index the records a release without namespace indexes wrote: one
        walk of the sidecar's keys, once for the store's lifetime."""
        if await self.r.exists(INDEX_MARKER):
            self._indexed = True
            return
        batch: list[tuple[str, str, bytes]] = []

        async def flush() -> None:
            pipe = self.r.pipeline(transaction=False)
            for _, _, name in batch:
                pipe.get(name)
                pipe.pttl(name)
            answers = await pipe.execute()
            now = time.time() * 1000
            index = self.r.pipeline(transaction=False)
            for i, (ns, key, _) in enumerate(batch):
                raw, pttl = answers[2 * i], answers[2 * i + 1]
                if raw is not None and raw.startswith(b"{") and pttl != -2:
                    expires = float("inf") if pttl == -1 else now + pttl
                    index.zadd(index_of(ns), {key: expires}, gt=True)
            await index.execute()
            batch.clear()

        async for raw_key in self.r.scan_iter(match=f"{PREFIX}:*", count=SCAN_BATCH):
            parsed = record_name(raw_key)
            if parsed is not None:
                batch.append((*parsed, raw_key))
                if len(batch) >= SCAN_BATCH:
                    await flush()
        if batch:
            await flush()
        await self.r.set(INDEX_MARKER, b"1")
        self._indexed = True

    async def add_member(
        self, ns: str, key: str, member: str, value: Record, ttl: float | None = None
    ) -> None:
        await self._call(
            lambda: self.r.eval(
                ADD_MEMBER, 1, collection_of(ns, key), member, self._dump(value), _ms(ttl) or 0
            )
        )

    async def remove_member(self, ns: str, key: str, member: str) -> None:
        await self._call(lambda: self.r.hdel(collection_of(ns, key), member))

    async def members(self, ns: str, key: str) -> list[tuple[str, Record]]:
        flat = await self._call(lambda: self.r.eval(LIVE_MEMBERS, 1, collection_of(ns, key)))
        found = [(flat[i].decode(), dict(json.loads(flat[i + 1]))) for i in range(0, len(flat), 2)]
        return sorted(found)
