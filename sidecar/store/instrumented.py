"""A store that times every operation and counts its failures.

The one place where the store meets the metrics: the backends know nothing
of them, and the metrics nothing of the store.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sidecar.observability.metrics import STORE_ERRORS, STORE_SECONDS
from sidecar.store.base import Record, Store, StoreUnavailable

T = TypeVar("T")


async def timed(op: str, call: Callable[[], Awaitable[T]]) -> T:
    """Run one store operation, observing its time and counting a failure."""
    started = time.perf_counter()
    try:
        return await call()
    except StoreUnavailable:
        STORE_ERRORS.labels(op=op).inc()
        raise
    finally:
        STORE_SECONDS.labels(op=op).observe(time.perf_counter() - started)


class InstrumentedStore:
    """Wraps a backend; every operation is labelled by its name."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def ping(self) -> None:
        await timed("ping", self.inner.ping)

    async def get(self, ns: str, key: str) -> Record | None:
        return await timed("get", lambda: self.inner.get(ns, key))

    async def put(self, ns: str, key: str, value: Record, ttl: float | None = None) -> None:
        await timed("put", lambda: self.inner.put(ns, key, value, ttl))

    async def put_if_absent(
        self, ns: str, key: str, value: Record, ttl: float | None = None
    ) -> bool:
        return await timed("put_if_absent", lambda: self.inner.put_if_absent(ns, key, value, ttl))

    async def swap(
        self, ns: str, key: str, value: Record, ttl: float | None = None
    ) -> Record | None:
        return await timed("swap", lambda: self.inner.swap(ns, key, value, ttl))

    async def take(self, ns: str, key: str) -> Record | None:
        return await timed("take", lambda: self.inner.take(ns, key))

    async def delete(self, ns: str, key: str) -> None:
        await timed("delete", lambda: self.inner.delete(ns, key))

    async def incr(self, ns: str, key: str, ttl: float) -> int:
        return await timed("incr", lambda: self.inner.incr(ns, key, ttl))

    async def scan(self, ns: str) -> list[tuple[str, Record]]:
        return await timed("scan", lambda: self.inner.scan(ns))

    async def add_member(
        self, ns: str, key: str, member: str, value: Record, ttl: float | None = None
    ) -> None:
        await timed("add_member", lambda: self.inner.add_member(ns, key, member, value, ttl))

    async def remove_member(self, ns: str, key: str, member: str) -> None:
        await timed("remove_member", lambda: self.inner.remove_member(ns, key, member))

    async def members(self, ns: str, key: str) -> list[tuple[str, Record]]:
        return await timed("members", lambda: self.inner.members(ns, key))
