"""The store interface: a few atomic operations on JSON records by namespace.

Every single-use or rotating record (codes, refresh tokens, pending
authorizations) is redeemed with one atomic ``swap`` or ``take``, so two
replicas can never both redeem it; the Redis backend maps each operation to
one Redis command (GET, SET EX, SET NX, SET GET, GETDEL, INCR).
"""

from __future__ import annotations

from typing import Any, Protocol

from sidecar.observability.metrics import timed_store

Record = dict[str, Any]


class StoreUnavailable(Exception):
    """The store cannot be reached or answered with an error (503 upstream of it)."""


class Store(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...

    async def get(self, ns: str, key: str) -> Record | None: ...

    async def put(self, ns: str, key: str, value: Record, ttl: float | None = None) -> None: ...

    async def put_if_absent(
        self, ns: str, key: str, value: Record, ttl: float | None = None
    ) -> bool:
        """Store only when no live record exists; True when stored."""
        ...

    async def swap(
        self, ns: str, key: str, value: Record, ttl: float | None = None
    ) -> Record | None:
        """Atomically replace a record and return what was there (None if nothing)."""
        ...

    async def take(self, ns: str, key: str) -> Record | None:
        """Atomically read and delete a record."""
        ...

    async def delete(self, ns: str, key: str) -> None: ...

    async def incr(self, ns: str, key: str, ttl: float) -> int:
        """Add one to a counter that expires ``ttl`` seconds after it was created."""
        ...

    async def scan(self, ns: str) -> list[tuple[str, Record]]:
        """Every live record of a namespace (small namespaces only: clients)."""
        ...


class InstrumentedStore:
    """A store that times every operation and counts its failures (metrics)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def ping(self) -> None:
        await timed_store("ping", self.inner.ping)

    async def get(self, ns: str, key: str) -> Record | None:
        return await timed_store("get", lambda: self.inner.get(ns, key))

    async def put(self, ns: str, key: str, value: Record, ttl: float | None = None) -> None:
        await timed_store("put", lambda: self.inner.put(ns, key, value, ttl))

    async def put_if_absent(
        self, ns: str, key: str, value: Record, ttl: float | None = None
    ) -> bool:
        return await timed_store(
            "put_if_absent", lambda: self.inner.put_if_absent(ns, key, value, ttl)
        )

    async def swap(
        self, ns: str, key: str, value: Record, ttl: float | None = None
    ) -> Record | None:
        return await timed_store("swap", lambda: self.inner.swap(ns, key, value, ttl))

    async def take(self, ns: str, key: str) -> Record | None:
        return await timed_store("take", lambda: self.inner.take(ns, key))

    async def delete(self, ns: str, key: str) -> None:
        await timed_store("delete", lambda: self.inner.delete(ns, key))

    async def incr(self, ns: str, key: str, ttl: float) -> int:
        return await timed_store("incr", lambda: self.inner.incr(ns, key, ttl))

    async def scan(self, ns: str) -> list[tuple[str, Record]]:
        return await timed_store("scan", lambda: self.inner.scan(ns))


def open_store(url: str) -> Store:
    """The backend for a store URL, imported lazily."""
    scheme = url.split("://", 1)[0].lower()
    if scheme == "memory":
        from sidecar.store.memory import MemoryStore

        return MemoryStore()
    if scheme == "sqlite":
        from sidecar.store.sqlite import SQLiteStore

        return SQLiteStore(url)
    if scheme in ("redis", "rediss", "redis+sentinel", "redis+cluster"):
        from sidecar.store.redis import RedisStore

        return RedisStore(url)
    raise ValueError(
        f"{scheme}:// is not supported by this version yet; use sqlite:/// or memory://"
    )
